"""Detection metrics on unbounded scores (higher = more likely triggered).

torchmetrics' binary AUROC/ROC treat predictions outside [0, 1] as logits and squash them
with a sigmoid, which saturates reconstruction errors in the hundreds and returns 0.5.
Scores are therefore min-max normalised (in float64, order and ties preserved) first.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics.functional.classification import binary_auroc, binary_average_precision, binary_roc


def to_unit(scores: torch.Tensor) -> torch.Tensor:
    s = scores.detach().double().flatten()
    lo, hi = s.min(), s.max()
    return torch.zeros_like(s) if hi <= lo else (s - lo) / (hi - lo)


def _cat(clean: torch.Tensor, triggered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.cat([clean.flatten().double().cpu(), triggered.flatten().double().cpu()])
    target = torch.cat([torch.zeros(clean.numel(), dtype=torch.long), torch.ones(triggered.numel(), dtype=torch.long)])
    return to_unit(scores), target


def auroc(clean: torch.Tensor, triggered: torch.Tensor) -> float:
    s, t = _cat(clean, triggered)
    return float(binary_auroc(s, t))


def auprc(clean: torch.Tensor, triggered: torch.Tensor) -> float:
    s, t = _cat(clean, triggered)
    return float(binary_average_precision(s, t))


def tpr_at_fpr(clean: torch.Tensor, triggered: torch.Tensor, fpr_target: float = 0.05) -> float:
    """Highest TPR among ROC points whose FPR does not exceed ``fpr_target``."""
    s, t = _cat(clean, triggered)
    fpr, tpr, _ = binary_roc(s, t)
    ok = fpr <= fpr_target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def roc_curve(clean: torch.Tensor, triggered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s, t = _cat(clean, triggered)
    fpr, tpr, _ = binary_roc(s, t)
    return fpr, tpr


@dataclass
class Threshold:
    rule: str
    value: float
    tpr: float  # share of triggered test samples flagged
    fpr: float  # share of clean test samples flagged

    def as_dict(self) -> dict:
        return {"rule": self.rule, "value": self.value, "tpr": self.tpr, "fpr": self.fpr}


def apply_threshold(rule: str, value: float, clean: torch.Tensor, triggered: torch.Tensor) -> Threshold:
    """A sample is flagged when its score is strictly above ``value``."""
    return Threshold(rule, float(value), float((triggered > value).double().mean()),
                     float((clean > value).double().mean()))


def quantile_threshold(calibration: torch.Tensor, q: float) -> float:
    """The ``q`` quantile of scores of clean / auxiliary samples: nominal FPR = 1 - q."""
    if calibration.numel() == 0:
        raise ValueError("no calibration scores: the held-out auxiliary split is empty (raise data.val_fraction)")
    return float(torch.quantile(calibration.double().flatten(), q))


def median_threshold(clean: torch.Tensor, triggered: torch.Tensor) -> float:
    """The original code's rule (median of the 1:1 test mix); it flags half the samples by
    construction and is reported for comparison only."""
    return float(torch.cat([clean.double().flatten(), triggered.double().flatten()]).median())


def detection_metrics(clean: torch.Tensor, triggered: torch.Tensor, fpr_target: float = 0.05) -> dict:
    return {"auroc": auroc(clean, triggered), "auprc": auprc(clean, triggered),
            "tpr_at_fpr_05": tpr_at_fpr(clean, triggered, fpr_target)}
