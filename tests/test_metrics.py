import itertools

import torch

from dede.detect import apply_threshold, auprc, auroc, median_threshold, quantile_threshold, tpr_at_fpr


def hand_auroc(clean, trig):
    pairs = list(itertools.product(clean.tolist(), trig.tolist()))
    return sum(1.0 if t > c else 0.5 if t == c else 0.0 for c, t in pairs) / len(pairs)


def test_auroc_on_unbounded_scores_matches_hand_computation():
    clean = torch.tensor([120.0, 300.0, 450.0, 80.0, 900.0])
    trig = torch.tensor([1000.0, 310.0, 2000.0, 95.0])
    # 14 of the 20 (clean, triggered) pairs are ranked correctly: 0.7
    assert abs(auroc(clean, trig) - hand_auroc(clean, trig)) < 1e-6
    assert abs(auroc(clean, trig) - 0.7) < 1e-6
    # a sigmoid would saturate these scores to 1.0 and give 0.5; we must not
    assert auroc(clean + 1e4, trig + 1e4) == auroc(clean, trig)
    g = torch.Generator().manual_seed(0)
    c, t = torch.randn(200, generator=g) * 300, torch.randn(150, generator=g) * 300 + 200
    assert abs(auroc(c, t) - hand_auroc(c, t)) < 1e-6


def test_auprc_and_tpr_at_fpr():
    clean = torch.arange(100, dtype=torch.float) * 10  # 0..990
    trig = torch.tensor([10000.0, 20000.0, 955.0, 5.0])
    # AP by hand: ranks 1,2 positives (P=1), then 955 lies below 960..990 (4 clean) -> 3/7, 5.0 ranks 103rd
    ap = (1 + 1 + 3 / 7 + 4 / 103) / 4
    assert abs(auprc(clean, trig) - ap) < 1e-6
    # at FPR <= 5% (5 of 100 clean above the cut) we catch 3 of 4
    assert tpr_at_fpr(clean, trig, 0.05) == 0.75
    assert tpr_at_fpr(clean, trig, 0.0) == 0.5


def test_thresholds():
    cal = torch.arange(1, 101, dtype=torch.float)
    v = quantile_threshold(cal, 0.95)
    assert abs(v - 95.05) < 1e-6
    t = apply_threshold("q", v, clean=torch.tensor([1.0, 96.0, 50.0, 99.0]), triggered=torch.tensor([200.0, 10.0]))
    assert t.fpr == 0.5 and t.tpr == 0.5
    m = median_threshold(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0]))
    assert m == 3.0
