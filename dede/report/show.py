"""Print the results table of an evaluation: ``python -m dede.report.show results.json [--all]``.

The headline is the main detector's row (``eval.main_detector``). The detector table shows, for
every detector, what says whether it finds backdoors rather than perturbations: its AUROC, the
AUROC against a benign perturbation of the trigger's kind, the AUROC on a clean victim (near 0.5
for a backdoor-specific score) and the downstream ASR after filtering; ``--all`` adds every column.
"""
from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from dede.report.results import CONTROL_KEYS, DETECTOR_KEYS, MAIN_KEYS

# the columns that tell a backdoor detector from a perturbation detector
SPECIFICITY_KEYS = ["auroc", "auroc_vs_benign", "auroc_clean_victim", "asr_defended", "tpr_at_fpr_05",
                    "images_per_second"]


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))


def show(path: str, all_columns: bool = False) -> None:
    with open(path) as f:
        res = json.load(f)
    main = res.get("main_detector", "dede")
    console = Console(width=max(150, Console().width))
    table = Table(title=f"{main} on the {res['attack']} victim (aux: {res.get('aux_data')})")
    for k in MAIN_KEYS:
        table.add_column(k, justify="right")
    table.add_row(*(_cell(res.get(k)) for k in MAIN_KEYS))
    console.print(table)
    controls = [k for k in CONTROL_KEYS if k in res]
    if controls:
        t1 = Table(title=f"controls ({main})")
        for k in controls:
            t1.add_column(k, justify="right")
        t1.add_row(*(_cell(res[k]) for k in controls))
        console.print(t1)
    thr = res["threshold"]
    console.print(f"threshold {thr['rule']} = {thr['value']:.3f}: TPR {thr['tpr']:.3f}, FPR {thr['fpr']:.3f} "
                  f"({res['n_clean']} clean, {res['n_triggered']} triggered test images)")
    rows = res.get("detectors") or {}
    if rows:
        present = {k for row in rows.values() for k in row}
        cols = [k for k in (DETECTOR_KEYS if all_columns else SPECIFICITY_KEYS) if k in present]
        t2 = Table(title="detectors (backdoor-specific: high auroc and auroc_vs_benign, auroc_clean_victim "
                         "near 0.5)")
        t2.add_column("detector")
        for c in cols:
            t2.add_column(c, justify="right")
        for name, row in rows.items():
            t2.add_row(name, *(_cell(row.get(c, float("nan"))) for c in cols))
        console.print(t2)
        if "auroc_clean_victim" not in present:
            console.print("no clean-victim control: evaluate with control_run=<train run of attack=clean> to get "
                          "auroc_clean_victim")
    console.print(f"files: {path} and results.md, plots beside them")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", help="results.json of an evaluation")
    p.add_argument("--all", action="store_true", help="every column of the detector table")
    a = p.parse_args(argv)
    show(a.results, a.all)


if __name__ == "__main__":
    main()
