"""A two-stage detector: a cheap score for every image, an expensive specific test for the few
that pass a loose gate.

The gate is the ``gate_quantile`` of the cheap score on the held-out auxiliary images (clean
data), so about ``1 - gate_quantile`` of clean traffic pays for the specific test. Scores keep
one order: every gated image ranks above every ungated one, gated images among themselves by the
specific test, ungated ones by the cheap score. Scores of ungated images are
``1 / (2 + (gate - cheap) / spread)`` in (0, 0.5] (``spread``: the interquartile range of the cheap
score on the auxiliary images), strictly increasing in the cheap score; those of gated images are
a strictly increasing map of the specific score onto (1, inf), so a threshold on the cascade's
score above 1 is a threshold on the specific test among the gated images.
"""
from __future__ import annotations

import torch

from dede.detect.base import Detector, build_detector, register_detector
from dede.detect.context import EvalContext

_HAVE = {"decoder": lambda c: c.model is not None, "reference": lambda c: c.trusted is not None,
         "probe": lambda c: c.probe is not None}


def above_one(s: torch.Tensor) -> torch.Tensor:
    """Strictly increasing map of the real line onto (1, inf): ``2 + s`` for ``s >= 0``,
    ``1 + 1 / (1 - s)`` below (no saturation, unlike a sigmoid, for large scores)."""
    s = s.double()
    return torch.where(s >= 0, 2 + s, 1 + 1 / (1 - s.clamp(max=0)))


@register_detector("cascade", needs=("decoder",))
class Cascade(Detector):
    """``cheap`` (default ``feature_norm``: one victim pass) on every image; ``specific`` (default ``transplant_any``) only on
    images whose cheap score exceeds the ``gate_quantile`` of the cheap score on the held-out
    auxiliary images. ``cheap_args`` / ``specific_args``: the parts' own settings (as under
    ``eval.detector_args.<name>``). ``calls`` / ``gated`` count the specific test's calls and
    images (for cost accounting)."""

    def __init__(self, cheap: str = "feature_norm", specific: str = "transplant_any", gate_quantile: float = 0.95,
                 cheap_args: dict | None = None, specific_args: dict | None = None) -> None:
        if not 0 <= gate_quantile < 1:
            raise ValueError(f"cascade gate_quantile={gate_quantile} must be in [0, 1) "
                             "(0 = every image gets the specific test)")
        if cheap == "cascade" or specific == "cascade":
            raise ValueError("cascade: cheap and specific must name other detectors, not 'cascade'")
        self.cheap = build_detector(cheap, **dict(cheap_args or {}))
        self.specific = build_detector(specific, **dict(specific_args or {}))
        self.gate_quantile = float(gate_quantile)
        self.calls = self.gated = 0

    def fit(self, ctx: EvalContext) -> "Cascade":
        super().fit(ctx)
        for part in (self.cheap, self.specific):
            missing = [n for n in part.needs if not _HAVE[n](ctx)]
            if missing:
                raise ValueError(f"cascade part {part.name!r} needs {missing}, which this evaluation lacks; "
                                 "choose another eval.detector_args.cascade.cheap / specific")
            part.fit(ctx)
        cal = self.cheap.score(ctx.calibration.images).double().flatten()
        if len(cal) == 0:
            raise ValueError("cascade needs held-out auxiliary images for its gate; raise data.val_fraction")
        self.gate = float(torch.quantile(cal, self.gate_quantile))
        q = torch.quantile(cal, torch.tensor([0.25, 0.75], dtype=cal.dtype))
        self.spread = max(float(q[1] - q[0]), 1e-12)
        return self

    def score(self, images: torch.Tensor) -> torch.Tensor:
        cheap = self.cheap.score(images).double().flatten()
        gated = cheap > self.gate
        out = 1 / (2 + (self.gate - cheap).clamp(min=0) / self.spread)
        if gated.any():
            idx = torch.nonzero(gated)[:, 0]
            self.calls += 1
            self.gated += len(idx)
            out[idx] = above_one(self.specific.score(images[idx]).double().flatten().cpu())
        return out.float()
