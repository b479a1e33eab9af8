"""evaluate.py's job: detection metrics, downstream CA / ASR before and after filtering,
plots and the report of one trained run."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from dede.attacks.losses import mean_pairwise_cosine
from dede.data import ImageSet, home_split
from dede.decoder import DeDeModule
from dede.detect import Threshold, apply_threshold, auroc, median_threshold, reconstructions, roc_curve
from dede.detect.base import DETECTORS, resolve_detectors
from dede.detect.context import EvalContext
from dede.detect.harness import ImageSets, ThresholdRule, compare
from dede.detect.model_level import run_model_checks
from dede.downstream import DownstreamProtocol
from dede.io import write_npz_atomic
from dede.pipeline.common import aux_split, instantiate_list, route_lightning_logs
from dede.report import plots
from dede.report.aggregate import evaluate_multirun, is_multirun
from dede.report.results import CONTROL_KEYS, write_results
from dede.triggers.benign import benign_perturbation
from dede.validate import validate_eval_config
from dede.victims import CheckpointError, build_victim, load_victim_checkpoint
from dede.victims.factory import build_trigger, victim_is_clean

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


def scoring_batch_size(value, device: torch.device) -> int:
    """``eval.batch_size``; ``auto``: 128 on the CPU (larger batches score more slowly there), 512 on a GPU."""
    if str(value) == "auto":
        return 512 if device.type == "cuda" else 128
    return int(value)


@dataclass
class LoadedRun:
    """A train run ready to evaluate: its config, the victim and decoder, and the context
    detectors are fitted on."""

    cfg: DictConfig
    ctx: EvalContext
    module: DeDeModule


def default_eval_config(n_test: int, batch_size: int = 128, device: str = "cpu") -> DictConfig:
    """``conf/eval/default.yaml`` with these settings: the ``e`` of `load_run` and `test_sets`
    for analyses that load a run outside ``evaluate.py``."""
    from dede.pipeline.compose import config_dir

    e = OmegaConf.load(config_dir() / "eval" / "default.yaml")
    e.n_test, e.batch_size, e.device = int(n_test), int(batch_size), device
    return e


def load_run(run: Path, e: DictConfig, device: torch.device, trusted: EvalContext | None = None) -> LoadedRun:
    """Load the victim, the decoder and the auxiliary data of the train run in ``run``."""
    tcfg = load_run_config(run)
    vinfo = json.loads((run / "victim.json").read_text())
    victim, full = build_victim(**OmegaConf.to_container(tcfg.attack.victim, resolve=True))
    load_victim_checkpoint(vinfo["path"], vinfo["format"], full)
    victim = victim.to(device).eval()
    module = load_decoder(run, victim.embed_dim, device)
    ratio = float(e.test_mask_ratio if e.test_mask_ratio is not None else tcfg.decoder.test_mask_ratio)
    trigger_file = vinfo.get("trigger_file")
    aux_train, aux_val = aux_split(tcfg, trigger_file).split(float(tcfg.data.val_fraction), tcfg.seed)
    ctx = EvalContext(victim, module.model, ratio, build_trigger(tcfg, trigger_file), int(tcfg.attack.target),
                      reference=aux_train, calibration=aux_val, batch_size=scoring_batch_size(e.batch_size, device),
                      n_masks=int(e.n_masks),
                      seed=int(e.seed), trusted=trusted, name=str(run))
    return LoadedRun(tcfg, ctx, module)


def _check_run_dir(key: str, value) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not (path / RESOLVED).is_file():
        raise RunError(f"{key}={value} is not a train run directory (no {RESOLVED} in it)")
    return path


def test_sets(tcfg: DictConfig, e: DictConfig, trigger) -> tuple[ImageSet, ImageSet, ImageSet | None, dict | None]:
    """Clean test images, triggered ones (outside the target class) and, with controls on, the
    same images with the benign perturbation."""
    test = home_split(tcfg, "test")
    if e.n_test:
        test = test.subset(torch.arange(min(int(e.n_test), len(test))))
    source = test.subset(torch.nonzero(test.labels != int(tcfg.attack.target))[:, 0])
    trig = source.triggered(trigger)
    c = e.get("control") or {}
    if not c.get("enabled", True):
        return test, trig, None, None
    benign = benign_perturbation(trigger, test.image_size, c.get("kind", "auto"), int(c.get("seed", 0)))
    return test, trig, source.triggered(benign), benign.describe()


NEED_HINTS = {"decoder": "a train run with a DeDe decoder",
              "reference": "give eval.reference.run=<train run of a trusted encoder> or auto",
              "probe": "keep eval.downstream.enabled=true (the downstream classifier)"}


def usable_detectors(names: list[str], requested, have: dict[str, bool]) -> tuple[list[str], dict]:
    """Drop detectors whose needs this evaluation cannot meet (an error when named explicitly)."""
    from dede.detect.base import DETECTORS

    everything = requested == "all" or (not isinstance(requested, str) and "all" in list(requested or []))
    keep, skipped = [], {}
    for n in names:
        missing = [need for need in DETECTORS[n].needs if not have[need]]
        if not missing:
            keep.append(n)
        elif everything:
            skipped[n] = f"needs {missing}: " + "; ".join(NEED_HINTS[m] for m in missing)
        else:
            raise ValueError(f"detector {n!r} needs {missing}: " + "; ".join(NEED_HINTS[m] for m in missing))
    return keep, skipped


def run_evaluate(cfg: DictConfig) -> dict:
    """evaluate.py: evaluate ``cfg.run`` into this job's own run directory."""
    route_lightning_logs()
    validate_eval_config(cfg.eval)
    run = Path(cfg.run).expanduser().resolve()
    out = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else run
    if run.is_dir() and is_multirun(run):
        return evaluate_multirun(run, out, lambda job, job_out: evaluate_run(job, cfg.eval, job_out, None,
                                                                             cfg.detectors))
    return evaluate_run(run, cfg.eval, out, cfg, cfg.detectors, cfg.get("control_run"))


def evaluate_run(run: Path, e: DictConfig, out: Path, cfg: DictConfig | None = None,
                 detectors=("dede",), control_run: str | None = None) -> dict:
    """Evaluate the train run in ``run`` with eval settings ``e``; write the report to ``out``.
    ``cfg`` (optional) supplies the loggers to send the results to; ``detectors`` names the
    detectors to compare (``"all"``: every registered one); ``control_run`` is the train run of a
    clean victim whose detectors score the same images (the clean-victim control)."""
    main_name = str(e.get("main_detector") or "dede")
    names = resolve_detectors(detectors, main_name)
    ref = (e.get("reference") or {}).get("run")
    trusted_dir = None if ref == "auto" else _check_run_dir("eval.reference.run", ref)
    names, skipped = usable_detectors(names, detectors, {"decoder": True, "reference": bool(ref),
                                                         "probe": bool(e.downstream.enabled)})
    if ref == "auto" and "dede_ref" in names:
        from dede.pipeline.reference import ensure_reference_run

        trusted_dir = ensure_reference_run(run, int(load_run_config(run).seed), Path(e.reference.cache_dir))
    rule = ThresholdRule(e.threshold.rule, float(e.threshold.quantile), float(e.threshold.get("k", 2.0)))
    control_dir = _check_run_dir("control_run", control_run)
    load_run_config(run)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(e.device)
    L.seed_everything(int(e.seed), workers=True, verbose=False)

    trusted = load_run(trusted_dir, e, device).ctx if trusted_dir else None
    main = load_run(run, e, device, trusted)
    tcfg, ctx = main.cfg, main.ctx
    control = load_run(control_dir, e, device, trusted).ctx if control_dir else None
    test, trig, benign, benign_info = test_sets(tcfg, e, ctx.trigger)

    ds = DownstreamProtocol(tcfg, e, ctx, test, trig, benign, device) if e.downstream.enabled else None
    down = ds.before() if ds is not None else {}
    if ds is not None:
        ctx.probe = ds.classifier
        if control is not None and any("probe" in DETECTORS[n].needs for n in names):
            # the clean victim's own probe, trained the same way on its features
            control.probe = DownstreamProtocol(load_run_config(control_dir), e, control, test, trig, None,
                                        device).fit_classifier()
    sets = ImageSets(test.images, trig.images, None if benign is None else benign.images,
                     ds.train.images if ds is not None else None)
    rows, arrays = compare(names, ctx, sets, rule, float(e.fpr_target), ds.run if ds is not None else None,
                           down.get("asr_benign", float("nan")), control, e.get("detector_args"))
    if main_name not in rows:
        raise ValueError(f"eval.main_detector={main_name} was skipped: {skipped.get(main_name)}")
    res = _main_results(main_name, rows[main_name], arrays, rule, tcfg, run, ctx, test, trig, down)
    res.update(concentration(ctx, test, trig, benign))
    res.update({"control": {"benign": benign_info, "clean_victim_run": str(control_dir) if control_dir else None},
                "detectors": rows, "reference_run": str(trusted_dir) if trusted_dir else None})
    if skipped:
        res["detectors_skipped"] = skipped
    write_npz_atomic(out / "scores.npz", arrays)
    if e.get("model_level") and e.model_level.get("enabled"):
        res["model_level"] = run_model_checks(ctx, e.model_level, int(e.seed))

    if e.plots:
        res["plots"] = _plots(out, ctx, test, trig, rows, arrays, tcfg, e)
    res["config"] = {"train": OmegaConf.to_container(tcfg, resolve=True),
                     "eval": OmegaConf.to_container(e, resolve=True), "detectors": names}
    write_results(out, res)
    if cfg is not None:
        _log(cfg, tcfg, res)
    log.info("results written to %s", out / "results.json")
    return res


def concentration(ctx: EvalContext, test: ImageSet, trig: ImageSet, benign: ImageSet | None) -> dict:
    """The mean pairwise cosine of the victim's embeddings of the clean, triggered and benign test
    images. A backdoor that fires maps triggered images to one point (near 1) whatever a downstream
    classifier makes of that point: with ASR low and ``concentration_triggered`` high the backdoor
    is planted but its target lies outside the target class (docs/results/nonpatch_attacks.md)."""
    sets = {"clean": test, "triggered": trig, "benign": benign}
    return {f"concentration_{k}": float(mean_pairwise_cosine(ctx.embed(v.images))) for k, v in sets.items()
            if v is not None and len(v) > 1}


def pairing_key(tcfg: DictConfig) -> str:
    """Runs with the same key score the same test images with the same trigger: a run of a clean
    victim with the key of an attack run is that run's clean-victim control in a multirun."""
    from dede.victims.factory import config_hash

    plain = OmegaConf.to_container(tcfg, resolve=True)
    home = {k: v for k, v in plain["data"]["home"].items() if k not in ("root", "download")}
    return config_hash({"home": home, "image_size": plain["data"]["image_size"],
                        "trigger": plain["attack"]["trigger"], "target": plain["attack"]["target"]})


def _main_results(name: str, row: dict, arrays: dict, rule: ThresholdRule, tcfg, run, ctx, test, trig,
                  down: dict) -> dict:
    """The top level of results.json: the main detector's row (``eval.main_detector``; the
    paper's ``dede`` by default) with its controls."""
    s_clean, s_trig = (torch.from_numpy(arrays[f"{name}/{k}"]) for k in ("clean", "triggered"))
    thr = Threshold(rule.label, row["threshold"], row["flag_rate_triggered"], row["flag_rate_clean"])
    med = apply_threshold("median", median_threshold(s_clean, s_trig), s_clean, s_trig)
    res = {k: row[k] for k in ("auroc", "auprc", "tpr_at_fpr_05")}
    res.update({"main_detector": name, "threshold": thr.as_dict(), "other_thresholds": [med.as_dict()],
                "n_clean": len(test), "n_triggered": len(trig), "n_calibration": len(ctx.calibration),
                "calibration_poisoned": int(ctx.calibration.poisoned.sum()),
                "attack": tcfg.attack.name, "victim_is_clean": victim_is_clean(tcfg), "aux_data": tcfg.data.name,
                "run": str(run), "pairing": pairing_key(tcfg),
                "test_mask_ratio": ctx.mask_ratio, "train_mask_ratio": float(tcfg.decoder.mask_ratio),
                "patch_size": int(tcfg.decoder.patch_size), "scoring_images_per_second": row["images_per_second"],
                "score_mean": {"clean": float(s_clean.mean()), "triggered": float(s_trig.mean())}})
    nan = float("nan")
    for k in ("clean_accuracy", "asr", "clean_accuracy_knn", "asr_knn"):
        res[k] = down.get(k, nan)
    res["clean_accuracy_defended"] = row.get("clean_accuracy_defended", nan)
    res["asr_defended"] = row.get("asr_defended", nan)
    for k in CONTROL_KEYS + ("flag_rate_clean", "flag_rate_triggered", "downstream_train_flagged"):
        if k in row:
            res[k] = row[k]
    log.info("detection: %s; threshold %s", {k: res[k] for k in ("auroc", "auprc", "tpr_at_fpr_05")}, thr.as_dict())
    return res


def _plots(out, ctx, test, trig, rows, arrays, tcfg, e) -> dict:
    title = f"{tcfg.attack.name} / {tcfg.data.name}"
    curves = {}
    for name in rows:
        c, t = (torch.from_numpy(arrays[f"{name}/{k}"]) for k in ("clean", "triggered"))
        fpr, tpr = roc_curve(c, t)
        curves[name] = (fpr, tpr, auroc(c, t))
    n = int(e.n_recon)
    idx = torch.nonzero(test.labels != ctx.target)[:n, 0]
    clean_imgs = test.subset(idx).float_images()
    trig_imgs = trig.float_images()[:n]
    model, victim, ratio = ctx.model, ctx.victim, ctx.mask_ratio
    main = next(iter(rows))  # the main detector's scores
    s_clean, s_trig = (torch.from_numpy(arrays[f"{main}/{k}"]) for k in ("clean", "triggered"))
    return {
        "roc": plots.plot_roc(curves, out / "roc.png", title),
        "histogram": plots.plot_histogram(s_clean, s_trig, rows[main]["threshold"], out / "score_hist.png",
                                          title, xlabel=f"{main} score"),
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
                             data=[[name] + [row.get(k, float("nan")) for k in DETECTOR_KEYS]
                                   for name, row in res["detectors"].items()])
            if res.get("plots"):
                lg.log_image("eval/plots", images=list(res["plots"].values()), caption=list(res["plots"]))
        lg.finalize("success")
