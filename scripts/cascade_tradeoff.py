"""The cascade's detection and cost against its gate, from an evaluation's saved scores.

    python scripts/cascade_tradeoff.py EVAL_DIR [--cheap feature_norm] [--specific transplant_any]
        [--quantiles 0.8,0.9,0.95,0.97]

For each gate quantile (of the cheap score on the held-out auxiliary images, as the `cascade`
detector sets it) it rebuilds the cascade's scores from the two parts' per-image scores in
``scores.npz`` (``<detector>/<set>``; the specific test's scores of ungated images are not used)
and prints the share of clean and of triggered images that would pay for the specific test,
AUROC, AUROC vs benign and, when the control run's scores are there, on the clean victim; and an
estimate of images/s on clean-only traffic and on the evaluation's mix from the parts' measured
rates (1 / (1 / cheap + share / specific)). Measured rates of the `cascade` detector itself are
in ``results.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dede.detect.cascade import above_one
from dede.detect.metrics import auroc


def cascade_scores(cheap: dict, spec: dict, q: float) -> tuple[dict, dict]:
    cal = torch.as_tensor(cheap["calibration"]).double()
    gate = float(torch.quantile(cal, q))
    iqr = torch.quantile(cal, torch.tensor([0.25, 0.75], dtype=cal.dtype))
    spread = max(float(iqr[1] - iqr[0]), 1e-12)
    out, share = {}, {}
    for k in cheap:
        if k not in spec:
            continue
        c, s = torch.as_tensor(cheap[k]).double(), torch.as_tensor(spec[k]).double()
        g = c > gate
        out[k] = torch.where(g, above_one(s), 1 / (2 + (gate - c).clamp(min=0) / spread))
        share[k] = float(g.double().mean())
    return out, share


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("eval_dir", type=Path)
    p.add_argument("--cheap", default="feature_norm")
    p.add_argument("--specific", default="transplant_any")
    p.add_argument("--quantiles", default="0.8,0.9,0.95,0.97")
    p.add_argument("--cheap-from", type=Path, default=None,
                   help="another evaluation of the same run and images that holds the cheap detector's scores")
    a = p.parse_args()
    cheap_dir = a.cheap_from or a.eval_dir
    npz = {d: np.load(d / "scores.npz") for d in {a.eval_dir, cheap_dir}}
    ips_c = json.loads((cheap_dir / "results.json").read_text())["detectors"][a.cheap]["images_per_second"]
    ips_s = json.loads((a.eval_dir / "results.json").read_text())["detectors"][a.specific]["images_per_second"]

    def part(prefix: str, name: str) -> dict:
        f = npz[cheap_dir if name == a.cheap else a.eval_dir]
        return {k.rsplit("/", 1)[1]: f[k] for k in f.files if k.startswith(f"{prefix}{name}/")}

    print("| gate quantile | specific test on: clean | triggered | AUROC | vs benign | clean victim "
          "| est. images/s, clean traffic | est. images/s, test mix |")
    print("|---|---|---|---|---|---|---|---|")
    for q in [float(v) for v in a.quantiles.split(",")]:
        s, share = cascade_scores(part("", a.cheap), part("", a.specific), q)
        ctrl = ""
        cc, cs = part("clean_victim/", a.cheap), part("clean_victim/", a.specific)
        if cc and cs:
            t, _ = cascade_scores(cc, cs, q)
            ctrl = f"{auroc(t['clean'], t['triggered']):.3f}"
        n_c, n_t = len(s["clean"]), len(s["triggered"])
        mix = (share["clean"] * n_c + share["triggered"] * n_t) / (n_c + n_t)
        est = lambda g: 1 / (1 / ips_c + g / ips_s)  # noqa: E731
        vb = f"{auroc(s['benign'], s['triggered']):.3f}" if "benign" in s else ""
        print(f"| {q} | {share['clean']:.3f} | {share['triggered']:.3f} | {auroc(s['clean'], s['triggered']):.3f} "
              f"| {vb} | {ctrl} | {est(share['clean']):.0f} | {est(mix):.0f} |")
    print(f"\n(parts measured: {a.cheap} {ips_c:.0f} images/s, {a.specific} {ips_s:.0f} images/s on the test mix)")


if __name__ == "__main__":
    main()
