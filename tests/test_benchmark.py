import json
import runpy
import sys

import pytest

from tests.helpers import ROOT


def test_benchmark_reports_the_scoring_bound_and_share(tmp_path, monkeypatch):
    out = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--batch-size", "4", "--steps", "1", "--rounds", "1",
                                      "--score-batches", "2", "--parts", "train,score", "--out", str(out)])
    runpy.run_path(f"{ROOT}/scripts/benchmark.py", run_name="__main__")
    res = json.loads(out.read_text())
    assert res["train_images_per_s_cached"] > 0 and res["train_images_per_s_uncached"] > 0
    victim, decoder = res["victim_images_per_s"], res["score_images_per_s_decoder_only"]
    assert res["score_images_per_s_bound"] == pytest.approx(1 / (1 / victim + 1 / decoder))
    both = res["score_images_per_s_batched"]
    assert res["score_share_of_bound"] == pytest.approx(both / res["score_images_per_s_bound"])
    assert "score_images_per_s_per_image_loop" not in res


def test_benchmark_rejects_an_unknown_part(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--parts", "score,fly"])
    with pytest.raises(SystemExit):
        runpy.run_path(f"{ROOT}/scripts/benchmark.py", run_name="__main__")
