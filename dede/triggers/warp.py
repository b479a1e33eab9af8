"""WaNet's warping trigger (Nguyen & Tran, ICLR 2021): a fixed, smooth random flow field moves
every pixel a little; no pixel value is added.

A ``k`` x ``k`` control grid of random 2-D offsets in [-1, 1] (seeded), divided by its mean
absolute value, is upsampled (bicubic) to the image size; the sampling grid is the identity
grid (in ``grid_sample``'s [-1, 1] coordinates) plus ``strength * flow / H``, clamped to
[-1, 1], and the image is resampled bilinearly along it. ``strength`` is therefore about the
largest displacement in pixels over two (WaNet: k = 4, s = 0.5 at 32x32, i.e. sub-pixel
shifts); 0 is the identity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dede.triggers.patch import Trigger


def control_grids(seed: int, n: int, k: int) -> torch.Tensor:
    """``n`` seeded control grids (n, 2, k, k), each divided by its mean absolute offset."""
    g = torch.Generator().manual_seed(int(seed))
    ins = torch.rand(n, 2, k, k, generator=g) * 2 - 1
    return ins / ins.abs().mean(dim=(1, 2, 3), keepdim=True)


def flow_fields(grids: torch.Tensor, size: int) -> torch.Tensor:
    """Control grids (n, 2, k, k) upsampled to flow fields (n, size, size, 2)."""
    return F.interpolate(grids, size=(size, size), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)


def warp(x: torch.Tensor, flows: torch.Tensor, strength: float) -> torch.Tensor:
    """Resample ``x`` (B, 3, H, H) along identity + ``strength`` * flows / H; ``flows`` is
    (1 or B, H, H, 2)."""
    h = x.shape[-1]
    line = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    rows, cols = torch.meshgrid(line, line, indexing="ij")
    identity = torch.stack((cols, rows), dim=-1)[None]  # grid_sample wants (x, y) = (col, row)
    grid = (identity + strength * flows.to(x.device, x.dtype) / h).clamp(-1, 1)
    grid = grid.expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True).clamp_(0, 1)


def check_warp(k: int, strength: float) -> tuple[int, float]:
    k, strength = int(k), float(strength)
    if k < 2:
        raise ValueError(f"warp trigger attack.trigger.k={k}: the control grid needs at least 2 x 2 points")
    if strength < 0:
        raise ValueError(f"warp trigger attack.trigger.strength={strength} must be >= 0 (0 = no warp)")
    return k, strength


class WarpTrigger(Trigger):
    """A fixed seeded WaNet warp of [0, 1] images ``(B, 3, H, H)``.

    Args:
        k: side of the control grid (WaNet: 4).
        strength: WaNet's ``s`` (0.5 in the paper; about the largest shift in pixels / 2).
        seed: the flow field's seed.
    """

    name = "warp"

    def __init__(self, k: int = 4, strength: float = 0.5, seed: int = 0) -> None:
        self.k, self.strength = check_warp(k, strength)
        self.seed = int(seed)
        self._grid = control_grids(self.seed, 1, self.k)

    def flow(self, size: int) -> torch.Tensor:
        """The flow field (1, size, size, 2) at this image size."""
        return flow_fields(self._grid, size)

    def check_size(self, image_size: int) -> None:
        if int(image_size) < self.k:
            raise ValueError(f"warp trigger: a {self.k}x{self.k} control grid needs images of at least {self.k} "
                             f"pixels, got {image_size}; lower attack.trigger.k")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"warp trigger expects square images (B, 3, H, W), got shape {tuple(x.shape)}")
        self.check_size(x.shape[-1])
        return warp(x, self.flow(x.shape[-1]), self.strength)

    def __repr__(self) -> str:
        return f"WarpTrigger(k={self.k}, strength={self.strength}, seed={self.seed})"
