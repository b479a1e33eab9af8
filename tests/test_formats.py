"""Victim architectures and the checkpoint formats of the original repositories.

Every checkpoint here is written the way the original training code writes it (its wrapper
dict, with and without the ``module.`` prefix of distributed training), loaded by our loader
into a freshly built model, and checked to give the same features as the source."""
import pytest
import torch
import torch.nn.functional as F

from dede.victims import (CLIP_MEAN, CLIP_STD, FORMATS, CheckpointError, build_victim, guess_format,
                          load_victim_checkpoint, native_format, save_checkpoint, tokenize)
from dede.victims.encoders import CTRLNet, SupervisedResNet

SMALL = dict(width=16, blocks=(1, 1, 1, 1))
CLIP_SMALL = dict(width=16, blocks=(1, 1, 1, 1), image_size=32, embed_dim=32, context_length=16,
                  text_width=32, text_heads=2, text_layers=1)
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]


def perturb(model, seed):
    """Random weights everywhere, including BN affine parameters and statistics, so that a
    key that silently kept its initial value would change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def normalise(x, mean, std):
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def reference_cifar_resnet(sd, p, x, fixed_pool=False):
    """A functional CIFAR ResNet computed straight from a state dict laid out with
    ``conv1``/``bn1``/``layerS.J.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}`` keys."""
    def bn(h, q):
        return F.batch_norm(h, sd[q + "running_mean"], sd[q + "running_var"], sd[q + "weight"], sd[q + "bias"],
                            False, 0.0, 1e-5)
    h = F.relu(bn(F.conv2d(x, sd[p + "conv1.weight"], padding=1), p + "bn1."))
    for s in range(1, 5):
        j = 0
        while f"{p}layer{s}.{j}.conv1.weight" in sd:
            q = f"{p}layer{s}.{j}."
            stride = 2 if s > 1 and j == 0 else 1
            out = F.relu(bn(F.conv2d(h, sd[q + "conv1.weight"], stride=stride, padding=1), q + "bn1."))
            out = bn(F.conv2d(out, sd[q + "conv2.weight"], padding=1), q + "bn2.")
            skip = h
            if q + "shortcut.0.weight" in sd:
                skip = bn(F.conv2d(h, sd[q + "shortcut.0.weight"], stride=stride), q + "shortcut.1.")
            h = F.relu(out + skip)
            j += 1
    h = F.avg_pool2d(h, 4) if fixed_pool else h.mean((2, 3), keepdim=True)
    return h.flatten(1)


def clip_source(seed=1, **kw):
    torch.manual_seed(seed)
    _, full = build_victim("clip_small", CLIP_MEAN, CLIP_STD, **(CLIP_SMALL | kw))
    return perturb(full, seed)


# ---------------------------------------------------------------------------------- CTRL

def test_ctrl_resnet18_has_the_original_layout():
    sd = CTRLNet().state_dict()
    assert sd["backbone.conv1.weight"].shape == (64, 3, 3, 3) and "backbone.conv1.bias" not in sd
    for k in ["backbone.bn1.running_mean", "backbone.layer1.0.conv1.weight", "backbone.layer1.1.bn2.bias",
              "backbone.layer4.1.conv2.weight", "proj_head.0.bias", "proj_head.2.bias"]:
        assert k in sd, k
    # a projection skip exactly where stride or width changes (first block of layer2..4)
    for s in (2, 3, 4):
        assert f"backbone.layer{s}.0.shortcut.0.weight" in sd and f"backbone.layer{s}.0.shortcut.1.running_var" in sd
        assert f"backbone.layer{s}.1.shortcut.0.weight" not in sd
    assert sd["backbone.layer2.0.shortcut.0.weight"].shape == (128, 64, 1, 1)
    assert "backbone.layer1.0.shortcut.0.weight" not in sd  # 64 -> 64, stride 1: identity
    assert sd["proj_head.0.weight"].shape == (512, 512) and sd["proj_head.2.weight"].shape == (128, 512)
    assert not any(k.startswith(("backbone.fc", "backbone.linear", "proj_head.1")) for k in sd)
    assert native_format("ctrl_resnet") == "ctrl"


@pytest.mark.parametrize("prefix", ["", "module."])
def test_ctrl_checkpoint_loads_strictly_and_gives_same_output(tmp_path, prefix):
    torch.manual_seed(1)
    src = perturb(CTRLNet(**SMALL), 1)
    sd = src.state_dict()
    path = tmp_path / "last.pth.tar"
    opt = torch.optim.SGD(src.parameters(), lr=0.06, momentum=0.9).state_dict()
    torch.save({"epoch": 800, "state_dict": {prefix + k: v for k, v in sd.items()}, "optimizer": opt}, path)
    torch.manual_seed(2)
    victim, full = build_victim("ctrl_resnet", None, None, 32, **SMALL)
    load_victim_checkpoint(path, "ctrl", full)
    victim.eval(), full.eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        got = victim(x)  # no normalisation: CTRL feeds [0, 1] images
        assert torch.allclose(got, src.backbone(x), atol=1e-5)
        assert torch.allclose(got, reference_cifar_resnet(sd, "backbone.", x), atol=1e-4)
        assert torch.allclose(full(x)[1], src(x)[1], atol=1e-5)


def test_ctrl_backbone_only_is_refused_with_a_clear_message(tmp_path):
    sd = {k: v for k, v in CTRLNet(**SMALL).state_dict().items() if k.startswith("backbone.")}
    torch.save({"epoch": 1, "state_dict": sd}, tmp_path / "b.pth.tar")
    _, full = build_victim("ctrl_resnet", **SMALL)
    with pytest.raises(CheckpointError, match="only the backbone") as e:
        load_victim_checkpoint(tmp_path / "b.pth.tar", "ctrl", full)
    assert "missing keys: proj_head.0.bias" in str(e.value)


# ---------------------------------------------------------------------------- supervised

def test_supervised_resnet18_has_the_original_layout():
    net = SupervisedResNet(num_classes=10)
    sd = net.state_dict()
    for k in ["conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.shortcut.0.weight",
              "layer2.0.shortcut.1.bias", "layer4.1.bn2.weight", "linear.weight", "linear.bias"]:
        assert k in sd, k
    assert sd["linear.weight"].shape == (10, 512) and "layer1.0.shortcut.0.weight" not in sd
    victim, full = build_victim("supervised_resnet", CIFAR_MEAN, CIFAR_STD, 32, num_classes=43)
    assert victim.embed_dim == 512 and full.linear.out_features == 43
    # the victim shares the classifier's feature layers and holds no classifier itself
    assert not any("linear" in n for n, _ in victim.named_parameters())
    assert victim.backbone.conv1 is full.conv1
    assert native_format("supervised_resnet") == "supervised"


@pytest.mark.parametrize("wrap", ["plain", "net", "state_dict+module", "model"])
def test_supervised_checkpoint_loads_strictly_and_gives_same_output(tmp_path, wrap):
    torch.manual_seed(3)
    src = perturb(SupervisedResNet(**SMALL, num_classes=10), 3)
    sd = src.state_dict()
    obj = {"plain": sd, "net": {"net": sd, "acc": 93.5, "epoch": 199}, "model": {"model": sd, "epoch": 3},
           "state_dict+module": {"state_dict": {"module." + k: v for k, v in sd.items()}}}[wrap]
    torch.save(obj, tmp_path / "ckpt.pth")
    torch.manual_seed(4)
    victim, full = build_victim("supervised_resnet", CIFAR_MEAN, CIFAR_STD, 32, **SMALL)
    load_victim_checkpoint(tmp_path / "ckpt.pth", "supervised", full)
    victim.eval(), full.eval()
    x = torch.rand(4, 3, 32, 32)
    xn = normalise(x, CIFAR_MEAN, CIFAR_STD)
    with torch.no_grad():
        got = victim(x)  # penultimate features
        assert got.shape == (4, 128)
        assert torch.allclose(got, src.features(xn), atol=1e-5)
        assert torch.allclose(got, reference_cifar_resnet(sd, "", xn, fixed_pool=True), atol=1e-4)
        assert torch.allclose(full(xn), src(xn), atol=1e-5)  # logits
        assert torch.allclose(full.linear(full.features(xn)), full(xn))


def test_supervised_num_classes_mismatch_says_so(tmp_path):
    torch.save(SupervisedResNet(**SMALL, num_classes=10).state_dict(), tmp_path / "c10.pth")
    _, full = build_victim("supervised_resnet", **SMALL, num_classes=100)
    with pytest.raises(CheckpointError, match="num_classes"):
        load_victim_checkpoint(tmp_path / "c10.pth", "supervised", full)


# ---------------------------------------------------------------------------------- CLIP

@pytest.mark.parametrize("prefix,wrapped", [("", False), ("", True), ("visual.", False), ("visual.", True)])
def test_decree_clip_visual_checkpoint_loads_into_the_image_tower(tmp_path, prefix, wrapped):
    src = clip_source(1)
    sd = src.visual.state_dict()
    assert "attnpool.c_proj.weight" in sd and "conv1.weight" in sd and "layer1.0.downsample.0.weight" in sd
    sd = {prefix + k: v for k, v in sd.items()}
    torch.save({"state_dict": sd} if wrapped else sd, tmp_path / "clip_backdoor.pth")
    torch.manual_seed(2)
    victim, full = build_victim("clip_small", CLIP_MEAN, CLIP_STD, **CLIP_SMALL)
    text_before = {k: v.clone() for k, v in full.state_dict().items() if not k.startswith("visual.")}
    load_victim_checkpoint(tmp_path / "clip_backdoor.pth", "decree_clip", full)
    victim.eval(), full.eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(victim(x), src.visual(normalise(x, CLIP_MEAN, CLIP_STD)), atol=1e-5)
    after = full.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in text_before.items())  # the text tower is untouched


@pytest.mark.parametrize("prefix", ["", "module."])
def test_badclip_whole_model_checkpoint_loads_strictly(tmp_path, prefix):
    src = clip_source(5)
    sd = src.state_dict()
    for k in ["visual.attnpool.c_proj.weight", "visual.layer4.0.downsample.1.running_var", "token_embedding.weight",
              "transformer.resblocks.0.attn.in_proj_weight", "positional_embedding", "text_projection",
              "logit_scale", "ln_final.weight"]:
        assert k in sd, k
    opt = torch.optim.AdamW(src.parameters(), lr=1e-6).state_dict()
    torch.save({"epoch": 10, "name": "badclip", "state_dict": {prefix + k: v for k, v in sd.items()},
                "optimizer": opt}, tmp_path / "epoch_10.pt")
    torch.manual_seed(6)
    victim, full = build_victim("clip_small", CLIP_MEAN, CLIP_STD, **CLIP_SMALL)
    load_victim_checkpoint(tmp_path / "epoch_10.pt", "badclip", full)
    victim.eval(), full.eval()
    x = torch.rand(3, 3, 32, 32)
    tokens = tokenize(["a photo of a cat", "a photo of a banana"], full.context_length)
    with torch.no_grad():
        assert torch.allclose(victim(x), src.visual(normalise(x, CLIP_MEAN, CLIP_STD)), atol=1e-5)
        assert torch.allclose(full.encode_text(tokens), src.encode_text(tokens), atol=1e-5)
    assert native_format("clip_small") == native_format("clip_rn50") == "badclip"


@pytest.mark.parametrize("name", ["open_clip_pytorch_model.bin", "open_clip_model.safetensors"])
def test_clip_weights_kwarg_loads_a_local_state_dict(tmp_path, name):
    src = clip_source(7)
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    if name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(sd, str(tmp_path / name))
    else:
        sd["input_resolution"] = torch.tensor(32)  # scalars a serialised OpenAI CLIP carries next to its weights
        torch.save(sd, tmp_path / name)
    victim, full = build_victim("clip_small", CLIP_MEAN, CLIP_STD, **CLIP_SMALL, weights=str(tmp_path / name))
    victim.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(victim(x), src.visual(normalise(x, CLIP_MEAN, CLIP_STD)), atol=1e-5)
    with pytest.raises(CheckpointError, match="attack.victim.weights"):
        build_victim("clip_small", **(CLIP_SMALL | {"embed_dim": 48}), weights=str(tmp_path / name))


def test_clip_rn50_builds_offline():
    torch.manual_seed(0)
    victim, full = build_victim("clip_rn50", CLIP_MEAN, CLIP_STD, 224)
    sd = full.state_dict()
    assert victim.embed_dim == 1024 and sd["visual.attnpool.c_proj.weight"].shape == (1024, 2048)
    assert sd["token_embedding.weight"].shape == (49408, 512) and full.context_length == 77
    assert sum(1 for k in sd if k.startswith("visual.layer3.") and k.endswith(".conv1.weight")) == 6
    victim.eval()
    with torch.no_grad():
        assert victim(torch.rand(1, 3, 224, 224)).shape == (1, 1024)
    with pytest.raises(ValueError, match="224"):
        build_victim("clip_rn50", image_size=32)
    with pytest.raises(ValueError, match="clip_small"):
        build_victim("clip_rn50", image_size=224, width=16)


def test_tokenize_truncates_to_the_context_length():
    t = tokenize(["a photo of a cat", "word " * 100], 16)
    assert t.shape == (2, 16) and t.dtype == torch.long
    assert t[0, 0] == 49406 and t[1, -1] == 49407 and t[0, -1] == 0  # start, kept end-of-text, padding
    full = clip_source(1)
    with torch.no_grad():
        assert full.encode_text(t).shape == (2, CLIP_SMALL["embed_dim"])


# ------------------------------------------------------------------- mismatches and hints

def _save(tmp_path, name, obj):
    torch.save(obj, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("written,asked", [("ctrl", "badencoder"), ("supervised", "ctrl"), ("badencoder", "ctrl"),
                                           ("badclip", "decree_clip"), ("decree_clip", "badclip"),
                                           ("ctrl", "supervised")])
def test_wrong_format_names_the_expected_format_and_hints_the_right_one(tmp_path, written, asked):
    arch = {"badencoder": "simclr_resnet", "ctrl": "ctrl_resnet", "supervised": "supervised_resnet",
            "decree_clip": "clip_small", "badclip": "clip_small"}
    kw = CLIP_SMALL if arch[written].startswith("clip") else SMALL
    _, src = build_victim(arch[written], **kw)
    sd = src.visual.state_dict() if written == "decree_clip" else src.state_dict()
    path = _save(tmp_path, "ckpt.pth", {"epoch": 1, "state_dict": sd})
    kw = CLIP_SMALL if arch[asked].startswith("clip") else SMALL
    _, full = build_victim(arch[asked], **kw)
    with pytest.raises(CheckpointError) as e:
        load_victim_checkpoint(path, asked, full)
    msg = str(e.value)
    assert f"does not match the '{asked}' format ({FORMATS[asked].layout})" in msg
    assert "missing keys:" in msg and "unexpected keys:" in msg
    assert f"look like the '{written}' format" in msg and f"attack.checkpoint_format={written}" in msg
    assert guess_format(sd) == written


def test_clip_format_into_a_resnet_victim_is_refused(tmp_path):
    path = _save(tmp_path, "v.pth", clip_source(1).visual.state_dict())
    _, full = build_victim("simclr_resnet", **SMALL)
    with pytest.raises(CheckpointError, match="'decree_clip'.*has none"):
        load_victim_checkpoint(path, "decree_clip", full)
    with pytest.raises(CheckpointError, match="look like the 'decree_clip' format"):
        load_victim_checkpoint(path, "badencoder", full)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_gets_a_conversion_hint(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "RN50.pt"))
    _, full = build_victim("clip_small", **CLIP_SMALL)
    with pytest.raises(CheckpointError, match="TorchScript archive.*torch.jit.load"):
        load_victim_checkpoint(tmp_path / "RN50.pt", "badclip", full)


# ---------------------------------------------------------------------- our own cache

@pytest.mark.parametrize("arch", ["simclr_resnet", "ctrl_resnet", "supervised_resnet", "clip_small"])
def test_save_checkpoint_round_trips_through_the_native_format(tmp_path, arch):
    kw = CLIP_SMALL if arch.startswith("clip") else SMALL
    torch.manual_seed(8)
    victim, full = build_victim(arch, CLIP_MEAN, CLIP_STD, **kw)
    perturb(full, 8), victim.eval()
    save_checkpoint(full, tmp_path / f"{arch}.pt", kind="clean", epoch=3)
    torch.manual_seed(9)
    victim2, full2 = build_victim(arch, CLIP_MEAN, CLIP_STD, **kw)
    load_victim_checkpoint(tmp_path / f"{arch}.pt", native_format(arch), full2)
    victim2.eval()
    size = kw.get("image_size", 32)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(victim(x), victim2(x))
    assert all(torch.equal(v, full2.state_dict()[k]) for k, v in full.state_dict().items())


def test_unknown_arch_and_native_format():
    with pytest.raises(ValueError, match="known"):
        build_victim("vit_tiny")
    with pytest.raises(ValueError, match="known"):
        native_format("vit_tiny")
