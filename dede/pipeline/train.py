"""train.py's job: obtain the victim (load or make, cached) and train a DeDe decoder."""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dede.decoder import AuxDataModule, DeDeModule
from dede.io import write_json_atomic, write_text_atomic
from dede.pipeline.common import aux_split, check_data_available, instantiate_list, route_lightning_logs
from dede.training import fit
from dede.validate import validate_train_config
from dede.victims.factory import obtain_victim

log = logging.getLogger(__name__)


def decoder_model_kwargs(cfg: DictConfig) -> dict:
    dec = cfg.decoder
    return dict(image_size=int(cfg.data.image_size), patch_size=int(dec.patch_size), embed_dim=int(dec.embed_dim),
                depth=int(dec.depth), num_heads=int(dec.num_heads), decoder_depth=int(dec.decoder_depth))


def build_module(cfg: DictConfig, victim_dim: int) -> DeDeModule:
    dec = cfg.decoder
    return DeDeModule(decoder_model_kwargs(cfg), victim_dim=victim_dim, mask_ratio=float(dec.mask_ratio),
                      test_mask_ratio=float(dec.test_mask_ratio), lr=float(dec.lr),
                      weight_decay=float(dec.weight_decay), warmup_epochs=float(dec.warmup_epochs),
                      scheduler=dec.scheduler, mask_schedule=dec.mask_schedule, mask_ratio_end=dec.mask_ratio_end,
                      mix_prob=float(dec.mix_prob), compile=bool(dec.get("compile", False)))


def run_train(cfg: DictConfig, out: Path | None = None) -> dict:
    """Obtain the victim and train the decoder into ``out`` (default: the Hydra run directory,
    else ``paths.output_dir``); returns the final metrics."""
    route_lightning_logs()
    validate_train_config(cfg)
    if out is None:
        out = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(cfg.paths.output_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_data_available(cfg)
    write_text_atomic(out / "resolved_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)

    info = obtain_victim(cfg, out / "victim_logs")
    victim = info.victim
    write_json_atomic(out / "victim.json", {"path": str(Path(info.path).resolve()), "format": info.fmt,
                                            "attack": cfg.attack.name, "embed_dim": victim.embed_dim,
                                            "made_in_this_run": info.made,
                                            "trigger_file": info.trigger_file})

    aux = aux_split(cfg, info.trigger_file)
    train_set, val_set = aux.split(float(cfg.data.val_fraction), cfg.seed)
    log.info("auxiliary set %s: %d train (%d poisoned), %d held out", cfg.data.name, len(train_set),
             int(train_set.poisoned.sum()), len(val_set))
    cache = bool(cfg.decoder.cache_embeddings)
    dm = AuxDataModule(train_set, val_set, victim, batch_size=int(cfg.data.batch_size), cache_embeddings=cache,
                       num_workers=int(cfg.data.num_workers), seed=cfg.seed)

    L.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg, victim.embed_dim).attach_victim(victim)
    loggers = instantiate_list(cfg.get("logger"))
    precision = cfg.decoder.get("precision")  # the decoder's own precision, else the trainer's
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False,
                                     callbacks=instantiate_list(cfg.get("callbacks")),
                                     **({"precision": precision} if precision is not None else {}))
    for lg in loggers:
        lg.log_hyperparams(dict(attack=cfg.attack.name, data=cfg.data.name, scale=cfg.scale,
                                mask_ratio=cfg.decoder.mask_ratio, patch_size=cfg.decoder.patch_size))
    ckpt = None
    if cfg.ckpt_path == "last":
        last = out / "checkpoints" / "last.ckpt"
        ckpt = str(last) if last.is_file() else None
    elif cfg.ckpt_path:
        ckpt = str(cfg.ckpt_path)
    if ckpt:
        log.info("resuming from %s", ckpt)
    fit(trainer, module, dm, ckpt)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    log.info("decoder training done: %s", metrics)
    if cfg.get("eval_after_train") and trainer.is_global_zero:
        from dede.pipeline.evaluate import evaluate_run

        res = evaluate_run(out, cfg.eval, out, None)
        metrics.update({f"eval/{k}": v for k, v in res.items() if isinstance(v, float)})
        for lg in loggers:
            lg.log_metrics({f"eval/{k}": v for k, v in res.items() if isinstance(v, float)})
    return metrics
