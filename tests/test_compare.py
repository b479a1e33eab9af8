import math

import pytest
import torch

from dede.data import ImageSet
from dede.detect.base import DETECTORS, Detector, known_detectors, register_detector, resolve_detectors
from dede.detect.harness import DetectorRun, ImageSets, ThresholdRule, compare, summarise


def test_resolve_detectors():
    assert resolve_detectors("all") == known_detectors()
    assert resolve_detectors("all")[0] == "dede"
    assert resolve_detectors(["knn", "dao"]) == ["dede", "knn", "dao"]
    assert resolve_detectors(None) == ["dede"]
    with pytest.raises(ValueError, match="unknown detector"):
        resolve_detectors(["dede", "oracle"])
    for name in ["dede", "dede_patch_top", "dede_ablate", "dede_transplant", "transplant_occlusion", "dede_ref", "dao", "slof", "knn",
                 "mahalanobis", "feature_norm"]:
        assert name in DETECTORS


def test_summarise_calibrates_on_auxiliary_scores_and_filters_downstream():
    clean = torch.arange(100, dtype=torch.float)  # 0..99
    trig = torch.arange(100, 200, dtype=torch.float)
    cal = torch.arange(0, 100, dtype=torch.float)
    benign = torch.arange(50, 150, dtype=torch.float)
    train = torch.tensor([1.0, 500.0, 2.0])
    seen = {}

    def downstream(train_keep, test_keep, trig_keep):
        seen.update(train=train_keep, test=test_keep, trig=trig_keep)
        return {"clean_accuracy": 0.9, "asr": float(trig_keep.double().mean())}

    r = DetectorRun("x", {"clean": clean, "triggered": trig, "calibration": cal, "benign": benign, "train": train},
                    123.0)
    row = summarise(r, ThresholdRule("quantile", 0.95), 0.05, downstream, asr_benign=0.01)
    assert row["auroc"] == 1.0 and row["images_per_second"] == 123.0
    assert math.isclose(row["threshold"], 94.05)
    assert math.isclose(row["flag_rate_clean"], 0.05) and row["flag_rate_triggered"] == 1.0
    assert row["asr_defended"] == 0.0 and row["clean_accuracy_defended"] == 0.9
    assert seen["train"].tolist() == [True, False, True]
    # benign 50..149 vs triggered 100..199: half the benign scores lie below every triggered one, the
    # other half beat on average a quarter of them: 0.5 + 0.5 * 0.75
    assert math.isclose(row["auroc_vs_benign"], 0.875, abs_tol=1e-3)
    assert math.isclose(row["flag_rate_benign"], 0.55) and row["asr_benign"] == 0.01


def test_threshold_rules():
    cal = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert math.isclose(ThresholdRule("mean_std", k=1.0)(cal), 2.5 + cal.std().item(), rel_tol=1e-6)
    assert math.isclose(ThresholdRule("quantile", 0.5)(cal), 2.5)
    with pytest.raises(ValueError, match="eval.threshold.rule"):
        ThresholdRule("median")


class _Ctx:
    """The parts of an EvalContext a detector that reads only images needs."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.calibration = ImageSet(torch.randint(0, 100, (20, 3, 8, 8), generator=g, dtype=torch.uint8),
                                    torch.zeros(20, dtype=torch.long))
        self.charged_seconds = 0.0


def test_a_detector_registered_outside_the_package_gets_every_control():
    @register_detector("toy_brightness")
    class Brightness(Detector):
        """Mean pixel value: flags bright patches, whatever they mean."""

        def score(self, images):
            return images.float().mean((1, 2, 3))

    try:
        assert "toy_brightness" in resolve_detectors("all")
        g = torch.Generator().manual_seed(1)
        clean = torch.randint(0, 100, (30, 3, 8, 8), generator=g, dtype=torch.uint8)
        trig, benign = clean.clone(), clean.clone()
        trig[:, :, :3, :3] = 255
        benign[:, :, 5:, 5:] = 255
        ctx, control = _Ctx(), _Ctx()
        rows, arrays = compare(["toy_brightness"], ctx, ImageSets(clean, trig, benign), ThresholdRule(), 0.05,
                               control=control)
        row = rows["toy_brightness"]
        assert row["auroc"] == 1.0 and row["flag_rate_triggered"] == 1.0
        # the same-size bright patch elsewhere scores like the trigger: the control exposes it
        assert 0.3 < row["auroc_vs_benign"] < 0.7 and row["flag_rate_benign"] == 1.0
        assert row["auroc_clean_victim"] == 1.0  # nothing about a backdoor: the clean victim flags it too
        assert set(arrays) >= {"toy_brightness/clean", "toy_brightness/benign", "clean_victim/toy_brightness/triggered"}
    finally:
        DETECTORS.pop("toy_brightness")


def test_registering_a_name_twice_fails():
    with pytest.raises(ValueError, match="already registered"):
        register_detector("dede")(type("Other", (Detector,), {}))
    with pytest.raises(ValueError, match="known needs"):
        register_detector("x", needs=("oracle",))


def test_the_built_in_detectors_register_without_an_import_cycle():
    """The registry (`dede.detect.base`) imports no detector: the package's __init__ imports the
    built-in ones once, so a fresh process that imports any detection module sees them all
    (the fresh-interpreter import of every module is the slow test of tests/test_imports.py)."""
    import ast

    from tests.helpers import ROOT

    base = ast.parse((ROOT / "dede" / "detect" / "base.py").read_text())
    imported = {n.module for n in ast.walk(base) if isinstance(n, ast.ImportFrom)} | \
        {a.name for n in ast.walk(base) if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in imported if m and m.startswith(("dede.detect.detectors", "dede.detect.literature"))]
    assert {"dede", "dede_ref", "transplant_occlusion", "knn", "teco", "strip", "isolation_forest",
            "mask_consistency"} <= set(known_detectors())
