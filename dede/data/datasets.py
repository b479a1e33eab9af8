"""In-memory image sets and loaders for the embedded and the torchvision data sets.

Every set is held as a uint8 tensor ``(N, 3, H, W)`` with labels and a per-sample
boolean ``poisoned`` indicator, so poisoning, triggering and embedding are tensor
operations over the whole set rather than per-sample Python work.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dede.data.synthetic import N_CLASSES as SYNTHETIC_CLASSES, make_synthetic
from dede.data.synthetic_hard import VERSION as SYNTHETIC_HARD_VERSION, make_synthetic_hard
from dede.triggers import Trigger, apply_to_uint8

# made from n and seed; the others are read from disk and subsampled
GENERATED = {"synthetic": make_synthetic, "synthetic_hard": make_synthetic_hard}
# the version of each generator's images this code makes (1 unless they changed since release)
VERSIONS = {"synthetic_hard": SYNTHETIC_HARD_VERSION}


def check_version(name: str, version) -> None:
    """A ``data.home.version`` other than the one this code generates is an error (a config
    written for older images would silently get new ones)."""
    have = VERSIONS.get(name, 1)
    if version is not None and int(version) != have:
        raise ValueError(f"data.home.version={version} for data set '{name}', but this code generates version "
                         f"{have} of it; set data.home.version={have} (victims of other versions are not reused)")


def salted_generator(seed: int, purpose: str) -> torch.Generator:
    """A generator whose stream depends on ``seed`` and on what it is for, so that e.g. the
    poisoned subset and the held-out split drawn with the same seed are independent."""
    salt = int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:7], "little")
    return torch.Generator().manual_seed(salt)


class DataNotFoundError(FileNotFoundError):
    """A real data set is absent and downloading is off."""


@dataclass
class ImageSet(Dataset):
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,), -1 when unlabelled
    poisoned: torch.Tensor = field(default=None)  # bool (N,)
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.poisoned is None:
            self.poisoned = torch.zeros(len(self.images), dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i].float().div_(255), self.labels[i], self.poisoned[i]

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def float_images(self) -> torch.Tensor:
        return self.images.float().div_(255)

    def subset(self, idx: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[idx], self.labels[idx], self.poisoned[idx], self.name)

    def split(self, fraction: float, seed: int) -> tuple["ImageSet", "ImageSet"]:
        """Seeded split into ``(rest, held_out)`` with ``fraction`` of the samples held out."""
        perm = torch.randperm(len(self), generator=salted_generator(seed, "split"))
        k = int(round(len(self) * fraction))
        return self.subset(perm[k:].sort().values), self.subset(perm[:k].sort().values)

    def poison(self, trigger: Trigger, rate: float, seed: int, only_label: int | None = None) -> "ImageSet":
        """A copy where a ``rate`` share of the samples (of class ``only_label`` if given, for
        clean-label attacks) carries the trigger; ``poisoned`` marks exactly those samples."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"poison_rate must be in [0, 1], got {rate}")
        pool = torch.arange(len(self)) if only_label is None else torch.nonzero(self.labels == only_label)[:, 0]
        k = int(round(rate * len(pool)))
        chosen = pool[torch.randperm(len(pool), generator=salted_generator(seed, "poison"))[:k]]
        images, poisoned = self.images.clone(), self.poisoned.clone()
        if k:
            images[chosen] = apply_to_uint8(trigger, images[chosen])
            poisoned[chosen] = True
        return ImageSet(images, self.labels, poisoned, self.name)

    def triggered(self, trigger: Trigger) -> "ImageSet":
        """Every sample with the trigger applied."""
        return ImageSet(apply_to_uint8(trigger, self.images), self.labels,
                        torch.ones(len(self), dtype=torch.bool), self.name)


def _resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x.contiguous()
    out = []
    for i in range(0, len(x), 2048):
        y = F.interpolate(x[i:i + 2048].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(y.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def _from_pil(ds, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.transforms.functional import pil_to_tensor, resize

    imgs, labels = [], []
    for img, y in ds:
        t = pil_to_tensor(img.convert("RGB"))
        imgs.append(resize(t, [size, size], antialias=True))
        labels.append(int(y))
    return torch.stack(imgs), torch.tensor(labels)


# --- readers of the real data sets: (root, split, download, image_size) -> (images uint8, labels) ---

def _cifar(cls_name: str):
    def read(root: Path, split: str, download: bool, image_size: int):
        import torchvision.datasets as tvd

        ds = getattr(tvd, cls_name)(str(root), train=(split == "train"), download=download)
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2), torch.tensor(ds.targets)
    return read


def _split_arrays(cls_name: str):
    """STL-10 and SVHN: ``split`` is a torchvision split name, ``data`` is already (N, 3, H, W)."""
    def read(root: Path, split: str, download: bool, image_size: int):
        import torchvision.datasets as tvd

        ds = getattr(tvd, cls_name)(str(root), split=split, download=download)
        return torch.from_numpy(ds.data), torch.from_numpy(ds.labels).long()
    return read


def _grey(cls_name: str):
    def read(root: Path, split: str, download: bool, image_size: int):
        import torchvision.datasets as tvd

        ds = getattr(tvd, cls_name)(str(root), train=(split == "train"), download=download)
        return ds.data[:, None].expand(-1, 3, -1, -1), ds.targets.long()
    return read


def _gtsrb(root: Path, split: str, download: bool, image_size: int):
    import torchvision.datasets as tvd

    return _from_pil(tvd.GTSRB(str(root), split=split, download=download), image_size)


def _image_folder(root: Path, split: str, download: bool, image_size: int):
    import torchvision.datasets as tvd

    folder = root / split if (root / split).is_dir() else root
    if not folder.is_dir():
        raise DataNotFoundError(f"image folder {folder} does not exist")
    return _from_pil(tvd.ImageFolder(str(folder)), image_size)


@dataclass(frozen=True)
class RealSet:
    """How to read a real data set, its class count (None: known only once read) and the files
    a user must put under ``data.root`` when it is missing."""

    read: Callable[[Path, str, bool, int], tuple[torch.Tensor, torch.Tensor]]
    classes: int | None
    files: str


REAL: dict[str, RealSet] = {
    "cifar10": RealSet(_cifar("CIFAR10"), 10, "cifar-10-batches-py/ (from cifar-10-python.tar.gz)"),
    "cifar100": RealSet(_cifar("CIFAR100"), 100, "cifar-100-python/ (from cifar-100-python.tar.gz)"),
    "stl10": RealSet(_split_arrays("STL10"), 10, "stl10_binary/ (from stl10_binary.tar.gz)"),
    "svhn": RealSet(_split_arrays("SVHN"), 10, "train_32x32.mat / test_32x32.mat"),
    "gtsrb": RealSet(_gtsrb, 43, "gtsrb/GTSRB/Training and gtsrb/GTSRB/Final_Test (the torchvision GTSRB layout)"),
    "mnist": RealSet(_grey("MNIST"), 10, "MNIST/raw/*-ubyte files"),
    "fashion_mnist": RealSet(_grey("FashionMNIST"), 10, "FashionMNIST/raw/*-ubyte files"),
    "imagefolder": RealSet(_image_folder, None, "one sub-folder of images per class"),
}
KNOWN = [*GENERATED, *REAL]
# classes of each data set, known without loading it (an image folder has as many as sub-folders)
NUM_CLASSES = {"synthetic": SYNTHETIC_CLASSES, "synthetic_hard": SYNTHETIC_CLASSES} | {
    k: v.classes for k, v in REAL.items() if v.classes is not None}


@functools.lru_cache(maxsize=16)
def _load_cached(name: str, split: str, root: str, download: bool, image_size: int,
                 n: int, seed: int) -> ImageSet:
    if name in GENERATED:
        images, labels = GENERATED[name](n, seed=seed, image_size=image_size)
        return ImageSet(images, labels, name=name)
    if name not in REAL:
        raise ValueError(f"unknown data set {name!r}; known: {KNOWN}")
    root_p = Path(root).expanduser()
    try:
        images, labels = REAL[name].read(root_p, split, download, image_size)
    except (RuntimeError, FileNotFoundError) as exc:
        if isinstance(exc, DataNotFoundError):
            raise
        raise DataNotFoundError(
            f"data set '{name}' (split '{split}') not found under {root_p}: put {REAL[name].files} "
            f"in {root_p} (set data.root to another folder if it lives elsewhere), or allow downloading with "
            f"data.download=true. Original error: {exc}") from exc
    images = _resize_uint8(images.contiguous(), image_size)
    return ImageSet(images, labels.long(), name=name)


def stratified_indices(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded ``n``-sample subset in which every label keeps its share.

    Each label gets the floor of its exact share ``n * count / len``; the samples left over go to
    the labels with the largest remainders (ties in a seeded random order), so the total is
    exactly ``n``. With a single label (e.g. all -1, unlabelled) this is a plain random subset.
    ``n <= 0`` or ``n >= len(labels)`` selects everything.
    """
    total = len(labels)
    if n <= 0 or n >= total:
        return torch.arange(total)
    g = salted_generator(seed, "subsample")
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    quota, remainder = counts * n // total, counts * n % total
    left = n - int(quota.sum())
    if left:
        shuffled = torch.randperm(len(classes), generator=g)
        quota[shuffled[torch.sort(remainder[shuffled], descending=True, stable=True).indices[:left]]] += 1
    order = torch.randperm(total, generator=g)
    # a random order within each class: stable-sort the random permutation by class
    by_class = order[torch.sort(inverse[order], stable=True).indices]
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(total) - start[inverse[by_class]]
    return by_class[rank < quota[inverse[by_class]]].sort().values


def load_split(name: str, split: str, root: str = "data", download: bool = False, image_size: int = 32,
               n: int = 0, seed: int = 0) -> ImageSet:
    """Load one split of a data set as an `ImageSet` (cached within the process).

    ``n``/``seed``: the size and seed of a generated set; of a real set, a seeded subset of
    ``n`` samples in which every class keeps its share (`stratified_indices`; 0 = all).
    """
    if name not in KNOWN:
        raise ValueError(f"unknown data set {name!r}; known: {KNOWN}")
    if name in GENERATED:
        s = _load_cached(name, split, str(root), bool(download), int(image_size), int(n), int(seed))
        return ImageSet(s.images, s.labels, s.poisoned.clone(), s.name)
    s = _load_cached(name, split, str(root), bool(download), int(image_size), 0, 0)
    idx = stratified_indices(s.labels, int(n), int(seed))
    if len(idx) == len(s):
        return ImageSet(s.images, s.labels, s.poisoned.clone(), s.name)
    return s.subset(idx)
