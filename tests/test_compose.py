"""The configs ship with the package and training runs in-process from them: a wheel holds
every YAML, an unpacked wheel composes without a checkout, the reference run trains in-process."""
import json
import logging
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
from omegaconf import OmegaConf

from dede.pipeline.compose import compose_train, config_dir
from tests.helpers import CONF_DIR, ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    src = tmp_path_factory.mktemp("src")  # a copy, so that build/ and *.egg-info stay out of the checkout
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, src / name)
    for name in ("dede", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                        str(src)], capture_output=True, text=True, cwd=src, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("dede-*.whl")
    return whl


def test_the_wheel_ships_every_config_and_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    yamls = {f"dede/conf/{p.relative_to(CONF_DIR).as_posix()}" for p in CONF_DIR.rglob("*.yaml")}
    assert len(yamls) > 30 and yamls <= names
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dede").rglob("*.py")}
    assert modules <= names
    assert not [n for n in names if n.startswith("conf/")]  # no top-level `conf` package in site-packages


def test_an_unpacked_wheel_composes_from_its_own_configs(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("from dede.pipeline.compose import config_dir, compose_train; "
            "cfg = compose_train(['attack=drupe']); print(config_dir()); print(cfg.attack.name, cfg.data.name)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    where, names = r.stdout.split("\n")[:2]
    assert where == str(site / "dede" / "conf") and names == "drupe synthetic"


def test_config_dir_of_a_checkout_is_its_top_level_conf():
    assert config_dir() == CONF_DIR


def test_compose_train_works_inside_another_hydra_context(monkeypatch, tmp_path):
    from hydra import compose, initialize_config_dir

    monkeypatch.delenv("DEDE_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        outer = compose(config_name="evaluate", overrides=["run=x"])
        cfg = compose_train(["attack=ctrl", "seed=5"])
        assert compose(config_name="evaluate", overrides=["run=x"]) == outer  # the outer context is intact
    assert cfg.attack.name == "ctrl" and cfg.seed == 5
    assert cfg.paths.root_dir == str(tmp_path)  # ${hydra:runtime.cwd} without a Hydra app
    assert compose_train(["paths.root_dir=/data/x"]).paths.data_dir == "/data/x/data"


# the smallest clean victim and decoder that train
TINY_REFERENCE = ["data.home.n_train=128", "data.home.n_test=64", "data.n=128", "attack.pretrain.epochs=1",
                  "attack.pretrain.batch_size=64", "data.batch_size=64", "decoder.epochs=1", "decoder.embed_dim=32",
                  "decoder.depth=1", "decoder.decoder_depth=1", "decoder.num_heads=2",
                  "trainer.enable_progress_bar=false"]


def test_the_reference_run_trains_in_process_and_is_reused(tmp_path, caplog):
    from dede.pipeline.reference import SEED_OFFSET, ensure_reference_run

    suspect = tmp_path / "suspect"
    (suspect / ".hydra").mkdir(parents=True)
    overrides = ["attack=badencoder", "seed=3", f"paths.cache_dir={tmp_path / 'cache'}", *TINY_REFERENCE]
    (suspect / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    with caplog.at_level(logging.INFO):
        ref = ensure_reference_run(suspect, 3, tmp_path / "refs")
    assert ref.parent == tmp_path / "refs" / "references"
    cfg = OmegaConf.load(ref / "resolved_config.yaml")
    assert cfg.attack.name == "clean" and cfg.seed == 3 + SEED_OFFSET and cfg.data.poison_rate == 0.0
    assert cfg.paths.output_dir == str(ref) and cfg.decoder.epochs == 1
    assert (ref / "checkpoints" / "last.ckpt").is_file() and (ref / "reference.done").is_file()
    victim = json.loads((ref / "victim.json").read_text())
    assert victim["path"].startswith(str(tmp_path / "cache" / "victims" / "clean-")) and victim["made_in_this_run"]
    assert "decoder: epoch 1/1" in (ref / "train.log").read_text()
    # the caller's own logging is left as it was
    assert not [h for h in logging.getLogger().handlers if getattr(h, "baseFilename", "").startswith(str(ref))]
    weights = torch.load(ref / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert ensure_reference_run(suspect, 3, tmp_path / "refs") == ref
    assert "reusing the reference run" in caplog.text and "decoder: epoch" not in caplog.text
    again = torch.load(ref / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.equal(weights[k], again[k]) for k in weights)
