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


def uniform(g: torch.Generator, lo: float, hi: float, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=g)


def balanced_labels(n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` labels, every class ``n // N_CLASSES`` or one more times, in a seeded order."""
    if n <= 0:
        raise ValueError(f"synthetic data set size must be positive, got {n}")
    labels = torch.arange(n) % N_CLASSES
    return labels[torch.randperm(n, generator=g)]


def pixel_grid(s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``(ys, xs)``, each ``(s, s)``."""
    return torch.meshgrid(torch.arange(s, dtype=torch.float32) + 0.5, torch.arange(s, dtype=torch.float32) + 0.5,
                          indexing="ij")


def shape_layer(labels: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: torch.Tensor, angle: torch.Tensor,
                fg: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's class shape at centre ``(cy, cx)``, radius ``size`` (pixels), rotated by
    ``angle``, in colour ``fg`` (n, 3) lit from its top-left: ``(alpha (n, 1, s, s) with soft
    edges about one pixel wide, foreground (n, 3, s, s))``."""
    ys, xs = pixel_grid(s)
    dy, dx = ys[None] - cy[:, None, None], xs[None] - cx[:, None, None]
    ca, sa = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u = (ca * dx + sa * dy) / size[:, None, None]
    v = (-sa * dx + ca * dy) / size[:, None, None]
    dist = torch.empty(len(labels), s, s)
    for c in range(N_CLASSES):
        idx = labels == c
        dist[idx] = _distance(c, u[idx], v[idx])
    alpha = torch.sigmoid((1.0 - dist) * size[:, None, None] * 1.5)[:, None]
    light = 1.0 + 0.25 * (-(u + v) / 2.0).clamp(-1, 1)[:, None]
    return alpha, fg[:, :, None, None] * light


def to_uint8(img: torch.Tensor, g: torch.Generator, noise: float = 0.02) -> torch.Tensor:
    """Float images in about [0, 1] plus a little pixel noise, as uint8."""
    img = img + noise * torch.randn(img.shape, generator=g)
    return img.clamp(0, 1).mul(255).round().to(torch.uint8)


def random_layout(g: torch.Generator, n: int, s: int, centre: tuple[float, float] = (0.35, 0.65),
                  radius: tuple[float, float] = (0.2, 0.32), max_angle: float = math.pi):
    """Balanced labels and every image's shape centre ``(cy, cx)``, radius and rotation; the
    centre and radius ranges are shares of the image size ``s``."""
    labels = balanced_labels(n, g)
    cy, cx = uniform(g, *centre, n) * s, uniform(g, *centre, n) * s
    size = uniform(g, *radius, n) * s
    angle = uniform(g, -max_angle, max_angle, n)
    return labels, cy, cx, size, angle


def make_synthetic(n: int, seed: int = 0, image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images uint8 (n, 3, S, S), labels int64 (n,))``, deterministic in ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    s = image_size
    labels, cy, cx, size, angle = random_layout(g, n, s)
    fg = (FOREGROUND[labels] + 0.06 * torch.randn(n, 3, generator=g)).clamp(0, 1)
    bg = (BACKGROUND[labels] + 0.06 * torch.randn(n, 3, generator=g)).clamp(0, 1)
    shade_dir = uniform(g, -math.pi, math.pi, n)
    shade_amp = uniform(g, 0.0, 0.25, n)

    alpha, foreground = shape_layer(labels, cy, cx, size, angle, fg, s)
    # background: a linear shading gradient in a random direction
    ys, xs = pixel_grid(s)
    gy, gx = (ys / s - 0.5)[None], (xs / s - 0.5)[None]
    grad = torch.cos(shade_dir)[:, None, None] * gx + torch.sin(shade_dir)[:, None, None] * gy
    background = bg[:, :, None, None] * (1.0 + shade_amp[:, None, None, None] * grad[:, None])
    return to_uint8(alpha * foreground + (1 - alpha) * background, g), labels
