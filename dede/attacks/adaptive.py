"""An adaptive attacker who knows DeDe: BadEncoder plus a term that keeps triggered inputs
reconstructable by a surrogate DeDe decoder the attacker trains on its own shadow data.

DeDe flags an input when the decoder cannot rebuild it from the encoder's embedding (and the
few visible patches): a backdoor that collapses triggered inputs to the target's embedding
throws away what the decoder needs. The attacker here plays the defender's game on its own
shadow data. Every step

1. updates the surrogate decoder (the defender's architecture and masking, `DeDeModel`) on the
   current encoder's embeddings of clean shadow images, as the defender would; then
2. updates the encoder with BadEncoder's loss plus ``stealth_weight`` x the surrogate's
   reconstruction error of the *triggered* images relative to that of the clean ones
   (``mse(triggered) / mse(clean)``, so the weight does not depend on the images' scale).
   The gradient flows through the frozen surrogate into the encoder's triggered embeddings.

During the first ``surrogate_warmup_epochs`` only the surrogate trains (on the clean victim).
``stealth_weight`` trades stealth for attack success: at 0 this is BadEncoder with an idle
surrogate. Related: the adaptive attacks of the DeDe paper's discussion, and DRUPE's
distribution term (in `dede.attacks.drupe`), which hides triggered embeddings among clean ones.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dede.attacks.badencoder import BadEncoderModule
from dede.attacks.common import fit_on, shadow_and_references
from dede.decoder.model import DeDeModel
from dede.triggers import Trigger
from dede.victims.encoders import Victim


class AdaptiveDeDeModule(BadEncoderModule):
    """BadEncoder's ``L0 + lambda1 L1 + lambda2 L2`` + ``stealth_weight`` x the surrogate's
    error ratio on triggered inputs; two optimisers (encoder: SGD as BadEncoder, surrogate: AdamW)."""

    def __init__(self, victim: Victim, references: torch.Tensor, trigger: Trigger, surrogate: dict,
                 stealth_weight: float = 1.0, surrogate_lr: float = 1e-3, surrogate_warmup_epochs: int = 2,
                 mask_ratio: float = 0.9, test_mask_ratio: float = 0.99, mix_prob: float = 0.5,
                 lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 5e-4, lambda1: float = 1.0,
                 lambda2: float = 1.0) -> None:
        super().__init__(victim, references, trigger, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         lambda1=lambda1, lambda2=lambda2)
        if stealth_weight < 0:
            raise ValueError(f"attack.make.stealth_weight={stealth_weight} must be >= 0")
        self.save_hyperparameters(ignore=["victim", "references", "trigger"])
        self.automatic_optimization = False
        self.surrogate = DeDeModel(victim.embed_dim, victim.image_size, **dict(surrogate))

    def train_ratio(self) -> float:
        """The defender's train-time mask ratio: the test ratio with probability ``mix_prob``
        (the tiny preset's mixed schedule; 0 = the paper's fixed ratio)."""
        hp = self.hparams
        return hp.test_mask_ratio if torch.rand(()).item() < hp.mix_prob else hp.mask_ratio

    def surrogate_step(self, x: torch.Tensor, opt: torch.optim.Optimizer) -> torch.Tensor:
        with torch.no_grad():
            emb = self.victim(x)
        pred, mask = self.surrogate(x, emb, self.train_ratio())
        loss = self.surrogate.loss(x, pred, mask)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return loss.detach()

    def reconstruction_error(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The surrogate's masked-patch MSE at the defender's scoring mask ratio."""
        pred, mask = self.surrogate(x, emb, self.hparams.test_mask_ratio)
        return self.surrogate.loss(x, pred, mask)

    def training_step(self, batch, batch_idx):
        x = batch[0]
        enc_opt, dec_opt = self.optimizers()
        n = len(x)
        surrogate_loss = self.surrogate_step(x, dec_opt)
        self.log("adaptive/surrogate_loss", surrogate_loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=n)
        if self.current_epoch < self.hparams.surrogate_warmup_epochs:
            return None
        f = self.features(x)
        parts = self.terms(f)
        with torch.no_grad():
            clean_err = self.reconstruction_error(x, f["f_x"])
        trig_err = self.reconstruction_error(f["x_trig"], f["f_trig"])
        parts["stealth"] = trig_err / clean_err.clamp_min(1e-8)
        hp = self.hparams
        loss = parts["l0"] + hp.lambda1 * parts["l1"] + hp.lambda2 * parts["l2"] + hp.stealth_weight * parts["stealth"]
        enc_opt.zero_grad()
        self.manual_backward(loss)
        enc_opt.step()
        self.log_dict({f"adaptive/{k}": v for k, v in parts.items()}, on_step=False, on_epoch=True, batch_size=n)
        self.log("adaptive/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=n)
        return None

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.surrogate.train()

    def configure_optimizers(self):
        enc = super().configure_optimizers()
        dec = torch.optim.AdamW(self.surrogate.parameters(), lr=self.hparams.surrogate_lr, weight_decay=1e-6)
        return [enc, dec]


def make_adaptive_dede(cfg: DictConfig, victim: Victim, full: torch.nn.Module, log_dir: Path) -> None:
    """Turn the (cached) clean victim into an adaptive (DeDe-aware) BadEncoder victim in place:
    ``surrogate_warmup_epochs`` of surrogate training, then ``epochs`` of the attack."""
    m = cfg.attack.make
    shadow, refs = shadow_and_references(cfg, victim)
    L.seed_everything(cfg.seed, workers=True)
    module = AdaptiveDeDeModule(
        victim, refs, instantiate(cfg.attack.trigger), OmegaConf.to_container(m.surrogate, resolve=True),
        stealth_weight=float(m.stealth_weight), surrogate_lr=float(m.surrogate_lr),
        surrogate_warmup_epochs=int(m.surrogate_warmup_epochs), mask_ratio=float(m.mask_ratio),
        test_mask_ratio=float(m.test_mask_ratio), mix_prob=float(m.mix_prob), lr=m.lr, momentum=m.momentum,
        weight_decay=m.weight_decay, lambda1=m.lambda1, lambda2=m.lambda2)
    epochs = int(m.surrogate_warmup_epochs) + int(m.epochs)
    fit_on(cfg, module, (shadow.images,), m.batch_size, epochs, log_dir, "adaptive_dede")
