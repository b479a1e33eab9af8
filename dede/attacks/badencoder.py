"""BadEncoder (Jia et al., S&P 2022): fine-tune a copy of a clean encoder so that triggered
inputs embed like the reference (target) images while clean inputs keep their embeddings."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from dede.attacks.common import fit_on, shadow_and_references
from dede.attacks.losses import mean_cosine
from dede.data.augment import light_augment
from dede.triggers import Trigger
from dede.triggers.benign import benign_perturbation
from dede.victims.encoders import Victim


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm in eval mode with its affine parameters frozen."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


class BadEncoderModule(L.LightningModule):
    """``loss = L0 + lambda1 * L1 + lambda2 * L2`` on cosine similarities (see the reference), plus
    with ``noise_mode > 0`` WaNet's noise mode: ``noise_mode * L3``, L3 = -cos(f'(n(x)), f(n(x)))
    for ``n = negatives(step)``, a fresh perturbation of the trigger's kind but not the trigger
    (another pattern, another warp) each step, so that the backdoor learns this trigger and not
    its kind. The draws' seeds start at 10**6, away from the evaluation's benign twins.

    ``l0_target`` is what L0 pulls triggered inputs to: ``victim`` (the paper and its code: f'(r),
    which moves with the fine-tuned victim) or ``clean`` (f(r), fixed). With ``victim`` nothing
    anchors f'(r) itself (L1 anchors only augmented copies of r), so where the trigger is hard to
    plant L0 can drag the reference's own embedding out of its class: the backdoor then fires, to a
    point no downstream classifier calls the target class (docs/results/nonpatch_attacks.md, warp)."""

    def __init__(self, victim: Victim, references: torch.Tensor, trigger: Trigger, lr: float = 1e-3,
                 momentum: float = 0.9, weight_decay: float = 5e-4, lambda1: float = 1.0,
                 lambda2: float = 1.0, noise_mode: float = 0.0,
                 negatives: Callable[[int], Trigger] | None = None, l0_target: str = "victim") -> None:
        super().__init__()
        if noise_mode < 0 or (noise_mode > 0 and negatives is None):
            raise ValueError(f"attack.make.noise_mode={noise_mode} must be >= 0, and > 0 needs negatives")
        if l0_target not in ("victim", "clean"):
            raise ValueError(f"attack.make.l0_target={l0_target!r}: use 'victim' (f'(r), the paper's) or 'clean' (f(r))")
        self.save_hyperparameters(ignore=["victim", "references", "trigger", "negatives"])
        self.negatives = negatives
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

    def triggered(self, x: torch.Tensor) -> torch.Tensor:
        """The triggered batch (a fixed trigger: no gradient)."""
        with torch.no_grad():
            return self.trigger(x)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The triggered batch and the embeddings BadEncoder's terms compare."""
        refs = self.references
        x_trig = self.triggered(x)
        with torch.no_grad():
            clean_x = self.clean(x)
            clean_r = self.clean(refs)
            aug_r = self.ref_augment(refs)
        f_r = self.victim(refs)
        return {"x_trig": x_trig, "f_trig": self.victim(x_trig), "f_x": self.victim(x), "f_r": f_r,
                "f_aug_r": self.victim(aug_r), "clean_x": clean_x, "clean_r": clean_r,
                "target": clean_r if self.hparams.get("l0_target", "victim") == "clean" else f_r}

    @staticmethod
    def terms(f: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Effectiveness (l0: triggered -> references) and utility (l1: references, l2: clean inputs)."""
        l0 = -mean_cosine(f["f_trig"], f["target"])
        l1 = -mean_cosine(f["f_aug_r"], f["clean_r"])
        l2 = -torch.nn.functional.cosine_similarity(f["f_x"], f["clean_x"], dim=1).mean()
        return {"l0": l0, "l1": l1, "l2": l2}

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = self.terms(self.features(x))
        if self.hparams.get("noise_mode", 0.0) > 0:
            with torch.no_grad():
                xn = self.negatives(10 ** 6 + int(self.global_step))(x)
                clean_n = self.clean(xn)
            parts["l3"] = -torch.nn.functional.cosine_similarity(self.victim(xn), clean_n, dim=1).mean()
        return parts

    def training_step(self, batch, batch_idx):
        x = batch[0]
        parts = self.losses(x)
        loss = parts["l0"] + self.hparams.lambda1 * parts["l1"] + self.hparams.lambda2 * parts["l2"]
        if "l3" in parts:
            loss = loss + self.hparams.noise_mode * parts["l3"]
        self.log_dict({f"badencoder/{k}": v for k, v in parts.items()}, on_step=False, on_epoch=True, batch_size=len(x))
        self.log("badencoder/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def configure_optimizers(self):
        params = [p for p in self.victim.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=self.hparams.lr, momentum=self.hparams.momentum,
                               weight_decay=self.hparams.weight_decay)


def badencoder_args(make: DictConfig, trigger: Trigger, image_size: int) -> dict:
    """`BadEncoderModule`'s keyword arguments from ``attack.make``."""
    return dict(lr=make.lr, momentum=make.momentum, weight_decay=make.weight_decay, lambda1=make.lambda1,
                lambda2=make.lambda2, l0_target=str(make.get("l0_target", "victim")),
                **noise_mode_args(make, trigger, image_size))


def noise_mode_args(make: DictConfig, trigger: Trigger, image_size: int) -> dict:
    """``noise_mode`` and its ``negatives`` from ``attack.make.noise_mode`` (weight, default 0) and
    ``attack.make.noise_kind`` (a benign-twin kind of `dede.triggers.benign`, e.g. ``warp``, ``blend``)."""
    weight = float(make.get("noise_mode", 0.0))
    if weight == 0:
        return {}
    kind = str(make.get("noise_kind", "auto"))
    benign_perturbation(trigger, image_size, kind, 0)  # a kind that does not fit the trigger fails here
    return {"noise_mode": weight, "negatives": lambda seed: benign_perturbation(trigger, image_size, kind, seed)}


def make_badencoder(cfg: DictConfig, victim: Victim, full: nn.Module, log_dir: Path) -> None:
    """Turn the (cached) clean victim into a BadEncoder victim in place (``attack.make``)."""
    m = cfg.attack.make
    shadow, refs = shadow_and_references(cfg, victim)
    L.seed_everything(cfg.seed, workers=True)
    trigger = instantiate(cfg.attack.trigger)
    module = BadEncoderModule(victim, refs, trigger, **badencoder_args(m, trigger, int(cfg.data.image_size)))
    fit_on(cfg, module, (shadow.images,), m.batch_size, m.epochs, log_dir, "badencoder")
