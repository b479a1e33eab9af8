import pytest
import torch

from dede.data import DataNotFoundError, load_split
from dede.data.synthetic import N_CLASSES, make_synthetic
from dede.triggers import PatchTrigger


def test_synthetic_is_deterministic_balanced_and_split_by_seed():
    a, ya = make_synthetic(500, seed=3)
    b, yb = make_synthetic(500, seed=3)
    c, _ = make_synthetic(500, seed=4)
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert not torch.equal(a, c)
    assert a.shape == (500, 3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(ya.bincount(), torch.full((N_CLASSES,), 50))


def test_synthetic_has_class_structure_not_noise():
    x, y = make_synthetic(2000, seed=0)
    xf = x.float().div(255).flatten(1)
    xt, yt = make_synthetic(500, seed=1)
    xtf = xt.float().div(255).flatten(1)
    # colour statistics alone (mean colour of the image) separate classes far above chance
    feats = lambda z: z.view(len(z), 3, -1).mean(-1)  # noqa: E731
    cent = torch.stack([feats(xf)[y == c].mean(0) for c in range(N_CLASSES)])
    acc = (torch.cdist(feats(xtf), cent).argmin(1) == yt).float().mean()
    assert acc > 0.6
    # and images within a class still vary (position, size, rotation, colour)
    same = xf[y == 0]
    assert (same - same.mean(0)).pow(2).mean() > 1e-3
    # neighbouring pixels are correlated, unlike noise
    img = x.float()
    corr = torch.corrcoef(torch.stack([img[..., :, :-1].flatten(), img[..., :, 1:].flatten()]))[0, 1]
    assert corr > 0.8


def test_poisoning_rate_indicator_and_independence_from_split():
    s = load_split("synthetic", "train", n=1000, seed=0)
    p = s.poison(PatchTrigger(), 0.05, seed=21)
    assert int(p.poisoned.sum()) == 50
    changed = (p.images != s.images).flatten(1).any(1)
    assert torch.equal(changed, p.poisoned)  # exactly the marked samples carry the trigger
    assert torch.all(p.images[p.poisoned][:, :, 21:31, 21:31] == 255)
    rest, held = p.split(0.2, seed=21)
    assert len(held) == 200 and len(rest) == 800
    # the held-out split is not the poisoned subset (different seeded streams)
    assert 0 < int(rest.poisoned.sum()) < 50
    assert torch.equal(s.poison(PatchTrigger(), 0.0, seed=1).images, s.images)


def test_clean_label_poisoning_only_touches_target_class():
    s = load_split("synthetic", "train", n=1000, seed=0)
    p = s.poison(PatchTrigger(), 0.1, seed=1, only_label=2)
    assert int(p.poisoned.sum()) == 10
    assert torch.all(p.labels[p.poisoned] == 2)


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_bad_poison_rate(rate):
    s = load_split("synthetic", "train", n=100)
    with pytest.raises(ValueError, match="poison_rate"):
        s.poison(PatchTrigger(), rate, seed=0)


@pytest.mark.parametrize("name,needs", [("cifar10", "cifar-10-batches-py"), ("stl10", "stl10_binary"),
                                        ("mnist", "MNIST/raw"), ("svhn", "train_32x32.mat")])
def test_missing_real_data_names_files_and_place(tmp_path, name, needs):
    with pytest.raises(DataNotFoundError) as e:
        load_split(name, "unlabeled" if name == "stl10" else "train", root=str(tmp_path), download=False)
    msg = str(e.value)
    assert needs in msg and str(tmp_path) in msg and "data.download=true" in msg


def test_unknown_data_set():
    with pytest.raises(ValueError, match="unknown data set 'imagenet5'"):
        load_split("imagenet5", "train")
