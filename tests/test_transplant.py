"""The transplant detector's scores on toy encoders whose behaviour is known exactly: one that
maps any image carrying a white square to a target point (a backdoor), and one whose embedding
is the image's own pixels (any conspicuous patch moves it, no backdoor)."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dede.detect.detectors import DeDeTransplant

S, P = 16, 4  # image size, square side; the square sits at (4, 4)


def region_mask(n: int) -> torch.Tensor:
    r = torch.zeros(n, 1, S, S)
    r[:, :, 4:4 + P, 4:4 + P] = 1
    return r


def pixels(x: torch.Tensor) -> torch.Tensor:
    """A clean encoder: the pixels, centred. A patch adds the same vector to every composite."""
    return (x - 0.5).flatten(1)


def backdoored(x: torch.Tensor) -> torch.Tensor:
    """Pixels, except that a white square at (4, 4) sends the image to one target point."""
    out = pixels(x)
    white = x[:, :, 4:4 + P, 4:4 + P].flatten(1).min(1).values > 0.95
    out[white] = torch.linspace(-1, 1, out.shape[1])
    return out


def detector(encoder, mode: str) -> DeDeTransplant:
    det = DeDeTransplant(n_hosts=6, score=mode)
    det.ctx = SimpleNamespace(victim=encoder)
    det.hosts = torch.rand(6, 3, S, S, generator=torch.Generator().manual_seed(0))
    return det


def score(encoder, mode: str, x: torch.Tensor) -> torch.Tensor:
    det = detector(encoder, mode)
    return det._score_batch(x, region_mask(len(x)), F.normalize(encoder(x), dim=1))


@pytest.fixture
def triggered():
    x = torch.rand(5, 3, S, S, generator=torch.Generator().manual_seed(1))
    x[:, :, 4:4 + P, 4:4 + P] = 1.0
    return x


def test_agreement_is_one_where_the_backdoor_fires(triggered):
    assert torch.allclose(score(backdoored, "agree", triggered), torch.ones(5), atol=1e-5)


def test_contrast_cancels_what_a_patch_adds_on_a_clean_encoder(triggered):
    """On the pixel encoder a white and a black square are equally conspicuous: the agreement of
    their composites is the same, the contrast zero, while the plain agreement is far above that
    of composites carrying an ordinary region of a clean image."""
    clean = torch.rand(5, 3, S, S, generator=torch.Generator().manual_seed(2))
    assert score(pixels, "contrast", triggered).abs().max() < 1e-5
    assert score(pixels, "agree", triggered).min() > score(pixels, "agree", clean).max()


def test_contrast_keeps_the_backdoor(triggered):
    assert score(backdoored, "contrast", triggered).min() > 0.3


def test_unknown_score_mode_is_refused():
    with pytest.raises(ValueError, match="'agree', 'original' or 'contrast'"):
        DeDeTransplant(score="median")


def test_occlusion_finds_the_window_that_decides_the_embedding(triggered):
    """On the backdoored toy encoder, hiding the white square moves the embedding most: the
    located window covers the square, for every image."""
    from dede.detect.detectors import occlusion_region

    ctx = SimpleNamespace(victim=backdoored, embed=backdoored, model=SimpleNamespace(image_size=S),
                          device=torch.device("cpu"))
    ctx.map_batches = lambda images, fn, copies=1, *aligned: fn(images, *aligned)
    region = occlusion_region(ctx, triggered, fraction=0.25, grid=3)  # 8x8 windows at 0, 4, 8
    assert region.shape == (5, 1, S, S)
    assert torch.all(region[:, :, 4:4 + P, 4:4 + P] == 1)
