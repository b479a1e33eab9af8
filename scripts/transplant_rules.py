"""Ways of combining `transplant_any`'s per-carrier measurements, on a trained run and its clean
control, from one set of victim passes.

    python scripts/transplant_rules.py RUN CONTROL_RUN [--n-test 300] [--out rules.json]

For the carriers ``window``, ``highpass`` and ``lowpass`` it measures, per image:
- ``agree``: the mean pairwise cosine of the composites' embeddings (the detector's default);
- ``suspect``: the mean cosine of the composites' embeddings with the suspect's own embedding (a
  backdoor sends the composites to the target, where the triggered suspect already is; a merely
  conspicuous carrier on a clean encoder pulls them together, but not onto the suspect);
- ``move``: how far removing the carrier moves the suspect's own embedding.
Each is standardised with the median and IQR / 1.349 on held-out auxiliary images (as the
detector does). Rules: a single measure of one carrier; ``both(A)``: the largest over carriers of
min(A, move) (the detector's ``select=both`` for A = agree); ``all3``: min(agree, suspect, move).
Printed per rule: AUROC (clean vs triggered), vs benign and on the clean victim.

Choose a rule on victims of a development seed and report it on others.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from dede.detect.detectors import occlusion_moves
from dede.detect.metrics import auroc
from dede.detect.transplant import REMOVABLE, TransplantAny
from dede.pipeline.evaluate import default_eval_config, load_run, test_sets

MEASURES = ("agree", "suspect", "move")


@torch.no_grad()
def measure(det: TransplantAny, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{measure: (N, C)}`` raw values for the carriers of ``det``: the detector's own ``measure``
    for ``agree`` (``cosine``) and ``suspect``, its ``moves`` for ``move``."""
    ctx = det.ctx
    z = F.normalize(ctx.embed(images), dim=1)
    out = {m: [] for m in MEASURES}
    step = max(1, ctx.batch_size // (det.copies + len(det.masks) + len(det.carriers)))
    for i in range(0, len(images), step):
        x = images[i:i + step].float().div(255).to(ctx.device)
        zb = z[i:i + step].to(ctx.device).float()
        occ = occlusion_moves(ctx.victim, x, zb, det.masks)
        emb = det.embed_composites(x, occ.argmax(1))  # (B, C, H, D)
        for name, agreement in (("agree", "cosine"), ("suspect", "suspect")):
            det.agreement = agreement
            out[name].append(det.measure(emb, zb).cpu())
        out["move"].append(det.moves(x, zb, occ).cpu())
    return {m: torch.cat(v) for m, v in out.items()}


def collect(run: Path, e, sets: dict | None, args) -> tuple[dict, dict]:
    loaded = load_run(run, e, torch.device("cpu"))
    ctx = loaded.ctx
    if sets is None:
        test, trig, benign, _ = test_sets(loaded.cfg, e, ctx.trigger)
        sets = {"clean": test.images, "triggered": trig.images, "benign": benign.images}
    det = TransplantAny(carriers=REMOVABLE, n_hosts=args.n_hosts, windows=args.windows, sigma=args.sigma,
                        select="both", n_standardise=args.n_standardise)
    det.fit(ctx, standardise=False)  # hosts and windows; the measures below are standardised on its held-out images
    return {k: measure(det, v) for k, v in {"calibration": det.held_out(ctx), **sets}.items()}, sets


def standardise(r: dict) -> dict[str, dict[str, torch.Tensor]]:
    out = {k: {} for k in r}
    for m in MEASURES:
        centre, spread = TransplantAny.robust_scale(r["calibration"][m])
        for k in r:
            out[k][m] = (r[k][m] - centre) / spread
    return out


def rules(s: dict[str, torch.Tensor], carriers: list[str]) -> dict[str, torch.Tensor]:
    out = {}
    for i, c in enumerate(carriers):
        for m in MEASURES:
            out[f"{m}:{c}"] = s[m][:, i]
    for n in range(1, len(carriers) + 1):
        for sub in itertools.combinations(range(len(carriers)), n):
            idx = list(sub)
            name = "+".join(carriers[i] for i in idx)
            for a in ("agree", "suspect"):
                out[f"both({a}):{name}"] = torch.minimum(s[a][:, idx], s["move"][:, idx]).amax(1)
            out[f"all3:{name}"] = torch.minimum(torch.minimum(s["agree"][:, idx], s["suspect"][:, idx]),
                                                s["move"][:, idx]).amax(1)
            out[f"max(suspect):{name}"] = s["suspect"][:, idx].amax(1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("control", type=Path)
    p.add_argument("--n-test", type=int, default=300)
    p.add_argument("--n-hosts", type=int, default=8)
    p.add_argument("--n-standardise", type=int, default=256)
    p.add_argument("--sigma", type=float, default=1 / 16)
    p.add_argument("--windows", type=json.loads, default=[[0.375, 0.375]])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    e = default_eval_config(args.n_test)
    main_r, sets = collect(args.run, e, None, args)
    ctrl_r, _ = collect(args.control, e, {"clean": sets["clean"], "triggered": sets["triggered"]}, args)
    carriers = list(REMOVABLE)
    sm, sc = standardise(main_r), standardise(ctrl_r)
    scores = {k: rules(sm[k], carriers) for k in ("clean", "triggered", "benign")}
    ctrl = {k: rules(sc[k], carriers) for k in ("clean", "triggered")}
    rows = {}
    print(f"{'rule':45s} auroc  vs_benign  clean_victim")
    for name in scores["clean"]:
        rows[name] = {"auroc": auroc(scores["clean"][name], scores["triggered"][name]),
                      "auroc_vs_benign": auroc(scores["benign"][name], scores["triggered"][name]),
                      "auroc_clean_victim": auroc(ctrl["clean"][name], ctrl["triggered"][name])}
        print(f"{name:45s} " + " ".join(f"{v:.3f}" for v in rows[name].values()), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
