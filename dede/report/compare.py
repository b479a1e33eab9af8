"""One table of every detector over several evaluated runs (e.g. attacks, or an attack's weights):

    python -m dede.report.compare badencoder=<eval dir> drupe=<eval dir> adaptive_w4=<eval dir>
    python -m dede.report.compare ... --keys auroc,auroc_vs_benign --out table.md

Each argument is ``label=<folder holding results.json>`` (or a results.json). Rows: detector x run,
with the columns of `DETECTOR_KEYS` by default, and the run's downstream CA / ASR without defense.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dede.io import write_text_atomic
from dede.report.results import DETECTOR_KEYS, markdown_table

COMPARE_KEYS = ["auroc", "auroc_vs_benign", "auroc_clean_victim", "tpr_at_fpr_05", "asr_defended", "images_per_second"]


def load_results(path: str | Path) -> dict:
    p = Path(path)
    p = p / "results.json" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"no results.json at {p}: give the folder of an evaluation (evaluate.py's run folder)")
    return json.loads(p.read_text())


def comparison_rows(runs: dict[str, dict], keys: list[str]) -> list[dict]:
    """One row per (detector, run), detectors in first-seen order, runs in the given order."""
    detectors: list[str] = []
    for res in runs.values():
        detectors += [d for d in res.get("detectors", {}) if d not in detectors]
    rows = []
    for det in detectors:
        for label, res in runs.items():
            d = res.get("detectors", {}).get(det)
            if d is None:
                continue
            rows.append({"detector": det, "run": label, "CA": res.get("clean_accuracy"), "ASR": res.get("asr"),
                         **{k: d.get(k) for k in keys}})
    return rows


def comparison_table(runs: dict[str, dict], keys: list[str] = COMPARE_KEYS) -> str:
    rows = comparison_rows(runs, keys)
    return markdown_table(rows, ["detector", "run", "CA", "ASR", *keys])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="label=<evaluation folder or results.json>")
    ap.add_argument("--keys", default=",".join(COMPARE_KEYS), help=f"columns, any of {DETECTOR_KEYS}")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    args = ap.parse_args(argv)
    runs = {}
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep:
            ap.error(f"{spec!r}: give label=<folder>")
        runs[label] = load_results(path)
    table = comparison_table(runs, [k for k in args.keys.split(",") if k])
    print(table)
    if args.out:
        write_text_atomic(Path(args.out), table + "\n")


if __name__ == "__main__":
    main()
