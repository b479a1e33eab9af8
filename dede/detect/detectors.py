"""The built-in detectors, all registered through `register_detector`.

DeDe and its variants read the run's decoder; the embedding baselines read victim embeddings
of the defender's auxiliary images as their reference set. Every score: higher = more
likely triggered.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import dede.detect.outliers as outliers
from dede.detect.base import Detector, register_detector
from dede.detect.context import EvalContext, as_float


@register_detector("dede", needs=("decoder",))
class DeDe(Detector):
    """DeDe (CVPR 2025): summed squared reconstruction error at the test mask ratio."""

    rule = "sse"

    def __init__(self, rule: str | None = None) -> None:
        self.rule = rule or self.rule

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return self.ctx.model.reduce_errors(self.ctx.patch_errors(images), self.rule).cpu()


@register_detector("dede_patch_top", needs=("decoder",))
class DeDePatchTop(DeDe):
    """Mean error of the worst 10 % of patches: weighs a local trigger more than a colour shift."""

    rule = "patch_top"


def suspicious_region(ctx: EvalContext, images: torch.Tensor, fraction: float) -> torch.Tensor:
    """(N, 1, H, W) float mask of the ``fraction`` of patches DeDe reconstructs worst."""
    model = ctx.model
    err = ctx.patch_errors(images)
    k = max(1, int(round(fraction * model.num_patches)))
    m = torch.zeros_like(err).scatter_(1, err.topk(k, dim=1).indices, 1.0)
    side = model.image_size // model.patch_size
    return F.interpolate(m.view(-1, 1, side, side), scale_factor=model.patch_size, mode="nearest")


def occlusion_masks(size: int, shapes, grid: int = 4, device=None) -> torch.Tensor:
    """``(K, 1, size, size)`` window masks: for each ``(height, width)`` in ``shapes`` (fractions of
    the image side) a ``grid`` x ``grid`` of overlapping places from corner to corner."""
    out = []
    for fh, fw in shapes:
        h, w = (max(1, min(size, int(round(size * f)))) for f in (fh, fw))
        rows = torch.linspace(0, size - h, grid).round().long().tolist()
        cols = torch.linspace(0, size - w, grid).round().long().tolist()
        m = torch.zeros(grid * grid, 1, size, size, device=device)
        for k, (r, c) in enumerate((r, c) for r in rows for c in cols):
            m[k, :, r:r + h, c:c + w] = 1
        out.append(m)
    return torch.cat(out)


def occlusion_region(ctx: EvalContext, images: torch.Tensor, fraction: float, grid: int = 4) -> torch.Tensor:
    """(N, 1, H, W) float mask of the square window (``fraction`` of the image, on a ``grid`` x
    ``grid`` of overlapping places) whose filling with the image's mean colour moves the victim
    embedding furthest (1 - cosine): where the victim looks, found without the decoder."""
    s = ctx.model.image_size
    side = max(1, int(round(s * fraction ** 0.5))) / s
    masks = occlusion_masks(s, [(side, side)], grid, ctx.device)
    z = F.normalize(ctx.embed(images), dim=1)  # the context's memo: the images' own embeddings once
    pick = ctx.map_batches(images, lambda x, zb: strongest_window(ctx.victim, x, zb, masks), len(masks), z)
    return masks[pick.long().to(masks.device)]


def occlusion_moves(victim, x: torch.Tensor, z: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(B, K)``: how far filling each window of ``masks`` ``(K, 1, S, S)`` with each image's mean
    colour moves its normalised victim embedding ``z`` (1 - cosine); one victim call."""
    occluded = x[:, None] * (1 - masks) + x.mean((2, 3), keepdim=True)[:, None] * masks  # (B, K, 3, S, S)
    zo = F.normalize(victim(occluded.flatten(0, 1)).float(), dim=1).view(len(x), len(masks), -1)
    return 1 - (zo * z[:, None].to(zo.device)).sum(-1)


def strongest_window(victim, x: torch.Tensor, z: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Index ``(B,)`` of the window of ``masks`` ``(K, 1, S, S)`` whose filling with each image's
    mean colour moves its normalised victim embedding ``z`` furthest (1 - cosine); one victim call."""
    return occlusion_moves(victim, x, z, masks).argmax(1)


class _RegionDetector(Detector):
    """Shared parts of the detectors that localise DeDe's worst-reconstructed region and then
    probe the victim with it, batch by batch."""

    def __init__(self, region_fraction: float = 0.14) -> None:
        if not 0 < region_fraction <= 1:
            raise ValueError(f"region_fraction={region_fraction} must be in (0, 1]")
        self.region_fraction = float(region_fraction)

    copies = 1  # victim passes per image, so that a batch of them stays about ctx.batch_size

    def locate(self, images: torch.Tensor) -> torch.Tensor:
        """The region to probe the victim with: DeDe's worst-reconstructed patches."""
        return suspicious_region(self.ctx, images, self.region_fraction)

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        region = self.locate(images)
        z = F.normalize(self.ctx.embed(images), dim=1)
        return self.ctx.map_batches(images, self._score_batch, self.copies, region, z)

    def _score_batch(self, x, region, z) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


@register_detector("dede_ablate", needs=("decoder",))
class DeDeAblate(_RegionDetector):
    """Localise and ablate: fill DeDe's worst-reconstructed region with the image's mean colour
    and score how far the victim embedding moves (1 - cosine). A backdoor ties the embedding to
    the trigger, so removing a trigger moves it far. It also moves far when any conspicuous
    patch is removed from a clean encoder's input: see `DeDeTransplant`."""

    def _score_batch(self, x, region, z):
        mean = x.mean((2, 3), keepdim=True)
        za = F.normalize(self.ctx.victim(x * (1 - region) + mean * region).float(), dim=1)
        return 1 - (z * za).sum(1)


@register_detector("dede_transplant", needs=("decoder",))
class DeDeTransplant(_RegionDetector):
    """Localise and transplant: paste DeDe's worst-reconstructed region of the image into
    ``n_hosts`` clean auxiliary images and measure how much the victim embeddings of those
    composites agree (mean pairwise cosine). A backdoor trigger maps any image that carries it
    to the target embedding, so its composites collapse to one point; a benign patch, or any
    patch on a clean encoder, leaves each composite near its own host. This tests the
    defining property of a backdoor rather than how unusual the input looks.

    Hosts: ``n_hosts`` images drawn (seeded) from the held-out auxiliary images whose DeDe
    score is at most the median, so that a poisoned auxiliary image is unlikely to be one.
    ``score="agree"`` (default) or ``"original"`` (mean cosine of the composites with the
    image's own embedding), or ``"contrast"``: the agreement of the composites minus that of
    composites carrying the region with its colours inverted (``1 - x``), meant to cancel what a
    merely conspicuous patch adds on a clean encoder. It does so where white and black patches
    move the encoder alike (the toy encoders of ``tests/test_transplant.py``), but not on every
    clean demo victim: the clean-victim AUROC was 0.545 / 0.627 / 0.968 on seeds 21 / 1 / 2
    (``"agree"``: 0.674 / 0.499 / 0.564), so it is not the default."""

    def __init__(self, region_fraction: float = 0.14, n_hosts: int = 8, score: str = "agree") -> None:
        super().__init__(region_fraction)
        if n_hosts < 2:
            raise ValueError(f"n_hosts={n_hosts} must be >= 2")
        if score not in ("agree", "original", "contrast"):
            raise ValueError(f"score={score!r}: use 'agree', 'original' or 'contrast'")
        self.n_hosts, self.mode = int(n_hosts), score
        self.copies = self.n_hosts * (2 if score == "contrast" else 1)

    def fit(self, ctx: EvalContext) -> "DeDeTransplant":
        super().fit(ctx)
        cal = ctx.calibration.images
        s = ctx.model.reduce_errors(ctx.patch_errors(cal)).cpu()
        pool = torch.nonzero(s <= s.median())[:, 0]
        if len(pool) < self.n_hosts:
            raise ValueError(f"dede_transplant needs {self.n_hosts} host images, the calibration set has {len(pool)} "
                             "below its median score; raise data.val_fraction or lower n_hosts")
        g = torch.Generator().manual_seed(int(ctx.seed))
        pick = pool[torch.randperm(len(pool), generator=g)[: self.n_hosts]]
        self.hosts = as_float(cal[pick], ctx.device)
        return self

    def _composites(self, x, region) -> torch.Tensor:
        """Victim embeddings (B, H, D), normalised, of the hosts carrying ``x``'s region."""
        comp = self.hosts[None] * (1 - region[:, None]) + x[:, None] * region[:, None]  # (B, H, 3, S, S)
        return F.normalize(self.ctx.victim(comp.flatten(0, 1)).float(), dim=1).view(len(x), self.n_hosts, -1)

    def _agreement(self, zc: torch.Tensor) -> torch.Tensor:
        h = self.n_hosts
        gram = zc @ zc.transpose(1, 2)
        return (gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(1)) / (h * (h - 1))

    def _score_batch(self, x, region, z):
        zc = self._composites(x, region)
        if self.mode == "original":
            return (zc * z[:, None]).sum(-1).mean(1)
        if self.mode == "contrast":
            return self._agreement(zc) - self._agreement(self._composites(1 - x, region))
        return self._agreement(zc)


@register_detector("transplant_occlusion", needs=("decoder",))
class TransplantOcclusion(DeDeTransplant):
    """`DeDeTransplant` with the region found by occlusion instead of DeDe's error map: of 16
    overlapping windows (``region_fraction`` of the image each), the one whose filling with the
    image's mean colour moves the victim embedding most (16 extra victim passes per image). A
    trigger that decides the embedding is where the victim looks, also where it is not the worst-
    reconstructed part of a busy image. (The decoder is used only to pick clean host images.)"""

    def locate(self, images: torch.Tensor) -> torch.Tensor:
        return occlusion_region(self.ctx, images, self.region_fraction)


@register_detector("dede_ref", needs=("decoder", "reference"))
class DeDeReference(Detector):
    """Reference-encoder DeDe: the suspect's reconstruction error against that of a trusted
    encoder with its own decoder (``eval.reference.run``) on the same image, each standardised
    on the held-out auxiliary images. What both fail to reconstruct (an out-of-distribution
    patch) cancels; what only the suspect fails on stays. ``side="two"`` (default) scores the
    absolute difference, ``"one"`` the suspect's excess only."""

    def __init__(self, side: str = "two") -> None:
        if side not in ("one", "two"):
            raise ValueError(f"side={side!r}: use 'one' or 'two'")
        self.side = side

    def fit(self, ctx: EvalContext) -> "DeDeReference":
        super().fit(ctx)
        if ctx.trusted is None:
            raise ValueError("dede_ref needs a trusted encoder and decoder: eval.reference.run=<train run dir>")
        self.stats = [self._stats(c, ctx.calibration.images) for c in (ctx, ctx.trusted)]
        return self

    @staticmethod
    def _err(c: EvalContext, images: torch.Tensor) -> torch.Tensor:
        return c.model.reduce_errors(c.patch_errors(images)).cpu().double().log1p()

    def _stats(self, c: EvalContext, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self._err(c, images)
        return e.mean(), e.std().clamp_min(1e-12)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        (ms, ss), (mr, sr) = self.stats
        d = (self._err(self.ctx, images) - ms) / ss - (self._err(self.ctx.trusted, images) - mr) / sr
        return (d.abs() if self.side == "two" else d).float()


class EmbeddingDetector(Detector):
    """A score of victim embeddings against the embeddings of the auxiliary training images."""

    fn = staticmethod(outliers.knn_distance)

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs

    def fit(self, ctx: EvalContext) -> "EmbeddingDetector":
        super().fit(ctx)
        self.bank = ctx.embed(ctx.reference.images)
        return self

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(self.bank, self.ctx.embed(images), **self.kwargs).cpu()


def _embedding_detector(name: str, fn) -> type[EmbeddingDetector]:
    cls = type(f"{name.title().replace('_', '')}Detector", (EmbeddingDetector,),
               {"fn": staticmethod(fn), "__doc__": fn.__doc__, "__module__": __name__})
    return register_detector(name)(cls)


for _name, _fn in [("dao", outliers.dao), ("slof", outliers.slof), ("knn", outliers.knn_distance),
                   ("mahalanobis", outliers.mahalanobis), ("feature_norm", outliers.feature_norm)]:
    _embedding_detector(_name, _fn)
