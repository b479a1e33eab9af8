"""Full-image triggers (blend, WaNet warp, optimised generator), their benign twins, and that
BadEncoder's loss plants each of them on a toy encoder."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dede.attacks.badencoder import BadEncoderModule
from dede.attacks.sample_specific import TriggerOptimisation
from dede.data.synthetic import make_synthetic
from dede.triggers import BlendTrigger, GeneratorTrigger, WarpTrigger
from dede.triggers.benign import BenignBlend, BenignShuffled, BenignWarp, benign_perturbation

S = 32


def _images(n=16, size=S, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


TRIGGERS = {
    "blend_noise": lambda: BlendTrigger(alpha=0.2, kind="noise", seed=3),
    "blend_texture": lambda: BlendTrigger(alpha=0.2, kind="texture", seed=3),
    "warp": lambda: WarpTrigger(k=4, strength=2.0, seed=3),
    "generator": lambda: GeneratorTrigger(eps=8 / 255, image_size=S, seed=3),
}


@pytest.mark.parametrize("name", sorted(TRIGGERS))
def test_trigger_shape_range_and_determinism(name):
    x = _images()
    t1, t2 = TRIGGERS[name](), TRIGGERS[name]()
    y = t1(x)
    assert y.shape == x.shape and y.dtype == x.dtype and 0 <= y.min() and y.max() <= 1
    assert not torch.equal(y, x)
    assert torch.equal(y, t1(x)) and torch.equal(y, t2(x))  # same object, same seed: same images
    # an image is triggered alike alone and in a batch
    assert torch.allclose(t1(x[3:4]), y[3:4], atol=1e-6)


def test_blend_is_the_convex_mix_and_alpha_zero_is_the_identity():
    x = _images()
    assert torch.equal(BlendTrigger(alpha=0.0)(x), x)
    t = BlendTrigger(alpha=0.2, kind="noise", seed=0)
    p = t.pattern(S)
    assert p.shape == (3, S, S) and 0 <= p.min() and p.max() <= 1 and p.std() > 0.2  # uniform noise: std 0.29
    assert torch.allclose(t(x), 0.8 * x + 0.2 * p, atol=1e-6)
    assert not torch.equal(BlendTrigger(seed=1).pattern(S), p)
    tex = BlendTrigger(kind="texture", seed=0).pattern(S)
    assert tex.min() == 0 and tex.max() == 1
    # smooth: neighbouring pixels differ far less than those of the noise
    assert (tex[:, :, 1:] - tex[:, :, :-1]).abs().mean() < 0.5 * (p[:, :, 1:] - p[:, :, :-1]).abs().mean()


def test_blend_pattern_from_an_image_file(tmp_path):
    path = tmp_path / "p.npy"
    import numpy as np

    np.save(path, np.full((8, 8, 3), 0.5, dtype=np.float32))
    x = _images()
    assert torch.allclose(BlendTrigger(alpha=0.5, path=path)(x), 0.5 * x + 0.25, atol=1e-6)


def test_warp_strength_zero_is_the_identity_and_warps_move_pixels_smoothly():
    x = _images()
    assert torch.allclose(WarpTrigger(strength=0.0)(x), x, atol=1e-5)
    t = WarpTrigger(k=4, strength=2.0, seed=0)
    flow = t.flow(S)
    assert flow.shape == (1, S, S, 2)
    # the control grid is normalised to mean |offset| 1; the flow is smooth (small steps between pixels)
    assert torch.allclose(t._grid.abs().mean(), torch.tensor(1.0))
    steps = torch.cat([(flow[:, 1:] - flow[:, :-1]).flatten(), (flow[:, :, 1:] - flow[:, :, :-1]).flatten()])
    assert steps.abs().max() < 0.3 * flow.abs().max()  # (white noise: ~1.6 x)
    # a smooth image (a horizontal ramp) is shifted, not noised: values stay on the ramp
    ramp = torch.linspace(0, 1, S).view(1, 1, 1, S).expand(1, 3, S, S)
    y = t(ramp)
    assert (y - ramp).abs().max() > 0.01
    assert y.min() >= 0 and y.max() <= 1
    assert torch.allclose(y[:, 0], y[:, 1])  # every channel moves alike
    assert not torch.allclose(WarpTrigger(k=4, strength=2.0, seed=1)(x), t(x))


def test_bad_settings_fail_with_the_key():
    with pytest.raises(ValueError, match="alpha"):
        BlendTrigger(alpha=1.5)
    with pytest.raises(ValueError, match="kind"):
        BlendTrigger(kind="kitty")
    with pytest.raises(ValueError, match="attack.trigger.k"):
        WarpTrigger(k=1)
    with pytest.raises(ValueError, match="strength"):
        WarpTrigger(strength=-1)
    with pytest.raises(ValueError, match="at least 4 pixels"):
        WarpTrigger(k=4).check_size(3)
    with pytest.raises(ValueError, match="eps"):
        GeneratorTrigger(eps=2.0)
    with pytest.raises(ValueError, match="32x32 images but images are 64x64"):
        GeneratorTrigger(image_size=32)(_images(2, 64))


def test_generator_is_bounded_input_aware_and_round_trips_through_its_file(tmp_path):
    t = GeneratorTrigger(eps=0.05, image_size=S, seed=0)
    x = _images() * 0.8 + 0.1  # away from 0 and 1: no clamping
    d = t(x) - x
    assert d.abs().max() <= 0.05 + 1e-6 and d.abs().max() > 0.04
    assert not torch.allclose(d[0], d[1], atol=1e-3)  # depends on the image
    with torch.no_grad():  # a trained generator: change its weights, save, load
        for p in t.net.parameters():
            p.add_(0.1)
    path = t.save(tmp_path / "gen.pt")
    back = GeneratorTrigger(eps=0.05, image_size=S, seed=7, path=path)  # the seed only sets the untrained start
    assert torch.equal(back(x), t(x))
    assert not torch.equal(GeneratorTrigger(eps=0.05, image_size=S, seed=7)(x), t(x))
    with pytest.raises(ValueError, match="eps: file 0.05 vs config 0.1"):
        GeneratorTrigger(eps=0.1, image_size=S, path=path)
    with pytest.raises(FileNotFoundError, match="attack.trigger.path"):
        GeneratorTrigger(path=tmp_path / "missing.pt")


# --- benign twins --------------------------------------------------------------------------

def test_blend_twin_has_the_ratio_but_another_picture_per_image():
    """auto = another natural image at the trigger's ratio; blend = another pattern of its kind."""
    trig, x = BlendTrigger(alpha=0.2, kind="noise", seed=0), _images(8) * 0.5
    nat = benign_perturbation(trig, S)(x)
    assert benign_perturbation(trig, S).describe()["kind"] == "blend_natural"
    assert torch.equal(nat, benign_perturbation(trig, S, "natural")(x))
    partners = (nat - 0.8 * x) / 0.2
    assert all(any(torch.allclose(partners[i], x[j], atol=1e-5) for j in range(len(x)) if j != i)
               for i in range(len(x)))
    b = benign_perturbation(trig, S, "blend")
    assert isinstance(b, BenignBlend) and b.alpha == 0.2 and b.describe()["kind"] == "blend_noise"
    y = b(x)
    pats = (y - 0.8 * x) / 0.2  # recover the blended pattern (no clamping: x <= 0.5)
    assert torch.allclose(pats.clamp(0, 1), pats, atol=1e-5)
    for i in range(len(x)):
        assert (pats[i] - trig.pattern(S)).abs().mean() > 0.2  # not the trigger's noise
    assert (pats[0] - pats[1]).abs().mean() > 0.2  # a pattern per image
    assert torch.equal(y, benign_perturbation(trig, S, "blend")(x))  # seeded
    assert not torch.equal(y, benign_perturbation(trig, S, "blend", seed=1)(x))
    tex = benign_perturbation(BlendTrigger(kind="texture"), S, "blend")
    assert tex.describe()["kind"] == "blend_texture"


def test_warp_twin_has_the_strength_but_another_flow_per_image():
    trig = WarpTrigger(k=4, strength=2.0, seed=0)
    b = benign_perturbation(trig, S)
    assert isinstance(b, BenignWarp) and (b.k, b.strength) == (4, 2.0) and b.describe()["kind"] == "warp"
    x = _images(8)
    y, t = b(x), trig(x)
    for i in range(len(x)):
        assert (y[i] - t[i]).abs().mean() > 1e-3
    # the same strength: pixels move about as much as under the trigger
    moved_b, moved_t = (y - x).abs().mean(), (t - x).abs().mean()
    assert 0.5 < float(moved_b / moved_t) < 2.0
    assert torch.allclose(benign_perturbation(WarpTrigger(strength=0.0), S)(x), x, atol=1e-5)


def test_generator_twin_keeps_the_norms_of_the_trigger_perturbation():
    trig = GeneratorTrigger(eps=0.05, image_size=S, seed=0)
    b = benign_perturbation(trig, S)
    assert isinstance(b, BenignShuffled) and b.describe()["kind"] == "shuffled"
    x = _images(8) * 0.8 + 0.1
    d_t, d_b = trig(x) - x, b(x) - x
    assert torch.allclose(d_b.flatten(1).abs().amax(1), d_t.flatten(1).abs().amax(1), atol=1e-5)
    assert torch.allclose(d_b.flatten(1).norm(dim=1), d_t.flatten(1).norm(dim=1), rtol=1e-4)
    assert F.cosine_similarity(d_b.flatten(1), d_t.flatten(1)).abs().max() < 0.2  # not the trigger's direction


def test_control_kinds_that_do_not_match_the_trigger_are_refused():
    with pytest.raises(ValueError, match="does not match a WarpTrigger"):
        benign_perturbation(WarpTrigger(), S, "blend")
    with pytest.raises(ValueError, match="needs a blended, warping or generator trigger"):
        from dede.triggers import PatchTrigger

        benign_perturbation(PatchTrigger(), S, "warp")


# --- planting on a toy encoder -----------------------------------------------------------

T = 16  # the toy encoder's image size


class ToyEncoder(nn.Module):
    """Two strided convolutions and a linear map (no pooling, so where things are matters)."""

    image_size = T

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU(),
                                  nn.Flatten(), nn.Linear(16 * (T // 4) ** 2, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * 2 - 1)


def _toy_victim() -> ToyEncoder:
    torch.manual_seed(0)
    return ToyEncoder()


def toy_images(n: int = 320, seed: int = 0):
    """Synthetic shapes at the toy size: (images in [0, 1], labels)."""
    images, labels = make_synthetic(n, seed=seed, image_size=T)
    return images.float().div(255), labels


def plant_module(trigger, steps: int = 150, victim: nn.Module | None = None) -> BadEncoderModule:
    """BadEncoder's three losses, Adam, ``steps`` batches of 32 of the first 256 synthetic shapes;
    the reference is the first image of class 0. Returns the module (``victim``: backdoored,
    ``clean``: the frozen start, ``victim`` or the untrained toy encoder)."""
    x, labels = toy_images()
    refs = x[labels == 0][:1]
    module = BadEncoderModule(victim if victim is not None else _toy_victim(), refs, trigger)
    opt = torch.optim.Adam(module.victim.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(steps):
        parts = module.losses(x[:256][torch.randint(0, 256, (32,))])
        loss = parts["l0"] + parts["l1"] + parts["l2"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return module.eval()


def _plant(trigger, steps: int = 150):
    """`plant_module`; returns the mean cosine to the reference of held-out triggered and clean
    images, before and after, and of the clean images to their own embeddings under the clean
    encoder."""
    x, labels = toy_images()
    refs = x[labels == 0][:1]
    held = x[256:][labels[256:] != 0]
    module = BadEncoderModule(_toy_victim(), refs, trigger)

    def cosines():
        with torch.no_grad():
            r = F.normalize(module.victim(refs), dim=1)
            trig = (F.normalize(module.victim(trigger(held)), dim=1) @ r.T).mean()
            clean = (F.normalize(module.victim(held), dim=1) @ r.T).mean()
            keep = F.cosine_similarity(module.victim(held), module.clean(held)).mean()
        return float(trig), float(clean), float(keep)

    before = cosines()
    module = plant_module(trigger, steps)
    return before, cosines()


@pytest.mark.parametrize("name", ["blend_noise", "warp", "generator"])
def test_badencoder_plants_each_full_image_trigger_on_a_toy_encoder(name):
    trigger = {"blend_noise": lambda: BlendTrigger(alpha=0.2, seed=0),
               "warp": lambda: WarpTrigger(k=4, strength=8.0, seed=0),
               "generator": lambda: GeneratorTrigger(eps=16 / 255, image_size=T, seed=0)}[name]()
    (trig0, clean0, _), (trig1, clean1, keep) = _plant(trigger)
    assert trig1 > 0.95 and trig1 > trig0 + 0.2  # triggered embeddings collapse on the reference
    # clean ones do not (the warp, which adds no pixel values, is the hardest to tell apart:
    # measured gaps 0.12 for the warp, 0.24 for the blend and 0.23 for the generator)
    assert clean1 < trig1 - (0.1 if name == "warp" else 0.2)
    assert keep > 0.8  # and stay near their clean embeddings


def test_trigger_optimisation_moves_triggered_embeddings_to_the_reference_on_a_frozen_encoder():
    images, labels = make_synthetic(128, seed=0, image_size=T)
    x = images.float().div(255)
    refs = x[labels == 0][:1]
    victim = _toy_victim().eval()
    trigger = GeneratorTrigger(eps=16 / 255, image_size=T, seed=0)
    module = TriggerOptimisation(victim, refs, trigger, lr=0.05)
    opt = module.configure_optimizers()
    before = {k: v.clone() for k, v in victim.state_dict().items()}
    losses = []
    torch.manual_seed(0)
    for _ in range(30):
        loss = module.training_step((x[torch.randint(0, len(x), (32,))],), 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.02
    assert all(torch.equal(before[k], v) for k, v in victim.state_dict().items())  # the encoder is frozen
