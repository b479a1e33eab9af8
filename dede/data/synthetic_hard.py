"""A harder embedded data set: the ten shapes of `dede.data.synthetic` without colour cues.

The class is the shape and nothing else. Colours are drawn per image, independently of the
class: the shape's colour, a textured background (an oriented grating, smooth noise or a
checkerboard, each in two random colours) and up to two occluding rectangles of random
colours and sizes at random places. A share of the images (``BRIGHT_SHARE``) also carries a
solid bright square of 6..12 pixels (at 32x32) at a random place, white, near-white or tinted,
so a white square patch is not by itself out of distribution. Deterministic in the seed and
made with vectorised tensor operations.

What keeps the classes learnable for a small SimCLR encoder: every image is either a light
shape on a dark background or a dark one on a light background (the choice is random, not
the class's), so the shape survives the grayscale and colour-jitter augmentations; the
background texture has a lower contrast than the shape. Without that luminance gap the tiny
clean SimCLR victim's features gave a downstream accuracy of 0.35 even with plain backgrounds
and no occluders.

Colour carries no class information here, and SimCLR's colour jitter makes embeddings largely
colour-invariant, so a decoder has to restore colours from the visible patches alone.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dede.data.synthetic import pixel_grid, random_layout, shape_layer, to_uint8, uniform

# bumped whenever the images change; conf/data/synthetic_hard.yaml names it in data.home.version,
# so victims cached from an older version are not reused (the cache key hashes data.home)
VERSION = 2
BRIGHT_SHARE = 0.3  # share of the images with a solid bright square
OCCLUDER_SHARE = 0.3  # chance of each of the two random-colour rectangles
GAP = 0.6  # light colours have every channel >= GAP, dark ones <= 1 - GAP


def _rectangles(h: torch.Tensor, w: torch.Tensor, g: torch.Generator, s: int) -> torch.Tensor:
    """Masks ``(n, 1, s, s)`` of axis-aligned ``h`` x ``w`` pixel rectangles at random places
    inside the image."""
    n = len(h)
    y0 = (torch.rand(n, generator=g) * (s - h + 1)).floor()
    x0 = (torch.rand(n, generator=g) * (s - w + 1)).floor()
    rows = torch.arange(s, dtype=torch.float32)
    in_y = (rows >= y0[:, None]) & (rows < (y0 + h)[:, None])
    in_x = (rows >= x0[:, None]) & (rows < (x0 + w)[:, None])
    return (in_y[:, :, None] & in_x[:, None, :])[:, None]


def _texture(g: torch.Generator, n: int, s: int) -> torch.Tensor:
    """Per image one of three textures in [0, 1], ``(n, 1, s, s)``: an oriented grating, smooth
    noise, or a checkerboard."""
    ys, xs = pixel_grid(s)
    theta, phase = uniform(g, 0, math.pi, n)[:, None, None], uniform(g, 0, 2 * math.pi, n)[:, None, None]
    freq = uniform(g, 1.5, 5.0, n)[:, None, None] / s
    grating = 0.5 + 0.5 * torch.sin(2 * math.pi * freq * (xs * torch.cos(theta) + ys * torch.sin(theta)) + phase)
    coarse = torch.rand(n, 1, 4, 4, generator=g)
    noise = F.interpolate(coarse, size=(s, s), mode="bicubic", align_corners=False)[:, 0]
    lo, hi = noise.amin((1, 2), keepdim=True), noise.amax((1, 2), keepdim=True)
    noise = (noise - lo) / (hi - lo + 1e-6)
    cell = uniform(g, 3.0, 8.0, n)[:, None, None] * s / 32
    oy, ox = uniform(g, 0, 8, n)[:, None, None], uniform(g, 0, 8, n)[:, None, None]
    checker = (((ys + oy) / cell).floor() + ((xs + ox) / cell).floor()).remainder(2)
    kind = torch.randint(0, 3, (n, 1, 1), generator=g)
    return torch.where(kind == 0, grating, torch.where(kind == 1, noise, checker))[:, None]


def make_synthetic_hard(n: int, seed: int = 0, image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images uint8 (n, 3, S, S), labels int64 (n,))``, deterministic in ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    s = image_size
    # rotations within +-18 degrees: with colour gone, a square turned by 45 degrees would be a diamond
    labels, cy, cx, size, angle = random_layout(g, n, s, centre=(0.3, 0.7), radius=(0.26, 0.37),
                                                max_angle=math.pi / 10)

    # colours: all independent of the class; a light shape on a dark background or the reverse
    light_shape = torch.rand(n, 1, generator=g) < 0.5
    light, dark = GAP + (1 - GAP) * torch.rand(n, 3, generator=g), (1 - GAP) * torch.rand(n, 3, generator=g)
    fg, base = torch.where(light_shape, light, dark), torch.where(light_shape, dark, light)
    direction = F.normalize(torch.randn(n, 3, generator=g), dim=1)
    second = (base + uniform(g, 0.05, 0.2, n)[:, None] * direction).clamp(0, 1)
    t = _texture(g, n, s)
    background = base[:, :, None, None] + (second - base)[:, :, None, None] * t

    alpha, foreground = shape_layer(labels, cy, cx, size, angle, fg, s)
    img = alpha * foreground + (1 - alpha) * background

    px = s / 32
    for _ in range(2):  # occluding rectangles of random colours
        on = torch.rand(n, generator=g) < OCCLUDER_SHARE
        h = (uniform(g, 3, 8, n) * px).round().clamp(min=1)
        w = (uniform(g, 3, 8, n) * px).round().clamp(min=1)
        mask = _rectangles(h, w, g, s) & on[:, None, None, None]
        img = torch.where(mask, torch.rand(n, 3, 1, 1, generator=g), img)
    # solid bright squares: pure white, near-white or lightly tinted
    on = torch.rand(n, generator=g) < BRIGHT_SHARE
    side = (uniform(g, 6, 12.999, n) * px).floor()
    tint = torch.tensor([0.0, 0.08, 0.5])[torch.randint(0, 3, (n,), generator=g)]
    colour = 1 - tint[:, None] * torch.rand(n, 3, generator=g)
    mask = _rectangles(side, side, g, s) & on[:, None, None, None]
    img = torch.where(mask, colour[:, :, None, None], img)
    return to_uint8(img, g), labels
