"""Input-level backdoor detectors from the literature, on the same `Detector` interface as DeDe.

Encoder only: ``isolation_forest`` and ``lid`` (outlier scores of victim embeddings against the
auxiliary training images). Every score: higher = more likely triggered.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dede.detect import outliers
from dede.detect.base import register_detector
from dede.detect.context import EvalContext
from dede.detect.detectors import EmbeddingDetector, _embedding_detector


@register_detector("isolation_forest")
class IsolationForestDetector(EmbeddingDetector):
    """Isolation forest (Liu, Ting and Zhou, ICDM 2008; a backdoor-sample baseline in Huang et al.,
    ICLR 2025) on victim embeddings: scikit-learn's ``IsolationForest`` (``n_estimators`` trees,
    ``random_state=ctx.seed``) fitted on the embeddings of the auxiliary training images; the
    score is the negated ``score_samples`` (short isolation paths = anomalous). The embeddings
    are used as they are (their norm is itself a backdoor cue, see ``feature_norm``), or
    L2-normalised with ``normalise=True``. The forest runs on the CPU."""

    def __init__(self, n_estimators: int = 200, max_samples: int | float | str = "auto",
                 normalise: bool = False) -> None:
        super().__init__()
        self.n_estimators, self.max_samples, self.normalise = int(n_estimators), max_samples, bool(normalise)

    def _features(self, z: torch.Tensor):
        return (F.normalize(z.float(), dim=1) if self.normalise else z.float()).cpu().double().numpy()

    def fit(self, ctx: EvalContext) -> "IsolationForestDetector":
        from sklearn.ensemble import IsolationForest

        super().fit(ctx)
        self.forest = IsolationForest(n_estimators=self.n_estimators, max_samples=self.max_samples,
                                      random_state=int(ctx.seed)).fit(self._features(self.bank))
        return self

    def score(self, images: torch.Tensor) -> torch.Tensor:
        z = self.ctx.embed(images)
        if not len(z):
            return torch.empty(0)
        return torch.from_numpy(-self.forest.score_samples(self._features(z))).float()


_embedding_detector("lid", outliers.lid)
