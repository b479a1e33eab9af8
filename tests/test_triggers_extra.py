import numpy as np
import pytest
import torch

from dede.triggers import FrequencyTrigger, ImagePatchTrigger, NpzTrigger, PatchTrigger

scipy_fft = pytest.importorskip("scipy.fft")

RGB_TO_YUV = np.array([[0.299, 0.587, 0.114],
                       [-0.147, -0.289, 0.436],
                       [0.615, -0.515, -0.100]])


def reference_ctrl(x, window=32, magnitude=100.0, positions=((15, 15), (31, 31)), channels=(1, 2)):
    """Deliberately slow CTRL trigger: per image, per window, per channel, with scipy's DCT."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    inv = np.linalg.inv(RGB_TO_YUV)
    for b in range(x.shape[0]):
        rgb = x[b] * 255.0
        yuv = np.einsum("cd,dhw->chw", RGB_TO_YUV, rgb)
        for i in range(0, x.shape[2], window):
            for j in range(0, x.shape[3], window):
                for c in channels:
                    block = scipy_fft.dctn(yuv[c, i:i + window, j:j + window], type=2, norm="ortho")
                    for r, q in positions:
                        block[r, q] += magnitude
                    yuv[c, i:i + window, j:j + window] = scipy_fft.idctn(block, type=2, norm="ortho")
        out[b] = np.clip(np.einsum("cd,dhw->chw", inv, yuv) / 255.0, 0, 1)
    return out


def window_dct(yuv, window):
    """DCT coefficients of every window of a (3, H, W) array -> (3, H//w, W//w, w, w)."""
    c, h, w = yuv.shape
    blocks = yuv.reshape(c, h // window, window, w // window, window).transpose(0, 1, 3, 2, 4)
    return scipy_fft.dctn(blocks, type=2, norm="ortho", axes=(-2, -1))


# ---------------------------------------------------------------- FrequencyTrigger

@pytest.mark.parametrize("size", [32, 64])
def test_ctrl_matches_loop_reference(size):
    g = torch.Generator().manual_seed(size)
    x = torch.rand(3, 3, size, size, generator=g, dtype=torch.float64)
    x[0] = 0.0  # a black and a white image exercise the clamp
    x[1] = 1.0
    y = FrequencyTrigger()(x)
    assert y.dtype == torch.float64 and y.shape == x.shape
    np.testing.assert_allclose(y.numpy(), reference_ctrl(x.numpy()), atol=1e-10)
    # float32 input: same result up to float32 rounding, returned as float32
    y32 = FrequencyTrigger()(x.float())
    assert y32.dtype == torch.float32
    np.testing.assert_allclose(y32.numpy(), reference_ctrl(x.numpy()), atol=2e-5)


def test_ctrl_other_window_positions_and_channels():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = FrequencyTrigger(window_size=8, magnitude=30, positions=[[3, 5], [7, 0]], channels=[0, 2])
    ref = reference_ctrl(x.numpy(), window=8, magnitude=30, positions=((3, 5), (7, 0)), channels=(0, 2))
    np.testing.assert_allclose(t(x).numpy(), ref, atol=1e-10)


def test_ctrl_adds_magnitude_at_positions_only():
    # mid-grey images: the perturbation never reaches 0 or 1, so nothing is clamped
    x = 0.3 + 0.4 * torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = FrequencyTrigger()(x)
    for b in range(2):
        before = window_dct(np.einsum("cd,dhw->chw", RGB_TO_YUV, x[b].numpy() * 255), 32)
        after = window_dct(np.einsum("cd,dhw->chw", RGB_TO_YUV, y[b].numpy() * 255), 32)
        expected = np.zeros_like(before)
        expected[1:3, :, :, 15, 15] = 100.0
        expected[1:3, :, :, 31, 31] = 100.0
        np.testing.assert_allclose(after - before, expected, atol=1e-8)


def test_ctrl_is_nearly_invisible_and_fixed():
    x = 0.3 + 0.4 * torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    y = FrequencyTrigger()(x)
    change = (y - x).abs()
    # measured: the largest change is 0.0848 (21.6 of 255, in the blue channel); mean 0.0198
    assert 0.08 < change.max().item() < 0.09
    assert 0.015 < change.mean().item() < 0.025
    # without clamping the trigger is an additive pattern, the same for every image and window
    d = y - x
    assert torch.allclose(d, d[:1].expand_as(d), atol=1e-5)
    assert torch.allclose(d[..., :32, :32], d[..., 32:, 32:], atol=1e-5)
    # a zero magnitude is the identity (the YUV inverse is exact)
    assert torch.allclose(FrequencyTrigger(magnitude=0)(x), x, atol=1e-6)


def test_ctrl_clamps_and_keeps_input():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4)).round()  # only 0 and 1
    x0 = x.clone()
    y = FrequencyTrigger(magnitude=1000)(x)
    assert torch.equal(x, x0)
    assert y.min() >= 0 and y.max() <= 1
    assert (y != x).any()
    half = FrequencyTrigger()(x.half())
    assert half.dtype == torch.float16 and half.min() >= 0 and half.max() <= 1


def test_ctrl_check_size_errors():
    t = FrequencyTrigger()
    t.check_size(32)
    t.check_size(224)  # 7x7 windows
    for bad in (16, 48, 100):
        with pytest.raises(ValueError, match="multiple of the window"):
            t.check_size(bad)
    with pytest.raises(ValueError, match="multiple of the window"):
        t(torch.rand(1, 3, 40, 40))
    with pytest.raises(ValueError, match="multiple of the window"):
        t(torch.rand(1, 3, 32, 48))
    with pytest.raises(ValueError, match=r"outside a 16x16 DCT window"):
        FrequencyTrigger(window_size=16)  # default (31, 31) does not fit
    with pytest.raises(ValueError, match="outside"):
        FrequencyTrigger(positions=[[0, -1]])
    with pytest.raises(ValueError, match="channels"):
        FrequencyTrigger(channels=[3])
    with pytest.raises(ValueError, match="pairs"):
        FrequencyTrigger(positions=[[1, 2, 3]])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        t(torch.rand(3, 32, 32))


# ---------------------------------------------------------------- ImagePatchTrigger

def test_image_patch_centre_is_badclip_position():
    t = ImagePatchTrigger(size=16, seed=7)
    assert t.patch.shape == (3, 16, 16) and t.patch.min() >= 0 and t.patch.max() <= 1
    assert torch.equal(t.patch, ImagePatchTrigger(size=16, seed=7).patch)
    assert not torch.equal(t.patch, ImagePatchTrigger(size=16, seed=8).patch)
    assert t.box(224) == (104, 104, 16, 16)
    x = torch.rand(2, 3, 224, 224)
    y = t(x)
    inside = torch.zeros(224, 224, dtype=torch.bool)
    inside[104:120, 104:120] = True
    assert torch.equal(y[:, :, 104:120, 104:120], t.patch.expand(2, 3, 16, 16))
    assert torch.equal(y[:, :, ~inside], x[:, :, ~inside])
    t.check_size(16)
    with pytest.raises(ValueError, match="larger than"):
        t.check_size(15)
    with pytest.raises(ValueError, match="larger than"):
        t(torch.rand(1, 3, 8, 8))


def test_image_patch_given_position_and_errors():
    t = ImagePatchTrigger(size=4, seed=0, row=2, col=27)
    y = t(torch.zeros(1, 3, 32, 32))
    assert torch.equal(y[0, :, 2:6, 27:31], t.patch)
    assert y.sum() == pytest.approx(t.patch.sum().item())
    with pytest.raises(ValueError, match="do not fit"):
        ImagePatchTrigger(size=4, row=2, col=29).check_size(32)
    with pytest.raises(ValueError, match="exactly one"):
        ImagePatchTrigger()
    with pytest.raises(ValueError, match="exactly one"):
        ImagePatchTrigger(path="p.png", size=4)


def test_image_patch_loads_png_npy_pt(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    expected = torch.from_numpy(hwc).permute(2, 0, 1).float() / 255
    Image.fromarray(hwc).save(tmp_path / "p.png")
    np.save(tmp_path / "hwc_uint8.npy", hwc)
    np.save(tmp_path / "chw_float.npy", expected.numpy())
    torch.save(expected, tmp_path / "p.pt")
    torch.save({"patch": expected[None]}, tmp_path / "dict.pt")
    for name in ("p.png", "hwc_uint8.npy", "chw_float.npy", "p.pt", "dict.pt"):
        t = ImagePatchTrigger(path=tmp_path / name, row=1, col=2)
        assert torch.allclose(t.patch, expected, atol=1e-7), name
        y = t(torch.zeros(1, 3, 10, 10))
        assert torch.allclose(y[0, :, 1:7, 2:7], expected, atol=1e-7)
        assert y[0, :, 1:7, 2:7].sum() == pytest.approx(y.sum().item())


def test_image_patch_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="patch file not found"):
        ImagePatchTrigger(path=tmp_path / "missing.png")
    np.save(tmp_path / "gray.npy", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="shape"):
        ImagePatchTrigger(path=tmp_path / "gray.npy")
    np.save(tmp_path / "big.npy", np.full((4, 4, 3), 2.0, dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ImagePatchTrigger(path=tmp_path / "big.npy")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported patch file type"):
        ImagePatchTrigger(path=tmp_path / "p.txt")
    torch.save({"other": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="expected a tensor"):
        ImagePatchTrigger(path=tmp_path / "bad.pt")


def test_image_patch_save_round_trip(tmp_path):
    t = ImagePatchTrigger(size=16, seed=3)
    for name in ("a.pt", "a.npy"):
        back = ImagePatchTrigger(path=t.save(tmp_path / name))
        assert torch.equal(back.patch, t.patch), name
    back = ImagePatchTrigger(path=t.save(tmp_path / "a.png"))  # 8-bit: rounded to 1/255
    assert (back.patch - t.patch).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(ImagePatchTrigger(path=back.save(tmp_path / "b.png")).patch, back.patch)
    with pytest.raises(ValueError, match="unsupported"):
        t.save(tmp_path / "a.txt")


def test_image_patch_from_tensor_optimisable_and_scaled():
    p = torch.rand(3, 16, 16)
    t = ImagePatchTrigger.from_tensor(p)
    p.zero_()  # the trigger holds a copy
    assert t.patch.sum() > 0 and t.box(224) == (104, 104, 16, 16)
    # an optimiser can replace the patch and get gradients through the pasted pixels
    t.patch = torch.full((3, 16, 16), 0.5, requires_grad=True)
    t(torch.zeros(2, 3, 224, 224)).sum().backward()
    assert torch.equal(t.patch.grad, torch.full((3, 16, 16), 2.0))
    with pytest.raises(ValueError, match="shape"):
        ImagePatchTrigger.from_tensor(torch.rand(2, 4, 4))
    # reference_size scales the patch and a given position with the image
    s = ImagePatchTrigger.from_tensor(torch.ones(3, 16, 16), row=8, col=200, reference_size=224)
    assert s.box(224) == (8, 200, 16, 16)
    assert s.box(448) == (16, 400, 32, 32)
    y = s(torch.zeros(1, 3, 448, 448))
    assert torch.allclose(y[0, :, 16:48, 400:432], torch.ones(3, 32, 32))
    assert y.sum() == pytest.approx(3 * 32 * 32)
    assert ImagePatchTrigger.from_tensor(torch.ones(3, 16, 16), reference_size=224).box(112) == (52, 52, 8, 8)


# ---------------------------------------------------------------- NpzTrigger at 64 and 224

def _white_square_npz(path, image_size, start, size, batch_axis):
    t = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    tm = np.ones((image_size, image_size, 3), dtype=np.uint8)
    t[start:start + size, start:start + size] = 255
    tm[start:start + size, start:start + size] = 0
    if batch_axis:
        t, tm = t[None], tm[None]
    np.savez(path, t=t, tm=tm)


@pytest.mark.parametrize("image_size,start,size", [(224, 173, 50), (224, 185, 24), (64, 42, 20)])
@pytest.mark.parametrize("batch_axis", [False, True])
def test_npz_trigger_white_square_placement(tmp_path, image_size, start, size, batch_axis):
    path = tmp_path / f"white_{start}_{size}.npz"
    _white_square_npz(path, image_size, start, size, batch_axis)
    trig = NpzTrigger(path)
    trig.check_size(image_size)
    x = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(start)) * 0.9
    y = trig(x)
    inside = torch.zeros(image_size, image_size, dtype=torch.bool)
    inside[start:start + size, start:start + size] = True
    assert torch.all(y[:, :, inside] == 1.0)
    assert torch.equal(y[:, :, ~inside], x[:, :, ~inside])
    # the last patch row/col is start + size - 1 (e.g. 222 for white_173_50, 208 for white_185_24)
    assert torch.all(y[:, :, start + size - 1, start + size - 1] == 1.0)
    assert torch.all(y[:, :, start + size, start + size] < 1.0)
    assert torch.all(y[:, :, start - 1, start - 1] < 1.0)
    assert torch.equal(y, PatchTrigger(size=size, row=start, col=start, reference_size=None)(x))
    with pytest.raises(ValueError, match="use the trigger file made for this resolution"):
        trig.check_size(32)
