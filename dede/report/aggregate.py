"""One table over the jobs of a Hydra multirun: ``python evaluate.py run=<multirun dir>``.

Each job is evaluated (or its own ``results.json`` reused when the job evaluated itself),
jobs that differ only in ``seed`` are grouped, and every metric is reported as mean and
standard deviation over the seeds. A job that failed is listed with its error; the others
still count.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path

import yaml

from dede.io import write_json_atomic, write_text_atomic
from dede.report.results import DETECTOR_KEYS, MAIN_KEYS, markdown_table

# per-job keys of the multirun table: the main metrics plus the share of clean and of triggered
# test images flagged at the run's calibrated threshold (on a `clean` victim the first must sit
# near the nominal false-positive rate)
TABLE_KEYS = MAIN_KEYS + ["asr_knn", "flag_rate_clean", "flag_rate_triggered", "auroc_vs_benign", "flag_rate_benign",
                          "asr_benign", "auroc_clean_victim", "flag_rate_clean_victim"]

log = logging.getLogger(__name__)


def is_multirun(path: Path) -> bool:
    """A Hydra sweep directory: it has ``multirun.yaml``, or train runs as sub-directories."""
    if (path / "resolved_config.yaml").is_file():
        return False
    return (path / "multirun.yaml").is_file() or any((j / "resolved_config.yaml").is_file() for j in job_dirs(path))


def job_dirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if (p / ".hydra").is_dir()), key=lambda p: (len(p.name), p.name))


def job_overrides(job: Path) -> list[str]:
    f = job / ".hydra" / "overrides.yaml"
    return [str(o) for o in yaml.safe_load(f.read_text())] if f.is_file() else []


def _group_key(overrides: list[str]) -> str:
    keep = [o for o in overrides if not o.lstrip("+~").startswith("seed=")]
    return ",".join(sorted(keep)) or "(defaults)"


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, sd


def _with_flag_rates(res: dict) -> dict:
    thr = res.get("threshold")
    if not thr:
        return res
    return res | {"flag_rate_clean": thr["fpr"], "flag_rate_triggered": thr["tpr"]}


def _seed_of(job: dict) -> str | None:
    return next((o.split("=", 1)[1] for o in job["overrides"] if o.lstrip("+~").startswith("seed=")), None)


def is_clean_victim(results: dict) -> bool:
    """Whether an evaluated job's victim is a clean one: what evaluation recorded about the victim
    (``victim_is_clean``: no attack maker, no checkpoint), not the attack's name. Results written
    before that field existed fall back to the name ``clean``."""
    if "victim_is_clean" in results:
        return bool(results["victim_is_clean"])
    return results.get("attack") == "clean"


def pair_clean_victims(jobs: list[dict]) -> None:
    """Give every attack job without a clean-victim control the numbers of a clean-victim job
    (`is_clean_victim`) of the same multirun that scored the same images with the same trigger
    (same ``pairing`` key; the same seed when there is one): its AUROC and triggered flag rate,
    for the main detector and for every detector both ran."""
    clean = [j for j in jobs if is_clean_victim(j.get("results", {})) and j["results"].get("pairing")]
    for j in jobs:
        r = j.get("results")
        if not r or is_clean_victim(r) or "auroc_clean_victim" in r or not r.get("pairing"):
            continue
        same = [c for c in clean if c["results"]["pairing"] == r["pairing"]]
        match = next((c for c in same if _seed_of(c) == _seed_of(j)), same[0] if same else None)
        if match is None:
            continue
        c = match["results"]
        r["auroc_clean_victim"], r["flag_rate_clean_victim"] = c["auroc"], c["threshold"]["tpr"]
        r["clean_victim_job"] = match["job"]
        for name, row in (r.get("detectors") or {}).items():
            crow = (c.get("detectors") or {}).get(name)
            if crow and "auroc_clean_victim" not in row:
                row["auroc_clean_victim"], row["flag_rate_clean_victim"] = crow["auroc"], crow["flag_rate_triggered"]


def aggregate(jobs: list[dict], keys: list[str] = TABLE_KEYS) -> list[dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for j in jobs:
        if "results" in j:
            groups[_group_key(j["overrides"])].append(j["results"])
    present = {k for results in groups.values() for r in results for k in r}
    keys = [k for k in keys if k in present]
    rows = []
    for name, results in groups.items():
        row = {"setting": name, "n_seeds": len(results)}
        for k in keys:
            row[k], row[f"{k}_std"] = _mean_std([r.get(k, float("nan")) for r in results])
        rows.append(row)
    return rows


def aggregate_detectors(jobs: list[dict], keys: list[str] = DETECTOR_KEYS) -> list[dict]:
    """One row per setting and detector: mean and std over seeds of every detector's metrics
    (and of its controls)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for j in jobs:
        for name, row in (j.get("results", {}).get("detectors") or {}).items():
            groups[(_group_key(j["overrides"]), name)].append(row)
    rows = []
    for (setting, name), results in groups.items():
        row = {"setting": setting, "detector": name, "n_seeds": len(results)}
        for k in keys:
            if any(k in r for r in results):
                row[k], row[f"{k}_std"] = _mean_std([r.get(k, float("nan")) for r in results])
        rows.append(row)
    return rows


def evaluate_multirun(path: Path, out: Path, evaluate_job) -> dict:
    """``evaluate_job(job_dir, out_dir) -> results dict`` evaluates one job."""
    jobs = []
    out.mkdir(parents=True, exist_ok=True)
    out_r = out.resolve()
    for job in job_dirs(path):
        if job.resolve() == out_r or job.resolve() in out_r.parents:
            continue  # evaluate.py's own output directory placed inside the sweep

        entry = {"job": job.name, "dir": str(job), "overrides": job_overrides(job)}
        try:
            own = job / "results.json"
            if own.is_file():
                import json

                res = json.loads(own.read_text())
            else:
                res = evaluate_job(job, out / "jobs" / job.name)
            entry["results"] = _with_flag_rates({k: v for k, v in res.items() if k not in ("config", "plots")})
        except Exception as exc:  # noqa: BLE001 - one failed job must not lose the others
            log.error("job %s could not be evaluated: %s", job.name, exc)
            entry["error"] = f"{type(exc).__name__}: {exc}"
        jobs.append(entry)
    if jobs and all("error" in j for j in jobs):
        raise RuntimeError(f"no job of the multirun {path} could be evaluated: " +
                           "; ".join(f"{j['job']}: {j['error']}" for j in jobs))
    pair_clean_victims(jobs)
    rows = aggregate(jobs)
    det_rows = aggregate_detectors(jobs)
    report = {"multirun": str(path), "n_jobs": len(jobs), "n_failed": sum("error" in j for j in jobs),
              "aggregate": rows, "detectors": det_rows, "jobs": jobs}
    plot = _auroc_vs_mask_ratio(jobs, out)
    if plot:
        report["plots"] = {"auroc_vs_mask_ratio": plot}
    write_json_atomic(out / "results.json", report)
    cols = ["setting", "n_seeds"] + [c for k in TABLE_KEYS for c in (k, f"{k}_std") if rows and k in rows[0]]
    md = [f"# Multirun {path}", "", f"{len(jobs)} jobs, {report['n_failed']} failed; mean and std over seeds.", "",
          markdown_table(rows, cols), ""]
    if det_rows:
        dcols = ["setting", "detector", "n_seeds"] + [c for k in DETECTOR_KEYS for c in (k, f"{k}_std")
                                                      if any(k in r for r in det_rows)]
        md += ["## Detectors (mean and std over seeds)", "", markdown_table(det_rows, dcols), ""]
    md += [f"- job {j['job']} failed: {j['error']}" for j in jobs if "error" in j]
    if plot:
        md += ["", f"![AUROC vs mask ratio]({Path(plot).name})"]
    write_text_atomic(out / "results.md", "\n".join(md) + "\n")
    return report


def _auroc_vs_mask_ratio(jobs: list[dict], out: Path) -> str | None:
    """AUROC against the train-time mask ratio, one line per other setting (e.g. patch size)."""
    points: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for j in jobs:
        r = j.get("results")
        if not r:
            continue
        ratio = r.get("train_mask_ratio")
        rest = [o for o in j["overrides"] if not o.startswith(("decoder.mask_ratio=", "seed="))]
        if ratio is not None:
            points[",".join(sorted(rest)) or "default"][float(ratio)].append(r["auroc"])
    if not points or all(len(v) < 2 for v in points.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, by_ratio in sorted(points.items()):
        xs = sorted(by_ratio)
        ax.plot(xs, [_mean_std(by_ratio[x])[0] for x in xs], marker="o", label=label)
    ax.set(xlabel="train-time mask ratio", ylabel="AUROC", title="DeDe AUROC vs mask ratio")
    ax.legend(fontsize=7)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "auroc_vs_mask_ratio.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return str(path)
