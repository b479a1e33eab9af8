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


def _write_fake_mnist(root, n_train: int, n_test: int, seed: int = 0):
    """MNIST in torchvision's raw layout (big-endian idx files, which it reads without a checksum),
    with unequal classes: class c has a share proportional to c + 1."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    labels = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = torch.multinomial(torch.arange(1, 11, dtype=torch.float), n, replacement=True, generator=g).to(torch.uint8)
        x = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        header = lambda magic, *dims: b"".join(v.to_bytes(4, "big") for v in (magic, *dims))  # noqa: E731
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header(0x0803, n, 28, 28) + x.numpy().tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(header(0x0801, n) + y.numpy().tobytes())
        labels[prefix] = y.long()
    return labels


def test_real_data_subsample_is_stratified_exact_and_seeded(tmp_path):
    full = _write_fake_mnist(tmp_path, 997, 300)["train"]
    load = lambda n, seed: load_split("mnist", "train", root=str(tmp_path), n=n, seed=seed)  # noqa: E731
    assert len(load(0, 0)) == 997 and len(load(5000, 0)) == 997  # 0 or more than there is: all
    a, b, c = load(300, 1), load(300, 1), load(300, 2)
    assert len(a) == 300 and a.images.shape == (300, 3, 32, 32) and a.name == "mnist"
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)  # deterministic in the seed
    assert not torch.equal(a.images, c.images)  # another seed, another subset
    # every class keeps its share: within one sample of 300 * count / 997 (largest remainders)
    share = full.bincount(minlength=10).double() * 300 / 997
    for s in (a, c):
        counts = s.labels.bincount(minlength=10)
        assert torch.all(counts >= share.floor()) and torch.all(counts <= share.ceil())
    # a subset of the full set, with each image still carrying its own label
    whole = load(0, 0)
    rows = {bytes(img.numpy().tobytes()): int(y) for img, y in zip(whole.images, whole.labels)}
    assert all(rows[bytes(img.numpy().tobytes())] == int(y) for img, y in zip(a.images, a.labels))
    assert len({bytes(img.numpy().tobytes()) for img in a.images}) == 300  # no sample twice
    # the test split is subsampled the same way, independently of the train split
    assert len(load_split("mnist", "test", root=str(tmp_path), n=120, seed=1)) == 120


def test_unlabelled_subsample_is_a_plain_seeded_subset():
    from dede.data.datasets import stratified_indices

    labels = torch.full((1000,), -1)
    i, j, k = stratified_indices(labels, 250, 0), stratified_indices(labels, 250, 0), stratified_indices(labels, 250, 1)
    assert len(i) == 250 and len(set(i.tolist())) == 250 and torch.equal(i, j) and not torch.equal(i, k)
    assert torch.equal(stratified_indices(labels, 0, 0), torch.arange(1000))
    # rounding with many tied remainders still gives exactly n
    tied = torch.arange(10).repeat_interleave(7)  # 10 classes of 7: 33 / 70 each -> 3.3
    idx = stratified_indices(tied, 33, 5)
    assert len(idx) == 33 and sorted(tied[idx].bincount().tolist()) == [3] * 7 + [4] * 3


@pytest.mark.parametrize("data", ["cifar10", "stl10", "mnist", "imagefolder"])
def test_real_data_configs_expose_subset_sizes_all_by_default(data):
    from tests.helpers import compose_train

    cfg = compose_train([f"data={data}"] + (["data.root=/nowhere"] if data == "imagefolder" else []))
    assert cfg.data.n == 0 and cfg.data.home.n_train == 0 and cfg.data.home.n_test == 0


def test_subset_sizes_flow_from_the_config_to_home_and_aux_sets(tmp_path):
    from dede.pipeline.common import aux_split
    from dede.data import home_split
    from tests.helpers import compose_train

    _write_fake_mnist(tmp_path, 900, 400)
    # data=cifar10 with MNIST files: the in-distribution recipe (aux = the home train set)
    cfg = compose_train(["data=cifar10", "data.name=mnist", "data.home.name=mnist", f"data.root={tmp_path}",
                         "data.home.n_train=300", "data.home.n_test=100"])
    train, test, aux = home_split(cfg, "train"), home_split(cfg, "test"), aux_split(cfg)
    assert (len(train), len(test), len(aux)) == (300, 100, 300)
    assert torch.equal(aux.labels, train.labels) and int(aux.poisoned.sum()) == 3  # 1 % of 300
    assert torch.equal(aux.images[~aux.poisoned], train.images[~aux.poisoned])
    ood = compose_train(["data=mnist", f"data.root={tmp_path}", "data.n=250", "data.seed=4"])
    assert len(aux_split(ood)) == 250


def test_synthetic_hard_is_deterministic_balanced_and_loadable():
    from dede.data.synthetic_hard import make_synthetic_hard

    a, ya = make_synthetic_hard(500, seed=3)
    b, yb = make_synthetic_hard(500, seed=3)
    c, _ = make_synthetic_hard(500, seed=4)
    assert torch.equal(a, b) and torch.equal(ya, yb) and not torch.equal(a, c)
    assert a.shape == (500, 3, 32, 32) and a.dtype == torch.uint8 and ya.dtype == torch.int64
    assert torch.equal(ya.bincount(), torch.full((N_CLASSES,), 50))
    assert make_synthetic_hard(20, seed=0, image_size=64)[0].shape == (20, 3, 64, 64)
    s = load_split("synthetic_hard", "train", n=300, seed=3)
    assert len(s) == 300 and s.name == "synthetic_hard" and torch.equal(s.images, make_synthetic_hard(300, 3)[0])
    from dede.validate import validate_train_config
    from tests.helpers import compose_train

    cfg = compose_train(["data=synthetic_hard"])
    validate_train_config(cfg)
    assert cfg.data.name == cfg.data.home.name == "synthetic_hard" and cfg.scale == "tiny" and cfg.data.n == 6000


def test_synthetic_hard_colour_is_not_class_informative_but_images_are_structured():
    from dede.data.synthetic_hard import make_synthetic_hard

    x, y = make_synthetic_hard(3000, seed=0)
    xt, yt = make_synthetic_hard(1000, seed=1)
    feats = lambda z: z.float().div(255).flatten(2).mean(-1)  # noqa: E731  mean colour of each image
    cent = torch.stack([feats(x)[y == c].mean(0) for c in range(N_CLASSES)])
    acc = (torch.cdist(feats(xt), cent).argmin(1) == yt).float().mean()
    assert acc < 0.16  # chance is 0.1 (the easy set's mean colour gives > 0.6)
    img = x.float()
    corr = torch.corrcoef(torch.stack([img[..., :, :-1].flatten(), img[..., :, 1:].flatten()]))[0, 1]
    assert corr > 0.6  # textures and shapes, not pixel noise


def test_synthetic_hard_has_bright_square_occluders():
    from dede.data.synthetic_hard import make_synthetic_hard

    x, _ = make_synthetic_hard(1000, seed=0)
    darkest = x.min(1).values.float()[:, None]  # the darkest channel: high only where the pixel is near-white
    # the darkest pixel of every 6x6 window; a window of near-white pixels stays above 215
    window_min = -torch.nn.functional.max_pool2d(-darkest, 6, stride=1)
    share = (window_min.flatten(1).amax(1) >= 215).float().mean()
    assert 0.1 < share < 0.6
