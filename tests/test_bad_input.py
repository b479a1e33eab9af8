"""Every bad input of the design page fails with a clear message before long work starts."""
import time

import pytest
import torch
from hydra.errors import MissingConfigException

from dede.validate import ConfigError, validate_train_config
from tests.helpers import compose_train, run_entry


@pytest.mark.parametrize("override,match", [
    ("decoder.mask_ratio=1.0", r"decoder.mask_ratio=1.0 is outside \[0, 1\)"),
    ("decoder.mask_ratio=-0.1", r"decoder.mask_ratio=-0.1 is outside"),
    ("decoder.test_mask_ratio=1.2", r"decoder.test_mask_ratio=1.2"),
    ("decoder.patch_size=3", "decoder.patch_size=3 does not divide the image size 32"),
    ("data.poison_rate=1.5", r"data.poison_rate=1.5 is outside \[0, 1\]"),
    ("data.poison_rate=-0.01", "data.poison_rate=-0.01"),
    ("attack.checkpoint=/nonexistent/model.pth", "attack.checkpoint=/nonexistent/model.pth does not exist"),
    ("decoder.mask_schedule=cosine", "mask_schedule"),
    ("scale=huge", "scale='huge'"),
])
def test_bad_values_fail_validation(override, match):
    cfg = compose_train([override])
    with pytest.raises(ConfigError, match=match):
        validate_train_config(cfg)


def test_default_config_is_valid_and_means_tiny_synthetic():
    cfg = compose_train([])
    validate_train_config(cfg)
    assert cfg.data.name == "synthetic" and cfg.scale == "tiny" and cfg.attack.name == "badencoder"
    paper = compose_train(["data=cifar10"])
    assert paper.scale == "paper" and paper.attack.victim.width == 64 and paper.data.home.name == "cifar10"
    assert paper.decoder.embed_dim == 192 and paper.decoder.depth == 12 and paper.decoder.decoder_depth == 4
    ood = compose_train(["data=stl10"])
    assert ood.data.split == "unlabeled" and ood.data.poison_rate == 0.0 and ood.data.home.name == "cifar10"


@pytest.mark.parametrize("override,group", [("attack=nosuchattack", "attack"), ("data=imagenet9", "data")])
def test_unknown_group_names(override, group):
    with pytest.raises(MissingConfigException, match=f"'{group}/"):
        compose_train([override])


def test_offline_real_data_fails_at_once_naming_files(tmp_path, cache_dir):
    t0 = time.time()
    r = run_entry("train.py", ["attack=badencoder", "data=cifar10", "data.poison_rate=0.01",
                               f"data.root={tmp_path}", f"hydra.run.dir={tmp_path}/run", "logger=csv"], cache_dir)
    assert r.returncode != 0
    assert "cifar-10-batches-py" in r.output and str(tmp_path) in r.output and "data.download=true" in r.output
    assert time.time() - t0 < 120
    assert not list((tmp_path / "run").glob("checkpoints/*"))


def test_bad_mask_ratio_on_the_command_line(tmp_path, cache_dir):
    r = run_entry("train.py", ["decoder.mask_ratio=1.5", f"hydra.run.dir={tmp_path}/run", "logger=csv"], cache_dir)
    assert r.returncode != 0 and "decoder.mask_ratio=1.5 is outside [0, 1)" in r.output


def test_corrupt_checkpoint_fails_before_training(tmp_path, cache_dir):
    bad = tmp_path / "victim.pth"
    bad.write_bytes(b"\x00garbage")
    r = run_entry("train.py", [f"attack.checkpoint={bad}", f"hydra.run.dir={tmp_path}/run", "logger=csv"], cache_dir)
    assert r.returncode != 0 and "cannot read checkpoint" in r.output


def test_embedding_size_mismatch_between_decoder_and_victim(tmp_path):
    from dede.decoder import DeDeModule
    from dede.pipeline.evaluate import load_decoder
    from dede.victims import CheckpointError

    module = DeDeModule(dict(image_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2, decoder_depth=1),
                        victim_dim=128)
    (tmp_path / "checkpoints").mkdir()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
               tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(CheckpointError, match="embedding size mismatch.*128-d.*512-d"):
        load_decoder(tmp_path, 512, torch.device("cpu"))
    assert load_decoder(tmp_path, 128, torch.device("cpu")).model.victim_proj.in_features == 128


def test_evaluate_on_a_directory_that_is_not_a_run(tmp_path, cache_dir):
    r = run_entry("evaluate.py", [f"run={tmp_path}", f"hydra.run.dir={tmp_path}/eval", "logger=csv"], cache_dir)
    assert r.returncode != 0 and "not a train.py run directory" in r.output
