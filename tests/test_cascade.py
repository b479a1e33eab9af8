"""The cascade: a cheap score for every image, the specific test only for the images above its
gate, and one order of scores (gated above ungated)."""
from types import SimpleNamespace

import pytest
import torch

from dede.detect.base import Detector, register_detector
from dede.detect.cascade import Cascade, above_one


@register_detector("_toy_cheap")
class ToyCheap(Detector):
    """Mean brightness."""

    def score(self, images):
        return images.float().mean((1, 2, 3))


@register_detector("_toy_specific")
class ToySpecific(Detector):
    """Red minus green, and a record of every call."""

    def __init__(self):
        self.seen = []

    def score(self, images):
        self.seen.append(images.clone())
        return (images[:, 0].float() - images[:, 1].float()).mean((1, 2))


@register_detector("_toy_needs_probe", needs=("probe",))
class ToyNeedsProbe(ToyCheap):
    pass


def ctx(n_cal: int = 200):
    g = torch.Generator().manual_seed(0)
    cal = torch.randint(0, 256, (n_cal, 3, 4, 4), generator=g, dtype=torch.uint8)
    return SimpleNamespace(calibration=SimpleNamespace(images=cal), model=object(), trusted=None, probe=None)


def images(n: int = 300, seed: int = 1):
    return torch.randint(0, 256, (n, 3, 4, 4), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("q", [0.5, 0.8, 0.95])
def test_the_specific_test_sees_exactly_the_gated_images(q):
    c = ctx()
    det = Cascade(cheap="_toy_cheap", specific="_toy_specific", gate_quantile=q).fit(c)
    cal_cheap = c.calibration.images.float().mean((1, 2, 3))
    assert det.gate == pytest.approx(float(torch.quantile(cal_cheap.double(), q)))
    x = images()
    det.score(x)
    gated = x.float().mean((1, 2, 3)) > det.gate
    assert det.calls == 1 and det.gated == int(gated.sum())
    (seen,) = det.specific.seen
    assert torch.equal(seen, x[gated])
    # about 1 - q of images like the calibration ones pay for the specific test
    assert abs(gated.double().mean() - (1 - q)) < 0.08


def test_no_call_when_nothing_passes_the_gate():
    det = Cascade(cheap="_toy_cheap", specific="_toy_specific", gate_quantile=0.5).fit(ctx())
    s = det.score(torch.zeros(10, 3, 4, 4, dtype=torch.uint8))
    assert det.calls == 0 and det.specific.seen == []
    assert ((s > 0) & (s <= 0.5)).all()


def test_gated_images_rank_above_ungated_and_each_group_keeps_its_own_order():
    det = Cascade(cheap="_toy_cheap", specific="_toy_specific", gate_quantile=0.7).fit(ctx())
    x = images()
    s = det.score(x)
    cheap = x.float().mean((1, 2, 3))
    specific = (x[:, 0].float() - x[:, 1].float()).mean((1, 2))
    gated = cheap > det.gate
    assert 0 < gated.sum() < len(x)
    assert s[gated].min() > 1 > 0.5 >= s[~gated].max()
    assert (s[~gated] > 0).all()

    def same_order(a, b):  # every pair ordered (or tied) alike
        return torch.equal((a[:, None] - a[None]).sign(), (b[:, None] - b[None]).sign())

    assert same_order(s[gated], specific[gated])
    assert same_order(s[~gated], cheap[~gated])


def test_above_one_is_strictly_increasing_and_unbounded():
    s = torch.tensor([-1e6, -50.0, -1.0, 0.0, 0.5, 30.0, 1e4])
    m = above_one(s)
    assert (m > 1).all() and (m.diff() > 0).all() and m[-1] > 1e4


def test_gate_zero_gives_the_specific_test_order():
    det = Cascade(cheap="_toy_cheap", specific="_toy_specific", gate_quantile=0.0).fit(ctx())
    x = images(50)
    x[:, :, 0, 0] = 255  # every image above the darkest calibration image
    s = det.score(x)
    specific = (x[:, 0].float() - x[:, 1].float()).mean((1, 2))
    assert det.gated == len(x)
    assert torch.equal(s.argsort(), specific.argsort())


@pytest.mark.parametrize("kwargs, match", [
    ({"gate_quantile": 1.0}, "gate_quantile"), ({"gate_quantile": -0.1}, "gate_quantile"),
    ({"specific": "cascade"}, "not 'cascade'")])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Cascade(**{"cheap": "_toy_cheap", "specific": "_toy_specific", **kwargs})


def test_a_part_whose_needs_are_missing_is_refused_at_fit():
    with pytest.raises(ValueError, match=r"'_toy_needs_probe' needs \['probe'\]"):
        Cascade(cheap="_toy_needs_probe", specific="_toy_specific").fit(ctx())


def test_a_memo_hit_is_charged_for_the_memoised_values_it_was_computed_from():
    """The cascade's cheap part reuses DeDe's errors from the context's memo; their charge must
    include the victim pass they were computed from, even when that pass was itself memoised
    (the downstream protocol embeds the test images before any detector runs)."""
    import time

    from dede.detect.context import EvalContext

    c = EvalContext(victim=None, model=None, mask_ratio=0.99, trigger=None, target=0, reference=None,
                    calibration=None)
    x = torch.zeros(2)

    def slow(value, seconds):
        time.sleep(seconds)
        return value

    c._memoised("embed", x, lambda: slow(1, 0.05))
    c.charged_seconds = 0.0
    c._memoised("errors", x, lambda: slow(c._memoised("embed", x, None) + 1, 0.01))
    c.charged_seconds = 0.0
    assert c._memoised("errors", x, None) == 2
    assert c.charged_seconds >= 0.06
