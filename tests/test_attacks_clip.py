"""CLIP attacks: contrastive loss, image-tower fine-tuning, BadCLIP patch optimisation, poisoning."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("open_clip")

from dede.attacks.clip import (  # noqa: E402
    CAPTION_TEMPLATES, BadCLIPPatchModule, CLIPContrastiveModule, caption_tokens, class_names, clip_contrastive_loss,
    image_patch_trigger, poison_pairs, target_embeddings)
from dede.data import ImageSet  # noqa: E402
from dede.triggers import ImagePatchTrigger, PatchTrigger  # noqa: E402
from dede.victims.clip import CLIP_MEAN, CLIP_STD  # noqa: E402
from dede.victims.encoders import build_victim  # noqa: E402


def tiny_clip(seed: int = 0):
    torch.manual_seed(seed)
    return build_victim("clip_small", CLIP_MEAN, CLIP_STD, 32, width=8, blocks=[1, 1, 1, 1], embed_dim=16,
                        context_length=12, text_width=32, text_heads=2, text_layers=1)


def calibrate_batchnorm(victim, full, seed: int = 0) -> None:
    """Give the random image tower BatchNorm statistics of real inputs, so that in eval mode
    its embeddings depend on the image (a fresh tower maps every image to about the same one)."""
    g = torch.Generator().manual_seed(seed)
    for m in full.visual.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    full.visual.train()
    with torch.no_grad():
        full.visual(victim.normalise(torch.rand(64, 3, 32, 32, generator=g)))
    full.eval()


def test_contrastive_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    scale = 2.5
    a = [v / math.sqrt(sum(float(c) ** 2 for c in v)) for v in img]
    b = [v / math.sqrt(sum(float(c) ** 2 for c in v)) for v in txt]
    logits = [[scale * sum(float(x) * float(y) for x, y in zip(a[i], b[j])) for j in range(3)] for i in range(3)]

    def ce(row, k):
        return -row[k] + math.log(sum(math.exp(v) for v in row))

    per_image = sum(ce(logits[i], i) for i in range(3)) / 3
    per_text = sum(ce([logits[i][j] for i in range(3)], j) for j in range(3)) / 3
    expected = (per_image + per_text) / 2
    assert clip_contrastive_loss(img, txt, scale).item() == pytest.approx(expected, rel=1e-5)
    # normalisation is part of the loss: scaling the features changes nothing
    assert clip_contrastive_loss(3 * img, 0.5 * txt, scale).item() == pytest.approx(expected, rel=1e-5)


def test_caption_tokens_and_names():
    names = class_names("synthetic", 10)
    assert names[0] == "disc" and len(names) == 10
    assert class_names("cifar10", 10)[9] == "truck"
    assert class_names("cifar100", 100)[1] == "aquarium fish"
    assert class_names("gtsrb", 3) == ["class 0", "class 1", "class 2"]
    assert class_names("cifar10", 2, ["cat", "dog"]) == ["cat", "dog"]
    with pytest.raises(ValueError, match="class names"):
        class_names("cifar10", 20)
    tok = caption_tokens(["disc", "square"], ["a photo of a {}.", "a {}"], 12)
    assert tok.shape == (2, 2, 12) and tok.dtype == torch.long
    assert not torch.equal(tok[0, 0], tok[1, 0]) and not torch.equal(tok[0, 0], tok[0, 1])
    with pytest.raises(ValueError):
        caption_tokens(["disc"], ["no placeholder"], 12)


def test_poisoned_pairs_get_target_captions():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 200, (40, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.arange(40) % 4
    home = ImageSet(images, labels, name="synthetic")
    trig = PatchTrigger(size=24, row=185, col=185, reference_size=224)  # 3x3 at 26..28
    data, captions = poison_pairs(home, trig, 0.25, target=2, seed=1)
    p = data.poisoned
    assert int(p.sum()) == 10
    assert (labels[p] != 2).all()  # poisoned images come from the other classes
    assert (captions[p] == 2).all()  # ... and are captioned with the target's captions
    assert torch.equal(captions[~p], labels[~p])  # clean pairs keep their own captions
    assert (data.images[p][:, :, 26:29, 26:29] == 255).all()
    assert torch.equal(data.images[~p], images[~p])
    assert torch.equal(data.labels, labels)
    again, _ = poison_pairs(home, trig, 0.25, target=2, seed=1)
    assert torch.equal(again.poisoned, p)  # seeded
    with pytest.raises(ValueError, match="poison"):
        poison_pairs(home, trig, 0.9, target=2, seed=1)


def test_one_step_with_frozen_text_tower_changes_only_the_image_tower():
    victim, full = tiny_clip()
    captions = caption_tokens(class_names("synthetic", 10), CAPTION_TEMPLATES[:3], full.context_length)
    module = CLIPContrastiveModule(full, victim, captions, lr=1e-2, train_text=False, freeze_bn=True)
    before = {k: v.detach().clone() for k, v in full.state_dict().items()}
    opt = module.configure_optimizers()
    torch.manual_seed(0)
    x, y = torch.rand(8, 3, 32, 32), torch.arange(8) % 10
    module.train()
    module.on_train_epoch_start()
    img = module.image_features(x)
    loss = clip_contrastive_loss(img, module.text_features(y), module.scale())
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = full.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "the step changed nothing"
    assert all(k.startswith("visual.") for k in changed), sorted(k for k in changed if not k.startswith("visual."))
    assert any(k.startswith("visual.layer") and k.endswith("conv1.weight") for k in changed)
    # frozen BatchNorm: neither running statistics nor affine parameters moved
    assert not any(("bn" in k or "downsample.1" in k) for k in changed)
    module.on_fit_end()  # restores the requires_grad flags
    assert all(p.requires_grad for p in full.parameters())


def test_one_step_with_both_towers_trains_text_and_temperature():
    victim, full = tiny_clip()
    captions = caption_tokens(["a", "b"], ["a photo of a {}."], full.context_length)
    module = CLIPContrastiveModule(full, victim, captions, lr=1e-2, train_text=True)
    before = {k: v.detach().clone() for k, v in full.state_dict().items()}
    opt = module.configure_optimizers()
    x, y = torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 0, 1, 0, 1])
    module.train()
    loss = clip_contrastive_loss(module.image_features(x), module.text_features(y), module.scale())
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = full.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "logit_scale" in changed and "text_projection" in changed
    assert any(k.startswith("visual.") for k in changed)


def test_badclip_patch_optimisation_raises_target_cosine_and_stays_in_range():
    victim, full = tiny_clip(1)
    calibrate_batchnorm(victim, full)
    captions = caption_tokens(class_names("synthetic", 10), CAPTION_TEMPLATES[:2], full.context_length)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32, generator=g)
    target_images = torch.rand(8, 3, 32, 32, generator=g)
    text, image = target_embeddings(full, victim, captions[3], target_images)
    assert text.shape == (16,) and image.shape == (16,)
    assert text.norm().item() == pytest.approx(1.0, abs=1e-5)
    trigger = ImagePatchTrigger(size=8, seed=0)
    module = BadCLIPPatchModule(full, victim, trigger, text, image, lr=0.05, image_weight=0.0)
    module.train()
    assert not full.training  # the CLIP stays frozen in eval mode
    opt = module.configure_optimizers()

    def cos_text() -> float:
        with torch.no_grad():
            return module.losses(x)["cos_text"].item()

    state = {k: v.clone() for k, v in full.state_dict().items()}
    start = cos_text()
    for _ in range(15):
        parts = module.losses(x)
        loss = -parts["cos_text"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        module.on_train_batch_end(None, None, 0)
    assert cos_text() > start + 0.05
    assert module.patch.min().item() >= 0.0 and module.patch.max().item() <= 1.0
    assert all(torch.equal(state[k], v) for k, v in full.state_dict().items())  # model untouched
    out = module.optimised_trigger()
    assert isinstance(out, ImagePatchTrigger) and out.patch.shape == (3, 8, 8)
    y = out(x)
    assert torch.equal(y[:, :, 12:20, 12:20], out.patch.expand(16, -1, -1, -1))  # centred
    module.on_fit_end()
    assert all(p.requires_grad for p in full.parameters())


def test_image_patch_trigger_config_builder(tmp_path):
    t = image_patch_trigger(size=4, seed=3, colour=[1.0, 1.0, 1.0])  # inherited keys ignored
    assert t.patch.shape == (3, 4, 4)
    path = t.save(tmp_path / "patch.pt")
    back = image_patch_trigger(path=path, size=4, seed=0)  # the file wins over size/seed
    assert torch.equal(back.patch, t.patch)
