"""The transplant test for any kind of trigger.

A backdoor maps every image that carries its trigger to the target embedding. The transplant
test moves what may carry the trigger from the suspect image into clean host images and asks
whether the victim embeddings of those composites collapse onto one point. `transplant_occlusion`
moves one square window; here the carrier is any of several ways of splitting an image into
"what carries the trigger" and "the rest", so a trigger spread over the whole image (a blended
pattern, a warp, an optimised full-image perturbation) can be moved too:

- ``window``: the occlusion window (of ``windows`` shapes on a ``grid``) whose filling with the
  image's mean colour moves the victim embedding most, pasted into each host (patch triggers);
- ``blend``: ``blend_alpha * x + (1 - blend_alpha) * host`` (blended triggers);
- ``highpass``: ``host + (x - blur(x))``, the suspect's detail on the host (noise-like, blended and
  warp triggers: a warp displaces edges, which live in the detail);
- ``lowpass``: ``blur(x) + (host - blur(host))``, the suspect's colours and shading with the host's
  detail (smooth colour or illumination triggers).

Each carrier's agreement (mean pairwise cosine of the composites' embeddings) is standardised
with the median and a robust spread of the same carrier's agreements on held-out auxiliary
images (clean data, no trigger), and the score is the largest standardised agreement over the
carriers: whichever carrier moves the trigger makes the image stand out. All composites of a
batch go through the victim in one call.

Measured on the small demo victims (seed 21, `scripts/transplant_carriers.py`; see
docs/results/specific_detection.md): the window carrier finds BadEncoder's patch (AUROC 1.000,
clean victim 0.507) but not the blended noise trigger (0.647); the high-pass carrier finds the
blend (1.000) but also raises the white patch on the clean victim (0.798). ``agreement=
"contraction"`` (distances instead of cosines, meant to cancel a merely shared additive part)
fails on BadEncoder, whose target embedding has a large norm (window carrier AUROC 0.016), and
``highpass_contrast`` (minus the sign-flipped detail's agreement) lost the blend (0.566): the
blend backdoor also fires on the flipped pattern. Both stay available; neither is the default.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from dede.detect.base import register_detector
from dede.detect.context import EvalContext, as_float
from dede.detect.detectors import DeDeTransplant, occlusion_masks, strongest_window
from dede.detect.literature import _blur_matrix

CARRIERS = ("window", "blend", "highpass", "lowpass")
AGREEMENTS = ("cosine", "contraction")


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (reflected borders) of ``(..., H, W)`` images."""
    h, w = x.shape[-2:]
    return _blur_matrix(h, sigma, x.device).T @ x @ _blur_matrix(w, sigma, x.device)


@register_detector("transplant_any", needs=("decoder",))
class TransplantAny(DeDeTransplant):
    """The transplant test with several carriers (see the module docstring), for triggers of any
    shape. Settings: ``carriers`` (any of ``window``, ``blend``, ``highpass``, ``lowpass``),
    ``n_hosts`` clean auxiliary hosts (picked as in `DeDeTransplant`), ``windows`` (occlusion window
    shapes as ``[height, width]`` fractions of the image side, each on a ``grid`` x ``grid`` of
    overlapping places), ``blend_alpha``, ``sigma`` (blur, as a fraction of the image side),
    ``n_standardise`` held-out auxiliary images for each carrier's median and spread.
    Cost per image: ``grid**2 * len(windows)`` occlusion passes (only with ``window``) and
    ``len(carriers) * n_hosts`` composite passes."""

    def __init__(self, carriers: Sequence[str] = CARRIERS, n_hosts: int = 8,
                 windows: Sequence[Sequence[float]] = ((0.375, 0.375),), grid: int = 4, blend_alpha: float = 0.5,
                 sigma: float = 1 / 16, n_standardise: int = 256, agreement: str = "cosine",
                 highpass_contrast: bool = False) -> None:
        super().__init__(n_hosts=n_hosts)
        carriers = list(carriers)
        bad = [c for c in carriers if c not in CARRIERS]
        if not carriers or bad:
            raise ValueError(f"transplant_any carriers={carriers}: use a non-empty list of {list(CARRIERS)}")
        windows = [tuple(float(v) for v in w) for w in windows]
        if "window" in carriers and (not windows or any(len(w) != 2 or not all(0 < v <= 1 for v in w)
                                                        for w in windows)):
            raise ValueError(f"transplant_any windows={windows}: use [[height, width], ...] fractions in (0, 1]")
        if grid < 1:
            raise ValueError(f"transplant_any grid={grid} must be >= 1")
        if not 0 < blend_alpha < 1:
            raise ValueError(f"transplant_any blend_alpha={blend_alpha} must be in (0, 1)")
        if not sigma > 0:
            raise ValueError(f"transplant_any sigma={sigma} must be > 0 (a fraction of the image side)")
        if agreement not in AGREEMENTS:
            raise ValueError(f"transplant_any agreement={agreement!r}: use one of {list(AGREEMENTS)}")
        if n_standardise < 8:
            raise ValueError(f"transplant_any n_standardise={n_standardise} must be >= 8")
        self.carriers, self.windows, self.grid = carriers, windows, int(grid)
        self.blend_alpha, self.sigma, self.n_standardise = float(blend_alpha), float(sigma), int(n_standardise)
        self.agreement = agreement
        self.contrast = bool(highpass_contrast) and "highpass" in carriers
        self.copies = (len(carriers) + self.contrast) * self.n_hosts
        self.centre = self.spread = None  # per-carrier standardisation, set in fit

    def fit(self, ctx: EvalContext) -> "TransplantAny":
        super().fit(ctx)  # the hosts
        return self.standardise(ctx)

    def standardise(self, ctx: EvalContext) -> "TransplantAny":
        """With ``self.hosts`` set: the occlusion windows, the hosts' spread and each carrier's
        median and robust spread (interquartile range / 1.349) on held-out auxiliary images."""
        self.ctx = ctx
        s = self.hosts.shape[-1]
        self.masks = occlusion_masks(s, self.windows, self.grid, ctx.device) if "window" in self.carriers else None
        with torch.no_grad():
            self.host_spread = float(self.pairwise_distance(ctx.victim(self.hosts).float()))
        cal = ctx.calibration.images
        g = torch.Generator().manual_seed(int(ctx.seed) + 1)
        pick = torch.randperm(len(cal), generator=g)[: self.n_standardise]
        if len(pick) < 8:
            raise ValueError(f"transplant_any needs >= 8 held-out auxiliary images to standardise, got {len(pick)}; "
                             "raise data.val_fraction")
        raw = self.agreements(cal[pick])
        self.centre = raw.median(0).values
        q = torch.quantile(raw, torch.tensor([0.25, 0.75]), dim=0)
        self.spread = ((q[1] - q[0]) / 1.349).clamp_min(1e-6)
        return self

    @torch.no_grad()
    def agreements(self, images: torch.Tensor) -> torch.Tensor:
        """Raw agreements ``(N, C)`` of each carrier's composites (before standardisation)."""
        z = F.normalize(self.ctx.embed(images), dim=1) if "window" in self.carriers else None
        return self.ctx.map_batches(images, self._agreement_batch, self.copies + self._occlusions,
                                    *(() if z is None else (z,)))

    @property
    def _occlusions(self) -> int:
        return 0 if self.masks is None else len(self.masks)

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        return ((self.agreements(images) - self.centre) / self.spread).amax(1)

    def composites(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, H, 3, S, S)``: each image's carriers in each host (not clamped: a clamp would make
        an additive carrier shrink the hosts' differences on its own)."""
        h = self.hosts[None]  # (1, H, 3, S, S)
        xs = x[:, None]
        sigma = self.sigma * x.shape[-1]
        out = []
        for c in self.carriers:
            if c == "window":
                m = self.masks[strongest_window(self.ctx.victim, x, z, self.masks).to(self.masks.device)][:, None]
                out.append(h * (1 - m) + xs * m)
            elif c == "blend":
                out.append(self.blend_alpha * xs + (1 - self.blend_alpha) * h)
            elif c == "highpass":
                out.append(h + (xs - blur(xs, sigma)))
            else:  # lowpass
                out.append(blur(xs, sigma) + (h - blur(h, sigma)))
        if self.contrast:  # the same detail with its sign flipped: as conspicuous, not the trigger
            out.append(h - (xs - blur(xs, sigma)))
        return torch.stack(out, 1)

    def embed_composites(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Raw victim embeddings ``(B, C, H, D)`` of every composite of a batch, in one victim call."""
        comp = self.composites(x, z)
        return self.ctx.victim(comp.flatten(0, 2)).float().view(*comp.shape[:3], -1)

    def measure(self, emb: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` agreement of each carrier's composites from their raw embeddings ``(B, C, H, D)``:
        ``cosine``, the mean pairwise cosine; ``contraction``, 1 - their mean pairwise distance over
        that of the hosts' own embeddings (a shared additive part leaves distances unchanged, a
        collapse onto one point takes them to 0)."""
        b, c, n, _ = emb.shape
        if self.agreement == "cosine":
            return self._agreement(F.normalize(emb, dim=-1).flatten(0, 1)).view(b, c)
        return 1 - self.pairwise_distance(emb) / self.host_spread

    @staticmethod
    def pairwise_distance(emb: torch.Tensor) -> torch.Tensor:
        """Mean Euclidean distance over the pairs of rows of ``(..., n, D)``."""
        n = emb.shape[-2]
        iu = torch.triu_indices(n, n, 1, device=emb.device)
        return torch.cdist(emb, emb)[..., iu[0], iu[1]].mean(-1)

    def _agreement_batch(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return self.contrasted(self.measure(self.embed_composites(x, z)))

    def contrasted(self, a: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` from the measured ``(B, C [+ 1])``: with ``highpass_contrast``, the high-pass
        agreement minus that of its sign-flipped composites (the last column)."""
        if not self.contrast:
            return a
        out = a[:, :-1].clone()
        out[:, self.carriers.index("highpass")] -= a[:, -1]
        return out
