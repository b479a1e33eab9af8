"""Making victims: every victim-making phase (clean pretraining, the attack, an optimised
trigger) is fitted through `fit_victim`, which logs a progress line per epoch."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from dede.training import EpochProgress

log = logging.getLogger(__name__)


def victim_trainer(cfg: DictConfig, epochs: int, log_dir: Path, name: str,
                   callbacks: Sequence[Callback] = ()) -> L.Trainer:
    """A trainer for making victims: the run's accelerator/devices/precision, its own epochs."""
    callbacks = list(callbacks)
    return instantiate(cfg.trainer, max_epochs=int(epochs), logger=CSVLogger(str(log_dir), name=name),
                       callbacks=callbacks,
                       enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                       enable_model_summary=False, check_val_every_n_epoch=None, limit_val_batches=0)


def fit_victim(cfg: DictConfig, module: L.LightningModule, loader: Any, epochs: int, log_dir: Path,
               name: str) -> None:
    """Fit the victim-making phase ``name`` for ``epochs`` epochs, with a progress line per epoch."""
    victim_trainer(cfg, epochs, log_dir, name, [EpochProgress(name)]).fit(module, loader)
