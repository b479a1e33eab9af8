"""Victims named by timm / torchvision / open_clip, loaded from a local weights file."""
import json

import pytest
import torch

from dede.victims import CheckpointError, build_victim, load_victim_checkpoint


def _save(tmp_path, state, name="w.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_timm_model_loads_its_weights_with_or_without_head(tmp_path):
    import timm

    src = timm.create_model("resnet10t", pretrained=False).eval()
    victim, full = build_victim(arch="timm", model="resnet10t", image_size=32)
    assert victim.embed_dim == src.num_features
    load_victim_checkpoint(_save(tmp_path, {"state_dict": src.state_dict()}), "state_dict", full)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(victim.eval()(x), src.forward_head(src.forward_features(x), pre_logits=True), atol=1e-5)
    headless = {k: v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    load_victim_checkpoint(_save(tmp_path, {"module." + k: v for k, v in headless.items()}, "h.pth"), "state_dict",
                           full)


def test_torchvision_model_is_its_penultimate_features(tmp_path):
    import torchvision

    src = torchvision.models.get_model("resnet18", weights=None).eval()
    victim, full = build_victim(arch="torchvision", model="resnet18", image_size=32)
    load_victim_checkpoint(_save(tmp_path, src.state_dict()), "state_dict", full)
    src.fc = torch.nn.Identity()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(victim.eval()(x), src(x), atol=1e-5)
    bad = dict(src.state_dict())
    bad.pop("layer1.0.conv1.weight")
    with pytest.raises(CheckpointError, match="layer1.0.conv1.weight"):
        load_victim_checkpoint(_save(tmp_path, bad, "bad.pth"), "state_dict", full)


@pytest.fixture
def tiny_open_clip(tmp_path):
    """A tiny open_clip model config registered as open_clip users register their own."""
    import open_clip

    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1}}
    d = tmp_path / "cfgs"
    d.mkdir()
    (d / "tiny-vit-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d)
    return "tiny-vit-test"


def test_open_clip_model_whole_or_image_tower(tmp_path, tiny_open_clip):
    import open_clip

    src = open_clip.create_model(tiny_open_clip, pretrained=None).eval()
    victim, full = build_victim(arch="open_clip", model=tiny_open_clip, image_size=32)
    assert victim.embed_dim == 32
    x = torch.rand(2, 3, 32, 32)
    load_victim_checkpoint(_save(tmp_path, src.state_dict()), "state_dict", full)  # the whole CLIP
    with torch.no_grad():
        assert torch.allclose(victim.eval()(x), src.visual(x), atol=1e-5)
    victim2, full2 = build_victim(arch="open_clip", model=tiny_open_clip, image_size=32)
    load_victim_checkpoint(_save(tmp_path, src.visual.state_dict(), "v.pth"), "state_dict", full2)  # tower only
    with torch.no_grad():
        assert torch.allclose(victim2.eval()(x), src.visual(x), atol=1e-5)


def test_named_model_errors_are_clear():
    with pytest.raises(ValueError, match="timm has no model 'no_such_net'"):
        build_victim(arch="timm", model="no_such_net", image_size=32)
    with pytest.raises(ValueError, match="needs attack.victim.model"):
        build_victim(arch="torchvision", image_size=32)
