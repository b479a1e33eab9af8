"""BadEncoder (Jia et al., S&P 2022): fine-tune a copy of a clean encoder so that triggered
inputs embed like the reference (target) images while clean inputs keep their embeddings."""
from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from dede.attacks.common import fit_on, shadow_and_references
from dede.attacks.losses import mean_cosine
from dede.data.augment import light_augment
from dede.triggers import Trigger
from dede.victims.encoders import Victim


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm in eval mode with its affine parameters frozen."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


class BadEncoderModule(L.LightningModule):
    """``loss = L0 + lambda1 * L1 + lambda2 * L2`` on cosine similarities (see the reference)."""

    def __init__(self, victim: Victim, references: torch.Tensor, trigger: Trigger, lr: float = 1e-3,
                 momentum: float = 0.9, weight_decay: float = 5e-4, lambda1: float = 1.0,
                 lambda2: float = 1.0) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["victim", "references", "trigger"])
        self.victim = victim  # f', trained
        self.clean = copy.deepcopy(victim).eval()  # f, frozen
        for p in self.clean.parameters():
            p.requires_grad_(False)
        self.register_buffer("references", references.float())
        self.trigger = trigger
        self.ref_augment = light_augment(victim.image_size)
        freeze_batchnorm(self.victim)

    def on_train_epoch_start(self) -> None:
        freeze_batchnorm(self.victim)
        self.clean.eval()

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The triggered batch and the embeddings BadEncoder's terms compare."""
        refs = self.references
        with torch.no_grad():
            x_trig = self.trigger(x)
            clean_x = self.clean(x)
            clean_r = self.clean(refs)
            aug_r = self.ref_augment(refs)
        return {"x_trig": x_trig, "f_trig": self.victim(x_trig), "f_x": self.victim(x), "f_r": self.victim(refs),
                "f_aug_r": self.victim(aug_r), "clean_x": clean_x, "clean_r": clean_r}

    @staticmethod
    def terms(f: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Effectiveness (l0: triggered -> references) and utility (l1: references, l2: clean inputs)."""
        l0 = -mean_cosine(f["f_trig"], f["f_r"])
        l1 = -mean_cosine(f["f_aug_r"], f["clean_r"])
        l2 = -torch.nn.functional.cosine_similarity(f["f_x"], f["clean_x"], dim=1).mean()
        return {"l0": l0, "l1": l1, "l2": l2}

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.terms(self.features(x))

    def training_step(self, batch, batch_idx):
        x = batch[0]
        parts = self.losses(x)
        loss = parts["l0"] + self.hparams.lambda1 * parts["l1"] + self.hparams.lambda2 * parts["l2"]
        self.log_dict({f"badencoder/{k}": v for k, v in parts.items()}, on_step=False, on_epoch=True, batch_size=len(x))
        self.log("badencoder/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def configure_optimizers(self):
        params = [p for p in self.victim.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=self.hparams.lr, momentum=self.hparams.momentum,
                               weight_decay=self.hparams.weight_decay)


def make_badencoder(cfg: DictConfig, victim: Victim, full: nn.Module, log_dir: Path) -> None:
    """Turn the (cached) clean victim into a BadEncoder victim in place (``attack.make``)."""
    m = cfg.attack.make
    shadow, refs = shadow_and_references(cfg, victim)
    L.seed_everything(cfg.seed, workers=True)
    module = BadEncoderModule(victim, refs, instantiate(cfg.attack.trigger), lr=m.lr, momentum=m.momentum,
                              weight_decay=m.weight_decay, lambda1=m.lambda1, lambda2=m.lambda2)
    fit_on(cfg, module, (shadow.images,), m.batch_size, m.epochs, log_dir, "badencoder")
