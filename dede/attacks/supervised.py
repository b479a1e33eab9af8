"""Supervised victims: a classifier trained with cross-entropy whose penultimate features
serve as the "encoder".

* `make_clean_supervised`: the clean control, trained on the home train set;
* `make_asset`: the ASSET-style backdoored classifier (the ``asset`` attack of the DeDe
  paper's code), trained from scratch on the home train set where a ``poison_rate`` share
  of the images carries the trigger and is relabelled as the target class (all-to-one).
"""
from __future__ import annotations

import logging
from pathlib import Path

import kornia.augmentation as K
import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from dede.optim import sgd_or_adam
from dede.attacks.common import fit_on
from dede.data import ImageSet, home_split
from dede.triggers import Trigger
from dede.victims.encoders import Victim

log = logging.getLogger(__name__)


def crop_flip_augment(image_size: int, padding: int = 4) -> nn.Module:
    """The usual CIFAR classifier augmentation, batched: random crop with zero padding and
    horizontal flip (``padding`` 0: flip only)."""
    ops = [K.RandomCrop((image_size, image_size), padding=padding)] if padding > 0 else []
    return K.AugmentationSequential(*ops, K.RandomHorizontalFlip())


def poison_all_to_one(data: ImageSet, trigger: Trigger, rate: float, target: int, seed: int) -> ImageSet:
    """A copy of ``data`` where ``round(rate * N)`` seeded samples carry the trigger and have
    their label set to ``target``; ``poisoned`` marks exactly those samples."""
    out = data.poison(trigger, rate, seed)
    labels = out.labels.clone()
    labels[out.poisoned] = int(target)
    return ImageSet(out.images, labels, out.poisoned, out.name)


class SupervisedModule(L.LightningModule):
    """Cross-entropy training of ``net`` (the victim's full classifier) on batches
    ``(images in [0, 1], labels, ...)``; augmentation runs batched on the device, the
    victim's own normalisation is applied before the classifier."""

    def __init__(self, net: nn.Module, victim: Victim, lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 5e-4, optimizer: str = "sgd", cosine: bool = True, crop_padding: int = 4,
                 augment: bool = True, label_smoothing: float = 0.0) -> None:
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be sgd or adam, got {optimizer!r}")
        super().__init__()
        self.save_hyperparameters(ignore=["net", "victim"])
        self.net, self.victim = net, victim
        self.augment = crop_flip_augment(victim.image_size, crop_padding) if augment else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.victim.normalise(x))

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        with torch.no_grad():
            x = self.augment(x)
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        acc = (logits.argmax(1) == y).float().mean()
        self.log_dict({"supervised/loss": loss, "supervised/train_acc": acc}, prog_bar=True, on_step=False,
                      on_epoch=True, batch_size=len(x))
        return loss

    def configure_optimizers(self):
        return sgd_or_adam(self.net.parameters(), self.hparams, self.trainer.max_epochs)


def _train(cfg: DictConfig, p: DictConfig, victim: Victim, full: nn.Module, data: ImageSet, log_dir: Path,
           name: str) -> None:
    L.seed_everything(cfg.seed, workers=True)
    module = SupervisedModule(full, victim, lr=p.lr, momentum=p.get("momentum", 0.9),
                              weight_decay=p.get("weight_decay", 5e-4), optimizer=p.get("optimizer", "sgd"),
                              cosine=p.get("cosine", True), crop_padding=p.get("crop_padding", 4),
                              augment=p.get("augment", True), label_smoothing=p.get("label_smoothing", 0.0))
    fit_on(cfg, module, (data.images, data.labels), p.batch_size, p.epochs, log_dir, name)


def make_clean_supervised(cfg: DictConfig, victim: Victim, full: nn.Module, log_dir: Path) -> None:
    """The clean supervised victim (``attack.pretrain`` with ``kind: supervised``)."""
    _train(cfg, cfg.attack.pretrain, victim, full, home_split(cfg, "train"), log_dir, "supervised")


def make_asset(cfg: DictConfig, victim: Victim, full: nn.Module, log_dir: Path) -> None:
    """The ASSET-style backdoored classifier, trained from scratch with ``attack.make``."""
    m = cfg.attack.make
    trigger = instantiate(cfg.attack.trigger)
    trigger.check_size(cfg.data.image_size)
    data = poison_all_to_one(home_split(cfg, "train"), trigger, float(m.poison_rate), int(cfg.attack.target), cfg.seed)
    log.info("ASSET: %d of %d training images triggered and relabelled %d", int(data.poisoned.sum()), len(data),
             cfg.attack.target)
    _train(cfg, m, victim, full, data, log_dir, "asset")
