"""Benign perturbations: the control of every detection number.

A benign perturbation has the same kind and strength as the attack's trigger but is not the
trigger: for solid patch triggers a patch of the same size with a random colour at a random
place (or random noise, or the trigger's own patch moved where it does not overlap the trigger:
``moved``, a stricter control, since a CNN with global pooling sees a moved patch much as it sees
the trigger), the same magnitude at other DCT frequencies for CTRL's frequency trigger,
a random-noise patch of the same size for image-patch triggers (BadCLIP), another natural image
blended in at the trigger's ratio for blended triggers (or another pattern of the trigger's kind,
``blend``: stricter, and measured to fire a small blended-noise backdoor on about 70 % of images,
so it is not benign there), a random warp of the same
strength for warping triggers, and the optimised trigger's own perturbation with its pixels
shuffled (same L_inf and L2 norms) for generator triggers. A detector that
flags these as often as triggered images detects "a perturbation", not a backdoor.

Every image gets its own draw from a generator seeded with ``seed``, so the same call gives
the same images.
"""
from __future__ import annotations

import torch

from dede.triggers.blend import BlendTrigger, blend, seeded_patterns
from dede.triggers.frequency import FrequencyTrigger
from dede.triggers.generator import GeneratorTrigger
from dede.triggers.image_patch import ImagePatchTrigger
from dede.triggers.patch import NpzTrigger, PatchTrigger, Trigger
from dede.triggers.warp import WarpTrigger, control_grids, flow_fields, warp

KINDS = ("auto", "moved", "colour", "noise", "frequency", "blend", "natural", "warp", "shuffled")
# a random solid colour is redrawn until it differs from the trigger's by at least this much
# (largest channel difference), so a benign patch is never the trigger even at the same place
MIN_COLOUR_DISTANCE = 0.25


def _boxes_mask(rows: torch.Tensor, cols: torch.Tensor, h: int, w: int, height: int, width: int) -> torch.Tensor:
    """(B, 1, height, width) bool: True inside each image's ``h`` x ``w`` box at (rows, cols)."""
    r = torch.arange(height)[None]
    c = torch.arange(width)[None]
    in_r = (r >= rows[:, None]) & (r < rows[:, None] + h)
    in_c = (c >= cols[:, None]) & (c < cols[:, None] + w)
    return (in_r[:, :, None] & in_c[:, None, :])[:, None]


class BenignPatch(Trigger):
    """A ``h`` x ``w`` patch at a random place in every image, filled with

    - ``"moved"``: the trigger's own content (``content``, (3, h, w)) at a place that does not
      overlap the trigger's box ``avoid_box`` (row, col): the same patch, somewhere else;
    - ``"colour"``: a random solid colour, at least `MIN_COLOUR_DISTANCE` from ``avoid_colour``;
    - ``"noise"``: uniform random noise.
    """

    name = "benign_patch"

    def __init__(self, h: int, w: int, fill: str = "colour", seed: int = 0,
                 avoid_colour: torch.Tensor | None = None, content: torch.Tensor | None = None,
                 avoid_box: tuple[int, int] | None = None) -> None:
        if fill not in ("moved", "colour", "noise"):
            raise ValueError(f"benign patch fill must be 'moved', 'colour' or 'noise', got {fill!r}")
        if fill == "moved" and (content is None or avoid_box is None):
            raise ValueError("a moved benign patch needs the trigger's content and box")
        self.h, self.w, self.fill, self.seed = int(h), int(w), fill, int(seed)
        self.avoid_colour = None if avoid_colour is None else torch.as_tensor(avoid_colour, dtype=torch.float32).view(3)
        self.content = None if content is None else torch.as_tensor(content, dtype=torch.float32)
        self.avoid_box = avoid_box

    def _places(self, b: int, height: int, width: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(0, height - self.h + 1, (b,), generator=g)
        cols = torch.randint(0, width - self.w + 1, (b,), generator=g)
        if self.fill != "moved":
            return rows, cols
        r0, c0 = self.avoid_box
        for _ in range(1000):
            overlap = ((rows - r0).abs() < self.h) & ((cols - c0).abs() < self.w)
            if not overlap.any():
                return rows, cols
            k = int(overlap.sum())
            rows[overlap] = torch.randint(0, height - self.h + 1, (k,), generator=g)
            cols[overlap] = torch.randint(0, width - self.w + 1, (k,), generator=g)
        raise ValueError(f"no place for a {self.h}x{self.w} patch outside the trigger's box in a {height}x{width} "
                         "image; use eval.control.kind=colour or noise")

    def check_size(self, image_size: int) -> None:
        if self.h > image_size or self.w > image_size:
            raise ValueError(f"benign patch {self.h}x{self.w} does not fit a {image_size}x{image_size} image")

    def _colours(self, n: int, g: torch.Generator) -> torch.Tensor:
        colours = torch.rand(n, 3, generator=g)
        if self.avoid_colour is None:
            return colours
        for _ in range(100):
            near = (colours - self.avoid_colour).abs().amax(1) < MIN_COLOUR_DISTANCE
            if not near.any():
                return colours
            colours[near] = torch.rand(int(near.sum()), 3, generator=g)
        raise RuntimeError("could not draw colours away from the trigger's colour")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        self.check_size(min(height, width))
        g = torch.Generator().manual_seed(self.seed)
        rows, cols = self._places(b, height, width, g)
        mask = _boxes_mask(rows, cols, self.h, self.w, height, width)
        if self.fill == "colour":
            fill = self._colours(b, g)[:, :, None, None].expand(-1, -1, height, width)
        elif self.fill == "noise":
            fill = torch.rand(b, 3, height, width, generator=g)
        else:  # the trigger's content, shifted to each image's box
            fill = torch.zeros(b, 3, height, width)
            rr = rows[:, None] + torch.arange(self.h)[None]  # (B, h)
            cc = cols[:, None] + torch.arange(self.w)[None]  # (B, w)
            fill[torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None],
                 rr[:, None, :, None], cc[:, None, None, :]] = self.content[None]
        return torch.where(mask.to(x.device), fill.to(x.device, x.dtype), x)

    def describe(self) -> dict:
        return {"kind": f"patch_{self.fill}", "size": [self.h, self.w], "seed": self.seed}

    def __repr__(self) -> str:
        return f"BenignPatch({self.describe()})"


class BenignFrequency(Trigger):
    """CTRL's perturbation with the trigger's magnitude, channels and number of positions, at
    DCT positions drawn per image from those the trigger does not use (the DC term excluded)."""

    name = "benign_frequency"

    def __init__(self, trigger: FrequencyTrigger, seed: int = 0) -> None:
        self.trigger, self.seed = trigger, int(seed)
        n = trigger.window_size
        used = {r * n + q for r, q in trigger.positions} | {0}
        self.allowed = torch.tensor([i for i in range(n * n) if i not in used])
        if len(self.allowed) < len(trigger.positions):
            raise ValueError(f"a {n}x{n} DCT window has no other positions for a benign frequency perturbation")

    def check_size(self, image_size: int) -> None:
        self.trigger.check_size(image_size)

    def deltas(self, b: int) -> torch.Tensor:
        """(B, 3, n, n): the per-image DCT perturbations."""
        t, n = self.trigger, self.trigger.window_size
        g = torch.Generator().manual_seed(self.seed)
        k = len(t.positions)
        pick = torch.rand(b, len(self.allowed), generator=g).argsort(1)[:, :k]
        flat = torch.zeros(b, 3, n * n, dtype=torch.float64)
        for c in t.channels:
            flat[:, c].scatter_(1, self.allowed[pick], t.magnitude)
        return flat.view(b, 3, n, n)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.trigger.add_in_dct(x, self.deltas(x.shape[0]))

    def describe(self) -> dict:
        t = self.trigger
        return {"kind": "frequency", "magnitude": t.magnitude, "channels": t.channels, "n_positions": len(t.positions),
                "seed": self.seed}


def twin_seed(trigger_seed: int, seed: int) -> int:
    """The seed of a benign twin's draws: never the trigger's own ``trigger_seed`` (so the first
    draw is not the trigger), different for every control ``seed``."""
    return 2 ** 40 + 7919 * int(seed) + int(trigger_seed) + 1


class BenignBlend(Trigger):
    """The blend of a `BlendTrigger` with its ratio ``alpha`` but another picture per image:

    - ``pattern`` (``noise`` / ``texture``): a pattern of that kind drawn per image from ``seed``
      (never the trigger's seed, see `twin_seed`);
    - ``natural``: another image of the same batch (a seeded derangement of the batch), i.e. a
      natural image blended in at the trigger's ratio.
    """

    name = "benign_blend"

    def __init__(self, alpha: float, pattern: str = "noise", seed: int = 0, trigger_seed: int = 0) -> None:
        if pattern not in ("noise", "texture", "natural"):
            raise ValueError(f"benign blend pattern must be 'noise', 'texture' or 'natural', got {pattern!r}")
        self.alpha, self.pattern, self.seed, self.trigger_seed = float(alpha), pattern, int(seed), int(trigger_seed)

    def partners(self, b: int) -> torch.Tensor:
        """A seeded permutation of ``range(b)`` without fixed points."""
        if b < 2:
            raise ValueError("a natural-image blend needs at least 2 images per batch (another image to blend in)")
        g = torch.Generator().manual_seed(twin_seed(self.trigger_seed, self.seed))
        perm = torch.randperm(b, generator=g)
        fixed = perm == torch.arange(b)
        return torch.where(fixed, (torch.arange(b) + 1) % b, perm) if fixed.any() else perm

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if h != w:
            raise ValueError(f"benign blend expects square images, got {h}x{w}")
        if self.pattern == "natural":
            other = x[self.partners(b).to(x.device)]
        else:
            other = seeded_patterns(self.pattern, twin_seed(self.trigger_seed, self.seed), b, h)
        return blend(x, other, self.alpha)

    def describe(self) -> dict:
        what = "another image of the set" if self.pattern == "natural" else f"a random {self.pattern} pattern per image"
        return {"kind": f"blend_{self.pattern}", "alpha": self.alpha, "seed": self.seed,
                "description": f"blended at the trigger's ratio with {what}"}


class BenignWarp(Trigger):
    """A WaNet warp with the trigger's control-grid size ``k`` and ``strength`` but a random
    flow field per image (drawn from ``seed``, never the trigger's)."""

    name = "benign_warp"

    def __init__(self, k: int, strength: float, seed: int = 0, trigger_seed: int = 0) -> None:
        self.k, self.strength, self.seed, self.trigger_seed = int(k), float(strength), int(seed), int(trigger_seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        grids = control_grids(twin_seed(self.trigger_seed, self.seed), x.shape[0], self.k)
        return warp(x, flow_fields(grids, x.shape[-1]), self.strength)

    def describe(self) -> dict:
        return {"kind": "warp", "k": self.k, "strength": self.strength, "seed": self.seed,
                "description": "a random warp per image with the trigger's grid size and strength"}


class BenignShuffled(Trigger):
    """The optimised trigger's own perturbation of each image with its C*H*W values shuffled
    and their signs flipped at random (per image, from ``seed``): the same L_inf and L2 norms
    (before clamping to [0, 1]), none of the learned structure."""

    name = "benign_shuffled"

    def __init__(self, trigger: Trigger, seed: int = 0, chunk: int = 256) -> None:
        self.trigger, self.seed, self.chunk = trigger, int(seed), int(chunk)

    def shuffled_deltas(self, delta: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        flat = delta.flatten(1)
        perm = torch.rand(flat.shape, generator=g).argsort(1).to(flat.device)
        sign = (torch.randint(0, 2, flat.shape, generator=g) * 2 - 1).to(flat)
        return (flat.gather(1, perm) * sign).view_as(delta)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(twin_seed(getattr(self.trigger, "seed", 0), self.seed))
        out = []
        for c in x.split(self.chunk):
            with torch.no_grad():
                delta = self.trigger(c) - c
            out.append((c + self.shuffled_deltas(delta, g)).clamp_(0, 1))
        return torch.cat(out)

    def describe(self) -> dict:
        return {"kind": "shuffled", "eps": getattr(self.trigger, "eps", None), "seed": self.seed,
                "description": "the trigger's own perturbation of each image, values shuffled and signs flipped: "
                               "same L_inf and L2 norm, no structure"}


def _full_image_twin(trigger: Trigger, kind: str, seed: int) -> Trigger:
    """The benign twin of a blended, warping or generator trigger (``kind`` checked against it)."""
    allowed = {BlendTrigger: ("blend", "natural"), WarpTrigger: ("warp",), GeneratorTrigger: ("shuffled",)}
    kinds = next(v for t, v in allowed.items() if isinstance(trigger, t))
    if kind not in ("auto",) + kinds:
        raise ValueError(f"eval.control.kind={kind!r} does not match a {type(trigger).__name__}; use auto or "
                         f"{' / '.join(kinds)}")
    if isinstance(trigger, BlendTrigger):
        pattern = "natural" if kind in ("auto", "natural") else ("texture" if trigger.kind == "path" else trigger.kind)
        return BenignBlend(trigger.alpha, pattern, seed, trigger.seed)
    if isinstance(trigger, WarpTrigger):
        return BenignWarp(trigger.k, trigger.strength, seed, trigger.seed)
    return BenignShuffled(trigger, seed)


def _npz_box(trigger: NpzTrigger) -> tuple[int, int, torch.Tensor, tuple[int, int]]:
    inside = (trigger.mask < 0.5).any(0)
    if not inside.any():
        raise ValueError(f"trigger file {trigger.path} has an empty mask: no patch to match")
    rows, cols = torch.nonzero(inside, as_tuple=True)
    h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    colour = trigger.pattern[:, inside].mean(1)
    return h, w, colour, (int(rows.min()), int(cols.min()))


def benign_perturbation(trigger: Trigger, image_size: int, kind: str = "auto", seed: int = 0) -> Trigger:
    """The benign twin of ``trigger`` at ``image_size``. ``kind``: ``auto`` = matched to the
    trigger (solid patches: ``colour``; image patches: ``noise``; frequency triggers:
    ``frequency``; blended: ``natural``; warps: ``warp``; generators: ``shuffled``); ``moved`` / ``colour``
    / ``noise`` = a patch of the trigger's size (its content elsewhere / a random colour / noise);
    ``frequency`` = the same magnitude at other DCT positions; ``blend`` / ``natural`` = the same
    blend ratio with another pattern of the trigger's kind / another image; ``warp`` = a random warp
    of the same strength; ``shuffled`` = the generator's perturbation, shuffled (same norms)."""
    if kind not in KINDS:
        raise ValueError(f"eval.control.kind={kind!r} is unknown; known: {list(KINDS)}")
    if isinstance(trigger, (BlendTrigger, WarpTrigger, GeneratorTrigger)):
        return _full_image_twin(trigger, kind, seed)
    if kind in ("blend", "natural", "warp", "shuffled"):
        raise ValueError(f"eval.control.kind={kind!r} needs a blended, warping or generator trigger, the attack's is "
                         f"{type(trigger).__name__}")
    if isinstance(trigger, FrequencyTrigger):
        if kind not in ("auto", "frequency"):
            raise ValueError(f"eval.control.kind={kind!r} does not match a frequency trigger; use auto or frequency")
        return BenignFrequency(trigger, seed)
    if kind == "frequency":
        raise ValueError("eval.control.kind=frequency needs a frequency trigger, the attack's is "
                         f"{type(trigger).__name__}")
    if isinstance(trigger, PatchTrigger):
        r, c, n = trigger.box(image_size)
        content = trigger.colour.view(3, 1, 1).expand(3, n, n)
        return BenignPatch(n, n, "colour" if kind == "auto" else kind, seed, trigger.colour.view(3), content, (r, c))
    if isinstance(trigger, NpzTrigger):
        h, w, colour, (r, c) = _npz_box(trigger)
        content = trigger.pattern[:, r:r + h, c:c + w]
        return BenignPatch(h, w, "colour" if kind == "auto" else kind, seed, colour, content, (r, c))
    if isinstance(trigger, ImagePatchTrigger):
        r, c, h, w = trigger.box(image_size, image_size)
        content = trigger(torch.zeros(1, 3, image_size, image_size))[0, :, r:r + h, c:c + w]
        return BenignPatch(h, w, "noise" if kind == "auto" else kind, seed, None, content, (r, c))
    raise ValueError(f"no benign perturbation is defined for a {type(trigger).__name__}; "
                     "add one in dede/triggers/benign.py or set eval.control.enabled=false")
