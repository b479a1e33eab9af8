"""DRUPE's loss terms and schedule, and the ASSET-style supervised backdoor (fast, CPU)."""
import math

import lightning as L
import pytest
import torch

from dede.attacks.drupe import AdaptiveWeight, DRUPEModule, sliced_wasserstein
from dede.attacks.losses import mean_pairwise_cosine
from dede.attacks.supervised import SupervisedModule, poison_all_to_one
from dede.data import ImageSet, TensorBatches, make_loader
from dede.triggers import PatchTrigger
from dede.victims.encoders import build_victim

TRAINER = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False)


# ---------------------------------------------------------------- off-diagonal mean cosine
def test_offdiag_mean_matches_hand_computed_value_and_not_the_buggy_formula():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # pairwise cosines: (0,1) = 0, (0,2) = (1,2) = 1/sqrt(2); mean over the 3 pairs
    expected = 2 / math.sqrt(2) / 3
    got = mean_pairwise_cosine(z)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # the original's (S - diag_embed(S)).mean() broadcasts to (B, B, B) and equals mean(S) * (1 - 1/B)
    zn = torch.nn.functional.normalize(z, dim=1)
    s = zn @ zn.T
    buggy = (s - torch.diag_embed(s)).mean()
    b = len(z)
    assert buggy.item() == pytest.approx((s.mean() * (1 - 1 / b)).item(), abs=1e-6)
    assert abs(buggy.item() - expected) > 0.03
    # identical rows: every pair has cosine 1; a single row has no pair
    assert mean_pairwise_cosine(torch.ones(5, 3)).item() == pytest.approx(1.0, abs=1e-6)
    assert mean_pairwise_cosine(torch.ones(1, 3)).item() == 0.0


def test_offdiag_mean_is_differentiable():
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    mean_pairwise_cosine(z).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


# ---------------------------------------------------------------- sliced Wasserstein
def test_sliced_wasserstein_zero_for_identical_sets_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 16, generator=g)

    def swd(x, y):
        return sliced_wasserstein(x, y, 50, generator=torch.Generator().manual_seed(1)).item()

    assert swd(a, a) < 1e-4
    assert swd(a, a[torch.randperm(64, generator=g)]) < 1e-4  # order of the samples is irrelevant
    d1, d2, d3 = swd(a, a + 0.5), swd(a, a + 1.0), swd(a, a + 2.0)
    assert 0 < d1 < d2 < d3
    assert d3 / d1 == pytest.approx(4.0, rel=1e-3)  # a pure shift: W2 is linear in its size
    # different sample counts are compared at common quantile levels
    b = torch.randn(40, 16, generator=g)
    assert math.isfinite(swd(a, b)) and swd(a, b + 3.0) > swd(a, b)


# ---------------------------------------------------------------- adaptive weights
def test_adaptive_weight_goes_up_and_down():
    w = AdaptiveWeight(0.1)
    assert w.update(True) == pytest.approx(0.125)
    assert w.update(True) == pytest.approx(0.15625)
    assert w.update(False) == pytest.approx(0.15625 / 1.25 ** 1.25)
    w2 = AdaptiveWeight(0.001, patience=2)
    assert w2.update(True) == pytest.approx(0.001)  # one success is not enough
    assert w2.update(True) == pytest.approx(0.00125)
    w3 = AdaptiveWeight(0.0)
    assert w3.update(True) == 0.0  # from 0 it restarts at its initial value (0 here)


def _tiny_drupe(**kw):
    torch.manual_seed(0)
    victim, _ = build_victim("simclr_resnet", mean=[0.5] * 3, std=[0.25] * 3, image_size=16, width=8,
                             blocks=[1, 1, 1, 1])
    refs = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return DRUPEModule(victim, refs, PatchTrigger(size=10, row=21, col=21), **kw)


def test_drupe_adaptive_weights_follow_the_attack_state():
    m = _tiny_drupe()
    assert m.w_spread.value == pytest.approx(0.1) and m.w_dist.value == pytest.approx(0.001)
    good = {"l0": -0.99, "l1": -0.95, "l2": -0.95, "b2b": 0.3}
    m.adapt(good)
    assert m.w_spread.value == pytest.approx(0.125) and m.w_dist.value == pytest.approx(0.00125)
    m.adapt(good | {"b2b": 0.9})  # effective but triggered embeddings collapsed: only the spreading weight grows
    assert m.w_spread.value == pytest.approx(0.15625) and m.w_dist.value == pytest.approx(0.00125 / 1.25 ** 1.25)
    m.adapt(good | {"l0": -0.5})  # the backdoor is not effective: both shrink
    assert m.w_spread.value == pytest.approx(0.15625 / 1.25 ** 1.25)


# ---------------------------------------------------------------- DRUPE training
def test_drupe_steps_decrease_the_loss_with_batchnorm_frozen():
    m = _tiny_drupe(lr=0.05, warmup_epochs=0, plain_epochs=0)
    x = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    bn_before = {k: v.clone() for k, v in m.victim.state_dict().items() if "running" in k}
    clean_before = {k: v.clone() for k, v in m.clean.state_dict().items()}
    opt = m.configure_optimizers()
    m.on_train_epoch_start()

    def loss_now():
        torch.manual_seed(3)  # same reference augmentation and projections every time
        with torch.no_grad():
            return m.combine(m.losses(x), "stealth").item()

    start = loss_now()
    for _ in range(8):
        terms = m.losses(x)
        assert set(terms) == set(DRUPEModule.TERMS) and all(torch.isfinite(v) for v in terms.values())
        loss = m.combine(terms, "stealth")
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_now() < start
    # BatchNorm: eval mode, no trainable affine parameters, running statistics untouched
    bns = [b for b in m.victim.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(not b.training and not any(p.requires_grad for p in b.parameters()) for b in bns)
    for k, v in m.victim.state_dict().items():
        if "running" in k:
            assert torch.equal(v, bn_before[k]), k
    for k, v in m.clean.state_dict().items():  # the clean reference encoder never changes
        assert torch.equal(v, clean_before[k]), k


def test_drupe_phases_and_fit_update_the_weights():
    m = _tiny_drupe(lr=0.01, warmup_epochs=1, plain_epochs=2, adapt_after=2, l0_threshold=2.0, utility_threshold=2.0,
                    b2b_threshold=2.0)
    assert [m.phase(e) for e in range(4)] == ["warmup", "plain", "stealth", "stealth"]
    x = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    loader = make_loader(TensorBatches(x), 16, shuffle=True, drop_last=True)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=3, **TRAINER)
    trainer.fit(m, loader)
    # thresholds every epoch meets: only epoch 2 (>= adapt_after) adapts, once, upwards
    assert m.w_spread.value == pytest.approx(0.125) and m.w_dist.value == pytest.approx(0.00125)
    for k in ["drupe/l0", "drupe/swd", "drupe/b2b", "drupe/std_refs", "drupe/loss", "drupe/w_dist"]:
        assert k in trainer.logged_metrics, k


# ---------------------------------------------------------------- ASSET-style supervised backdoor
def test_asset_poisoning_relabels_exactly_the_triggered_samples():
    g = torch.Generator().manual_seed(5)
    data = ImageSet(torch.randint(0, 200, (300, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.arange(300) % 10, name="toy")
    trigger = PatchTrigger(size=4, row=27, col=27)
    out = poison_all_to_one(data, trigger, 0.1, target=2, seed=0)
    assert int(out.poisoned.sum()) == 30
    assert (out.labels[out.poisoned] == 2).all()
    assert torch.equal(out.labels[~out.poisoned], data.labels[~out.poisoned])
    assert (out.images[out.poisoned][:, :, 27:31, 27:31] == 255).all()
    assert torch.equal(out.images[~out.poisoned], data.images[~out.poisoned])
    assert torch.equal(data.labels, torch.arange(300) % 10) and not data.poisoned.any()  # input untouched
    again = poison_all_to_one(data, trigger, 0.1, target=2, seed=0)
    assert torch.equal(again.poisoned, out.poisoned)  # seeded
    assert int(poison_all_to_one(data, trigger, 0.0, 2, 0).poisoned.sum()) == 0


def test_supervised_module_learns_a_separable_problem():
    g = torch.Generator().manual_seed(6)
    n = 256
    labels = torch.arange(n) % 2
    # class 0: dark images, class 1: bright images, plus noise
    base = torch.where(labels.view(-1, 1, 1, 1) == 1, 170.0, 60.0)
    images = (base + 30 * torch.randn(n, 3, 16, 16, generator=g)).clamp(0, 255).to(torch.uint8)
    torch.manual_seed(0)
    victim, full = build_victim("supervised_resnet", mean=None, std=None, image_size=16, width=8,
                                blocks=[1, 1, 1, 1], num_classes=2)
    module = SupervisedModule(full, victim, lr=1e-2, optimizer="adam", cosine=True, crop_padding=2)
    L.seed_everything(0, verbose=False)
    L.Trainer(max_epochs=4, **TRAINER).fit(module, make_loader(TensorBatches(images, labels), 32, shuffle=True))
    module.eval()
    with torch.no_grad():
        acc = (module(images.float() / 255).argmax(1) == labels).float().mean().item()
    assert acc >= 0.95
    assert victim.embed(images.float() / 255).shape == (n, victim.embed_dim)  # the victim = penultimate features
