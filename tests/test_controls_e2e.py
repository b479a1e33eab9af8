"""Both controls end to end on tiny settings, with the trusted reference encoder made by the
framework itself (slow: three tiny victims and decoders; `pytest -m slow tests/test_controls_e2e.py`)."""
import json

import pytest

from tests.helpers import TINY, run_entry


@pytest.mark.slow
def test_backdoor_specific_detector_against_both_controls_with_an_auto_reference(tmp_path, cache_dir):
    bad, clean, out = tmp_path / "bad", tmp_path / "clean", tmp_path / "eval"
    r = run_entry("train.py", TINY + [f"hydra.run.dir={bad}"], cache_dir, timeout=3600)
    assert r.returncode == 0, r.output[-3000:]
    tiny = [o for o in TINY if not o.startswith("attack.make.")]
    r = run_entry("train.py", tiny + ["attack=clean", f"hydra.run.dir={clean}"], cache_dir, timeout=3600)
    assert r.returncode == 0, r.output[-3000:]
    args = [f"run={bad}", f"control_run={clean}", "logger=csv", "eval.downstream.epochs=10", "eval.plots=false",
            "detectors=[dede,dede_transplant,dede_ref]", "eval.reference.run=auto"]
    r = run_entry("evaluate.py", args + [f"hydra.run.dir={out}"], cache_dir, timeout=3600)
    assert r.returncode == 0, r.output[-3000:]
    assert "training the reference run" in r.output
    res = json.loads((out / "results.json").read_text())
    assert res["reference_run"] and "references" in res["reference_run"]
    t, d, ref = (res["detectors"][n] for n in ("dede_transplant", "dede", "dede_ref"))
    # the paper's score: the patch, backdoor or not
    assert d["auroc"] >= 0.95 and d["auroc_clean_victim"] >= 0.9
    # the transplant score: the backdoor, not the patch
    assert t["auroc"] >= 0.95 and t["auroc_vs_benign"] >= 0.9 and t["auroc_clean_victim"] <= 0.65
    assert t["asr_defended"] <= 0.1
    # the reference difference cancels the patch on the clean victim (both encoders see no backdoor)
    assert ref["auroc_clean_victim"] <= 0.65
    # a second evaluation reuses the cached reference run
    r = run_entry("evaluate.py", args + [f"hydra.run.dir={tmp_path}/eval2"], cache_dir, timeout=3600)
    assert r.returncode == 0 and "reusing the reference run" in r.output, r.output[-3000:]
