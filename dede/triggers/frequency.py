"""CTRL's clean-label frequency trigger.

The image is taken to [0, 255], converted to YUV, cut into non-overlapping
``window_size`` x ``window_size`` windows, each window goes through an orthonormal 2-D
DCT-II, a fixed ``magnitude`` is added at a few frequency positions of the chosen YUV
channels, and everything is transformed back (inverse DCT, inverse YUV, /255, clamp).

All windows of all images are transformed at once: with the orthonormal DCT matrix ``D``
the 2-D DCT of a window ``X`` is ``D @ X @ D.T`` and its inverse is ``D.T @ C @ D``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from einops import rearrange

from dede.triggers.patch import Trigger

# RGB -> YUV (rows: Y, U, V), the coefficients CTRL uses; the inverse is the exact
# matrix inverse, so a zero magnitude gives back the input up to rounding.
_RGB_TO_YUV = torch.tensor([[0.299, 0.587, 0.114],
                            [-0.147, -0.289, 0.436],
                            [0.615, -0.515, -0.100]], dtype=torch.float64)


def dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` (n x n): ``D @ x`` is the 1-D DCT of ``x``."""
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype)


class FrequencyTrigger(Trigger):
    """CTRL frequency trigger on [0, 1] images ``(B, 3, H, W)``.

    Args:
        window_size: side of the square DCT windows; H and W must be multiples of it
            (CTRL uses 32 at 32x32 and also at 224x224, i.e. 7x7 windows there).
        magnitude: value added to each selected DCT coefficient, in the 0..255 scale.
        positions: frequency positions ``[row, col]`` inside each window (each < window_size).
        channels: YUV channels to perturb (0 = Y, 1 = U, 2 = V).
    """

    name = "frequency"

    def __init__(self, window_size: int = 32, magnitude: float = 100.0,
                 positions: Sequence[Sequence[int]] = ((15, 15), (31, 31)),
                 channels: Sequence[int] = (1, 2)) -> None:
        self.window_size = int(window_size)
        if self.window_size < 1:
            raise ValueError(f"frequency trigger window_size must be >= 1, got {window_size}")
        self.magnitude = float(magnitude)
        pos = [tuple(int(v) for v in p) for p in positions]
        if not pos or any(len(p) != 2 for p in pos):
            raise ValueError(f"frequency trigger positions must be a non-empty list of [row, col] pairs, "
                             f"got {positions}")
        self.positions = pos
        self.channels = [int(c) for c in channels]
        if not self.channels or any(c not in (0, 1, 2) for c in self.channels):
            raise ValueError(f"frequency trigger channels must be YUV channel indices in {{0, 1, 2}}, got {channels}")
        self._check_positions()
        self._rgb_to_yuv = _RGB_TO_YUV
        self._yuv_to_rgb = torch.linalg.inv(_RGB_TO_YUV)
        self._dct = dct_matrix(self.window_size)
        # the DCT-domain perturbation of one window, per YUV channel
        delta = torch.zeros(3, self.window_size, self.window_size, dtype=torch.float64)
        for c in self.channels:
            for r, q in self.positions:
                delta[c, r, q] += self.magnitude
        self._delta = delta

    def _check_positions(self) -> None:
        bad = [list(p) for p in self.positions if not (0 <= p[0] < self.window_size and 0 <= p[1] < self.window_size)]
        if bad:
            raise ValueError(f"frequency trigger positions {bad} are outside a {self.window_size}x{self.window_size} "
                             f"DCT window (each index must be in 0..{self.window_size - 1}); "
                             f"change attack.trigger.positions or window_size")

    def check_size(self, image_size: int) -> None:
        self._check_positions()
        if image_size < self.window_size or image_size % self.window_size:
            raise ValueError(f"frequency trigger window_size {self.window_size} does not tile a "
                             f"{image_size}x{image_size} image (the image size must be a multiple of the window); "
                             f"change attack.trigger.window_size")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"frequency trigger expects images (B, 3, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"frequency trigger expects float images in [0, 1], got dtype {x.dtype}")
        h, w = x.shape[-2:]
        self.check_size(h)
        if w != h:
            self.check_size(w)
        return self.add_in_dct(x, self._delta)

    def add_in_dct(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Add ``delta`` to the DCT coefficients of every YUV window of ``x``: one perturbation
        ``(3, n, n)`` for all images, or one per image ``(B, 3, n, n)``."""
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        fwd, inv = self._rgb_to_yuv.to(x.device, work), self._yuv_to_rgb.to(x.device, work)
        d, delta = self._dct.to(x.device, work), delta.to(x.device, work)
        n = self.window_size

        yuv = torch.einsum("cd,bdhw->bchw", fwd, x.to(work) * 255.0)
        win = rearrange(yuv, "b c (nh p) (nw q) -> b c nh nw p q", p=n, q=n)
        coef = d @ win @ d.T
        coef = coef + (delta[None, :, None, None] if delta.ndim == 3 else delta[:, :, None, None])
        win = d.T @ coef @ d
        yuv = rearrange(win, "b c nh nw p q -> b c (nh p) (nw q)")
        rgb = torch.einsum("cd,bdhw->bchw", inv, yuv) / 255.0
        return rgb.clamp_(0, 1).to(x.dtype)

    def __repr__(self) -> str:
        return (f"FrequencyTrigger(window_size={self.window_size}, magnitude={self.magnitude}, "
                f"positions={[list(p) for p in self.positions]}, channels={self.channels})")
