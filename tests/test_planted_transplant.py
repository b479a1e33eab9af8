"""`transplant_any` (its defaults) on toy encoders backdoored for real: a toy encoder trained
to tell the synthetic classes apart is the clean victim, BadEncoder's loss plants each trigger kind
on it (`tests/test_nonpatch_triggers.py`), and the test must separate triggered images from clean
ones and from their benign twins, and must not separate them on the clean victim (the same
perturbation, no backdoor). The issue's targets: AUROC >= 0.95, vs benign >= 0.90, clean victim
<= 0.65."""
import copy
from functools import lru_cache
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dede.detect.metrics import auroc
from dede.detect.transplant import TransplantAny
from dede.triggers import BlendTrigger, GeneratorTrigger, PatchTrigger, WarpTrigger
from dede.triggers.benign import benign_perturbation
from tests.test_nonpatch_triggers import T, _toy_victim, plant_module, toy_images

PLANTED = {
    "patch": lambda: PatchTrigger(size=4, row=11, col=11, reference_size=None),
    "blend": lambda: BlendTrigger(alpha=0.2, seed=0),
    "generator": lambda: GeneratorTrigger(eps=16 / 255, image_size=T, seed=0),
    "warp": lambda: WarpTrigger(k=4, strength=8.0, seed=0),
}


@lru_cache(maxsize=1)
def clean_victim(steps: int = 300) -> torch.nn.Module:
    """The toy encoder trained with a linear head (then dropped) on 1024 synthetic shapes. (The
    untrained toy encoder is no model of a clean victim: a shared white patch raises its cosines.)"""
    encoder, head = _toy_victim(), torch.nn.Linear(32, 10)
    x, y = toy_images(1024, seed=2)
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(head(encoder(x[i])), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return encoder.eval()


def fitted(encoder) -> TransplantAny:
    """The detector with its default carriers and selection, hosts and standardisation images
    from held-out clean shapes (never triggered ones)."""
    x, _ = toy_images(480, seed=1)
    det = TransplantAny(n_hosts=6, n_standardise=96)
    det.hosts = x[:6]
    embed = torch.no_grad()(encoder)
    ctx = SimpleNamespace(victim=encoder, embed=embed, device=torch.device("cpu"), seed=0,
                          calibration=SimpleNamespace(images=x[6:102]))
    ctx.map_batches = lambda images, fn, copies=1, *aligned: fn(images, *aligned)
    return det.standardise(ctx)


def separation(kind: str) -> dict[str, float]:
    trigger = PLANTED[kind]()
    module = plant_module(trigger, steps=300, victim=copy.deepcopy(clean_victim()))  # planting trains it in place
    x, labels = toy_images()
    clean = x[256:][labels[256:] != 0][:40]
    trig, benign = trigger(clean), benign_perturbation(trigger, T)(clean)
    with torch.no_grad():  # planted: triggered images embed next to the reference, clean ones do not
        ref = F.normalize(module.victim(module.references), dim=1)
        near = {name: float((F.normalize(module.victim(v), dim=1) @ ref.T).mean()) for name, v in
                (("triggered", trig), ("clean", clean))}
    det, control = fitted(module.victim), fitted(module.clean)
    s_trig = det.score(trig)
    return {"auroc": auroc(det.score(clean), s_trig), "vs_benign": auroc(det.score(benign), s_trig),
            "clean_victim": auroc(control.score(clean), control.score(trig)), **near}


@pytest.mark.parametrize("kind", ["patch", "blend", "generator"])
def test_transplant_any_separates_each_planted_trigger_and_only_on_the_backdoored_encoder(kind):
    r = separation(kind)
    assert r["triggered"] > 0.9 and r["clean"] < r["triggered"] - 0.2, r
    assert r["auroc"] >= 0.95 and r["vs_benign"] >= 0.9, r
    assert r["clean_victim"] <= 0.65, r


@pytest.mark.xfail(strict=True, reason="known failure: a warp of the suspect's own edges does not survive being "
                   "moved into other images (AUROC 0.75 at the default agreement=suspect, select=max; "
                   "0.42 with the earlier cosine agreement and select=both); "
                   "docs/results/specific_detection.md")
def test_transplant_any_separates_a_planted_warp():
    r = separation("warp")
    assert r["triggered"] > 0.9, r  # planted: what fails is the detector
    assert r["auroc"] >= 0.95 and r["vs_benign"] >= 0.9, r
