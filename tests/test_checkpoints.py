import pytest
import torch

from dede.victims import CheckpointError, build_victim, load_victim_checkpoint
from dede.victims.encoders import SimCLRNet

# keys as they appear in a BadEncoder / DRUPE CIFAR-10 checkpoint (ResNet-18, width 64)
ORIGINAL_KEYS = [
    "f.f.0.weight", "f.f.1.weight", "f.f.1.running_mean", "f.f.1.num_batches_tracked",
    "f.f.3.0.conv1.weight", "f.f.3.0.bn1.bias", "f.f.3.1.conv2.weight", "f.f.4.0.downsample.0.weight",
    "f.f.4.0.downsample.1.running_var", "f.f.6.1.bn2.weight", "g.0.weight", "g.1.weight", "g.1.running_mean",
    "g.3.weight", "g.3.bias",
]


def original_state_dict(width=64, blocks=(2, 2, 2, 2)):
    torch.manual_seed(1)
    net = SimCLRNet(width, blocks)
    for m in net.modules():  # non-trivial BN statistics, so a silently skipped key would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return net, net.state_dict()


def test_full_resnet18_has_the_original_layout():
    _, sd = original_state_dict()
    for k in ORIGINAL_KEYS:
        assert k in sd, k
    assert sd["f.f.0.weight"].shape == (64, 3, 3, 3)  # 3x3 stem, stride 1, no bias
    assert "f.f.0.bias" not in sd and sd["g.0.weight"].shape == (512, 512) and "g.0.bias" not in sd
    assert not any(k.startswith("f.f.7") or k.startswith("f.f.8") for k in sd)  # pool has no weights, no fc
    victim, _ = build_victim("simclr_resnet", image_size=32)
    assert victim.embed_dim == 512


@pytest.mark.parametrize("prefix", ["", "module."])
def test_original_checkpoint_loads_strictly_and_gives_same_output(tmp_path, prefix):
    src, sd = original_state_dict(width=16, blocks=(1, 1, 1, 1))
    path = tmp_path / "model_200.pth"
    torch.save({"epoch": 200, "state_dict": {prefix + k: v for k, v in sd.items()}, "optimizer": {}}, path)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
    victim, full = build_victim("simclr_resnet", mean, std, 32, width=16, blocks=(1, 1, 1, 1))
    load_victim_checkpoint(path, "badencoder", full)
    x = torch.rand(4, 3, 32, 32)
    src.eval(), victim.eval()
    expected = src.f((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    assert torch.allclose(victim(x), expected, atol=1e-6)


def test_mismatched_checkpoint_lists_missing_and_unexpected_keys(tmp_path):
    _, sd = original_state_dict(width=16, blocks=(1, 1, 1, 1))
    sd = dict(sd)
    sd.pop("g.3.bias")
    sd["backbone.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": sd}, path)
    _, full = build_victim("simclr_resnet", width=16, blocks=(1, 1, 1, 1))
    with pytest.raises(CheckpointError) as e:
        load_victim_checkpoint(path, "badencoder", full)
    msg = str(e.value)
    assert "'badencoder' format" in msg and "missing keys: g.3.bias" in msg
    assert "unexpected keys: backbone.conv1.weight" in msg


def test_width_mismatch_is_a_shape_error(tmp_path):
    _, sd = original_state_dict(width=16, blocks=(1, 1, 1, 1))
    torch.save({"state_dict": sd}, tmp_path / "w16.pth")
    _, full = build_victim("simclr_resnet", width=32, blocks=(1, 1, 1, 1))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_victim_checkpoint(tmp_path / "w16.pth", "badencoder", full)


def test_missing_corrupt_and_unknown_format(tmp_path):
    _, full = build_victim("simclr_resnet", width=16, blocks=(1, 1, 1, 1))
    with pytest.raises(CheckpointError, match="not found"):
        load_victim_checkpoint(tmp_path / "nope.pth", "badencoder", full)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_victim_checkpoint(tmp_path / "junk.pth", "badencoder", full)
    torch.save({"state_dict": {}}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_victim_checkpoint(tmp_path / "empty.pth", "mystery", full)


class Evil:
    pass


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": Evil()}, tmp_path / "evil.pth")
    _, full = build_victim("simclr_resnet", width=16, blocks=(1, 1, 1, 1))
    with pytest.raises(CheckpointError, match="cannot read"):  # weights_only=True refuses arbitrary objects
        load_victim_checkpoint(tmp_path / "evil.pth", "badencoder", full)
