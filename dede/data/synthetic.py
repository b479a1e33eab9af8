"""An embedded, procedurally generated, class-structured image data set.

Ten classes, each a distinct shape with its own colour palette (foreground and
background colours are tied to the class, as colour is tied to content in natural
images: an encoder trained with colour-jitter augmentations still carries enough
class information for a decoder to restore the colours). Within a class, images vary
in position, size, rotation, colour, shading and noise. Everything is generated from a
seed with vectorised tensor operations, so the set is identical on every machine and
costs well under a second to make.
"""
from __future__ import annotations

import math

import torch

N_CLASSES = 10
CLASS_NAMES = ["disc", "square", "triangle", "diamond", "ring", "cross", "stripes", "bar", "dots", "checker"]
# foreground and background colour (RGB in [0, 1]) of each class
FOREGROUND = torch.tensor([
    [0.90, 0.20, 0.15], [0.95, 0.60, 0.10], [0.95, 0.90, 0.25], [0.25, 0.80, 0.30], [0.20, 0.85, 0.90],
    [0.20, 0.35, 0.95], [0.60, 0.30, 0.90], [0.95, 0.40, 0.75], [0.65, 0.45, 0.25], [0.85, 0.85, 0.85],
])
BACKGROUND = torch.tensor([
    [0.15, 0.20, 0.35], [0.10, 0.30, 0.15], [0.35, 0.25, 0.45], [0.45, 0.35, 0.20], [0.30, 0.10, 0.10],
    [0.55, 0.55, 0.40], [0.15, 0.15, 0.15], [0.20, 0.40, 0.45], [0.40, 0.55, 0.30], [0.35, 0.15, 0.30],
])


def _distance(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A distance-like field that is < 1 inside the unit-sized shape."""
    au, av = u.abs(), v.abs()
    r = torch.sqrt(u * u + v * v)
    box = torch.maximum(au, av) / 0.85
    if shape == 0:
        return r
    if shape == 1:
        return box
    if shape == 2:  # triangle, apex up
        return torch.maximum(torch.maximum(-v / 0.7, v / 0.7), au / (0.95 * (1.0 - v) / 1.7 + 1e-6))
    if shape == 3:
        return au + av
    if shape == 4:
        return (r - 0.72).abs() / 0.28
    if shape == 5:
        return torch.minimum(torch.maximum(au / 0.32, av), torch.maximum(av / 0.32, au))
    if shape == 6:  # horizontal stripes inside a box
        return torch.maximum(box, 1.0 + torch.sin(v * math.pi * 2.5) * 0.8)
    if shape == 7:
        return torch.sqrt(u * u + (v / 0.38) ** 2)
    if shape == 8:
        return torch.minimum(torch.sqrt((u - 0.5) ** 2 + v * v), torch.sqrt((u + 0.5) ** 2 + v * v)) / 0.42
    if shape == 9:  # checkerboard inside a box
        return torch.maximum(box, 1.0 + torch.sin(u * math.pi * 2) * torch.sin(v * math.pi * 2) * 2.0)
    raise ValueError(shape)


def make_synthetic(n: int, seed: int = 0, image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images uint8 (n, 3, S, S), labels int64 (n,))``, deterministic in ``seed``."""
    if n <= 0:
        raise ValueError(f"synthetic data set size must be positive, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    s = image_size
    labels = torch.arange(n) % N_CLASSES
    labels = labels[torch.randperm(n, generator=g)]

    def U(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    cy, cx = U(0.35, 0.65, n) * s, U(0.35, 0.65, n) * s
    size = U(0.2, 0.32, n) * s
    angle = U(-math.pi, math.pi, n)
    fg = (FOREGROUND[labels] + 0.06 * torch.randn(n, 3, generator=g)).clamp(0, 1)
    bg = (BACKGROUND[labels] + 0.06 * torch.randn(n, 3, generator=g)).clamp(0, 1)
    shade_dir = U(-math.pi, math.pi, n)
    shade_amp = U(0.0, 0.25, n)

    ys, xs = torch.meshgrid(torch.arange(s, dtype=torch.float32) + 0.5, torch.arange(s, dtype=torch.float32) + 0.5,
                            indexing="ij")
    dy, dx = ys[None] - cy[:, None, None], xs[None] - cx[:, None, None]
    ca, sa = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u = (ca * dx + sa * dy) / size[:, None, None]
    v = (-sa * dx + ca * dy) / size[:, None, None]

    dist = torch.empty(n, s, s)
    for c in range(N_CLASSES):
        idx = labels == c
        dist[idx] = _distance(c, u[idx], v[idx])
    # soft edges about one pixel wide
    alpha = torch.sigmoid((1.0 - dist) * size[:, None, None] * 1.5)[:, None]

    # background: a linear shading gradient in a random direction
    gy, gx = (ys / s - 0.5)[None], (xs / s - 0.5)[None]
    grad = torch.cos(shade_dir)[:, None, None] * gx + torch.sin(shade_dir)[:, None, None] * gy
    background = bg[:, :, None, None] * (1.0 + shade_amp[:, None, None, None] * grad[:, None])
    # foreground: lit from the top-left of the shape
    light = 1.0 + 0.25 * (-(u + v) / 2.0).clamp(-1, 1)[:, None]
    foreground = fg[:, :, None, None] * light
    img = alpha * foreground + (1 - alpha) * background
    img = img + 0.02 * torch.randn(img.shape, generator=g)
    images = img.clamp(0, 1).mul(255).round().to(torch.uint8)
    return images, labels
