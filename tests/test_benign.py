"""The benign perturbations of the controls: same kind and strength as the trigger, never the trigger."""
import pytest
import torch

from dede.triggers import FrequencyTrigger, ImagePatchTrigger, NpzTrigger, PatchTrigger
from dede.triggers.benign import BenignFrequency, BenignPatch, benign_perturbation
from dede.triggers.patch import save_npz_trigger


def _images(n=64, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 0.5


def _changed_box(x, y):
    """(rows, cols) spans of the changed pixels of each image."""
    diff = (x != y).any(1)
    out = []
    for d in diff:
        r, c = torch.nonzero(d, as_tuple=True)
        out.append((int(r.min()), int(r.max() - r.min() + 1), int(c.min()), int(c.max() - c.min() + 1)))
    return out


@pytest.mark.parametrize("kind", ["moved", "colour", "noise"])
def test_patch_benign_has_the_trigger_size_and_is_never_the_trigger(kind):
    trig = PatchTrigger()  # 10x10 white at 21..30
    x = _images()
    b = benign_perturbation(trig, 32, kind, seed=3)
    y, t = b(x), trig(x)
    boxes = _changed_box(x, y)
    assert all(h <= 10 and w <= 10 for _, h, _, w in boxes)
    assert max(h for _, h, _, _ in boxes) == 10  # the full size (a random colour may equal a pixel, not a patch)
    for i in range(len(x)):
        assert not torch.equal(y[i], t[i])
    places = {(r, c) for r, _, c, _ in boxes}
    assert len(places) > 20  # a random place per image
    if kind == "moved":  # the trigger's own colour, never overlapping the trigger's box
        assert all(abs(r - 21) >= 10 or abs(c - 21) >= 10 for r, _, c, _ in boxes)
        assert torch.all(y[(y != x)] == 1.0)
    if kind == "colour":  # a solid colour at least 0.25 away from white in some channel
        for i in range(len(x)):
            r, h, c, w = boxes[i]
            col = y[i, :, r, c]
            assert (col - 1.0).abs().max() >= 0.25


def test_benign_is_seeded():
    trig, x = PatchTrigger(), _images(16)
    b1, b2, b3 = (benign_perturbation(trig, 32, "colour", seed=s) for s in (0, 0, 1))
    assert torch.equal(b1(x), b2(x)) and not torch.equal(b1(x), b3(x))


def test_npz_and_image_patch_triggers_get_patches_of_their_size(tmp_path):
    path = tmp_path / "t.npz"
    save_npz_trigger(path, PatchTrigger(size=6, row=3, col=5), 32)
    b = benign_perturbation(NpzTrigger(path), 32)
    assert isinstance(b, BenignPatch) and (b.h, b.w, b.fill) == (6, 6, "colour") and b.avoid_box == (3, 5)
    ip = ImagePatchTrigger(size=8, seed=0)
    b = benign_perturbation(ip, 32)
    assert (b.h, b.w, b.fill) == (8, 8, "noise")
    x = _images(8)
    assert all(not torch.equal(u, v) for u, v in zip(b(x), ip(x)))


def test_frequency_benign_has_the_magnitude_at_other_positions():
    trig = FrequencyTrigger(window_size=32, magnitude=100.0, positions=((15, 15), (31, 31)), channels=(1, 2))
    b = benign_perturbation(trig, 32, seed=0)
    assert isinstance(b, BenignFrequency)
    d = b.deltas(50)
    assert d.shape == (50, 3, 32, 32)
    assert torch.all((d != 0).sum((2, 3))[:, 1:] == 2) and torch.all(d[:, 0] == 0)  # U, V only, 2 positions each
    assert set(d.unique().tolist()) == {0.0, 100.0}
    assert torch.all(d[:, :, 15, 15] == 0) and torch.all(d[:, :, 31, 31] == 0) and torch.all(d[:, :, 0, 0] == 0)
    x = _images(50).double()
    y = b(x)
    # the same energy as the trigger in the DCT domain (before clamping): compare the perturbation norms
    # on mid-grey images where nothing clamps
    grey = torch.full((50, 3, 32, 32), 0.5, dtype=torch.float64)
    norm = lambda t: (t(grey) - grey).flatten(1).norm(dim=1)  # noqa: E731
    assert torch.allclose(norm(b), norm(trig), rtol=1e-6)
    assert all(not torch.equal(u, v) for u, v in zip(y, trig(x)))


def test_unknown_kinds_fail_clearly():
    with pytest.raises(ValueError, match="eval.control.kind"):
        benign_perturbation(PatchTrigger(), 32, "blur")
    with pytest.raises(ValueError, match="frequency trigger"):
        benign_perturbation(PatchTrigger(), 32, "frequency")
    with pytest.raises(ValueError, match="no place"):
        benign_perturbation(PatchTrigger(size=30, row=1, col=1), 32, "moved")(_images(2))
