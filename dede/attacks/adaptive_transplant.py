"""An adaptive attacker who knows the transplant test: BadEncoder plus a term that keeps the
victim embeddings of transplant composites apart.

`transplant_occlusion` / `transplant_any` (window carrier) paste the occlusion window that moves a
suspect's embedding most into clean hosts and flag the suspect when the composites' embeddings
agree (collapse onto one point). A patch backdoor makes them agree: every composite carries the
trigger. This attacker simulates the test during BadEncoder's fine-tuning: for each triggered
shadow image, the window of the detector's grid that covers most of the trigger is pasted into
``n_hosts`` other shadow images of the batch, and ``stealth_weight`` x the composites' mean pairwise
cosine (the test's agreement) is added to the encoder's loss. The gradient asks the encoder to fire
on the triggered image but not on the same trigger in another image's context, which only a
backdoor that depends on more than the window can do; the weight trades stealth for attack
success (0 = BadEncoder).
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig

from dede.attacks.badencoder import BadEncoderModule
from dede.attacks.common import fit_on, shadow_and_references
from dede.detect.detectors import occlusion_masks
from dede.triggers import PatchTrigger, Trigger
from dede.victims.encoders import Victim


def covering_window(trigger: PatchTrigger, image_size: int, window: float = 0.375, grid: int = 4) -> torch.Tensor:
    """``(1, S, S)`` mask: the window of the detector's ``grid`` x ``grid`` occlusion windows (side
    ``window`` of the image) that covers most of the patch trigger."""
    r, c, n = trigger.box(image_size)
    box = torch.zeros(image_size, image_size)
    box[r:r + n, c:c + n] = 1
    masks = occlusion_masks(image_size, [(window, window)], grid)
    return masks[(masks[:, 0] * box).sum((1, 2)).argmax()]


class AdaptiveTransplantModule(BadEncoderModule):
    """BadEncoder's ``L0 + lambda1 L1 + lambda2 L2`` + ``stealth_weight`` x the mean pairwise cosine
    of each triggered image's transplant composites (``n_hosts`` hosts: the batch rolled by 1..n)."""

    def __init__(self, victim: Victim, references: torch.Tensor, trigger: Trigger, window: torch.Tensor,
                 stealth_weight: float = 1.0, n_hosts: int = 4, **kwargs) -> None:
        super().__init__(victim, references, trigger, **kwargs)
        if stealth_weight < 0:
            raise ValueError(f"attack.make.stealth_weight={stealth_weight} must be >= 0")
        if n_hosts < 2:
            raise ValueError(f"attack.make.n_hosts={n_hosts} must be >= 2 (agreement needs two composites)")
        self.stealth_weight, self.n_hosts = float(stealth_weight), int(n_hosts)
        self.register_buffer("window", window.float())

    def composites(self, x: torch.Tensor, x_trig: torch.Tensor) -> torch.Tensor:
        """``(n_hosts, B, 3, S, S)``: image i's trigger window in hosts ``x[(i + k) % B]``, k = 1..n."""
        m = self.window
        return torch.stack([torch.roll(x, k, 0) * (1 - m) + x_trig * m for k in range(1, self.n_hosts + 1)])

    def stealth(self, x: torch.Tensor, x_trig: torch.Tensor) -> torch.Tensor:
        comp = self.composites(x, x_trig)
        z = F.normalize(self.victim(comp.flatten(0, 1)).float(), dim=1).view(*comp.shape[:2], -1).transpose(0, 1)
        sim = z @ z.transpose(1, 2)  # (B, n, n)
        n = sim.shape[-1]
        return ((sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(1)) / (n * (n - 1))).mean()

    def training_step(self, batch, batch_idx):
        x = batch[0]
        f = self.features(x)
        parts = self.terms(f)
        if self.stealth_weight > 0:
            parts["stealth"] = self.stealth(x, f["x_trig"])
        else:
            with torch.no_grad():
                parts["stealth"] = self.stealth(x, f["x_trig"])
        hp = self.hparams
        loss = parts["l0"] + hp.lambda1 * parts["l1"] + hp.lambda2 * parts["l2"] + self.stealth_weight * parts["stealth"]
        self.log_dict({f"adaptive_transplant/{k}": v for k, v in parts.items()}, on_step=False, on_epoch=True,
                      batch_size=len(x))
        self.log("adaptive_transplant/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(x))
        return loss


def make_adaptive_transplant(cfg: DictConfig, victim: Victim, full: torch.nn.Module, log_dir: Path) -> None:
    """Turn the (cached) clean victim into a transplant-aware BadEncoder victim in place."""
    m = cfg.attack.make
    trigger = instantiate(cfg.attack.trigger)
    if not isinstance(trigger, PatchTrigger):
        raise ValueError(f"attack={cfg.attack.name} simulates the window transplant of a patch trigger; "
                         f"attack.trigger builds a {type(trigger).__name__} (use attack/trigger=patch)")
    size = int(cfg.data.image_size)
    trigger.check_size(size)
    window = covering_window(trigger, size, float(m.window), int(m.grid))
    shadow, refs = shadow_and_references(cfg, victim)
    L.seed_everything(cfg.seed, workers=True)
    module = AdaptiveTransplantModule(victim, refs, trigger, window, stealth_weight=float(m.stealth_weight),
                                      n_hosts=int(m.n_hosts), lr=m.lr, momentum=m.momentum,
                                      weight_decay=m.weight_decay, lambda1=m.lambda1, lambda2=m.lambda2)
    fit_on(cfg, module, (shadow.images,), m.batch_size, m.epochs, log_dir, "adaptive_transplant")
