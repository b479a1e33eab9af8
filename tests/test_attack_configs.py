"""Every attack config composes, builds its victim and trigger, and names a way to make it."""
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dede.victims import build_victim
from dede.victims.factory import ATTACKS, PRETRAINERS
from tests.helpers import compose_train

ATTACK_NAMES = ["clean", "badencoder", "drupe", "ctrl", "asset", "clip", "badclip", "clean_clip"]


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_config_builds_victim_and_trigger_on_the_embedded_default(name):
    cfg = compose_train([f"attack={name}"])
    a = cfg.attack
    assert cfg.scale == "tiny" and cfg.data.name == "synthetic"
    assert a.name == "clean" or a.name in ATTACKS
    assert a.pretrain.kind in PRETRAINERS
    if a.name != "clean":
        assert callable(ATTACKS[a.name].resolve())
    victim, _ = build_victim(**OmegaConf.to_container(a.victim, resolve=True))
    size = int(cfg.data.image_size)
    assert size == victim.image_size
    trigger = instantiate(a.trigger)
    trigger.check_size(size)
    x = torch.rand(2, 3, size, size)
    y = trigger(x)
    assert y.shape == x.shape and not torch.equal(x, y) and 0 <= y.min() and y.max() <= 1
    victim.eval()
    assert victim(x).shape == (2, victim.embed_dim)
    assert size % int(cfg.decoder.patch_size) == 0


@pytest.mark.parametrize("name", ["badencoder", "drupe", "ctrl", "asset", "clip", "badclip"])
def test_paper_scale_of_each_attack_uses_the_paper_victim(name):
    cfg = compose_train([f"attack={name}", "data=cifar10"])
    assert cfg.scale == "paper"
    v = cfg.attack.victim
    if v.arch.startswith("clip"):
        assert v.arch == "clip_rn50" and v.image_size == 224
    else:
        assert v.width == 64 and list(v.blocks) == [2, 2, 2, 2] and v.image_size == 32
