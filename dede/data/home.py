"""The home data set of a run (the victim's training and test splits), as its config names it."""
from __future__ import annotations

from omegaconf import DictConfig

from dede.data.datasets import ImageSet, check_version, load_split


def home_split(cfg: DictConfig, split: str) -> ImageSet:
    """``split`` ("train" or "test") of ``cfg.data.home``, subsampled (seeded, class-stratified)
    to ``home.n_train`` / ``home.n_test`` images when those are set."""
    h = cfg.data.home
    check_version(h.name, h.get("version"))
    n = h.get("n_train" if split == "train" else "n_test", 0)
    seed = h.get("seed", 0) + (0 if split == "train" else 1)
    return load_split(h.name, h.get(f"{split}_split", split), h.root, h.download, cfg.data.image_size, n, seed)
