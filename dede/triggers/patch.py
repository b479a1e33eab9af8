"""Pixel-space triggers.

A trigger maps a batch of [0, 1] float images ``(B, 3, H, W)`` to triggered images,
always *before* any normalisation (the original DeDe code applied its trigger after
normalisation, which turned the white patch into a global affine distortion).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


class Trigger:
    name = "trigger"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def check_size(self, image_size: int) -> None:
        """Raise before any long work if the trigger cannot be applied at ``image_size``."""


class PatchTrigger(Trigger):
    """A solid square patch; the default is BadEncoder's 10x10 white square at 21..30 of 32x32.

    ``row``/``col`` are the top-left corner in pixels of a ``reference_size`` image; on another
    image size the patch is scaled with the image (so 21/10 at 32 becomes 42/20 at 64).
    """

    name = "patch"

    def __init__(self, size: int = 10, row: int = 21, col: int = 21,
                 colour: Sequence[float] = (1.0, 1.0, 1.0), reference_size: int | None = 32) -> None:
        self.size, self.row, self.col = int(size), int(row), int(col)
        self.colour = torch.tensor([float(c) for c in colour]).view(3, 1, 1)
        self.reference_size = reference_size
        if self.colour.numel() != 3 or (self.colour < 0).any() or (self.colour > 1).any():
            raise ValueError(f"trigger colour must be 3 values in [0, 1], got {list(colour)}")

    def box(self, image_size: int) -> tuple[int, int, int]:
        if self.reference_size is None or image_size == self.reference_size:
            return self.row, self.col, self.size
        s = image_size / self.reference_size
        return round(self.row * s), round(self.col * s), max(1, round(self.size * s))

    def check_size(self, image_size: int) -> None:
        r, c, n = self.box(image_size)
        if r < 0 or c < 0 or r + n > image_size or c + n > image_size:
            raise ValueError(f"patch trigger rows {r}..{r + n - 1}, cols {c}..{c + n - 1} do not fit "
                             f"a {image_size}x{image_size} image; change attack.trigger.row/col/size")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.check_size(x.shape[-1])
        r, c, n = self.box(x.shape[-1])
        out = x.clone()
        out[..., r:r + n, c:c + n] = self.colour.to(x.device, x.dtype)
        return out


class NpzTrigger(Trigger):
    """The BadEncoder/DRUPE/DECREE ``.npz`` format: ``t`` (pattern, 0..255) and ``tm`` (mask),
    shape (1, H, W, 3) or (H, W, 3); applied as ``x * tm + t`` in pixel space."""

    name = "npz"

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"trigger file not found: {path} (set attack.trigger.path)")
        with np.load(path, allow_pickle=False) as z:
            if "t" not in z or "tm" not in z:
                raise ValueError(f"{path} is not a trigger file: expected arrays 't' and 'tm', found {list(z.keys())}")
            t, tm = np.asarray(z["t"], dtype=np.float32), np.asarray(z["tm"], dtype=np.float32)
        if t.ndim == 4:
            t, tm = t[0], tm[0]
        if t.ndim != 3 or t.shape[-1] != 3 or t.shape != tm.shape:
            raise ValueError(f"{path}: expected t and tm of shape (1,H,W,3) or (H,W,3), got {t.shape} and {tm.shape}")
        self.path = path
        self.pattern = torch.from_numpy(t / 255.0).permute(2, 0, 1).contiguous()
        self.mask = torch.from_numpy(tm).permute(2, 0, 1).contiguous()

    def check_size(self, image_size: int) -> None:
        if self.pattern.shape[-1] != image_size:
            raise ValueError(f"trigger {self.path} is {self.pattern.shape[-1]}x{self.pattern.shape[-2]} but images are "
                             f"{image_size}x{image_size}; use the trigger file made for this resolution")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.check_size(x.shape[-1])
        return (x * self.mask.to(x) + self.pattern.to(x)).clamp_(0, 1)


def apply_to_uint8(trigger: Trigger, x: torch.Tensor) -> torch.Tensor:
    """Apply a trigger to uint8 images ``(B, 3, H, W)`` and return uint8 (rounded)."""
    y = trigger(x.float().div(255))
    return y.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def save_npz_trigger(path: str | os.PathLike, trigger: PatchTrigger, image_size: int) -> None:
    """Write a patch trigger in the original ``.npz`` format (t=255, tm=0 inside the patch)."""
    r, c, n = trigger.box(image_size)
    t = np.zeros((1, image_size, image_size, 3), dtype=np.uint8)
    tm = np.ones((1, image_size, image_size, 3), dtype=np.uint8)
    t[0, r:r + n, c:c + n] = (trigger.colour.view(3).numpy() * 255).round().astype(np.uint8)
    tm[0, r:r + n, c:c + n] = 0
    np.savez(path, t=t, tm=tm)
