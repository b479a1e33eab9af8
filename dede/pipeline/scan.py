"""scan.py's job: scan an encoder you bring, in one command.

1. The suspect encoder is loaded from ``checkpoint`` (a known format, or a timm / torchvision /
   open_clip model by name with ``attack=external``); its DeDe decoder is trained on the given
   auxiliary data, or reused: decoders are cached under ``<cache>/scans/<key>``, the key hashing
   the checkpoint's bytes and every setting that shapes the decoder.
2. With ``control_checkpoint`` (an encoder of the same architecture known to be clean, e.g. the
   public weights the suspect was fine-tuned from), the same is done for it: the clean-victim control.
3. The detectors (``detectors``; the main one is ``eval.main_detector``) are evaluated with their
   controls into this run's directory (``eval/``: results.json, results.md, plots), and the table
   is printed.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from dede.io import write_text_atomic

log = logging.getLogger(__name__)


class ScanError(ValueError):
    """A scan that cannot start (missing checkpoint, bad settings)."""


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def decoder_key(cfg: DictConfig, checkpoint: Path) -> dict:
    """What the decoder of a scanned encoder depends on: the encoder's bytes, the attack node
    (format, architecture, input settings, and the trigger and target that poison an
    in-distribution auxiliary set), the auxiliary data, the decoder, the seed and the precision.
    Where files live and how many workers read them do not change it."""
    def plain(node, drop=()):  # resolved, without the keys that do not shape the decoder (never resolved)
        return {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                for k, v in ((k, node[k]) for k in node if k not in drop)}

    attack = plain(cfg.attack, ("checkpoint", "presets"))
    data = plain(cfg.data, ("root", "download", "num_workers", "home"))
    data["home"] = plain(cfg.data.home, ("root", "download"))
    return {"checkpoint_sha256": file_digest(checkpoint), "attack": attack, "data": data,
            "decoder": plain(cfg.decoder), "seed": cfg.seed, "precision": str(cfg.trainer.get("precision"))}


def _with_checkpoint(cfg: DictConfig, checkpoint: str) -> DictConfig:
    path = Path(str(checkpoint)).expanduser().resolve()
    if not path.is_file():
        raise ScanError(f"checkpoint={checkpoint} does not exist: give the path of the encoder's weights file")
    out = cfg.copy()
    with open_dict(out):
        out.attack.checkpoint = str(path)
        if cfg.get("checkpoint_format"):
            out.attack.checkpoint_format = cfg.checkpoint_format
        out.eval_after_train = False
    return out


def train_or_reuse(cfg: DictConfig, what: str) -> Path:
    """The train run (victim + decoder) of ``cfg``'s checkpoint, trained now unless cached."""
    from dede.pipeline.compose import train_in_process
    from dede.validate import validate_train_config
    from dede.victims.factory import config_hash

    validate_train_config(cfg)  # before hashing a large file or training anything
    key = config_hash(decoder_key(cfg, Path(cfg.attack.checkpoint)))
    run = Path(cfg.paths.cache_dir) / "scans" / key
    done, last = run / "scan.done", run / "checkpoints" / "last.ckpt"
    if done.is_file() and last.is_file():
        log.info("reusing the decoder of the %s encoder: %s", what, run)
        return run
    log.info("training the DeDe decoder of the %s encoder %s into %s", what, cfg.attack.checkpoint, run)
    train_in_process(cfg, run)  # resumes from run/checkpoints/last.ckpt after an interruption
    if not last.is_file():
        raise RuntimeError(f"training the decoder wrote no {last}; see {run}")
    write_text_atomic(done, f"{cfg.attack.checkpoint}\n")
    return run


def run_scan(cfg: DictConfig) -> dict:
    from dede.pipeline.evaluate import evaluate_run
    from dede.report.show import show

    if not cfg.get("checkpoint"):
        raise ScanError("checkpoint=PATH is required: the weights of the encoder to scan (format: "
                        "attack.checkpoint_format, or attack=external with a timm / torchvision / open_clip model)")
    out = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(cfg.paths.output_dir)
    suspect = _with_checkpoint(cfg, cfg.checkpoint)
    control = _with_checkpoint(cfg, cfg.control_checkpoint) if cfg.get("control_checkpoint") else None
    run = train_or_reuse(suspect, "suspect")
    control_run = train_or_reuse(control, "clean control") if control is not None else None
    if control_run is None:
        log.warning("no control_checkpoint: the report has no clean-victim control (auroc_clean_victim); give the "
                    "weights of a clean encoder of the same architecture to tell a backdoor from a salient trigger")
    res = evaluate_run(run, cfg.eval, out / "eval", cfg, cfg.detectors, str(control_run) if control_run else None)
    show(str(out / "eval" / "results.json"))
    return res
