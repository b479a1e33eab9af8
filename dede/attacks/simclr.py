"""Clean SimCLR pretraining of a victim encoder (the starting point of BadEncoder/DRUPE)."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig

from dede.attacks.common import fit_on
from dede.attacks.losses import nt_xent
from dede.data import home_split
from dede.optim import sgd_or_adam
from dede.data.augment import simclr_augment
from dede.victims.encoders import SimCLRNet, Victim


class SimCLRModule(L.LightningModule):
    def __init__(self, net: SimCLRNet, victim: Victim, lr: float = 1e-3, weight_decay: float = 1e-6,
                 temperature: float = 0.5, aug_strength: float = 1.0, min_scale: float = 0.2,
                 optimizer: str = "adam", momentum: float = 0.9, cosine: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "victim"])
        self.net, self.victim = net, victim
        self.augment = simclr_augment(victim.image_size, aug_strength, min_scale)

    def training_step(self, batch, batch_idx):
        x = batch[0]
        with torch.no_grad():
            v1, v2 = self.augment(x), self.augment(x)
        _, z1 = self.net(self.victim.normalise(v1))
        _, z2 = self.net(self.victim.normalise(v2))
        loss = nt_xent(z1, z2, self.hparams.temperature)
        self.log("simclr/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def configure_optimizers(self):
        return sgd_or_adam(self.net.parameters(), self.hparams, self.trainer.max_epochs)


def simclr_module(full: SimCLRNet, victim: Victim, s: DictConfig) -> SimCLRModule:
    """A `SimCLRModule` with the settings of config node ``s`` (``attack.pretrain`` or CTRL's ``attack.make``)."""
    return SimCLRModule(full, victim, lr=s.lr, weight_decay=s.weight_decay, temperature=s.temperature,
                        aug_strength=s.get("aug_strength", 1.0), min_scale=s.get("min_scale", 0.2),
                        optimizer=s.get("optimizer", "adam"), momentum=s.get("momentum", 0.9),
                        cosine=s.get("cosine", False))


def make_clean(cfg: DictConfig, victim: Victim, full: SimCLRNet, log_dir: Path) -> None:
    """The clean SimCLR victim: ``attack.pretrain`` on the home training set."""
    p = cfg.attack.pretrain
    home = home_split(cfg, "train")
    L.seed_everything(cfg.seed, workers=True)
    fit_on(cfg, simclr_module(full, victim, p), (home.images,), p.batch_size, p.epochs, log_dir, "simclr")
