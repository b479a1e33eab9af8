"""A patch trigger whose content is an arbitrary image (e.g. BadCLIP's optimised patch).

The patch is a float tensor ``(3, h, w)`` in [0, 1], pasted in [0, 1] pixel space before
any preprocessing. By default it goes to the image centre (BadCLIP: a 16x16 patch at
rows/cols 104..119 of a 224x224 image, i.e. ``(H - h) // 2``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dede.triggers.patch import Trigger

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _to_chw(a: torch.Tensor, source: str) -> torch.Tensor:
    """(H, W, 3), (3, H, W) or (1, 3, H, W) -> a new float32 (3, H, W) tensor in [0, 1]."""
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3 or 3 not in (a.shape[0], a.shape[-1]):
        raise ValueError(f"{source}: expected a patch of shape (H, W, 3) or (3, H, W), got {tuple(a.shape)}")
    if a.shape[0] != 3:  # channels last
        a = a.permute(2, 0, 1)
    if a.dtype == torch.bool or a.is_complex():
        raise ValueError(f"{source}: unsupported patch dtype {a.dtype}")
    if not a.is_floating_point():
        if a.min() < 0 or a.max() > 255:
            raise ValueError(f"{source}: integer patch values must be in 0..255")
        a = a.float() / 255.0
    a = a.detach().float()
    if not torch.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise ValueError(f"{source}: float patch values must be finite and in [0, 1] "
                         f"(got min {a.min().item():.4g}, max {a.max().item():.4g})")
    if a.shape[-1] < 1 or a.shape[-2] < 1:
        raise ValueError(f"{source}: empty patch of shape {tuple(a.shape)}")
    return a.clone(memory_format=torch.contiguous_format)


def load_patch(path: str | os.PathLike) -> torch.Tensor:
    """Load a patch from an image file, a ``.npy`` array or a ``.pt`` tensor as (3, h, w) in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"patch file not found: {path} (set attack.trigger.path)")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        return _to_chw(torch.from_numpy(arr), str(path))
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        return _to_chw(torch.from_numpy(np.ascontiguousarray(arr)), str(path))
    if suffix in (".pt", ".pth"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and "patch" in obj:
            obj = obj["patch"]
        if not isinstance(obj, torch.Tensor):
            raise ValueError(f"{path}: expected a tensor (or a dict with a 'patch' tensor), got {type(obj).__name__}")
        return _to_chw(obj, str(path))
    raise ValueError(f"{path}: unsupported patch file type {suffix!r}; use an image "
                     f"({', '.join(sorted(IMAGE_SUFFIXES))}), .npy or .pt")


class ImagePatchTrigger(Trigger):
    """Paste an image patch ``(3, h, w)`` in [0, 1] at the image centre or at ``row``/``col``.

    Exactly one source: ``path`` (image file, ``.npy`` (H, W, 3) or (3, H, W), uint8 0..255 or
    float in [0, 1], or ``.pt`` tensor) or ``size`` (a square random patch from ``seed``, a
    starting point for patch optimisation). ``patch`` is a plain attribute that an optimiser
    may replace; it is clamped to [0, 1] when pasted and gradients flow into it.

    ``reference_size``: if set and the images have another size, the patch is resized
    (bilinear) by ``image_size / reference_size`` and a given ``row``/``col`` is scaled the
    same way (rounded), like :class:`~dede.triggers.patch.PatchTrigger`; the centre default
    stays the centre. With ``reference_size=None`` the patch is pasted at its own size.
    """

    name = "image_patch"

    def __init__(self, path: str | os.PathLike | None = None, size: int | None = None, seed: int = 0,
                 row: int | None = None, col: int | None = None, reference_size: int | None = None) -> None:
        if (path is None) == (size is None):
            raise ValueError("ImagePatchTrigger needs exactly one of `path` (a patch file) or `size` "
                             "(a seeded random square patch)")
        if path is not None:
            self.patch = load_patch(path)
        else:
            if int(size) < 1:
                raise ValueError(f"patch size must be >= 1, got {size}")
            g = torch.Generator().manual_seed(int(seed))
            self.patch = torch.rand(3, int(size), int(size), generator=g)
        self.path = None if path is None else Path(path)
        self.row = None if row is None else int(row)
        self.col = None if col is None else int(col)
        self.reference_size = None if reference_size is None else int(reference_size)

    @classmethod
    def from_tensor(cls, patch: torch.Tensor, row: int | None = None, col: int | None = None,
                    reference_size: int | None = None) -> "ImagePatchTrigger":
        """Wrap a patch tensor (3, h, w) (or (h, w, 3)) in [0, 1]; the tensor is copied."""
        self = cls.__new__(cls)
        self.patch = _to_chw(torch.as_tensor(patch).cpu(), "patch tensor")
        self.path = None
        self.row = None if row is None else int(row)
        self.col = None if col is None else int(col)
        self.reference_size = None if reference_size is None else int(reference_size)
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Write the patch: ``.pt`` (float tensor (3, h, w)), ``.npy`` (float32 (h, w, 3)) or an
        image file (8-bit, so rounded to multiples of 1/255)."""
        path = Path(path)
        p = self.patch.detach().float().clamp(0, 1).cpu()
        suffix = path.suffix.lower()
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix in (".pt", ".pth"):
            torch.save(p.clone(), path)
        elif suffix == ".npy":
            np.save(path, p.permute(1, 2, 0).numpy().astype(np.float32))
        elif suffix in IMAGE_SUFFIXES:
            from PIL import Image

            arr = p.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(arr, mode="RGB").save(path)
        else:
            raise ValueError(f"{path}: unsupported patch file type {suffix!r}; use .pt, .npy or an image suffix")
        return path

    def box(self, height: int, width: int | None = None) -> tuple[int, int, int, int]:
        """(row, col, patch_h, patch_w) of the pasted patch on a ``height`` x ``width`` image."""
        width = height if width is None else width
        ph, pw = self.patch.shape[-2:]
        row, col = self.row, self.col
        if self.reference_size is not None and height != self.reference_size:
            s = height / self.reference_size
            ph, pw = max(1, round(ph * s)), max(1, round(pw * s))
            row = None if row is None else round(row * s)
            col = None if col is None else round(col * s)
        row = (height - ph) // 2 if row is None else row
        col = (width - pw) // 2 if col is None else col
        return row, col, ph, pw

    def _check(self, height: int, width: int) -> None:
        r, c, ph, pw = self.box(height, width)
        if ph > height or pw > width:
            raise ValueError(f"image patch {ph}x{pw} is larger than the {height}x{width} images")
        if r < 0 or c < 0 or r + ph > height or c + pw > width:
            raise ValueError(f"image patch rows {r}..{r + ph - 1}, cols {c}..{c + pw - 1} do not fit "
                             f"a {height}x{width} image; change attack.trigger.row/col")

    def check_size(self, image_size: int) -> None:
        self._check(image_size, image_size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3 or x.shape[-3] != 3:
            raise ValueError(f"image patch trigger expects images (..., 3, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        self._check(h, w)
        r, c, ph, pw = self.box(h, w)
        p = self.patch.to(x.device, x.dtype).clamp(0, 1)
        if p.shape[-2:] != (ph, pw):
            p = F.interpolate(p[None], size=(ph, pw), mode="bilinear", align_corners=False,
                              antialias=True)[0].clamp(0, 1)
        out = x.clone()
        out[..., r:r + ph, c:c + pw] = p
        return out

    def __repr__(self) -> str:
        return (f"ImagePatchTrigger(patch={tuple(self.patch.shape)}, row={self.row}, col={self.col}, "
                f"reference_size={self.reference_size}, path={self.path})")
