"""Per-carrier detection of `transplant_any` on a trained run and its clean control, for every
agreement measure, from one victim pass per composite.

    python scripts/transplant_carriers.py RUN CONTROL_RUN [--n-test 500] [--out carriers.json]

Prints, for each carrier and agreement measure alone and for the max of standardised
agreements over all carriers: AUROC (clean vs triggered), vs benign (benign vs triggered), and
on the clean victim (clean vs triggered). The standardisation uses held-out auxiliary images
only, as the detector does.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from dede.detect.detectors import occlusion_moves
from dede.detect.metrics import auroc
from dede.detect.transplant import AGREEMENTS, CARRIERS, TransplantAny
from dede.pipeline.evaluate import default_eval_config, load_run, test_sets


@torch.no_grad()
def raw(det: TransplantAny, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{measure: (N, C)}`` agreements of every carrier."""
    ctx = det.ctx
    z = torch.nn.functional.normalize(ctx.embed(images), dim=1)
    out = {m: [] for m in AGREEMENTS}
    step = max(1, ctx.batch_size // (det.copies + len(det.masks)))
    for i in range(0, len(images), step):
        x = images[i:i + step].float().div(255).to(ctx.device)
        window = occlusion_moves(ctx.victim, x, z[i:i + step], det.masks).argmax(1)
        emb = det.embed_composites(x, window)
        for m in AGREEMENTS:
            det.agreement = m
            out[m].append(det.measure(emb, z[i:i + step].to(ctx.device)).cpu())
    return {m: torch.cat(v) for m, v in out.items()}


def evaluate(run: Path, e, sets: dict[str, torch.Tensor] | None, args) -> tuple[dict, dict]:
    loaded = load_run(run, e, torch.device("cpu"))
    ctx = loaded.ctx
    if sets is None:
        test, trig, benign, _ = test_sets(loaded.cfg, e, ctx.trigger)
        sets = {"clean": test.images, "triggered": trig.images, "benign": benign.images}
    # all four carriers in CARRIERS order (the columns below rely on it), agreements only
    det = TransplantAny(carriers=CARRIERS, n_hosts=args.n_hosts, windows=args.windows, sigma=args.sigma,
                        blend_alpha=args.alpha, highpass_contrast=True, select="max")
    det.n_standardise = args.n_standardise
    det.fit(ctx, standardise=False)  # hosts as the detector picks them; standardisation per measure below
    res = {k: raw(det, v) for k, v in {"calibration": det.held_out(ctx), **sets}.items()}
    return res, sets


def standardised(r: dict, measure: str, carriers: list[int]) -> dict[str, torch.Tensor]:
    centre, spread = TransplantAny.robust_scale(r["calibration"][measure][:, carriers])
    return {k: ((v[measure][:, carriers] - centre) / spread).amax(1) for k, v in r.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("control", type=Path)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--n-hosts", type=int, default=8)
    p.add_argument("--n-standardise", type=int, default=256)
    p.add_argument("--sigma", type=float, default=1 / 16)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--windows", type=json.loads, default=[[0.375, 0.375]])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    e = default_eval_config(args.n_test)
    main_r, sets = evaluate(args.run, e, None, args)
    ctrl_r, _ = evaluate(args.control, e, {"clean": sets["clean"], "triggered": sets["triggered"]}, args)
    for r in (main_r, ctrl_r):  # a fifth column: the high-pass agreement minus its sign-flipped one
        for v in r.values():
            for m in AGREEMENTS:
                v[m] = torch.cat([v[m], v[m][:, 2:3] - v[m][:, 4:5]], 1)
    names = list(CARRIERS) + ["flipped", "highpass_contrast"]
    rows = {}
    combos = [[i] for i in range(len(names))] + [list(c) for n in (2, 3, 4)
                                                 for c in itertools.combinations(range(len(CARRIERS)), n)]
    combos += [[0, 1, 5], [0, 1, 5, 3]]
    for measure in AGREEMENTS:
        for c in combos:
            s, cs = standardised(main_r, measure, c), standardised(ctrl_r, measure, c)
            name = f"{measure}:{'+'.join(names[i] for i in c)}"
            rows[name] = {"auroc": auroc(s["clean"], s["triggered"]),
                          "auroc_vs_benign": auroc(s["benign"], s["triggered"]),
                          "auroc_clean_victim": auroc(cs["clean"], cs["triggered"])}
            print(f"{name:45s} " + " ".join(f"{v:.3f}" for v in rows[name].values()), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
