"""Print the results table of an evaluation: ``python -m dede.report.show results.json``."""
from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

from dede.report.results import CONTROL_KEYS, DETECTOR_KEYS, MAIN_KEYS


def show(path: str) -> None:
    res = json.loads(open(path).read())
    table = Table(title=f"DeDe on the {res['attack']} victim (aux: {res.get('aux_data')})")
    for k in MAIN_KEYS:
        table.add_column(k, justify="right")
    table.add_row(*(f"{res[k]:.4f}" for k in MAIN_KEYS))
    console = Console(width=max(120, Console().width))
    console.print(table)
    controls = [k for k in CONTROL_KEYS if k in res]
    if controls:
        t1 = Table(title="controls (DeDe)")
        for k in controls:
            t1.add_column(k, justify="right")
        t1.add_row(*(f"{res[k]:.4f}" for k in controls))
        console.print(t1)
    thr = res["threshold"]
    console.print(f"threshold {thr['rule']} = {thr['value']:.3f}: TPR {thr['tpr']:.3f}, FPR {thr['fpr']:.3f} "
                  f"({res['n_clean']} clean, {res['n_triggered']} triggered test images)")
    if "detectors" in res:
        t2 = Table(title="detector comparison")
        present = {k for row in res["detectors"].values() for k in row}
        cols = [k for k in DETECTOR_KEYS if k in present]
        t2.add_column("detector")
        for c in cols:
            t2.add_column(c, justify="right")
        for name, row in res["detectors"].items():
            t2.add_row(name, *(f"{row.get(c, float('nan')):.4f}" for c in cols))
        console.print(t2)
    console.print(f"files: {path} and results.md, plots beside them")


if __name__ == "__main__":
    show(sys.argv[1])
