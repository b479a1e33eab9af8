"""The detectors from the literature (`dede.detect.literature`) on a planted backdoor.

No trained model: the victim is a tiny fixed encoder (mean colour and a seeded random
convolution) with a planted backdoor that sends any image holding a 4x4 window of near-white
pixels (every value >= 0.47; clean images stay <= 0.4) to a fixed target embedding off the clean
data, which the probe (nearest class centroid) reads as class 0. The encoder's own features
saturate at 0.4, the brightest clean value, so without the backdoor the white patch looks like a
bright region of a clean image. Each detector must separate triggered from clean test images on
the backdoored encoder, and must not on the same encoder without the backdoor (the clean-victim
control of `dede.detect.harness`). Without the saturation the clean encoder sees the patch, and
which detectors then flag it anyway is pinned down too.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from dede.data import ImageSet
from dede.detect.base import DETECTORS, build_detector, resolve_detectors
from dede.detect.context import EvalContext
from dede.detect.literature import CORRUPTIONS, _components
from dede.detect.metrics import auroc
from dede.victims.encoders import Victim

SIZE, N_CLASSES, THRESHOLD, SATURATION = 32, 4, 0.47, 0.4
NEW = ["mask_consistency", "teco", "scale_up", "strip", "isolation_forest", "lid"]
BASE = torch.tensor([[0.30, 0.08, 0.08], [0.08, 0.30, 0.08], [0.08, 0.08, 0.30], [0.26, 0.26, 0.05]])


def make_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-coloured images with smooth per-image structure, uint8 values <= 0.4 * 255."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % N_CLASSES
    x = BASE[labels][:, :, None, None] + 0.03 * torch.randn(n, 3, 1, 1, generator=g)
    x = x + F.interpolate(0.06 * torch.randn(n, 3, 4, 4, generator=g), size=SIZE, mode="bilinear")
    x = x + 0.02 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    return (x.clamp(0, SATURATION) * 255).round().to(torch.uint8), labels


def stamp(images: torch.Tensor, row: int = 21, col: int = 5) -> torch.Tensor:
    """The trigger: a white 4x4 patch (off the 4-pixel grid)."""
    out = images.clone()
    out[:, :, row:row + 4, col:col + 4] = 255
    return out


class PlantedEncoder(nn.Module):
    """Mean colour and a seeded random two-layer convolution of the half-resolution image,
    globally pooled, on inputs saturated at ``saturation`` (None: not saturated); with a
    ``target``, any image holding a 4x4 window whose pixels are all >= ``THRESHOLD`` in every
    channel embeds to ``target``."""

    def __init__(self, width: int = 8, seed: int = 0, saturation: float | None = SATURATION) -> None:
        super().__init__()
        self.saturation = saturation
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        for conv in (self.conv1, self.conv2):
            conv.weight.data = torch.randn(conv.weight.shape, generator=g) / conv.weight[0].numel() ** 0.5
            conv.bias.data = 0.1 * torch.randn(conv.bias.shape, generator=g)
        self.register_buffer("target", torch.empty(0))
        self.out_dim = 3 + width

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        x = x if self.saturation is None else x.clamp(max=self.saturation)
        h = F.avg_pool2d(torch.relu(self.conv1(F.avg_pool2d(x, 2))), 2)
        return torch.cat([4 * x.mean((2, 3)), torch.relu(self.conv2(h)).mean((2, 3))], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.clean(x)
        if not self.target.numel():
            return z
        window_min = -F.max_pool2d(-x.amin(1, keepdim=True), 4, stride=1)
        fired = (window_min.flatten(1).amax(1) >= THRESHOLD).float()[:, None]
        return (1 - fired) * z + fired * self.target


class CentroidProbe(nn.Module):
    """Logits = - squared distance to each class centroid / temperature."""

    def __init__(self, centroids: torch.Tensor, temperature: float) -> None:
        super().__init__()
        self.centroids = nn.Parameter(centroids, requires_grad=False)
        self.temperature = temperature

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(z, self.centroids).pow(2) / self.temperature


def planted_context(backdoor: bool, saturation: float | None = SATURATION) -> EvalContext:
    """An evaluation context around the planted encoder, with or without its backdoor."""
    enc = PlantedEncoder(saturation=saturation).eval()
    victim = Victim(enc, None, None, enc.out_dim, SIZE).eval()
    ref, ref_labels = make_images(160, 1)
    cal, cal_labels = make_images(48, 2)
    with torch.no_grad():
        z = enc.clean(ref.float() / 255)
    centroids = torch.stack([z[ref_labels == c].mean(0) for c in range(N_CLASSES)])
    temperature = float(torch.pdist(centroids).pow(2).median()) / 4
    if backdoor:  # class 0's centroid pushed away from the others: off the clean data, still class 0
        enc.target = centroids[0] + 2 * (centroids[0] - centroids.mean(0))
    return EvalContext(victim=victim, model=None, mask_ratio=0.0, trigger=None, target=0,
                       reference=ImageSet(ref, ref_labels), calibration=ImageSet(cal, cal_labels), batch_size=256,
                       seed=0, probe=CentroidProbe(centroids, temperature))


@pytest.fixture(autouse=True)
def _one_thread():
    """The tensors here are tiny: a second thread costs more in synchronisation than it gains."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def contexts() -> dict[bool, EvalContext]:
    return {backdoor: planted_context(backdoor) for backdoor in (True, False)}


@pytest.fixture(scope="module")
def test_images() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = make_images(48, 3)
    return images, stamp(images[labels != 0])


def detector_auroc(name: str, ctx: EvalContext, images, **kwargs) -> float:
    clean, triggered = images
    det = build_detector(name, **kwargs).fit(ctx)
    return auroc(det.score(clean), det.score(triggered))


def test_the_planted_backdoor_works(contexts, test_images):
    clean, triggered = test_images
    labels = make_images(48, 3)[1]
    for backdoor, asr in [(True, 1.0), (False, 0.0)]:
        ctx = contexts[backdoor]
        assert (ctx.probe_logits(clean).argmax(1) == labels).double().mean() > 0.95
        assert (ctx.probe_logits(triggered).argmax(1) == 0).double().mean() == asr


@pytest.mark.parametrize("name", NEW)
def test_flags_the_planted_trigger_only_on_the_backdoored_encoder(name, contexts, test_images):
    assert detector_auroc(name, contexts[True], test_images) >= 0.9
    assert detector_auroc(name, contexts[False], test_images) <= 0.7


@pytest.mark.parametrize("name", NEW)
def test_which_detectors_flag_a_patch_that_an_encoder_without_backdoor_sees(name, test_images):
    """Without the saturation the clean encoder sees the white patch: the encoder-only
    progressive masking and isolation forest then flag it with no backdoor at all (why every
    comparison carries the clean-victim control); the others do not."""
    a = detector_auroc(name, planted_context(False, saturation=None), test_images)
    assert a > 0.7 if name in ("mask_consistency", "isolation_forest") else a <= 0.6


@pytest.mark.parametrize("kwargs", [{"score": "max_step"}, {"score": "clusters", "eps": 0.05}, {"fill": "zero"}])
def test_mask_consistency_options_flag_the_planted_trigger(kwargs, contexts, test_images):
    assert detector_auroc("mask_consistency", contexts[True], test_images, **kwargs) >= 0.9


@pytest.mark.parametrize("name", NEW)
def test_an_images_score_does_not_depend_on_its_batch(name, contexts, test_images):
    images = torch.cat([test_images[0][:3], test_images[1][:3]])
    ctx = contexts[True]
    small = dataclasses.replace(ctx, batch_size=5)  # one image per victim call for most detectors
    a = build_detector(name).fit(ctx).score(images)
    b = build_detector(name).fit(small).score(images)
    assert a.shape == (6,) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_every_new_detector_is_registered_with_its_needs():
    assert set(NEW) <= set(resolve_detectors("all"))
    for name in NEW:
        assert DETECTORS[name].needs == (("probe",) if name in ("teco", "scale_up", "strip") else ())
        assert DETECTORS[name].__doc__


def test_corruptions_keep_shape_and_range_blur_as_torchvision_jpeg_blockwise():
    x = torch.rand(2, 3, 30, 20)
    noise = torch.randn(3, 30, 20)
    for name, (fn, severities) in CORRUPTIONS.items():
        for v in severities:
            y = fn(x, v, noise)
            assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1, name
    for sigma in CORRUPTIONS["gaussian_blur"][1]:  # the separable blur is torchvision's
        k = 2 * math.ceil(3 * sigma) + 1
        torch.testing.assert_close(CORRUPTIONS["gaussian_blur"][0](x, sigma, noise),
                                   TF.gaussian_blur(x, [k, k], [sigma, sigma]), atol=1e-5, rtol=0)
    jpeg = CORRUPTIONS["jpeg"][0]
    flat = torch.full((1, 3, 32, 24), 128 / 255)
    dot = flat.clone()
    dot[0, 1, 10, 17] = 1.0
    changed = (jpeg(dot, 40.0, None) - jpeg(flat, 40.0, None)).abs() > 1e-6
    _, c, r, q = torch.nonzero(changed, as_tuple=True)
    assert c.unique().tolist() == [1] and (r // 8).unique().tolist() == [1] and (q // 8).unique().tolist() == [2]


def test_single_linkage_components():
    d = torch.tensor([[0, 0.05, 0.5, 0.55], [0.05, 0, 0.45, 0.5], [0.5, 0.45, 0, 0.05], [0.55, 0.5, 0.05, 0]])
    assert [float(_components(d, eps)) for eps in (0.01, 0.1, 0.9)] == [4.0, 2.0, 1.0]
    chain = torch.cdist(torch.arange(6.0)[:, None], torch.arange(6.0)[:, None])  # steps of 1: one cluster at eps 1
    assert float(_components(chain, 1.0)) == 1.0 and float(_components(chain, 0.5)) == 6.0


@pytest.mark.parametrize("name, kwargs, match", [
    ("mask_consistency", {"score": "entropy"}, "score="),
    ("teco", {"corruptions": ["fog"]}, "corruptions="),
    ("scale_up", {"factors": [0]}, "factors="),
    ("strip", {"n_blend": 64}, "calibration set has 48"),
])
def test_bad_settings_fail_with_a_message(name, kwargs, match, contexts):
    with pytest.raises(ValueError, match=match):
        build_detector(name, **kwargs).fit(contexts[True])


def test_scale_up_breaks_ties_of_its_share_without_reordering_it():
    from dede.detect.literature import ScaleUp

    det = ScaleUp(factors=[2, 3, 4])
    same = torch.tensor([[True, True, True], [True, True, True], [True, True, False], [False, False, False]])
    own = torch.tensor([[0.9, 0.9, 0.9], [0.6, 0.6, 0.6], [1.0, 1.0, 1.0], [0.4, 0.4, 0.4]])
    s = det.reduce(same, own)
    assert s[0] > s[1] > s[2] > s[3]  # full share first, ties by probability, then the lower shares
    assert torch.allclose(s.floor(), torch.tensor([1.0, 1.0, 0.0, 0.0]))
