"""Every attack config composes, builds its victim and trigger, and names a way to make it."""
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dede.victims import build_victim
from dede.victims.factory import make_function
from tests.helpers import CONF_DIR, compose_train

# every attack config there is: a new YAML in conf/attack/ is tested without editing this file
ATTACK_NAMES = sorted(p.stem for p in (CONF_DIR / "attack").glob("*.yaml"))


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_config_builds_victim_and_trigger_on_the_embedded_default(name):
    cfg = compose_train([f"attack={name}"] + (["attack.victim.model=resnet10t"] if name == "external" else []))
    a = cfg.attack
    assert cfg.scale == "tiny" and cfg.data.name == "synthetic"
    if name == "external":  # an encoder brought by the user: never made here, weights from attack.checkpoint
        assert a.maker is None and a.pretrain.maker is None and a.checkpoint_format == "state_dict"
    else:
        assert callable(make_function(a.pretrain.maker, "attack.pretrain.maker"))
    if name == "external":
        pass
    elif a.maker is None:
        assert a.name == "clean"  # only the clean controls have no attack
    else:
        assert callable(make_function(a.maker, "attack.maker")) and a.name == name
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


@pytest.mark.parametrize("name", ["badencoder", "drupe", "ctrl", "asset", "clip", "badclip", "blend", "warp",
                                  "sample_specific"])
def test_paper_scale_of_each_attack_uses_the_paper_victim(name):
    cfg = compose_train([f"attack={name}", "data=cifar10"])
    assert cfg.scale == "paper"
    v = cfg.attack.victim
    if v.arch.startswith("clip"):
        assert v.arch == "clip_rn50" and v.image_size == 224
    else:
        assert v.width == 64 and list(v.blocks) == [2, 2, 2, 2] and v.image_size == 32


def make_toy(cfg, victim, full, log_dir):
    """A toy attack made from this test module: it only shifts the victim's weights."""
    with torch.no_grad():
        for p in full.parameters():
            p.add_(float(cfg.attack.make.shift))


def test_a_toy_attack_from_one_function_and_one_yaml_is_made_and_cached(tmp_path):
    """Adding an attack touches one module and one YAML: here both live outside ``dede/``."""
    (tmp_path / "attack").mkdir()
    (tmp_path / "attack" / "toy.yaml").write_text(
        "defaults:\n  - clean\n  - _self_\nname: toy\nfrom_clean: false\n"
        "maker: {_target_: tests.test_attack_configs.make_toy, _partial_: true}\nmake: {shift: 0.5}\n")
    over = [f"hydra.searchpath=[file://{tmp_path}]", "attack=toy", f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.root_dir={tmp_path}"]
    from dede.victims.factory import obtain_victim

    cfg = compose_train(over)
    torch.manual_seed(0)
    made = obtain_victim(cfg, tmp_path / "log")
    assert made.made and made.path.endswith(".pt") and "toy-" in made.path
    torch.manual_seed(0)
    _, fresh = build_victim(**OmegaConf.to_container(cfg.attack.victim, resolve=True))
    shifted = next(made.full.parameters())
    assert torch.allclose(shifted, next(fresh.parameters()) + 0.5)
    again = obtain_victim(compose_train(over), tmp_path / "log")
    assert not again.made and again.path == made.path
    assert torch.equal(next(again.full.parameters()), shifted)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF_DIR.parent / "sweeps" / "sweep").glob("*.yaml")))
def test_every_sweep_preset_composes(preset):
    cfg = compose_train([f"+sweep={preset}"])
    assert cfg.attack.name and cfg.data.name
    if preset == "adaptive":
        assert cfg.attack.name == "adaptive_dede" and cfg.eval_after_train


@pytest.mark.parametrize("name", ["clean", "badencoder", "drupe", "adaptive_dede", "ctrl"])
def test_the_hard_demo_lengthens_every_tiny_attack_it_is_used_with(name):
    """experiment=demo_hard: synthetic_hard, 30 SimCLR epochs (clean victims and CTRL's), the
    attacks on the clean victim 10 epochs at lr 0.01; the victims are valid configs."""
    from dede.validate import validate_train_config

    cfg = compose_train(["experiment=demo_hard", f"attack={name}"])
    validate_train_config(cfg)
    a = cfg.attack
    assert cfg.data.home.name == "synthetic_hard" and cfg.data.home.version == 2
    if name == "ctrl":
        assert a.make.epochs == 30
    else:
        assert a.pretrain.epochs == 30
    if name in ("badencoder", "drupe", "adaptive_dede"):
        assert a.make.epochs == 10 and a.make.lr == 0.01
