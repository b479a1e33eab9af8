"""The evaluation context is built once per run, with the run's own trigger file: every detector
and model-level check sees the auxiliary data poisoned with the optimised trigger."""
import json

import torch
from omegaconf import OmegaConf

from dede.pipeline.evaluate import load_run
from dede.pipeline.train import build_module
from dede.triggers import ImagePatchTrigger
from dede.victims import build_victim
from dede.victims.checkpoints import native_format, save_checkpoint
from tests.helpers import ROOT, compose_train


def _fake_run(tmp_path, overrides):
    """A train run directory with an untrained victim and decoder (enough to build a context)."""
    cfg = compose_train(overrides + ["logger=csv", "data.home.n_train=300", "data.home.n_test=50",
                                     "data.poison_rate=0.1", f"paths.cache_dir={tmp_path}/cache",
                                     f"paths.root_dir={ROOT}", f"paths.output_dir={tmp_path}/run"])
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    victim, full = build_victim(**OmegaConf.to_container(cfg.attack.victim, resolve=True))
    save_checkpoint(full, tmp_path / "victim.pt")
    module = build_module(cfg, victim.embed_dim)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
               run / "checkpoints" / "last.ckpt")
    return cfg, run, victim


def test_auxiliary_data_carry_the_runs_optimised_trigger(tmp_path):
    """Regression: the embedding detectors' reference set and the ASSET check once rebuilt the
    auxiliary data without the run's trigger file, i.e. with BadCLIP's unoptimised start patch."""
    cfg, run, _ = _fake_run(tmp_path, ["attack=badclip"])
    optimised = ImagePatchTrigger.from_tensor(torch.ones(3, 4, 4) * torch.tensor([0.1, 0.9, 0.3]).view(3, 1, 1))
    patch_file = optimised.save(tmp_path / "patch.pt")
    (run / "victim.json").write_text(json.dumps({"path": str(tmp_path / "victim.pt"), "trigger_file": str(patch_file),
                                                 "format": native_format(cfg.attack.victim.arch)}))
    e = OmegaConf.merge(cfg.eval, {"device": "cpu"})
    ctx = load_run(run, e, torch.device("cpu")).ctx
    assert torch.equal(ctx.trigger.patch, optimised.patch)
    poisoned = ctx.reference.images[ctx.reference.poisoned]
    assert len(poisoned) > 0
    s = cfg.data.image_size
    r = (s - 4) // 2
    expect = (optimised.patch * 255).round().to(torch.uint8)
    assert torch.all(poisoned[:, :, r:r + 4, r:r + 4] == expect)
    assert not torch.any((ctx.reference.images[~ctx.reference.poisoned][:, :, r:r + 4, r:r + 4] == expect).flatten(1)
                         .all(1))


def test_reference_run_keeps_the_suspects_data_and_changes_attack_and_seed(tmp_path):
    from dede.pipeline.reference import SEED_OFFSET, reference_overrides

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(
        "- attack=badencoder\n- attack.make.epochs=3\n- seed=2\n- data.home.n_train=500\n- decoder.epochs=4\n"
        "- hydra.run.dir=/x\n- eval_after_train=true\n- trainer=cpu\n")
    args = reference_overrides(run, 2)
    assert args == ["data.home.n_train=500", "decoder.epochs=4", "trainer=cpu", "attack=clean",
                    f"seed={2 + SEED_OFFSET}", "data.poison_rate=0.0", "logger=csv"]
