"""The adaptive (DeDe-aware) attack's training schedule and where its stealth gradient goes.
(How the stealth weight trades ASR for DeDe's AUROC is measured with the sweep
`python train.py -m experiment=demo attack=adaptive_dede attack.make.stealth_weight=0,1,4,16`.)"""
from __future__ import annotations

import lightning as L
import pytest
import torch

from dede.attacks.adaptive import AdaptiveDeDeModule
from dede.data import TensorBatches, make_loader
from dede.data.synthetic import make_synthetic
from dede.triggers import PatchTrigger
from dede.victims import build_victim

SURROGATE = dict(patch_size=4, embed_dim=32, depth=1, num_heads=2, decoder_depth=1)


def fitted(weight: float, epochs: int, warmup: int = 1) -> tuple[AdaptiveDeDeModule, dict, dict]:
    """The module after ``epochs`` epochs (``warmup`` of them surrogate-only), with the encoder's and
    the surrogate's initial weights."""
    torch.manual_seed(0)
    victim, _ = build_victim("simclr_resnet", [0.5] * 3, [0.25] * 3, 32, width=8, blocks=[1, 1, 1, 1])
    images, labels = make_synthetic(96, seed=0, image_size=32)
    refs = images[labels == 0][:1].float().div(255)
    L.seed_everything(0)
    module = AdaptiveDeDeModule(victim, refs, PatchTrigger(size=8, row=24, col=24), SURROGATE, stealth_weight=weight,
                                surrogate_warmup_epochs=warmup, lr=0.05)
    enc0 = {k: v.clone() for k, v in module.victim.state_dict().items()}
    dec0 = {k: v.clone() for k, v in module.surrogate.state_dict().items()}
    loader = make_loader(TensorBatches(images), 32, shuffle=True, drop_last=True, num_workers=0, seed=0)
    L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(module, loader)
    return module, enc0, dec0


def changed(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items() if v.is_floating_point())


def test_warmup_trains_only_the_surrogate_then_the_attack_moves_the_encoder():
    module, enc0, dec0 = fitted(1.0, epochs=1, warmup=1)
    assert changed(dec0, module.surrogate) and not changed(enc0, module.victim)
    module, enc0, _ = fitted(1.0, epochs=2, warmup=1)
    assert changed(enc0, module.victim)


def test_the_stealth_term_reaches_the_encoder_through_the_frozen_surrogate():
    """Same seed, same batches: only the stealth weight differs, so the encoders differ after the
    attack epoch; the error of triggered inputs has a gradient in the encoder."""
    plain, _, _ = fitted(0.0, epochs=2)
    stealthy, _, _ = fitted(5.0, epochs=2)
    diff = max(float((a - b).abs().max()) for a, b in zip(plain.victim.parameters(), stealthy.victim.parameters()))
    assert diff > 1e-4
    x = torch.rand(8, 3, 32, 32)
    f = stealthy.features(x)
    err = stealthy.reconstruction_error(f["x_trig"], f["f_trig"])
    grads = torch.autograd.grad(err, [p for p in stealthy.victim.parameters() if p.requires_grad])
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_a_negative_stealth_weight_is_rejected():
    victim, _ = build_victim("simclr_resnet", [0.5] * 3, [0.25] * 3, 32, width=8, blocks=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="stealth_weight"):
        AdaptiveDeDeModule(victim, torch.rand(1, 3, 32, 32), PatchTrigger(size=4, row=0, col=0), SURROGATE,
                           stealth_weight=-1.0)
