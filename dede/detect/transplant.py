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

Each carrier's agreement and, for ``select`` ``both`` and ``move``, its *move* (how far removing
the carrier from the suspect moves the suspect's own embedding: the strongest occlusion for the
window, ``blur(x)`` for the detail, the detail alone for the colours) are
standardised with the median and a robust spread of the same quantities on held-out auxiliary
images (clean data, no trigger). ``agreement``:

- ``suspect`` (default): the mean cosine of the composites' embeddings with the suspect's own
  embedding. A backdoor sends the composites to its target, where the triggered suspect already
  is; a merely conspicuous carrier on a clean encoder (a white patch's sharp border) pulls the
  composites together, but not onto the suspect, whose clean embedding rests on its content.
- ``cosine``: the mean pairwise cosine of the composites (the default until this measure was
  compared with it on a development seed's victims; see docs/results/specific_detection.md);
- ``contraction``: 1 - their mean pairwise distance over that of the hosts.

``select`` combines the carriers per image:

- ``max`` (default): the largest standardised agreement.
- ``both``: the largest over carriers of min(agreement, move). A carrier counts when the
  image's embedding depends on it *and* it collapses the hosts: a backdoor's trigger does both; a
  conspicuous but innocent detail (a white patch's sharp border on a clean encoder) pulls the
  composites together without being what the image's embedding rests on.
- ``move``: the agreement of the carrier whose removal moves the image most (a hard pick; wrong
  when several removals break the trigger, e.g. both blurring and occluding a patch).
  (With the ``cosine`` agreement, ``max`` let the high-pass carrier raise the white patch on the
  small demo victims' clean victim to AUROC 0.80; with ``suspect``, ``max`` kept the patch's
  clean-victim AUROC at 0.58-0.65 on the full-size victims. ``max`` is the only selection the
  ``blend`` carrier allows, since a blend has no "rest" to remove; it needs no removal passes.)

Measurements, with both controls and three seeds: docs/results/specific_detection.md.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from dede.detect.base import register_detector
from dede.detect.context import EvalContext, as_float
from dede.detect.detectors import DeDeTransplant, occlusion_masks, occlusion_moves
from dede.detect.literature import _blur_matrix

CARRIERS = ("window", "blend", "highpass", "lowpass")
AGREEMENTS = ("suspect", "cosine", "contraction")
SELECTS = ("max", "move", "both")
# carriers whose removal from the suspect is defined (select="move"); a blend has no "rest"
REMOVABLE = ("window", "highpass", "lowpass")


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
    ``n_standardise`` held-out auxiliary images for each carrier's median and spread, ``select``
    (``both``, ``move``, ``max``: see the module docstring). Cost per image: ``grid**2 * len(windows)``
    occlusion passes (only with ``window``), ``len(carriers) * n_hosts`` composite passes and, unless
    ``select="max"``, one removal pass per carrier other than the window (default: 16 + 24 + 2)."""

    def __init__(self, carriers: Sequence[str] = REMOVABLE, n_hosts: int = 8,
                 windows: Sequence[Sequence[float]] = ((0.375, 0.375),), grid: int = 4, blend_alpha: float = 0.5,
                 sigma: float = 1 / 16, n_standardise: int = 256, agreement: str = "suspect",
                 highpass_contrast: bool = False, select: str = "max") -> None:
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
        if select not in SELECTS:
            raise ValueError(f"transplant_any select={select!r}: use one of {list(SELECTS)}")
        if select != "max" and any(c not in REMOVABLE for c in carriers):
            raise ValueError(f"transplant_any select={select} needs carriers whose removal is defined, {list(REMOVABLE)}; "
                             f"got {carriers}")
        if n_standardise < 8:
            raise ValueError(f"transplant_any n_standardise={n_standardise} must be >= 8")
        self.carriers, self.windows, self.grid = carriers, windows, int(grid)
        self.blend_alpha, self.sigma, self.n_standardise = float(blend_alpha), float(sigma), int(n_standardise)
        self.agreement, self.select = agreement, select
        self.contrast = bool(highpass_contrast) and "highpass" in carriers
        self.copies = (len(carriers) + self.contrast) * self.n_hosts
        self.centre = self.spread = None  # per-carrier standardisation, set in fit

    def fit(self, ctx: EvalContext, standardise: bool = True) -> "TransplantAny":
        """The hosts, then (``standardise``) the held-out standardisation; without it only what
        measuring needs (`prepare`), for analyses that standardise their own measures."""
        super().fit(ctx)  # the hosts
        return self.standardise(ctx) if standardise else self.prepare(ctx)

    def prepare(self, ctx: EvalContext) -> "TransplantAny":
        """With ``self.hosts`` set: the occlusion windows and the hosts' spread."""
        self.ctx = ctx
        s = self.hosts.shape[-1]
        self.masks = occlusion_masks(s, self.windows, self.grid, ctx.device) if "window" in self.carriers else None
        with torch.no_grad():
            self.host_spread = float(self.pairwise_distance(ctx.victim(self.hosts).float()))
        return self

    def standardise(self, ctx: EvalContext) -> "TransplantAny":
        """`prepare`, then each carrier's median and robust spread (interquartile range / 1.349)
        on held-out auxiliary images."""
        self.prepare(ctx)
        self.centre, self.spread = self.robust_scale(self.agreements(self.held_out(ctx)))
        return self

    def held_out(self, ctx: EvalContext) -> torch.Tensor:
        """The ``n_standardise`` held-out auxiliary images (uint8) the standardisation measures, a
        fixed draw per seed."""
        cal = ctx.calibration.images
        g = torch.Generator().manual_seed(int(ctx.seed) + 1)
        pick = torch.randperm(len(cal), generator=g)[: self.n_standardise]
        if len(pick) < 8:
            raise ValueError(f"transplant_any needs >= 8 held-out auxiliary images to standardise, got {len(pick)}; "
                             "raise data.val_fraction")
        return cal[pick]

    @staticmethod
    def robust_scale(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-column median and robust spread (interquartile range / 1.349) of ``(N, C)``."""
        q = torch.quantile(raw, torch.tensor([0.25, 0.75], dtype=raw.dtype, device=raw.device), dim=0)
        return raw.median(0).values, ((q[1] - q[0]) / 1.349).clamp_min(1e-6)

    @torch.no_grad()
    def agreements(self, images: torch.Tensor) -> torch.Tensor:
        """Raw agreements ``(N, C)`` of each carrier's composites (before standardisation); with
        ``select="move"`` or ``"both"`` also, in ``C`` more columns, how far removing each carrier from the image
        moves its own embedding."""
        z = F.normalize(self.ctx.embed(images), dim=1) if self._needs_z else None
        return self.ctx.map_batches(images, self._agreement_batch, self.copies + self._occlusions + self._removals,
                                    *(() if z is None else (z,)))

    @property
    def _needs_z(self) -> bool:
        return "window" in self.carriers or self.select != "max" or self.agreement == "suspect"

    @property
    def _occlusions(self) -> int:
        return 0 if self.masks is None else len(self.masks)

    @property
    def _removals(self) -> int:
        return sum(c != "window" for c in self.carriers) if self.select != "max" else 0

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        return self.combine((self.agreements(images) - self.centre) / self.spread)

    def combine(self, standardised: torch.Tensor) -> torch.Tensor:
        """The score from the standardised ``(N, C)`` agreements (``max``: the largest), or from
        ``(N, 2C)`` agreements and moves (both standardised on held-out clean images): ``move``, the
        agreement of the carrier whose removal moves the image's own embedding most; ``both``, the
        largest over carriers of the smaller of a carrier's agreement and move (a carrier counts
        when the image's embedding depends on it *and* it collapses the hosts)."""
        c = len(self.carriers)
        if self.select == "max":
            return standardised.amax(1)
        if self.select == "both":
            return torch.minimum(standardised[:, :c], standardised[:, c:]).amax(1)
        pick = standardised[:, c:].argmax(1, keepdim=True)
        return standardised[:, :c].gather(1, pick)[:, 0]

    def composites(self, x: torch.Tensor, window: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, H, 3, S, S)``: each image's carriers in each host (not clamped: a clamp would make
        an additive carrier shrink the hosts' differences on its own)."""
        h = self.hosts[None]  # (1, H, 3, S, S)
        xs = x[:, None]
        sigma = self.sigma * x.shape[-1]
        out = []
        for c in self.carriers:
            if c == "window":
                m = self.masks[window.to(self.masks.device)][:, None]
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

    def embed_composites(self, x: torch.Tensor, window: torch.Tensor | None = None) -> torch.Tensor:
        """Raw victim embeddings ``(B, C, H, D)`` of every composite of a batch (``window``: each
        image's strongest occlusion window, for the window carrier), in one victim call."""
        comp = self.composites(x, window)
        return self.ctx.victim(comp.flatten(0, 2)).float().view(*comp.shape[:3], -1)

    def measure(self, emb: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C)`` agreement of each carrier's composites from their raw embeddings ``(B, C, H, D)``:
        ``suspect``, their mean cosine with the suspect's own normalised embedding ``z`` ``(B, D)``;
        ``cosine``, the mean pairwise cosine; ``contraction``, 1 - their mean pairwise distance over
        that of the hosts' own embeddings (a shared additive part leaves distances unchanged, a
        collapse onto one point takes them to 0)."""
        b, c, n, _ = emb.shape
        if self.agreement == "suspect":
            if z is None:
                raise ValueError("agreement='suspect' needs the suspects' own embeddings")
            return (F.normalize(emb, dim=-1) * z.to(emb.device).float()[:, None, None]).sum(-1).mean(-1)
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
        occ = occlusion_moves(self.ctx.victim, x, z, self.masks) if "window" in self.carriers else None
        a = self.contrasted(self.measure(self.embed_composites(x, None if occ is None else occ.argmax(1)), z))
        return a if self.select == "max" else torch.cat([a, self.moves(x, z, occ)], 1)

    def moves(self, x: torch.Tensor, z: torch.Tensor, occ: torch.Tensor | None) -> torch.Tensor:
        """``(B, C)``: 1 - cosine between each image's normalised embedding ``z`` and that of the image
        without the carrier (window: the strongest occlusion; highpass: ``blur(x)``; lowpass: the
        detail ``x - blur(x)`` on the image's mean colour); the non-window ones in one victim call."""
        sigma = self.sigma * x.shape[-1]
        rest = {"highpass": lambda: blur(x, sigma), "lowpass": lambda: x - blur(x, sigma) + x.mean((2, 3), keepdim=True)}
        others = [c for c in self.carriers if c != "window"]
        zr = {}
        if others:
            e = F.normalize(self.ctx.victim(torch.cat([rest[c]() for c in others])).float(), dim=1)
            zr = dict(zip(others, e.view(len(others), len(x), -1)))
        z = z.to(x.device).float()
        return torch.stack([occ.amax(1) if c == "window" else 1 - (zr[c] * z).sum(-1) for c in self.carriers], 1)

    def contrasted(self, a: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` from the measured ``(B, C [+ 1])``: with ``highpass_contrast``, the high-pass
        agreement minus that of its sign-flipped composites (the last column)."""
        if not self.contrast:
            return a
        out = a[:, :-1].clone()
        out[:, self.carriers.index("highpass")] -= a[:, -1]
        return out
