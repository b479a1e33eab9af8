"""Every attack's tiny preset end to end: make the victim, train DeDe, evaluate (slow; minutes
per attack on CPU). Run with `make test-slow` or `pytest -m slow tests/test_attacks_e2e.py`."""
import json

import pytest

from tests.helpers import run_entry

# DeDe's AUROC on each tiny victim (seed 21), a little below what was measured (0.991, 0.993,
# 0.996, 0.727, 0.800, 0.818): the small ASSET patch and the CLIP victims are harder at this scale
MIN_AUROC = {"badencoder": 0.95, "drupe": 0.95, "ctrl": 0.95, "asset": 0.68, "clip": 0.75, "badclip": 0.75}
# attacks that move triggered features onto the target class, so that a k-NN classifier on the
# same features is fooled too (measured k-NN ASR 1.000, 0.916, 0.988, 0.951). CTRL (0.000) and
# ASSET (0.132) reach their MLP ASR without it: see the README.
KNN_BACKDOORED = {"badencoder", "drupe", "clip", "badclip"}
FAST_DECODER = ["logger=csv", "trainer.enable_progress_bar=false", "eval_after_train=true"]


def _run(name, tmp_path, cache_dir):
    run = tmp_path / name
    r = run_entry("train.py", FAST_DECODER + [f"attack={name}", f"hydra.run.dir={run}"], cache_dir, timeout=3600)
    assert r.returncode == 0, r.output[-3000:]
    return json.loads((run / "results.json").read_text())


@pytest.fixture(scope="module")
def clean_results(tmp_path_factory, cache_dir):
    base = tmp_path_factory.mktemp("controls")
    return {"simclr": _run("clean", base, cache_dir), "clip": _run("clean_clip", base, cache_dir)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["badencoder", "drupe", "ctrl", "asset", "clip", "badclip"])
def test_made_victim_is_backdoored_and_dede_detects_it(name, tmp_path, cache_dir, clean_results):
    res = _run(name, tmp_path, cache_dir)
    control = clean_results["clip" if name in ("clip", "badclip") else "simclr"]
    assert res["asr"] >= 0.8, res["asr"]
    assert res["clean_accuracy"] >= control["clean_accuracy"] - 0.10
    assert res["auroc"] >= MIN_AUROC[name], res["auroc"]
    assert res["asr_defended"] < res["asr"]
    if name in KNN_BACKDOORED:
        assert res["asr_knn"] >= 0.8, res["asr_knn"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["simclr", "clip"])
def test_clean_controls_are_not_flagged(family, clean_results):
    res = clean_results[family]
    assert res["asr"] < 0.3
    assert res["threshold"]["fpr"] <= 0.12  # about the nominal 5 % on clean test images
