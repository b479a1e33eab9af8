"""Input-level backdoor detectors from the literature, on the same `Detector` interface as DeDe.

Encoder only: ``mask_consistency`` (progressive masking, after BackdoorIDS), ``isolation_forest``
and ``lid`` (outlier scores of victim embeddings against the auxiliary training images). With the
downstream classifier (``needs=("probe",)``, predictions through ``ctx.probe_logits``): ``teco``
(corruption-robustness consistency), ``scale_up`` (pixel-amplification consistency) and ``strip``
(prediction entropy of blends). The papers test a supervised classifier; here the classifier is
the probe trained on the victim's features, so a backdoor that moves triggered inputs to the
target embedding moves them to the probe's target class.

Every perturbation (masks, noise pattern, blend partners) is drawn once in ``fit`` from
``ctx.seed`` and is the same for every image, so an image's score does not depend on which
batch it is in. Perturbed copies of a batch are scored in one victim call of about
``ctx.batch_size`` images on ``ctx.device``. Every score: higher = more likely triggered.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

import dede.detect.outliers as outliers
from dede.detect.base import Detector, register_detector
from dede.detect.context import EvalContext, as_float
from dede.detect.detectors import EmbeddingDetector, _embedding_detector
from dede.triggers.frequency import dct_matrix


def _probe_probs(ctx: EvalContext, variants: torch.Tensor) -> torch.Tensor:
    """Probe class probabilities ``(B, V, C)`` of perturbed copies ``(B, V, 3, H, W)``."""
    b, v = variants.shape[:2]
    return ctx.probe_logits(variants.flatten(0, 1)).float().softmax(-1).view(b, v, -1).to(variants.device)


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
        return self.ctx.map_batches(images, self._score_batch, self.n_orders * self.levels, self.ctx.embed(images))

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


class _ProbeConsistency(Detector):
    """Shared parts of the detectors that compare the probe's prediction of an image with its
    predictions of ``n_variants`` perturbed copies: ``variants(x)`` gives the copies
    ``(B, V, 3, H, W)``, ``reduce(same)`` turns ``same`` (``(B, V)``, copy predicted as the
    image) into scores; ``own`` (``(B, V)``) is the probability each copy gives the image's label."""

    n_variants = 1

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        return self.ctx.map_batches(images, self._score_batch, self.n_variants + 1)

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        probs = _probe_probs(self.ctx, torch.cat([x[:, None], self.variants(x)], 1))
        label = probs[:, :1].argmax(-1, keepdim=True)  # (B, 1, 1)
        same = probs[:, 1:].argmax(-1) == label[..., 0]
        own = probs[:, 1:].gather(-1, label.expand(-1, probs.shape[1] - 1, 1))[..., 0]
        return self.reduce(same, own)

    def variants(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def reduce(self, same: torch.Tensor, own: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


# --- corruptions of [0, 1] images (B, 3, H, W) at a severity value; ``noise`` is a fixed (3, H, W) pattern

def _gaussian_noise(x: torch.Tensor, sigma: float, noise: torch.Tensor) -> torch.Tensor:
    return (x + sigma * noise).clamp(0, 1)


def _blur_matrix(n: int, sigma: float, device: torch.device) -> torch.Tensor:
    """``(n, n)`` matrix ``G`` with ``x @ G`` the Gaussian blur of rows ``x`` (kernel radius
    ``ceil(3 sigma)``, reflected borders: the same as torchvision's ``gaussian_blur``)."""
    r = min(math.ceil(3 * sigma), n - 1)
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    impulses = F.pad(torch.eye(n, device=device)[:, None], (r, r), mode="reflect")
    return F.conv1d(impulses, (k / k.sum()).view(1, 1, -1))[:, 0]


def _gaussian_blur(x: torch.Tensor, sigma: float, noise: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur as two matrix products (fast on small images)."""
    h, w = x.shape[-2:]
    return _blur_matrix(h, sigma, x.device).T @ x @ _blur_matrix(w, sigma, x.device)


def _brightness(x: torch.Tensor, shift: float, noise: torch.Tensor) -> torch.Tensor:
    return (x + shift).clamp(0, 1)


def _contrast(x: torch.Tensor, factor: float, noise: torch.Tensor) -> torch.Tensor:
    mean = x.mean((1, 2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp(0, 1)


def _pixelate(x: torch.Tensor, factor: float, noise: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, int(h * factor)), max(1, int(w * factor))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest")


# the standard JPEG luminance quantisation table
_JPEG_TABLE = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)
_DCT8x8 = torch.kron(dct_matrix(8), dct_matrix(8)).float()  # 2-D DCT of a flattened 8 x 8 block


def _jpeg(x: torch.Tensor, quality: float, noise: torch.Tensor) -> torch.Tensor:
    """JPEG-like quantisation: 8 x 8 block DCT of every RGB channel (no colour conversion, no
    chroma subsampling), coefficients rounded to the luminance table scaled to ``quality``."""
    h, w = x.shape[-2:]
    ph, pw = -h % 8, -w % 8
    xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
    scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
    q = ((_JPEG_TABLE * scale + 50) / 100).floor().clamp_min(1).flatten().to(x.device)
    d = _DCT8x8.to(x.device)
    b, c, hp, wp = xp.shape
    blocks = xp.reshape(b, c, hp // 8, 8, wp // 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(-1, 64)
    coef = ((blocks * 255 - 128) @ d.T / q).round() * q
    out = ((coef @ d + 128) / 255).reshape(b, c, hp // 8, wp // 8, 8, 8).permute(0, 1, 2, 4, 3, 5)
    return out.reshape(b, c, hp, wp)[..., :h, :w].clamp(0, 1)


# name -> (corruption, five severities of the order of the CIFAR-10-C corruptions)
CORRUPTIONS: dict[str, tuple[Callable, tuple[float, ...]]] = {
    "gaussian_noise": (_gaussian_noise, (0.04, 0.06, 0.08, 0.12, 0.18)),
    "gaussian_blur": (_gaussian_blur, (0.4, 0.6, 0.8, 1.0, 1.5)),
    "brightness": (_brightness, (0.05, 0.1, 0.15, 0.2, 0.3)),
    "contrast": (_contrast, (0.75, 0.5, 0.4, 0.3, 0.15)),
    "pixelate": (_pixelate, (0.95, 0.9, 0.85, 0.75, 0.65)),
    "jpeg": (_jpeg, (80.0, 65.0, 58.0, 50.0, 40.0)),
}


@register_detector("teco", needs=("probe",))
class TeCo(_ProbeConsistency):
    """TeCo (Liu et al., CVPR 2023): corruption-robustness consistency. Each corruption of
    ``corruptions`` (default: all of `CORRUPTIONS`) is applied at five increasing severities; per
    corruption the first severity at which the probe's prediction changes is recorded (6 when it
    never does), and the score is the standard deviation of those severities across corruptions.
    A clean image loses its label at similar severities under every corruption; a trigger
    survives some (brightness, noise) and is destroyed by others (blur, pixelation) almost at
    once. Gaussian noise is one fixed seeded pattern for all images."""

    def __init__(self, corruptions: Sequence[str] | None = None) -> None:
        names = list(corruptions or CORRUPTIONS)
        unknown = [n for n in names if n not in CORRUPTIONS]
        if unknown or len(names) < 2:
            raise ValueError(f"corruptions={names}: name at least two of {list(CORRUPTIONS)}")
        self.corruptions = names
        self.n_severities = len(CORRUPTIONS[names[0]][1])
        self.n_variants = len(names) * self.n_severities

    def fit(self, ctx: EvalContext) -> "TeCo":
        super().fit(ctx)
        size = int(ctx.victim.image_size)
        g = torch.Generator().manual_seed(int(ctx.seed))
        self.noise = torch.randn(3, size, size, generator=g).to(ctx.device)
        return self

    def variants(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for name in self.corruptions:
            fn, severities = CORRUPTIONS[name]
            out += [fn(x, v, self.noise) for v in severities]
        return torch.stack(out, 1)

    def reduce(self, same: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        flipped = ~same.view(len(same), len(self.corruptions), self.n_severities)
        first = torch.where(flipped.any(-1), flipped.float().argmax(-1) + 1, self.n_severities + 1)
        return first.float().std(1, correction=0)


@register_detector("scale_up", needs=("probe",))
class ScaleUp(_ProbeConsistency):
    """SCALE-UP (Guo et al., ICLR 2023): scaled prediction consistency. The image's pixel values
    are multiplied by each of ``factors`` (default 2..11) and clamped to [0, 1]; the score is the
    share of amplified copies the probe gives the image's own label. A trigger that controls the
    prediction keeps it under amplification; a clean image's prediction drifts.

    The share takes only ``len(factors) + 1`` values, so many clean images tie at 1.0 and a
    threshold at the auxiliary 95 % quantile would flag nothing; ties are broken by the mean
    probability the copies give the label, scaled below one step of the share (the ranking by
    share is unchanged)."""

    def __init__(self, factors: Sequence[float] = tuple(range(2, 12))) -> None:
        self.factors = [float(f) for f in factors]
        if not self.factors or any(f <= 0 for f in self.factors):
            raise ValueError(f"factors={list(factors)} must be positive")
        self.n_variants = len(self.factors)

    def variants(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([(x * f).clamp(0, 1) for f in self.factors], 1)

    def reduce(self, same: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        return same.float().mean(1) + own.mean(1) / (same.shape[1] + 1)


@register_detector("strip", needs=("probe",))
class Strip(Detector):
    """STRIP (Gao et al., ACSAC 2019): blend the image with ``n_blend`` clean auxiliary images
    (``alpha * image + (1 - alpha) * other``) and take the mean entropy of the probe's predicted
    class distribution over the blends. A trigger survives blending and keeps the prediction
    confident, so the entropy is low; the score is its negative. The partner images are drawn
    (seeded) from the held-out auxiliary images, which may themselves hold a few poisoned ones."""

    def __init__(self, n_blend: int = 16, alpha: float = 0.5) -> None:
        _check_positive(n_blend=n_blend)
        if not 0 < alpha < 1:
            raise ValueError(f"alpha={alpha} must be in (0, 1)")
        self.n_blend, self.alpha = int(n_blend), float(alpha)

    def fit(self, ctx: EvalContext) -> "Strip":
        super().fit(ctx)
        cal = ctx.calibration.images
        if len(cal) < self.n_blend:
            raise ValueError(f"strip blends with {self.n_blend} auxiliary images, the calibration set has {len(cal)}")
        g = torch.Generator().manual_seed(int(ctx.seed))
        self.partners = as_float(cal[torch.randperm(len(cal), generator=g)[: self.n_blend]], ctx.device)
        return self

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        return self.ctx.map_batches(images, self._score_batch, self.n_blend)

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        blends = self.alpha * x[:, None] + (1 - self.alpha) * self.partners[None]
        logp = self.ctx.probe_logits(blends.flatten(0, 1)).float().log_softmax(1)
        entropy = -(logp.exp() * logp).sum(1).view(len(x), self.n_blend)
        return -entropy.mean(1).to(x.device)


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
