"""Input-level backdoor detectors from the literature, on the same `Detector` interface as DeDe.

Encoder only: ``mask_consistency`` (progressive masking, after BackdoorIDS), ``isolation_forest``
and ``lid`` (outlier scores of victim embeddings against the auxiliary training images).

Every perturbation (the masks) is drawn once in ``fit`` from ``ctx.seed`` and is the same for
every image, so an image's score does not depend on which batch it is in. Perturbed copies of a
batch are scored in one victim call of about ``ctx.batch_size`` images on ``ctx.device``. Every
score: higher = more likely triggered.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from dede.detect import outliers
from dede.detect.base import Detector, register_detector
from dede.detect.context import EvalContext, as_float
from dede.detect.detectors import EmbeddingDetector, _embedding_detector


def _per_batch(ctx: EvalContext, images: torch.Tensor, fn: Callable, copies: int = 1,
               aligned: torch.Tensor | None = None) -> torch.Tensor:
    """``fn(x)`` (or ``fn(x, aligned_rows)``) on float [0, 1] batches of ``images`` on the device,
    each batch small enough that ``copies`` perturbed versions of it make about one
    ``ctx.batch_size``; the scores concatenated on the CPU."""
    step = max(1, ctx.batch_size // max(1, copies))
    out = []
    for i in range(0, len(images), step):
        x = as_float(images[i:i + step], ctx.device)
        out.append(fn(x) if aligned is None else fn(x, aligned[i:i + step]))
    return torch.cat(out).float().cpu() if out else torch.empty(0)


def _check_positive(**values) -> None:
    bad = {k: v for k, v in values.items() if not v >= 1}
    if bad:
        raise ValueError(f"{bad} must be >= 1")


def _components(dist: torch.Tensor, eps: float) -> torch.Tensor:
    """Number of single-linkage clusters at radius ``eps`` (DBSCAN with one point per core) of
    each set of points, from their pairwise distances ``(..., n, n)``."""
    reach = (dist <= eps).float()
    for _ in range(max(1, math.ceil(math.log2(dist.shape[-1])))):
        reach = ((reach @ reach) > 0).float()  # paths of up to twice the length
    return (1.0 / reach.sum(-1)).sum(-1)  # every member of a cluster of size c adds 1 / c


MASK_SCORES = ("max_step", "jump_share", "clusters")


@register_detector("mask_consistency")
class MaskConsistency(Detector):
    """Progressive masking (after BackdoorIDS, arXiv 2603.11664, 2026; encoder only).

    Patches of the image (a ``patch_size`` grid, default an 8 x 8 grid) are replaced by the
    image's mean colour (``fill="mean"``) or black (``"zero"``) in a fixed random order, at
    ``levels`` masking ratios up to ``max_ratio``; the masks of a level contain those of the level
    before, so the victim embeddings of the unmasked image and its ``levels`` masked copies form a
    trajectory. A clean image drifts along it; a triggered image stays at the target embedding
    until the trigger is covered and then jumps. Scores, averaged over ``n_orders`` random orders:
    ``jump_share`` (default) the largest cosine distance between consecutive points as a share
    of the whole path (how abrupt the trajectory is, whatever the victim's scale of distances),
    ``max_step`` that largest distance itself (it also rises when a conspicuous patch that the
    encoder merely sees is covered), ``clusters`` the number of single-linkage clusters of the
    trajectory at cosine distance ``eps`` (BackdoorIDS clusters the trajectory with DBSCAN;
    ``eps`` depends on the victim)."""

    def __init__(self, levels: int = 8, max_ratio: float = 0.8, patch_size: int | None = None, n_orders: int = 2,
                 fill: str = "mean", score: str = "jump_share", eps: float = 0.1) -> None:
        _check_positive(levels=levels, n_orders=n_orders)
        if not 0 < max_ratio <= 1:
            raise ValueError(f"max_ratio={max_ratio} must be in (0, 1]")
        if fill not in ("mean", "zero"):
            raise ValueError(f"fill={fill!r}: use 'mean' or 'zero'")
        if score not in MASK_SCORES:
            raise ValueError(f"score={score!r}: use one of {list(MASK_SCORES)}")
        self.levels, self.max_ratio, self.n_orders = int(levels), float(max_ratio), int(n_orders)
        self.patch_size, self.fill, self.mode, self.eps = patch_size, fill, score, float(eps)

    def fit(self, ctx: EvalContext) -> "MaskConsistency":
        super().fit(ctx)
        size = int(ctx.victim.image_size)
        p = int(self.patch_size or max(1, size // 8))
        side = -(-size // p)
        g = torch.Generator().manual_seed(int(ctx.seed))
        rank = torch.stack([torch.randperm(side * side, generator=g) for _ in range(self.n_orders)])  # (O, T)
        ratios = torch.linspace(self.max_ratio / self.levels, self.max_ratio, self.levels)
        counts = (ratios * side * side).round().clamp_min(1)
        grid = (rank[:, None, :] < counts[None, :, None]).float().view(-1, 1, side, side)  # nested per order
        masks = F.interpolate(grid, scale_factor=p, mode="nearest")[..., :size, :size]
        self.masks = masks.reshape(self.n_orders, self.levels, 1, size, size).to(ctx.device)
        return self

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        return _per_batch(self.ctx, images, self._score_batch, self.n_orders * self.levels,
                          self.ctx.embed(images))

    def _score_batch(self, x: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
        b, (o, lv) = len(x), self.masks.shape[:2]
        m = self.masks[None]  # (1, O, L, 1, H, W)
        fill = x.mean((2, 3), keepdim=True) if self.fill == "mean" else torch.zeros_like(x[:, :, :1, :1])
        masked = x[:, None, None] * (1 - m) + fill[:, None, None] * m
        z = self.ctx.victim(masked.flatten(0, 2)).float().view(b, o, lv, -1)
        traj = F.normalize(torch.cat([z0[:, None, None].float().expand(b, o, 1, -1), z], 2), dim=-1)
        if self.mode == "clusters":
            return _components(1 - traj @ traj.transpose(-1, -2), self.eps).mean(1)
        steps = 1 - (traj[:, :, 1:] * traj[:, :, :-1]).sum(-1)  # (B, O, L)
        top = steps.amax(-1)
        return (top if self.mode == "max_step" else top / steps.sum(-1).clamp_min(outliers.EPS)).mean(1)


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
