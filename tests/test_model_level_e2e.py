"""DECREE as a model-level check on made victims (slow: makes a clean SimCLR victim and a
BadEncoder victim and inverts a trigger on each). Run with `make test-slow`.

At 32x32 a tiny clean encoder already collapses when about 9 % of the image is replaced by an
optimised pattern, so BadEncoder's 10x10 patch (9.8 % of the image) cannot be told apart by the
mask norm; a 5x5 patch (2.4 %) can, and DECREE's inverted mask is then clearly smaller."""
import json

import pytest

from tests.helpers import run_entry

DECREE = ["logger=csv", "trainer.enable_progress_bar=false", "eval_after_train=true", "decoder.epochs=1",
          "eval.plots=false", "eval.downstream.enabled=false", "eval.model_level.enabled=true",
          "eval.model_level.decree_steps=1000", "eval.model_level.decree_similarity=0.95",
          "eval.model_level.decree_threshold=0.06"]
SMALL_PATCH = ["attack.trigger.size=5", "attack.trigger.row=26", "attack.trigger.col=26"]


def _decree(tmp_path, cache_dir, name, extra):
    run = tmp_path / name
    r = run_entry("train.py", DECREE + extra + [f"hydra.run.dir={run}"], cache_dir, timeout=3600)
    assert r.returncode == 0, r.output[-3000:]
    return json.loads((run / "results.json").read_text())["model_level"]["decree"]


@pytest.mark.slow
def test_decree_inverts_a_smaller_trigger_on_a_backdoored_encoder(tmp_path, cache_dir):
    clean = _decree(tmp_path, cache_dir, "clean", ["attack=clean"])
    bad = _decree(tmp_path, cache_dir, "badencoder", ["attack=badencoder"] + SMALL_PATCH)
    assert bad["mask_l1_norm"] < 0.7 * clean["mask_l1_norm"], (bad, clean)
    assert bad["backdoored"] and not clean["backdoored"], (bad, clean)
