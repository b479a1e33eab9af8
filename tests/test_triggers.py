import numpy as np
import pytest
import torch

from dede.triggers import NpzTrigger, PatchTrigger, apply_to_uint8
from dede.triggers.patch import save_npz_trigger


def test_default_patch_is_badencoder_white_square():
    x = torch.rand(4, 3, 32, 32) * 0.5
    y = PatchTrigger()(x)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[21:31, 21:31] = True
    assert torch.all(y[:, :, inside] == 1.0)
    assert torch.equal(y[:, :, ~inside], x[:, :, ~inside])
    assert not torch.equal(x, y)  # the input is not modified in place
    assert torch.all(x <= 0.5)


def test_patch_position_colour_and_scaling():
    t = PatchTrigger(size=4, row=2, col=5, colour=(1.0, 0.0, 0.5), reference_size=None)
    y = t(torch.zeros(1, 3, 16, 16))
    assert torch.all(y[0, 0, 2:6, 5:9] == 1.0) and torch.all(y[0, 1, 2:6, 5:9] == 0.0)
    assert torch.allclose(y[0, 2, 2:6, 5:9], torch.full((4, 4), 0.5))
    assert y[0, 0].sum() == 16
    # the 32x32 default scales with the image: 42..61 at 64x64 (BadEncoder's white_42_20)
    assert PatchTrigger().box(64) == (42, 42, 20)


def test_patch_that_does_not_fit_fails_clearly():
    with pytest.raises(ValueError, match="do not fit"):
        PatchTrigger(size=10, row=25, col=25, reference_size=None)(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="colour"):
        PatchTrigger(colour=(2.0, 0, 0))


def test_npz_trigger_matches_patch_and_original_layout(tmp_path):
    path = tmp_path / "white_21_10.npz"
    save_npz_trigger(path, PatchTrigger(), 32)
    with np.load(path) as z:
        t, tm = z["t"], z["tm"]
    assert t.shape == (1, 32, 32, 3) and tm.shape == (1, 32, 32, 3)
    assert (t[0, 21:31, 21:31] == 255).all() and (tm[0, 21:31, 21:31] == 0).all()
    assert t.sum() == 255 * 300 and (tm == 1).sum() == 32 * 32 * 3 - 300
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(NpzTrigger(path)(x), PatchTrigger()(x))
    # (H, W, 3) files without the batch axis load too (one of the 224 files is like that)
    np.savez(tmp_path / "nobatch.npz", t=t[0], tm=tm[0])
    assert torch.allclose(NpzTrigger(tmp_path / "nobatch.npz")(x), PatchTrigger()(x))
    with pytest.raises(ValueError, match="32x32 but images are 64x64"):
        NpzTrigger(path)(torch.rand(1, 3, 64, 64))


def test_npz_trigger_rejects_other_files(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="expected arrays 't' and 'tm'"):
        NpzTrigger(tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError, match="trigger file not found"):
        NpzTrigger(tmp_path / "missing.npz")


def test_trigger_on_uint8_is_exact():
    x = torch.randint(0, 200, (2, 3, 32, 32), dtype=torch.uint8)
    y = apply_to_uint8(PatchTrigger(), x)
    assert y.dtype == torch.uint8
    assert torch.all(y[:, :, 21:31, 21:31] == 255)
    y[:, :, 21:31, 21:31] = x[:, :, 21:31, 21:31]
    assert torch.equal(x, y)
