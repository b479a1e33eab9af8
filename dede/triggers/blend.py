"""A blended full-image trigger (Chen et al. 2017, "blended injection"): every pixel of the
image is mixed with a fixed pattern ``P``, ``x' = (1 - alpha) x + alpha P``.

The pattern is seeded and defined at any image size:

* ``noise``: uniform random noise in [0, 1], drawn at the image's own size from ``seed``;
* ``texture``: a sum of ``N_GRATINGS`` seeded sinusoidal gratings per channel (random
  orientation, 2..6 cycles per image, phase and amplitude), rescaled to [0, 1]; it lives in
  continuous image coordinates, so it scales with the image (a structured, Hello-Kitty-like
  texture without shipping an image);
* ``path``: an image file / ``.npy`` / ``.pt`` (see `~dede.triggers.image_patch.load_patch`),
  resized to the image.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from dede.triggers.image_patch import load_patch
from dede.triggers.patch import Trigger

PATTERN_KINDS = ("noise", "texture")
N_GRATINGS = 4


def noise_patterns(generator: torch.Generator, n: int, size: int) -> torch.Tensor:
    """``n`` uniform-noise patterns (n, 3, size, size) in [0, 1]."""
    return torch.rand(n, 3, size, size, generator=generator)


def texture_patterns(generator: torch.Generator, n: int, size: int) -> torch.Tensor:
    """``n`` smooth seeded textures (n, 3, size, size) in [0, 1], all drawn at once: per
    pattern ``N_GRATINGS`` gratings with a random orientation, 2..6 cycles per image and phase,
    each weighted per channel, summed and min-max rescaled."""
    m = N_GRATINGS
    theta = torch.rand(n, m, generator=generator) * math.pi
    cycles = 2 + 4 * torch.rand(n, m, generator=generator)
    phase = torch.rand(n, m, generator=generator) * 2 * math.pi
    weight = torch.rand(n, m, 3, generator=generator) * 2 - 1
    u = (torch.arange(size, dtype=torch.float32) + 0.5) / size  # pixel centres in [0, 1)
    # (n, m, H, W): the phase of every grating at every pixel
    arg = (2 * math.pi * cycles[..., None, None]
           * (torch.cos(theta)[..., None, None] * u[None, None, None, :]
              + torch.sin(theta)[..., None, None] * u[None, None, :, None]) + phase[..., None, None])
    out = torch.einsum("nmhw,nmc->nchw", torch.sin(arg), weight)
    lo = out.flatten(1).amin(1).view(n, 1, 1, 1)
    hi = out.flatten(1).amax(1).view(n, 1, 1, 1)
    return (out - lo) / (hi - lo).clamp_min(1e-8)


def seeded_patterns(kind: str, seed: int, n: int, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    if kind == "noise":
        return noise_patterns(g, n, size)
    if kind == "texture":
        return texture_patterns(g, n, size)
    raise ValueError(f"blend pattern kind={kind!r} is unknown; use one of {list(PATTERN_KINDS)} (or give a path)")


def blend(x: torch.Tensor, pattern: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) x + alpha pattern``, clamped to [0, 1] (pattern broadcast over the batch)."""
    return ((1 - alpha) * x + alpha * pattern.to(x.device, x.dtype)).clamp_(0, 1)


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"blend ratio attack.trigger.alpha={alpha} must be in [0, 1] (0 = no trigger)")
    return alpha


class BlendTrigger(Trigger):
    """``x' = (1 - alpha) x + alpha P`` on [0, 1] images ``(B, 3, H, W)``.

    Args:
        alpha: blend ratio in [0, 1] (0 is the identity).
        kind: ``noise`` or ``texture``, a pattern seeded by ``seed`` (ignored when ``path`` is given).
        seed: the pattern's seed.
        path: an image / ``.npy`` / ``.pt`` file whose picture is the pattern (resized to the images).
    """

    name = "blend"

    def __init__(self, alpha: float = 0.2, kind: str = "noise", seed: int = 0,
                 path: str | os.PathLike | None = None) -> None:
        self.alpha = check_alpha(alpha)
        if path is None and kind not in PATTERN_KINDS:
            raise ValueError(f"blend pattern attack.trigger.kind={kind!r} is unknown; use one of "
                             f"{list(PATTERN_KINDS)} or give attack.trigger.path")
        self.kind = "path" if path is not None else kind
        self.seed = int(seed)
        self.path = None if path is None else Path(path)
        self._image = None if path is None else load_patch(path)
        self._cache: dict[int, torch.Tensor] = {}

    def pattern(self, size: int) -> torch.Tensor:
        """The pattern ``(3, size, size)`` in [0, 1] at this image size (computed once per size)."""
        if size not in self._cache:
            if self._image is not None:
                p = F.interpolate(self._image[None], size=(size, size), mode="bilinear", align_corners=False,
                                  antialias=True)[0].clamp(0, 1)
            else:
                p = seeded_patterns(self.kind, self.seed, 1, size)[0]
            self._cache[size] = p
        return self._cache[size]

    def check_size(self, image_size: int) -> None:
        if int(image_size) < 1:
            raise ValueError(f"blend trigger: image size must be >= 1, got {image_size}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"blend trigger expects square images (B, 3, H, W), got shape {tuple(x.shape)}")
        return blend(x, self.pattern(x.shape[-1]), self.alpha)

    def __repr__(self) -> str:
        src = f"path={self.path}" if self.path is not None else f"kind={self.kind!r}, seed={self.seed}"
        return f"BlendTrigger(alpha={self.alpha}, {src})"
