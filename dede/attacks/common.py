"""What every attack recipe shares: the target-class reference images, and fitting a victim
module on a set of images (one loader recipe, one resumable fit)."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig

from dede.data import ImageSet, TensorBatches, home_split, make_loader
from dede.victims.making import fit_victim


def reference_images(cfg: DictConfig, home: ImageSet, n: int) -> torch.Tensor:
    """The target-class reference images: from ``attack.reference_file`` (the original ``.npz``
    with ``x`` (N,H,W,3) uint8) or, without one, ``n`` seeded picks of the target class."""
    path = cfg.attack.get("reference_file")
    if path:
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            x = torch.from_numpy(np.asarray(z["x"])).permute(0, 3, 1, 2)
        return x[:n].float().div(255)
    idx = torch.nonzero(home.labels == cfg.attack.target)[:, 0]
    if len(idx) == 0:
        raise ValueError(f"no image of target class {cfg.attack.target} in the home data set '{home.name}'")
    pick = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(cfg.seed))[:n]]
    return home.images[pick].float().div(255)


def shadow_and_references(cfg: DictConfig) -> tuple[ImageSet, torch.Tensor]:
    """The attacker's shadow data (a seeded ``attack.make.shadow_fraction`` of the home training
    set, all of it at 1) and its ``attack.make.n_references`` target-class reference images."""
    m = cfg.attack.make
    home = home_split(cfg, "train")
    shadow = home.split(m.shadow_fraction, cfg.seed)[1] if m.shadow_fraction < 1 else home
    return shadow, reference_images(cfg, home, m.n_references)


def fit_on(cfg: DictConfig, module: L.LightningModule, tensors: tuple[torch.Tensor, ...], batch_size: int,
           epochs: int, log_dir: Path, name: str) -> None:
    """Fit ``module`` (the victim-making phase ``name``) for ``epochs`` epochs on shuffled batches
    of ``tensors`` (images, and labels or captions if the module takes them), resumable."""
    loader = make_loader(TensorBatches(*tensors), int(batch_size), shuffle=True, drop_last=True,
                         num_workers=cfg.data.num_workers, seed=cfg.seed)
    fit_victim(cfg, module, loader, epochs, log_dir, name)
