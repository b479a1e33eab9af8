"""A probe, not a detector: can a *warp reachability* score find a planted warp backdoor, where
every transplant carrier fails (docs/results/specific_detection.md, "Planted toy encoders")?

    python scripts/warp_reach_probe.py [--dmax 2,4,8] [--steps 30] [--lr 0.5]

The idea: a warp cannot be cut out of an image and moved into another one, but a warp backdoor
makes the target embedding *reachable by warping*. So for each suspect x, fit one smooth flow
field (a ``k`` x ``k`` control grid, displacements bounded by ``dmax`` pixels through tanh) by
Adam so that the warped clean hosts embed close to x's embedding. The score is the gain: the
hosts' mean cosine to x after the fit minus before it. A clean suspect's embedding (its own
content) should not be reachable by warping other images; a triggered one's (the backdoor's
target) should be.

It plants the toy warp of `tests/test_planted_transplant.py` (k 4, strength 8 on 16x16 toy
images, BadEncoder's losses on the class-trained toy victim) twice: as the test does (300 steps),
and with WaNet's noise mode (600 steps; random warps must keep their clean embeddings), which
makes the backdoor answer this field and not any warp. It prints, per planting, how often
triggered images and their benign twins (a random warp of the same strength) land next to the
reference, and the score's AUROC against clean images, against the twins and on the clean victim.
Hosts are 6 held-out clean toy images; 40 suspects of each kind; every seed fixed.

With ``--run RUN --control CONTROL_RUN`` it scores, instead of the toy plantings, the first
``--n-suspects`` clean test images, their triggered copies and their benign twins on a trained
run's victim and on its clean control's (hosts: 6 held-out auxiliary images of the run):

    python scripts/warp_reach_probe.py --run logs/full/warp_21 --control logs/full/clean_21 --dmax 2,4

With ``--rewarp`` it prints instead a cheaper *removal* score for the same plantings: 1 - the mean
cosine of the suspect's embedding with those of 4 randomly re-warped copies of it (strengths
2, 4, 8, 16; no fit, 4 passes per image). A specific warp backdoor should stop firing when the
suspect is warped again, so triggered suspects would move and clean ones would not.
"""
from __future__ import annotations

import argparse
import copy
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' toy encoders

from dede.attacks.badencoder import BadEncoderModule  # noqa: E402
from dede.detect.metrics import auroc  # noqa: E402
from dede.pipeline.evaluate import default_eval_config, load_run, test_sets  # noqa: E402
from dede.triggers.benign import benign_perturbation  # noqa: E402
from dede.triggers.warp import WarpTrigger, control_grids, flow_fields, warp  # noqa: E402
from tests.test_nonpatch_triggers import T, toy_images  # noqa: E402
from tests.test_planted_transplant import clean_victim  # noqa: E402


def plant(trigger: WarpTrigger, steps: int, noise_mode: float) -> BadEncoderModule:
    """BadEncoder's losses (Adam, batches of 32 of the first 256 toy images) on a copy of the
    clean toy victim; with ``noise_mode`` > 0, plus WaNet's noise term on a fresh random warp per step."""
    x, labels = toy_images()
    module = BadEncoderModule(copy.deepcopy(clean_victim()), x[labels == 0][:1], trigger, noise_mode=noise_mode,
                              negatives=lambda seed: benign_perturbation(trigger, T, "warp", seed))
    opt = torch.optim.Adam(module.victim.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for step in range(steps):
        xb = x[:256][torch.randint(0, 256, (32,))]
        parts = module.terms(module.features(xb))
        loss = parts["l0"] + parts["l1"] + parts["l2"]
        if noise_mode > 0:
            with torch.no_grad():
                xn = module.negatives(10 ** 6 + step)(xb)
                keep = module.clean(xn)
            loss = loss - noise_mode * F.cosine_similarity(module.victim(xn), keep, dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return module.eval()


def warp_hosts(hosts: torch.Tensor, u: torch.Tensor, dmax: float) -> torch.Tensor:
    """Every host (H, 3, S, S) under each suspect's field (B, 2, k, k) -> (B * H, 3, S, S)."""
    b, n, s = u.shape[0], hosts.shape[0], hosts.shape[-1]
    flow = F.interpolate(dmax * torch.tanh(u), size=(s, s), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    line = torch.linspace(-1, 1, s)
    rows, cols = torch.meshgrid(line, line, indexing="ij")
    grid = torch.stack((cols, rows), -1)[None] + flow * 2 / (s - 1)  # pixels -> grid_sample's [-1, 1]
    grid = grid[:, None].expand(b, n, s, s, 2).reshape(b * n, s, s, 2)
    x = hosts[None].expand(b, -1, -1, -1, -1).reshape(b * n, 3, s, s)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def reach_gain(encoder, x: torch.Tensor, hosts: torch.Tensor, dmax: float, steps: int, lr: float,
               k: int = 4) -> torch.Tensor:
    """Per suspect: the hosts' mean cosine to its embedding after fitting one field, minus before."""
    encoder = copy.deepcopy(encoder).requires_grad_(False)
    with torch.no_grad():
        z = F.normalize(encoder(x), dim=1)
        before = (F.normalize(encoder(hosts), dim=1) @ z.T).mean(0)
    u = (0.1 * torch.randn(len(x), 2, k, k, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    opt = torch.optim.Adam([u], lr=lr)

    def cosines() -> torch.Tensor:
        e = F.normalize(encoder(warp_hosts(hosts, u, dmax)), dim=1).view(len(x), len(hosts), -1)
        return (e * z[:, None]).sum(-1).mean(1)

    for _ in range(steps):
        loss = -cosines().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return cosines() - before


def rewarp_move(encoder, x: torch.Tensor, strength: float, n: int = 4, k: int = 4) -> torch.Tensor:
    """Per suspect: 1 - the mean cosine of its embedding with those of ``n`` random re-warps of it."""
    with torch.no_grad():
        z = F.normalize(encoder(x), dim=1)
        grids = control_grids(123, n, k)
        cos = [(F.normalize(encoder(warp(x, flow_fields(grids[i:i + 1], x.shape[-1]), strength)), dim=1) * z).sum(1)
               for i in range(n)]
    return 1 - torch.stack(cos, 1).mean(1)


def gains(encoder, x: torch.Tensor, hosts: torch.Tensor, dmax: float, steps: int, lr: float,
          chunk: int = 50) -> torch.Tensor:
    """``reach_gain`` over ``x`` in chunks (each suspect's field is fitted on its own)."""
    return torch.cat([reach_gain(encoder, x[i:i + chunk], hosts, dmax, steps, lr) for i in range(0, len(x), chunk)])


def row(label: str, setting: float, score, backdoored, clean, sets: dict[str, torch.Tensor]) -> str:
    """A table row: ``score(encoder, images)`` on the backdoored encoder (AUROC clean vs
    triggered, benign twin vs triggered) and on the clean one (clean vs triggered)."""
    g = {(e, s): score(enc, v) for e, enc in (("bd", backdoored), ("cl", clean)) for s, v in sets.items()}
    return (f"| {label} | {setting:g} | {auroc(g['bd', 'clean'], g['bd', 'triggered']):.3f} "
            f"| {auroc(g['bd', 'benign twin'], g['bd', 'triggered']):.3f} "
            f"| {auroc(g['cl', 'clean'], g['cl', 'triggered']):.3f} |")


def full_size(a) -> None:
    """The reachability score on a trained run's victim and its clean control's."""
    e = default_eval_config(a.n_test)
    loaded = load_run(a.run, e, torch.device("cpu"))
    ctx = loaded.ctx
    test, trig, benign, _ = test_sets(loaded.cfg, e, ctx.trigger)
    n = a.n_suspects
    sets = {k: v.images[:n].float().div(255) for k, v in (("clean", test), ("triggered", trig), ("benign twin", benign))}
    hosts = ctx.calibration.images[:6].float().div(255)
    control = load_run(a.control, e, torch.device("cpu")).ctx.victim
    print(f"| run | dmax | AUROC | vs benign | clean victim |\n|---|---|---|---|---|")
    for d in (float(v) for v in a.dmax.split(",")):
        score = partial(gains, hosts=hosts, dmax=d, steps=a.steps, lr=a.lr)
        print(row(a.run.name, d, score, ctx.victim, control, sets), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dmax", default="2,4,8", help="largest displacement in pixels (comma-separated)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--rewarp", action="store_true", help="the re-warp removal score instead of reachability")
    p.add_argument("--run", type=Path, default=None, help="a trained run instead of the toy plantings")
    p.add_argument("--control", type=Path, default=None, help="its clean control run (with --run)")
    p.add_argument("--n-test", type=int, default=300, help="test images loaded (with --run)")
    p.add_argument("--n-suspects", type=int, default=100, help="suspects of each kind (with --run)")
    a = p.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    if (a.run is None) != (a.control is None):
        p.error("--run and --control go together")
    if a.run is not None:
        return full_size(a)
    trigger = WarpTrigger(k=4, strength=8.0, seed=0)
    x, labels = toy_images()
    clean = x[256:][labels[256:] != 0][:40]
    sets = {"clean": clean, "triggered": trigger(clean), "benign twin": benign_perturbation(trigger, T)(clean)}
    hosts = toy_images(480, seed=1)[0][:6]
    print(f"| planting | {'re-warp strength' if a.rewarp else 'dmax'} | AUROC | vs benign | clean victim |\n|---|---|---|---|---|")
    notes = []
    for name, steps, nm in (("BadEncoder, 300 steps", 300, 0.0), ("noise mode 1, 600 steps", 600, 1.0)):
        module = plant(trigger, steps, nm)
        with torch.no_grad():
            ref = F.normalize(module.victim(module.references), dim=1)
            fire = {s: float(((F.normalize(module.victim(v), dim=1) @ ref.T) > 0.8).float().mean())
                    for s, v in sets.items()}
        notes.append(f"{name}: share at cosine > 0.8 to the reference: "
                     + ", ".join(f"{s} {f:.2f}" for s, f in fire.items()))
        if a.rewarp:
            scores = {st: partial(rewarp_move, strength=st) for st in (2.0, 4.0, 8.0, 16.0)}
        else:
            scores = {d: partial(reach_gain, hosts=hosts, dmax=d, steps=a.steps, lr=a.lr)
                      for d in (float(v) for v in a.dmax.split(","))}
        for setting, score in scores.items():
            print(row(name, setting, score, module.victim, module.clean, sets))
    print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
