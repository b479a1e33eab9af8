"""The attacker's options added for the full-image triggers and the transplant test: WaNet's noise
mode in BadEncoder's loss, the generator trained jointly with the victim, and the transplant-aware
adaptive attack. (What they do to ASR and detection is measured in docs/results/.)"""
from __future__ import annotations

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from dede.attacks.adaptive_transplant import AdaptiveTransplantModule, covering_window
from dede.attacks.badencoder import BadEncoderModule, badencoder_args, noise_mode_args
from dede.attacks.sample_specific import JointTriggerBadEncoder
from dede.data import TensorBatches, make_loader
from dede.data.synthetic import make_synthetic
from dede.detect.detectors import occlusion_masks
from dede.pipeline.compose import compose_train
from dede.triggers import GeneratorTrigger, PatchTrigger, WarpTrigger
from dede.triggers.benign import benign_perturbation


def victim():
    from dede.victims import build_victim

    torch.manual_seed(0)
    return build_victim("simclr_resnet", [0.5] * 3, [0.25] * 3, 32, width=8, blocks=[1, 1, 1, 1])[0]


def data():
    images, labels = make_synthetic(64, seed=0, image_size=32)
    return images, images[labels == 0][:1].float().div(255)


def fit(module: L.LightningModule, images: torch.Tensor, epochs: int = 1) -> L.LightningModule:
    loader = make_loader(TensorBatches(images), 32, shuffle=True, drop_last=True, num_workers=0, seed=0)
    L.seed_everything(0)
    L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(module, loader)
    return module


# --------------------------------------------------------------------------- noise mode
def test_noise_mode_draws_a_fresh_twin_each_step_never_the_evaluation_twin():
    trig = WarpTrigger(k=4, strength=4.0, seed=0)
    args = noise_mode_args(OmegaConf.create({"noise_mode": 1.0, "noise_kind": "warp"}), trig, 32)
    x = torch.rand(4, 3, 32, 32)
    a, b = args["negatives"](10 ** 6)(x), args["negatives"](10 ** 6 + 1)(x)
    evaluation = benign_perturbation(trig, 32, "auto", 0)(x)
    assert not torch.allclose(a, b) and not torch.allclose(a, evaluation) and not torch.allclose(a, trig(x))
    assert noise_mode_args(OmegaConf.create({}), trig, 32) == {}
    with pytest.raises(ValueError, match="does not match"):
        noise_mode_args(OmegaConf.create({"noise_mode": 1.0, "noise_kind": "blend"}), trig, 32)


def test_noise_mode_adds_its_term_and_changes_the_victim():
    images, refs = data()
    trig = WarpTrigger(k=4, strength=4.0)
    plain = fit(BadEncoderModule(victim(), refs, trig, lr=0.05), images)
    args = noise_mode_args(OmegaConf.create({"noise_mode": 2.0, "noise_kind": "warp"}), trig, 32)
    noisy = fit(BadEncoderModule(victim(), refs, trig, lr=0.05, **args), images)
    assert "l3" in noisy.losses(images[:8].float().div(255)) and "l3" not in plain.losses(images[:8].float().div(255))
    diff = max(float((p - q).abs().max()) for p, q in zip(plain.victim.parameters(), noisy.victim.parameters()))
    assert diff > 1e-5
    with pytest.raises(ValueError, match="noise_mode"):
        BadEncoderModule(victim(), refs, trig, noise_mode=1.0)


def test_the_warp_preset_plants_with_noise_mode_against_random_warps_of_its_own_k_and_strength():
    cfg = compose_train(["experiment=demo", "attack=warp"])
    trig = WarpTrigger(k=int(cfg.attack.trigger.k), strength=float(cfg.attack.trigger.strength))
    args = noise_mode_args(cfg.attack.make, trig, int(cfg.data.image_size))
    assert args["noise_mode"] == 0.5 and int(cfg.attack.make.epochs) == 100
    twin = args["negatives"](10 ** 6)
    assert (type(twin).__name__, twin.k, twin.strength) == ("BenignWarp", trig.k, trig.strength)
    assert noise_mode_args(compose_train(["attack=warp", "data=cifar10"]).attack.make, trig, 32) == {}


# --------------------------------------------------------------------------- L0's target
@pytest.mark.parametrize("target", ["victim", "clean"])
def test_l0_pulls_to_the_moving_or_the_fixed_reference_embedding(target):
    images, refs = data()
    module = BadEncoderModule(victim(), refs, WarpTrigger(k=4, strength=4.0), l0_target=target)
    f = module.features(images[:8].float().div(255))
    l0 = module.terms(f)["l0"]
    grad_to_ref = torch.autograd.grad(l0, f["f_r"], allow_unused=True)[0]
    if target == "clean":  # f(r): the fine-tuned victim's own f'(r) gets no pull from L0
        assert grad_to_ref is None
        expected = -torch.nn.functional.cosine_similarity(f["f_trig"], f["clean_r"].expand_as(f["f_trig"])).mean()
    else:  # the paper's: L0 moves f'(r) towards the triggered inputs too
        assert grad_to_ref is not None and float(grad_to_ref.abs().sum()) > 0
        expected = -torch.nn.functional.cosine_similarity(f["f_trig"], f["f_r"].expand_as(f["f_trig"])).mean()
    assert torch.allclose(l0, expected, atol=1e-6)
    with pytest.raises(ValueError, match="l0_target"):
        BadEncoderModule(victim(), refs, WarpTrigger(k=4, strength=4.0), l0_target="reference")


def test_only_the_embedded_warp_preset_fixes_l0s_target():
    trig = WarpTrigger(k=4, strength=4.0)
    read = {a: badencoder_args(compose_train(a).attack.make, trig, 32)["l0_target"]
            for a in (("experiment=demo", "attack=warp"), ("attack=warp", "data=cifar10"),
                      ("experiment=demo", "attack=badencoder"), ("experiment=demo", "attack=blend"))}
    assert list(read.values()) == ["clean", "victim", "victim", "victim"]


# --------------------------------------------------------------------------- joint generator
def test_the_joint_module_trains_the_generator_with_the_victim():
    images, refs = data()
    trig = GeneratorTrigger(eps=16 / 255)
    before = {k: v.clone() for k, v in trig.net.state_dict().items()}
    module = fit(JointTriggerBadEncoder(victim(), refs, trig, trigger_lr=0.05, lr=0.05), images)
    assert any(not torch.equal(before[k], v) for k, v in trig.net.state_dict().items())
    assert not module.generator.training  # eval after the fit


def test_sample_specific_config_has_the_joint_switch():
    cfg = compose_train(["experiment=demo", "attack=sample_specific", "attack.make.joint=true"])
    assert cfg.attack.make.joint is True


# --------------------------------------------------------------------------- transplant-aware
def test_the_covering_window_is_the_detectors_window_over_the_trigger():
    trig = PatchTrigger()  # 10x10 at 21..30 of 32
    w = covering_window(trig, 32)
    assert any(torch.equal(w, m) for m in occlusion_masks(32, [(0.375, 0.375)], 4))
    assert w[0, 21:31, 21:31].all() and w.sum() == 144


def test_the_stealth_term_is_the_composites_agreement_and_reaches_the_encoder():
    images, refs = data()
    trig = PatchTrigger()
    module = AdaptiveTransplantModule(victim(), refs, trig, covering_window(trig, 32), stealth_weight=1.0, n_hosts=3)
    x = images[:6].float().div(255)
    xt = trig(x)
    comp = module.composites(x, xt)
    assert comp.shape == (3, 6, 3, 32, 32)
    assert torch.equal(comp[0, 0, :, 25, 25], xt[0, :, 25, 25]) and torch.equal(comp[0, 0, :, 2, 2], x[5, :, 2, 2])
    s = module.stealth(x, xt)
    assert -1 <= float(s) <= 1
    grads = torch.autograd.grad(s, [p for p in module.victim.parameters() if p.requires_grad])
    assert sum(float(g.abs().sum()) for g in grads) > 0
    plain = fit(AdaptiveTransplantModule(victim(), refs, trig, covering_window(trig, 32), stealth_weight=0.0, lr=0.05),
                images)
    stealthy = fit(AdaptiveTransplantModule(victim(), refs, trig, covering_window(trig, 32), stealth_weight=5.0,
                                            lr=0.05), images)
    diff = max(float((p - q).abs().max()) for p, q in zip(plain.victim.parameters(), stealthy.victim.parameters()))
    assert diff > 1e-4


def test_the_transplant_aware_attack_refuses_a_trigger_it_cannot_simulate():
    from dede.attacks.adaptive_transplant import make_adaptive_transplant

    cfg = compose_train(["experiment=demo", "attack=adaptive_transplant", "attack/trigger=warp"])
    with pytest.raises(ValueError, match="patch trigger"):
        make_adaptive_transplant(cfg, victim(), None, None)
    with pytest.raises(ValueError, match="n_hosts"):
        AdaptiveTransplantModule(victim(), torch.rand(1, 3, 32, 32), PatchTrigger(), torch.ones(1, 32, 32), n_hosts=1)
