"""Score the same images with every requested detector and compute, once for all of them,
the threshold (calibrated on held-out auxiliary images only), the detection metrics, the
controls and the downstream effect of filtering.

Controls (a detection number without them is not evidence):
- benign perturbation: triggered images against the same clean images carrying a perturbation
  of the trigger's kind and size that is not the trigger (``auroc_vs_benign``,
  ``flag_rate_benign``; ``asr_benign`` shows the perturbation does not fire the backdoor);
- clean victim: the same clean and triggered images scored by the same detector fitted on a
  victim without a backdoor (``auroc_clean_victim``, ``flag_rate_clean_victim``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from dede.detect.base import Detector, build_detector
from dede.detect.context import EvalContext
from dede.detect.metrics import apply_threshold, auroc, detection_metrics, quantile_threshold

log = logging.getLogger(__name__)

THRESHOLD_RULES = ("quantile", "mean_std")


@dataclass
class ThresholdRule:
    """How a detector's threshold is set from its scores on held-out auxiliary images:
    ``quantile`` (the ``quantile`` of the scores: nominal FPR = 1 - quantile) or ``mean_std``
    (mean + ``k`` standard deviations)."""

    rule: str = "quantile"
    quantile: float = 0.95
    k: float = 2.0

    def __post_init__(self) -> None:
        if self.rule not in THRESHOLD_RULES:
            raise ValueError(f"eval.threshold.rule={self.rule!r} is unknown; known: {list(THRESHOLD_RULES)}")

    @property
    def label(self) -> str:
        return f"aux_quantile_{self.quantile}" if self.rule == "quantile" else f"aux_mean_plus_{self.k}_std"

    def __call__(self, calibration: torch.Tensor) -> float:
        if self.rule == "quantile":
            return quantile_threshold(calibration, self.quantile)
        c = calibration.double().flatten()
        return float(c.mean() + self.k * c.std())


@dataclass
class ImageSets:
    """The images every detector scores (uint8 (N, 3, H, W))."""

    clean: torch.Tensor  # clean test images
    triggered: torch.Tensor  # test images outside the target class, with the trigger
    benign: torch.Tensor | None = None  # the same images with a benign perturbation
    train: torch.Tensor | None = None  # downstream training images (filtered by the detector)


@dataclass
class DetectorRun:
    """Scores of one detector on every set, and its speed on the test images."""

    name: str
    scores: dict[str, torch.Tensor]
    images_per_second: float


def run_detector(det: Detector, ctx: EvalContext, sets: ImageSets, calibration: bool = True) -> DetectorRun:
    ctx.charged_seconds = 0.0
    t0 = time.perf_counter()
    scores = {"clean": det.score(sets.clean), "triggered": det.score(sets.triggered)}
    n = len(sets.clean) + len(sets.triggered)
    ips = n / max(time.perf_counter() - t0 + ctx.charged_seconds, 1e-9)
    if calibration:
        scores["calibration"] = det.score(ctx.calibration.images)
    for key in ("benign", "train"):
        if getattr(sets, key) is not None:
            scores[key] = det.score(getattr(sets, key))
    return DetectorRun(det.name, {k: v.detach().float().cpu() for k, v in scores.items()}, ips)


def summarise(r: DetectorRun, rule: ThresholdRule, fpr_target: float, downstream: Callable | None = None,
              asr_benign: float = float("nan")) -> dict:
    """The row of one detector. ``downstream(train_keep, test_keep, trig_keep)`` returns CA / ASR
    after filtering (None: not measured)."""
    s = r.scores
    row = detection_metrics(s["clean"], s["triggered"], fpr_target)
    thr = rule(s["calibration"])
    t = apply_threshold(rule.label, thr, s["clean"], s["triggered"])
    row.update({"images_per_second": float(r.images_per_second), "threshold": thr, "flag_rate_clean": t.fpr,
                "flag_rate_triggered": t.tpr})
    if "benign" in s:
        row.update({"auroc_vs_benign": auroc(s["benign"], s["triggered"]),
                    "flag_rate_benign": float((s["benign"] > thr).double().mean()), "asr_benign": asr_benign})
    if downstream is not None and "train" in s:
        d = downstream(s["train"] <= thr, s["clean"] <= thr, s["triggered"] <= thr)
        row.update({"clean_accuracy_defended": d["clean_accuracy"], "asr_defended": d["asr"],
                    "downstream_train_flagged": float((s["train"] > thr).double().mean())})
    else:
        row.update({"clean_accuracy_defended": float("nan"), "asr_defended": float("nan")})
    return row


def clean_victim_control(r: DetectorRun, rule: ThresholdRule) -> dict:
    """The control row entries from a run of the detector on the clean victim."""
    s = r.scores
    thr = rule(s["calibration"])
    return {"auroc_clean_victim": auroc(s["clean"], s["triggered"]),
            "flag_rate_clean_victim": float((s["triggered"] > thr).double().mean()),
            "flag_rate_clean_victim_clean": float((s["clean"] > thr).double().mean())}


def detector_kwargs(args, name: str) -> dict:
    return dict((args or {}).get(name) or {})


def compare(names: list[str], ctx: EvalContext, sets: ImageSets, rule: ThresholdRule, fpr_target: float,
            downstream: Callable | None = None, asr_benign: float = float("nan"),
            control: EvalContext | None = None, args=None) -> tuple[dict, dict[str, np.ndarray]]:
    """Rows (name -> metrics and controls) and every per-image score, as flat arrays named
    ``<detector>/<set>`` (and ``clean_victim/<detector>/<set>`` for the control run)."""
    rows, arrays = {}, {}
    control_sets = ImageSets(sets.clean, sets.triggered)
    for name in names:
        det = build_detector(name, **detector_kwargs(args, name)).fit(ctx)
        r = run_detector(det, ctx, sets)
        rows[name] = summarise(r, rule, fpr_target, downstream, asr_benign)
        arrays.update({f"{name}/{k}": v.numpy() for k, v in r.scores.items()})
        if control is not None:
            cdet = build_detector(name, **detector_kwargs(args, name)).fit(control)
            cr = run_detector(cdet, control, control_sets)
            rows[name].update(clean_victim_control(cr, rule))
            arrays.update({f"clean_victim/{name}/{k}": v.numpy() for k, v in cr.scores.items()})
        log.info("detector %s: %s", name, {k: round(v, 4) for k, v in rows[name].items() if isinstance(v, float)})
    return rows, arrays
