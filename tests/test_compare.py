import math

import pytest
import torch

from dede.detect.compare import ALL_DETECTORS, DetectorScores, Pools, resolve_detectors, score_embedding_detector, summarise


def test_resolve_detectors():
    assert resolve_detectors("all") == list(ALL_DETECTORS)
    assert resolve_detectors(["knn", "dao"]) == ["dede", "knn", "dao"]
    assert resolve_detectors(None) == ["dede"]
    with pytest.raises(ValueError, match="unknown detector"):
        resolve_detectors(["dede", "oracle"])


def test_summarise_calibrates_on_auxiliary_scores_and_filters_downstream():
    clean = torch.arange(100, dtype=torch.float)  # 0..99
    trig = torch.arange(100, 200, dtype=torch.float)
    cal = torch.arange(0, 100, dtype=torch.float)
    train = torch.tensor([1.0, 500.0, 2.0])
    seen = {}

    def downstream(train_keep, test_keep, trig_keep):
        seen.update(train=train_keep, test=test_keep, trig=trig_keep)
        return {"clean_accuracy": 0.9, "asr": float(trig_keep.double().mean())}

    row = summarise(DetectorScores("x", clean, trig, cal, train, 123.0), 0.95, 0.05, downstream)
    assert row["auroc"] == 1.0 and row["images_per_second"] == 123.0
    assert math.isclose(row["threshold"], 94.05)
    assert math.isclose(row["flag_rate_clean"], 0.05) and row["flag_rate_triggered"] == 1.0
    assert row["asr_defended"] == 0.0 and row["clean_accuracy_defended"] == 0.9
    assert seen["train"].tolist() == [True, False, True]


def test_embedding_detector_scores_every_pool():
    calls = []

    def fn(ref, query):
        calls.append(len(query))
        return query.norm(dim=1)

    pools = Pools(reference=torch.randn(10, 4), calibration=torch.randn(5, 4), clean=torch.randn(7, 4),
                  triggered=torch.randn(3, 4), train=torch.randn(6, 4))
    s = score_embedding_detector("norm", fn, pools)
    assert sorted(calls) == [3, 5, 6, 7] and s.images_per_second > 0
    assert torch.allclose(s.clean, pools.clean.norm(dim=1))
