"""Does a run's trigger act on the clean victim too? Set-level collapse and target-class hits of
clean, triggered and benign-twin test images on the backdoored victim and on a clean one.

    python scripts/trigger_on_clean_victim.py RUN CONTROL_RUN [--n-test 300]

Prints, per victim: the mean pairwise cosine of each set's embeddings (a backdoor collapses the
triggered set onto its target), and the share of triggered and twin images whose embedding is
nearest the target class's mean (class means of the clean test images on that victim). A trigger
optimised against the clean victim (``sample_specific``'s first stage) can move it as well: then
a test that flags its images there is seeing an adversarial perturbation, not a false alarm on an
innocent input.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from dede.pipeline.evaluate import default_eval_config, load_run, test_sets


def pairwise_cosine(z: torch.Tensor) -> float:
    z = F.normalize(z, dim=1)
    g = z @ z.T
    n = len(z)
    return float((g.sum() - g.diagonal().sum()) / (n * (n - 1)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("control", type=Path)
    p.add_argument("--n-test", type=int, default=300)
    args = p.parse_args()
    e = default_eval_config(args.n_test)
    cpu = torch.device("cpu")
    bd, cl = load_run(args.run, e, cpu), load_run(args.control, e, cpu)
    test, trig, benign, _ = test_sets(bd.cfg, e, bd.ctx.trigger)
    target = int(bd.cfg.attack.target)
    print("victim | pairwise cos: clean | triggered | benign | nearest target class: triggered | benign")
    for name, run in (("backdoored", bd), ("clean", cl)):
        zc, zt, zb = (F.normalize(run.ctx.embed(s.images), dim=1) for s in (test, trig, benign))
        means = F.normalize(torch.stack([zc[test.labels == k].mean(0) for k in test.labels.unique()]), dim=1)
        classes = test.labels.unique()

        def hits(z: torch.Tensor) -> float:
            return float((classes[(z @ means.T).argmax(1)] == target).float().mean())

        print(f"{name} | {pairwise_cosine(zc):.3f} | {pairwise_cosine(zt):.3f} | {pairwise_cosine(zb):.3f} "
              f"| {hits(zt):.3f} | {hits(zb):.3f}")


if __name__ == "__main__":
    main()
