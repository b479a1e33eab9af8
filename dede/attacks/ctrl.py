"""CTRL (Li et al., ICCV 2023): a clean-label backdoor planted during SimCLR pretraining.

A share of the training set, drawn from the *target class* only, carries the frequency
trigger (labels are never touched: SSL uses none). Contrastive learning ties the trigger to
the target class's features, so triggered inputs of any class embed like the target class.
The victim is trained from scratch on the poisoned set; nothing else differs from SimCLR.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from dede.attacks.common import fit_on
from dede.attacks.simclr import simclr_module
from dede.data import ImageSet, home_split
from dede.victims.encoders import Victim


def poison_target_class(home: ImageSet, trigger, rate: float, target: int, seed: int) -> ImageSet:
    """Trigger ``rate`` x N images of the whole set, all of class ``target`` (clean label)."""
    n_target = int((home.labels == target).sum())
    if n_target == 0:
        raise ValueError(f"no image of target class {target} in the home data set '{home.name}'")
    want = rate * len(home)
    if want > n_target:
        raise ValueError(f"attack.make.poison_rate={rate} asks for {want:.0f} poisoned images but the target "
                         f"class {target} has only {n_target}; lower the rate")
    return home.poison(trigger, want / n_target, seed=seed, only_label=target)


def make_ctrl(cfg: DictConfig, victim: Victim, full: torch.nn.Module, log_dir: Path) -> None:
    m = cfg.attack.make
    home = poison_target_class(home_split(cfg, "train"), instantiate(cfg.attack.trigger), float(m.poison_rate),
                               int(cfg.attack.target), cfg.seed)
    L.seed_everything(cfg.seed, workers=True)
    fit_on(cfg, simclr_module(full, victim, m), (home.images,), m.batch_size, m.epochs, log_dir, "ctrl")
