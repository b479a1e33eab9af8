"""An optimised, sample-specific full-image trigger planted with BadEncoder's loss.

(a) On the frozen clean victim, a `~dede.triggers.GeneratorTrigger` (a bounded per-image
perturbation ``eps * tanh(P + G(x))``) is optimised with Adam so that the shadow images'
triggered embeddings move to the target class's reference embeddings (mean cosine), the
optimised-trigger step of BLTO / BadCLIP. (b) The victim is fine-tuned with BadEncoder's loss
on that trigger; with ``attack.make.joint`` the generator keeps learning the effectiveness term
with the victim (BLTO's alternation of trigger and encoder, one step each per batch), otherwise
it is frozen. The generator is returned, so the victim factory stores
it next to the cached victim and the evaluation reads it back (``attack.trigger.path``).
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from dede.attacks.badencoder import BadEncoderModule, badencoder_args
from dede.attacks.common import fit_on, shadow_and_references
from dede.attacks.losses import mean_cosine
from dede.triggers import GeneratorTrigger
from dede.victims.encoders import Victim


class TriggerOptimisation(L.LightningModule):
    """Optimise the generator of ``trigger`` on a frozen ``victim``:
    ``loss = -mean cos(f(T(x)), f(references))``."""

    def __init__(self, victim: Victim, references: torch.Tensor, trigger: GeneratorTrigger, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["victim", "references", "trigger"])
        self.trigger = trigger
        self.generator = trigger.net  # registered, so it is optimised and checkpointed
        self.generator.train()
        self.victim = victim.eval()
        for p in self.victim.parameters():
            p.requires_grad_(False)
        self.register_buffer("references", references.float())

    def train(self, mode: bool = True):
        super().train(mode)
        self.victim.eval()  # frozen, BatchNorm statistics included
        return self

    def training_step(self, batch, batch_idx):
        x = batch[0]
        with torch.no_grad():
            f_r = self.victim(self.references)
        loss = -mean_cosine(self.victim(self.trigger(x)), f_r)
        self.log("trigger/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def on_fit_end(self) -> None:
        self.generator.eval()

    def configure_optimizers(self):
        return torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr)


class JointTriggerBadEncoder(BadEncoderModule):
    """BadEncoder's loss with the trigger's generator optimised too: each batch, the victim takes an
    SGD step on the whole loss and the generator an Adam step (``trigger_lr``) on the effectiveness
    term (the only one that depends on it)."""

    def __init__(self, victim: Victim, references: torch.Tensor, trigger: GeneratorTrigger,
                 trigger_lr: float = 0.01, **kwargs) -> None:
        super().__init__(victim, references, trigger, **kwargs)
        self.trigger_lr = float(trigger_lr)
        self.generator = trigger.net  # registered: optimised and checkpointed with the victim
        self.generator.train()
        self.automatic_optimization = False

    def triggered(self, x: torch.Tensor) -> torch.Tensor:
        return self.trigger(x)  # with the generator's graph

    def training_step(self, batch, batch_idx):
        x = batch[0]
        opt_victim, opt_trigger = self.optimizers()
        parts = self.losses(x)
        loss = parts["l0"] + self.hparams.lambda1 * parts["l1"] + self.hparams.lambda2 * parts["l2"]
        opt_victim.zero_grad()
        opt_trigger.zero_grad()
        self.manual_backward(loss)  # the generator's gradient is that of l0 alone
        opt_victim.step()
        opt_trigger.step()
        self.log_dict({f"badencoder/{k}": v for k, v in parts.items()}, on_step=False, on_epoch=True, batch_size=len(x))
        self.log("badencoder/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(x))

    def on_fit_end(self) -> None:
        self.generator.eval()

    def configure_optimizers(self):
        return [super().configure_optimizers(), torch.optim.Adam(self.generator.parameters(), lr=self.trigger_lr)]


def make_sample_specific(cfg: DictConfig, victim: Victim, full: nn.Module, log_dir: Path) -> GeneratorTrigger:
    """(a) optimise the generator trigger on the frozen clean victim, (b) BadEncoder fine-tuning
    with it; returns the trigger (stored with the victim)."""
    m = cfg.attack.make
    trigger = instantiate(cfg.attack.trigger)
    if not isinstance(trigger, GeneratorTrigger):
        raise ValueError(f"attack={cfg.attack.name} optimises a GeneratorTrigger; attack.trigger builds a "
                         f"{type(trigger).__name__} (use attack/trigger=generator)")
    if trigger.path is not None:
        raise ValueError(f"attack.trigger.path={trigger.path}: this attack optimises its own trigger; "
                         "leave the path null (give attack.checkpoint to evaluate an existing victim)")
    trigger.check_size(int(cfg.data.image_size))
    shadow, refs = shadow_and_references(cfg, victim)
    requires = [p.requires_grad for p in victim.parameters()]
    L.seed_everything(cfg.seed, workers=True)
    fit_on(cfg, TriggerOptimisation(victim, refs, trigger, lr=m.trigger_lr), (shadow.images,),
           m.trigger_batch_size, m.trigger_epochs, log_dir, "sample_specific_trigger")
    for p, flag in zip(victim.parameters(), requires):
        p.requires_grad_(flag)
    joint = bool(m.get("joint", False))
    for p in trigger.net.parameters():
        p.requires_grad_(joint)
    L.seed_everything(cfg.seed, workers=True)
    kwargs = badencoder_args(m, trigger, int(cfg.data.image_size))
    module = (JointTriggerBadEncoder(victim, refs, trigger, trigger_lr=m.trigger_lr, **kwargs) if joint
              else BadEncoderModule(victim, refs, trigger, **kwargs))
    fit_on(cfg, module, (shadow.images,), m.batch_size, m.epochs, log_dir, "badencoder")
    for p in trigger.net.parameters():
        p.requires_grad_(False)
    trigger.net.eval()
    return trigger
