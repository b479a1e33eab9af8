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
    ("decoder.precision=bf17", "decoder.precision=bf17 is not a precision Lightning knows"),
    ("trainer.precision=half", "trainer.precision=half is not a precision"),
    ("data=synthetic_hard data.home.version=1", "data.home.version=1 for data set 'synthetic_hard', but this code "
                                                 "generates version 2"),
])
def test_bad_values_fail_validation(override, match):
    cfg = compose_train(override.split())
    with pytest.raises(ConfigError, match=match):
        validate_train_config(cfg)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


@pytest.mark.parametrize("overrides,match", [
    (["attack.target=10"], r"attack.target=10 is not a class index of the home data set 'synthetic': 0..9"),
    (["attack.target=-1"], "attack.target=-1 is not"),
    (["data.home.name=gtsrb", "attack.target=43"], "attack.target=43 .* 'gtsrb': 0..42"),
    (["data.batch_size=0"], "data.batch_size=0 must be a whole number >= 1"),
    (["attack.pretrain.batch_size=0"], "attack.pretrain.batch_size=0 must be a whole number >= 1"),
    (["attack.pretrain.epochs=-2"], "attack.pretrain.epochs=-2 must be"),
    (["attack.make.batch_size=0"], "attack.make.batch_size=0 must be"),
    (["attack.make.epochs=2.5"], "attack.make.epochs=2.5 must be a whole number"),
    (["attack=badclip", "attack.make.patch_steps=0"], "attack.make.patch_steps=0 must be"),
    (["decoder.epochs=0"], "decoder.epochs=0 must be a whole number >= 1"),
    (["eval.threshold.quantile=1.0"], r"eval.threshold.quantile=1.0 is outside \(0, 1\)"),
    (["eval.threshold.quantile=0"], r"eval.threshold.quantile=0 is outside \(0, 1\)"),
    (["eval.fpr_target=1.5"], r"eval.fpr_target=1.5 is outside \(0, 1\)"),
    (["eval.n_masks=0"], "eval.n_masks=0 must be a whole number >= 1"),
    (["eval.n_test=-1"], "eval.n_test=-1 must be a whole number >= 0 or null"),
    (["eval.batch_size=0"], "eval.batch_size=0 must be a whole number >= 1 or 'auto'"),
    (["eval.downstream.epochs=0"], "eval.downstream.epochs=0 must be"),
    (["attack.trigger.row=30"], r"attack.trigger does not fit the 32x32 images .*rows 30..39"),
    (["attack.trigger.size=40", "attack.trigger.row=0", "attack.trigger.col=0"], "attack.trigger does not fit"),
    (["attack=ctrl", "attack.trigger.window_size=24", "attack.trigger.positions=[[15,15]]"],
     "attack.trigger does not fit.*window_size 24 does not tile"),
    (["attack=ctrl", "attack.trigger.window_size=24"], "attack.trigger .* cannot be built: .*positions"),
    (["attack=badclip", "attack.trigger.size=40"], "attack.trigger does not fit the 32x32"),
    (["attack/trigger=npz"], r"attack.trigger \(dede.triggers.NpzTrigger\) cannot be built: .*path"),
    (["attack/trigger=npz", "attack.trigger.path=/nonexistent/t.npz"], "cannot be built: .*/nonexistent/t.npz"),
    (["victim_lock_timeout=-5"], "victim_lock_timeout=-5 must be a number of seconds >= 0, or -1"),
    pytest.param(["trainer=gpu"], "trainer.accelerator=gpu but this machine has no CUDA device.*trainer=cpu",
                 marks=NO_CUDA),
    pytest.param(["trainer=ddp"], "trainer.accelerator=gpu but this machine has no CUDA device.*trainer=cpu",
                 marks=NO_CUDA),
    pytest.param(["eval.device=cuda"], "eval.device=cuda but this machine has no CUDA device", marks=NO_CUDA),
])
def test_bad_values_are_named_before_any_work(overrides, match):
    cfg = compose_train(overrides)
    t0 = time.time()
    with pytest.raises(ConfigError, match=match):
        validate_train_config(cfg)
    assert time.time() - t0 < 60


def test_eval_ranges_are_checked_for_evaluate_too():
    from dede.validate import validate_eval_config

    cfg = compose_train(["eval.n_masks=0"])
    with pytest.raises(ConfigError, match="eval.n_masks=0"):
        validate_eval_config(cfg.eval)
    validate_eval_config(compose_train(["eval.batch_size=auto", "eval.n_test=null"]).eval)


@pytest.mark.parametrize("data", ["synthetic", "cifar10"])
@pytest.mark.parametrize("attack", ["clean", "badencoder", "drupe", "ctrl", "asset", "clip", "badclip", "clean_clip"])
def test_every_attack_preset_is_valid(attack, data):
    validate_train_config(compose_train([f"attack={attack}", f"data={data}"]))


def test_class_counts_match_the_class_names():
    from dede.attacks.clip import CLASS_NAMES
    from dede.data.datasets import KNOWN, NUM_CLASSES

    assert set(NUM_CLASSES) == set(KNOWN) - {"imagefolder"}
    for name, names in CLASS_NAMES.items():
        assert NUM_CLASSES[name] == len(names), name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_gpu_trainer_without_cuda_fails_at_once(tmp_path, cache_dir):
    t0 = time.time()
    r = run_entry("train.py", ["trainer=gpu", f"hydra.run.dir={tmp_path}/run", "logger=csv"], cache_dir)
    assert r.returncode != 0 and "trainer.accelerator=gpu" in r.output and "trainer=cpu" in r.output
    assert "lightning" not in r.output.split("Traceback")[-1]  # failed in validation, not inside Lightning
    assert "GPU available" not in r.output  # no trainer was built
    assert time.time() - t0 < 60


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


# (in-process: train.py runs exactly this pipeline; the entry point's own failures are checked above)
def test_bad_mask_ratio_fails_before_any_work(tmp_path, cache_dir):
    from dede.pipeline.compose import train_in_process

    cfg = compose_train(["decoder.mask_ratio=1.5", "logger=csv", f"paths.cache_dir={cache_dir}"])
    with pytest.raises(ValueError, match=r"decoder.mask_ratio=1.5 is outside \[0, 1\)"):
        train_in_process(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "resolved_config.yaml").exists()


def test_corrupt_checkpoint_fails_before_training(tmp_path, cache_dir):
    from dede.pipeline.compose import train_in_process

    bad = tmp_path / "victim.pth"
    bad.write_bytes(b"\x00garbage")
    cfg = compose_train([f"attack.checkpoint={bad}", "logger=csv", f"paths.cache_dir={cache_dir}",
                         "data.home.n_train=200", "data.home.n_test=100"])
    with pytest.raises(Exception, match="cannot read checkpoint"):
        train_in_process(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


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
