"""evaluate.py's job: detection metrics, downstream CA / ASR before and after filtering,
plots and the report of one trained run."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from dede.decoder import DeDeModule
from dede.detect import (apply_threshold, auroc, dede_scores, detection_metrics, median_threshold, quantile_threshold,
                         reconstructions, roc_curve)
from dede.detect.compare import DetectorScores, compare_detectors, model_level_checks, resolve_detectors
from dede.downstream import downstream_metrics, knn_metrics, train_classifier
from dede.pipeline.common import aux_split, instantiate_list, route_lightning_logs
from dede.report import plots
from dede.report.aggregate import evaluate_multirun, is_multirun
from dede.report.results import write_results
from dede.validate import validate_eval_config
from dede.victims import CheckpointError, build_victim, load_victim_checkpoint
from dede.victims.factory import build_trigger, home_split

log = logging.getLogger(__name__)
RESOLVED = "resolved_config.yaml"


class RunError(FileNotFoundError):
    """The directory given as ``run=`` is not a usable train run."""


def load_run_config(run: Path) -> DictConfig:
    if not run.is_dir():
        raise RunError(f"run={run} is not a directory; pass the run directory that train.py printed")
    path = run / RESOLVED
    if not path.is_file():
        raise RunError(f"{run} holds no {RESOLVED}: not a train.py run directory (or its training never started)")
    return OmegaConf.load(path)


def load_decoder(run: Path, victim_dim: int, device: torch.device) -> DeDeModule:
    ckpt = run / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise RunError(f"{ckpt} is missing: the decoder of this run has not finished an epoch")
    try:
        obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read decoder checkpoint {ckpt}: {exc}") from exc
    hp = dict(obj["hyper_parameters"])
    if int(hp["victim_dim"]) != victim_dim:
        raise CheckpointError(f"embedding size mismatch: the decoder in {ckpt} projects {hp['victim_dim']}-d victim "
                              f"embeddings, but the victim gives {victim_dim}-d ones")
    module = DeDeModule(**hp)
    module.load_state_dict(obj["state_dict"], strict=True)
    return module.to(device).eval()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _timed_scores(model, victim, images, ratio, e, seed) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    s = dede_scores(model, victim, images, ratio, e.batch_size, seed, e.n_masks, rule=e.score_rule)
    return s, len(images) / max(time.perf_counter() - t0, 1e-9)


def run_evaluate(cfg: DictConfig) -> dict:
    """evaluate.py: evaluate ``cfg.run`` into this job's own run directory."""
    route_lightning_logs()
    validate_eval_config(cfg.eval)
    run = Path(cfg.run).expanduser().resolve()
    out = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else run
    if run.is_dir() and is_multirun(run):
        return evaluate_multirun(run, out, lambda job, job_out: evaluate_run(job, cfg.eval, job_out, None,
                                                                             cfg.detectors))
    return evaluate_run(run, cfg.eval, out, cfg, cfg.detectors)


def evaluate_run(run: Path, e: DictConfig, out: Path, cfg: DictConfig | None = None,
                 detectors=("dede",)) -> dict:
    """Evaluate the train run in ``run`` with eval settings ``e``; write the report to ``out``.
    ``cfg`` (optional) supplies the loggers to send the results to; ``detectors`` names the
    detectors to compare (``"all"``: every sample-level detector)."""
    tcfg = load_run_config(run)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(e.device)
    L.seed_everything(int(e.seed), workers=True, verbose=False)

    vinfo = json.loads((run / "victim.json").read_text())
    victim, full = build_victim(**OmegaConf.to_container(tcfg.attack.victim, resolve=True))
    load_victim_checkpoint(vinfo["path"], vinfo["format"], full)
    victim = victim.to(device).eval()
    module = load_decoder(run, victim.embed_dim, device)
    model = module.model
    ratio = float(e.test_mask_ratio if e.test_mask_ratio is not None else tcfg.decoder.test_mask_ratio)

    trigger = build_trigger(tcfg, vinfo.get("trigger_file"))
    target = int(tcfg.attack.target)
    test = home_split(tcfg, "test")
    if e.n_test:
        test = test.subset(torch.arange(min(int(e.n_test), len(test))))
    trig = test.subset(torch.nonzero(test.labels != target)[:, 0]).triggered(trigger)
    aux_val = aux_split(tcfg, vinfo.get("trigger_file")).split(float(tcfg.data.val_fraction), tcfg.seed)[1]

    s_clean, ips = _timed_scores(model, victim, test.images, ratio, e, e.seed)
    s_trig, _ = _timed_scores(model, victim, trig.images, ratio, e, e.seed + 1)
    s_cal, _ = _timed_scores(model, victim, aux_val.images, ratio, e, e.seed + 2)
    det = detection_metrics(s_clean, s_trig, float(e.fpr_target))
    thr_value = quantile_threshold(s_cal, float(e.threshold.quantile))
    thr = apply_threshold(f"aux_quantile_{e.threshold.quantile}", thr_value, s_clean, s_trig)
    med = apply_threshold("median", median_threshold(s_clean, s_trig), s_clean, s_trig)
    log.info("detection: %s; threshold %s", det, thr.as_dict())

    res = {**det, "threshold": thr.as_dict(), "other_thresholds": [med.as_dict()],
           "n_clean": len(test), "n_triggered": len(trig), "n_calibration": len(aux_val),
           "calibration_poisoned": int(aux_val.poisoned.sum()),
           "attack": tcfg.attack.name, "aux_data": tcfg.data.name, "run": str(run), "test_mask_ratio": ratio,
           "train_mask_ratio": float(tcfg.decoder.mask_ratio), "patch_size": int(tcfg.decoder.patch_size),
           "scoring_images_per_second": ips,
           "score_mean": {"clean": float(s_clean.mean()), "triggered": float(s_trig.mean())}}

    ds = _Downstream(tcfg, e, victim, test, trig, target, device) if e.downstream.enabled else None
    s_train = None
    if ds is not None:
        s_train = dede_scores(model, victim, ds.train.images, ratio, e.batch_size, e.seed + 3, e.n_masks,
                              rule=e.score_rule)
        before = ds.run()
        after = ds.run(s_train <= thr_value, s_clean <= thr_value, s_trig <= thr_value)
        knn = ds.knn()
        log.info("downstream before: %s, after filtering: %s, k-NN: %s", before, after, knn)
        res.update({"clean_accuracy": before["clean_accuracy"], "asr": before["asr"],
                    "clean_accuracy_knn": knn["clean_accuracy"], "asr_knn": knn["asr"],
                    "clean_accuracy_defended": after["clean_accuracy"], "asr_defended": after["asr"],
                    "downstream_train_flagged": float((s_train > thr_value).double().mean())})
    else:
        res.update({k: float("nan") for k in ["clean_accuracy", "asr", "clean_accuracy_defended", "asr_defended",
                                              "clean_accuracy_knn", "asr_knn"]})

    names = resolve_detectors(detectors)
    roc_scores = {"DeDe": (s_clean, s_trig)}
    if names != ["dede"]:
        dede_row = DetectorScores("dede", s_clean, s_trig, s_cal, s_train, ips)
        table, roc_scores = compare_detectors(names, dede_row, model, victim, ratio, e, tcfg, test, trig, aux_val,
                                              ds)
        res["detectors"] = table
    if e.get("model_level") and e.model_level.get("enabled"):
        res["model_level"] = model_level_checks(victim, tcfg, e, model, ratio)

    if e.plots:
        res["plots"] = _plots(out, model, victim, ratio, test, trig, s_clean, s_trig, det, thr_value, tcfg, e,
                              roc_scores)
    res["config"] = {"train": OmegaConf.to_container(tcfg, resolve=True),
                     "eval": OmegaConf.to_container(e, resolve=True), "detectors": names}
    write_results(out, res)
    if cfg is not None:
        _log(cfg, tcfg, res)
    log.info("results written to %s", out / "results.json")
    return res


class _Downstream:
    """The downstream protocol on the victim's home data: features computed once, one MLP
    trained per call (before filtering, and once per detector after filtering)."""

    def __init__(self, tcfg, e, victim, test, trig, target, device) -> None:
        d = e.downstream
        train = home_split(tcfg, "train")
        if d.n_train:
            train = train.subset(torch.arange(min(int(d.n_train), len(train))))
        self.train = train
        self.feats = {k: victim.embed(s.float_images()).cpu() for k, s in
                      {"train": train, "test": test, "trig": trig}.items()}
        n_classes = int(max(train.labels.max(), test.labels.max()) + 1)
        self.kw = dict(epochs=int(d.epochs), batch_size=int(d.batch_size), lr=float(d.lr), hidden=tuple(d.hidden),
                       dropout=float(d.dropout), seed=int(e.seed),
                       accelerator="gpu" if device.type == "cuda" else "cpu")
        # (train feats, train labels, test feats, test labels, triggered feats, target, classes)
        self.data = (self.feats["train"], train.labels, self.feats["test"], test.labels, self.feats["trig"], target,
                     n_classes)
        self.knn_kw = dict(k=int(d.knn_k), temperature=float(d.knn_temperature))
        self.device = device

    def run(self, train_keep=None, test_keep=None, trig_keep=None) -> dict:
        return downstream_metrics(train_classifier, *self.data, train_keep=train_keep, test_keep=test_keep,
                                  trig_keep=trig_keep, **self.kw)

    def knn(self) -> dict:
        """CA and ASR of the weighted k-NN classifier on the unfiltered features."""
        bank, *rest = self.data
        return knn_metrics(bank.to(self.device), *rest, **self.knn_kw)  # the vote runs where the bank is


def _plots(out, model, victim, ratio, test, trig, s_clean, s_trig, det, thr_value, tcfg, e, roc_scores) -> dict:
    title = f"{tcfg.attack.name} / {tcfg.data.name}"
    curves = {}
    for name, (c, t) in roc_scores.items():
        fpr, tpr = roc_curve(c, t)
        curves[name] = (fpr, tpr, auroc(c, t))
    n = int(e.n_recon)
    idx = torch.nonzero(test.labels != int(tcfg.attack.target))[:n, 0]
    clean_imgs = test.subset(idx).float_images()
    trig_imgs = trig.float_images()[:n]
    return {
        "roc": plots.plot_roc(curves, out / "roc.png", title),
        "histogram": plots.plot_histogram(s_clean, s_trig, thr_value, out / "score_hist.png", title),
        "reconstructions": plots.plot_reconstructions({
            "clean": clean_imgs, "clean recon": reconstructions(model, victim, clean_imgs, ratio),
            "triggered": trig_imgs, "trig. recon": reconstructions(model, victim, trig_imgs, ratio)},
            out / "reconstructions.png"),
    }


def _log(cfg: DictConfig, tcfg: DictConfig, res: dict) -> None:
    if not cfg.get("logger"):
        return
    with open_dict(cfg):  # the logger configs name the run after the train run's attack and data
        cfg.attack, cfg.data = tcfg.attack, tcfg.data
    loggers = instantiate_list(cfg.logger)
    flat = {f"eval/{k}": v for k, v in res.items() if isinstance(v, float)}
    for lg in loggers:
        lg.log_metrics(flat)
        if hasattr(lg, "log_table"):
            from dede.report.results import MAIN_KEYS

            lg.log_table("eval/results", columns=["attack"] + MAIN_KEYS,
                         data=[[res["attack"]] + [res[k] for k in MAIN_KEYS]])
            if res.get("detectors"):
                from dede.report.results import DETECTOR_KEYS

                lg.log_table("eval/detectors", columns=["detector"] + DETECTOR_KEYS,
                             data=[[name] + [row[k] for k in DETECTOR_KEYS] for name, row in res["detectors"].items()])
            if res.get("plots"):
                lg.log_image("eval/plots", images=list(res["plots"].values()), caption=list(res["plots"]))
        lg.finalize("success")
