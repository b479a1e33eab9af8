"""`transplant_any` on toy encoders whose behaviour is known exactly.

Toy data: smooth random 16x16 images that share a faint vertical grating (the edges a warp can
bend). Two toy backdoors on top of a pixel encoder (the image's own centred pixels):

- blend: an image whose pixels correlate with a fixed noise pattern (the pattern blended in at
  ratio 0.2) embeds to one target point;
- warp: an image whose detail correlates with the grating bent by a fixed smooth (WaNet-style)
  displacement field embeds to one target point.

The new test must separate each trigger from clean images on its backdoored encoder, and not
from the same images with a benign perturbation of the same kind (another pattern, another
random warp), nor on the pixel encoder without the backdoor (the same perturbation, no backdoor).
"""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dede.detect.metrics import auroc
from dede.detect.transplant import TransplantAny, blur

S = 16
GRATING = 0.12 * torch.sin(torch.arange(S) * (2 * torch.pi / 4)).view(1, 1, 1, S)


def smooth_images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 0.6 + 0.2
    x = F.interpolate(low, size=(S, S), mode="bilinear", align_corners=False)
    return (x + GRATING + 0.01 * torch.randn(n, 3, S, S, generator=g)).clamp(0, 1)


def pattern(seed: int) -> torch.Tensor:
    return torch.rand(1, 3, S, S, generator=torch.Generator().manual_seed(seed))


def blend(x: torch.Tensor, seed: int, ratio: float = 0.2) -> torch.Tensor:
    return (1 - ratio) * x + ratio * pattern(seed)


def field(seed: int, strength: float = 1.5) -> torch.Tensor:
    """A WaNet-style smooth displacement grid for `grid_sample` (``strength`` pixels at most)."""
    g = torch.Generator().manual_seed(seed)
    d = F.interpolate(torch.rand(1, 2, 4, 4, generator=g) * 2 - 1, size=(S, S), mode="bicubic", align_corners=True)
    d = d / d.abs().amax() * strength * 2 / S
    lin = torch.linspace(-1, 1, S)
    base = torch.stack(torch.meshgrid(lin, lin, indexing="ij")[::-1], -1)[None]
    return (base + d.permute(0, 2, 3, 1)).clamp(-1, 1)


def warp(x: torch.Tensor, seed: int) -> torch.Tensor:
    return F.grid_sample(x, field(seed).expand(len(x), -1, -1, -1), align_corners=True).clamp(0, 1)


def pixels(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5).flatten(1)


def corr(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a = x.flatten(1) - x.flatten(1).mean(1, keepdim=True)
    b = t.flatten(1) - t.flatten(1).mean(1, keepdim=True)
    return F.cosine_similarity(a, b.expand_as(a), dim=1)


TARGET = torch.linspace(-1, 1, 3 * S * S)


def backdoored(statistic, threshold: float):
    """The pixel encoder, except that images whose ``statistic`` exceeds ``threshold`` embed to TARGET."""
    def encoder(x: torch.Tensor) -> torch.Tensor:
        out = pixels(x)
        out[statistic(x) > threshold] = TARGET
        return out

    return encoder


# the detail of the grating bent by the trigger's warp: what the toy warp backdoor looks for
BENT = (lambda w: w - blur(w, 1.0))(warp((0.5 + GRATING).expand(1, 3, S, S), 0))


def fitted(encoder, **kwargs) -> TransplantAny:
    det = TransplantAny(n_hosts=6, n_standardise=64, **kwargs)
    det.hosts = smooth_images(6, 100)
    ctx = SimpleNamespace(victim=encoder, embed=encoder, device=torch.device("cpu"), seed=0,
                          calibration=SimpleNamespace(images=smooth_images(64, 200)))
    ctx.map_batches = lambda images, fn, copies=1, *aligned: fn(images, *aligned)
    return det.standardise(ctx)


def patch(x: torch.Tensor, seed: int) -> torch.Tensor:
    """A white 4x4 patch: bottom right for the trigger (seed 0), elsewhere for a benign twin."""
    r, c = (11, 11) if seed == 0 else (1 + seed % 6, 2)
    out = x.clone()
    out[:, :, r:r + 4, c:c + 4] = 1.0
    return out


def white_corner(x: torch.Tensor) -> torch.Tensor:
    return x[:, :, 11:15, 11:15].amin((1, 2, 3))


TRIGGERS = {"blend": (blend, backdoored(lambda x: corr(x, pattern(0)), 0.15)),
            "warp": (warp, backdoored(lambda x: corr(x - blur(x, 1.0), BENT), 0.8)),
            "patch": (patch, backdoored(white_corner, 0.99))}


def test_toy_backdoors_fire_on_their_trigger_only():
    """The toy encoders are what they claim: the trigger fires the backdoor on every image, the
    clean images and the benign perturbation of the same kind (seed 5) never do."""
    clean = smooth_images(40, 1)
    for perturb, encoder in TRIGGERS.values():
        assert (encoder(perturb(clean, 0)) == TARGET).all(1).all()
        assert not (encoder(clean) == TARGET).all(1).any()
        assert not (encoder(perturb(clean, 5)) == TARGET).all(1).any()


@pytest.mark.parametrize("agreement", ["suspect", "cosine", "contraction"])
@pytest.mark.parametrize("kind", ["blend", "warp"])
def test_full_image_triggers_are_separated_only_where_they_are_a_backdoor(kind, agreement):
    perturb, encoder = TRIGGERS[kind]
    clean = smooth_images(40, 1)
    trig, benign = perturb(clean, 0), perturb(clean, 5)
    det = fitted(encoder, agreement=agreement)
    s_clean, s_trig, s_benign = det.score(clean), det.score(trig), det.score(benign)
    assert auroc(s_clean, s_trig) >= 0.99
    assert auroc(s_benign, s_trig) >= 0.99
    # the same perturbation on the pixel encoder without the backdoor
    control = fitted(pixels, agreement=agreement)
    assert auroc(control.score(clean), control.score(trig)) <= 0.65


@pytest.mark.parametrize("kind", ["blend", "warp", "patch"])
def test_a_carrier_that_both_moves_the_image_and_collapses_the_hosts_separates_every_trigger(kind):
    """``select="both"``: the largest over carriers of min(agreement, move). It separates every
    toy trigger from clean and from benign-perturbed images on its backdoored encoder and, for the
    full-image triggers, not on the pixel encoder without the backdoor. (A pixel encoder is no
    model of a clean victim for a patch: any shared white patch raises its pixel cosines.)"""
    perturb, encoder = TRIGGERS[kind]
    clean = smooth_images(40, 1)
    trig, benign = perturb(clean, 0), perturb(clean, 5)
    det = fitted(encoder, carriers=["window", "highpass", "lowpass"], select="both", agreement="cosine")
    s_trig = det.score(trig)
    assert auroc(det.score(clean), s_trig) >= 0.99
    assert auroc(det.score(benign), s_trig) >= 0.99
    if kind != "patch":
        control = fitted(pixels, carriers=["window", "highpass", "lowpass"], select="both", agreement="cosine")
        assert auroc(control.score(clean), control.score(trig)) <= 0.65


def test_picking_by_move_alone_is_fragile_when_several_removals_break_the_trigger():
    """``select="move"`` (the carrier whose removal moves the image most) scores the wrong carrier
    when blurring and occluding both break a patch trigger (equal moves): the high-pass carrier,
    which does not move the patch's colour, is picked for some images. Why ``both`` exists."""
    perturb, encoder = TRIGGERS["patch"]
    clean = smooth_images(40, 1)
    scores = {sel: fitted(encoder, carriers=["window", "highpass", "lowpass"], select=sel, agreement="cosine")
              for sel in ("move", "both")}
    vs_benign = {sel: auroc(d.score(perturb(clean, 5)), d.score(perturb(clean, 0))) for sel, d in scores.items()}
    assert vs_benign["both"] >= 0.99 > vs_benign["move"]


def test_move_selection_scores_the_carrier_whose_removal_moves_most():
    det = fitted(pixels, carriers=["window", "highpass", "lowpass"], select="move")
    std = torch.tensor([[5.0, 1.0, 2.0, 4.0, 4.5, 0.2], [0.0, 7.0, 1.0, 4.0, 0.0, 0.0]])
    assert det.combine(std).tolist() == [1.0, 0.0]
    det.select = "both"
    assert det.combine(std).tolist() == [4.0, 0.0]
    raw = det.agreements(smooth_images(4, 3))
    assert raw.shape == (4, 6) and (raw[:, 3:] >= -1e-6).all()  # moves are 1 - cosine


def test_a_carrier_that_does_not_move_the_trigger_does_not_find_it():
    """The window carrier alone cannot move a full-image blend; the blend carrier can. (What the
    other carriers add over `transplant_occlusion`.)"""
    perturb, encoder = TRIGGERS["blend"]
    clean = smooth_images(40, 1)
    window = fitted(encoder, carriers=["window"], windows=[[0.375, 0.375]], select="max")
    assert auroc(window.score(clean), window.score(perturb(clean, 0))) <= 0.7
    both = fitted(encoder, carriers=["window", "blend"], select="max")
    assert auroc(both.score(clean), both.score(perturb(clean, 0))) >= 0.99


@pytest.mark.parametrize("select, columns", [("max", 1), ("both", 2)])
def test_scores_are_standardised_on_the_held_out_images(select, columns):
    det = fitted(pixels, select=select)
    cal = det.ctx.calibration.images
    z = (det.agreements(cal) - det.centre) / det.spread
    # agreements, and with select=both the moves too
    assert torch.allclose(z.median(0).values, torch.zeros(columns * len(det.carriers)), atol=1e-4)


def test_suspect_agreement_needs_the_composites_on_the_suspect_not_just_together():
    """Composites that agree with each other at a point away from the suspect (a conspicuous
    carrier on a clean encoder) score high on ``cosine`` and low on ``suspect``; composites that
    land on the suspect (a backdoor's target, where its triggered suspect already is) score high
    on both."""
    det = TransplantAny()
    d = 8
    z = F.normalize(torch.eye(d)[:2], dim=1)  # two suspects
    elsewhere = torch.eye(d)[5].expand(1, 1, 4, d)  # four composites together, orthogonal to z
    on_suspect = z[1].expand(1, 1, 4, d)
    emb = torch.cat([elsewhere, on_suspect])  # (B=2, C=1, H=4, D)
    det.agreement, det.n_hosts = "cosine", 4
    assert det.measure(emb, z).tolist() == [[1.0], [1.0]]
    det.agreement = "suspect"
    assert det.measure(emb, z).tolist() == [[0.0], [1.0]]
    with pytest.raises(ValueError, match="suspect"):
        det.measure(emb)


@pytest.mark.parametrize("kwargs, match", [
    ({"carriers": ["window", "stripes"]}, "carriers"), ({"carriers": []}, "carriers"),
    ({"windows": [[0.5]]}, "windows"), ({"windows": [[0.0, 0.5]]}, "windows"), ({"grid": 0}, "grid"),
    ({"blend_alpha": 1.0}, "blend_alpha"), ({"sigma": 0}, "sigma"), ({"agreement": "median"}, "agreement"),
    ({"n_standardise": 2}, "n_standardise"), ({"n_hosts": 1}, "n_hosts"), ({"select": "min"}, "select"),
    ({"select": "move", "carriers": ["window", "blend"]}, "select=move")])
def test_bad_settings_are_refused_with_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransplantAny(**kwargs)
