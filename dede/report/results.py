"""results.json / results.md of an evaluation, written atomically."""
from __future__ import annotations

from pathlib import Path

from dede.pipeline.common import write_json_atomic, write_text_atomic

DETECTOR_KEYS = ["auroc", "auprc", "tpr_at_fpr_05", "images_per_second", "flag_rate_clean", "clean_accuracy_defended",
                 "asr_defended"]
MAIN_KEYS = ["auroc", "auprc", "tpr_at_fpr_05", "clean_accuracy", "asr", "clean_accuracy_defended", "asr_defended"]
# the weighted k-NN classifier's view of the victim (shown when present)
KNN_KEYS = ["clean_accuracy_knn", "asr_knn"]


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def results_markdown(res: dict) -> str:
    thr = res["threshold"]
    out = [f"# DeDe evaluation: {res['attack']} victim, auxiliary data {res.get('aux_data', '?')}", "",
           f"Run: `{res.get('run', '')}`  ", f"{res['n_clean']} clean and {res['n_triggered']} triggered test images; "
           f"test mask ratio {res.get('test_mask_ratio')}.", "", "## Detection and downstream effect", "",
           markdown_table([res], MAIN_KEYS + [k for k in KNN_KEYS if k in res]), "",
           "CA / ASR: the downstream MLP; `_knn`: a weighted k-NN classifier on the same features.", "",
           "## Thresholds", "",
           markdown_table([thr] + res.get("other_thresholds", []), ["rule", "value", "tpr", "fpr"]), "",
           f"The `{thr['rule']}` threshold is calibrated on held-out auxiliary images only (no triggered test data); "
           "`median` is the original code's rule over the 1:1 test mix, shown for comparison.", ""]
    if res.get("detectors"):
        cols = ["detector"] + DETECTOR_KEYS
        rows = [{"detector": k, **v} for k, v in res["detectors"].items()]
        out += ["## Detector comparison", "", "Every detector is calibrated on held-out auxiliary images "
                "(same quantile); downstream CA / ASR after filtering use that threshold.", "",
                markdown_table(rows, cols), ""]
    ml = res.get("model_level")
    if ml:
        out += ["## Model-level and training-set checks", ""]
        d = ml.get("decree")
        if d:
            out.append(f"- DECREE trigger inversion: mask L1 norm {d['mask_l1_norm']:.4f} at similarity "
                       f"{d['similarity']:.3f}; verdict: {'backdoored' if d['backdoored'] else 'clean'} "
                       f"(threshold {d['threshold']})")
        a = ml.get("asset", {})
        if "auroc" in a:
            out.append(f"- ASSET-style offsets on the auxiliary set ({a['n_poisoned']} poisoned of {a['n_suspect']}): "
                       f"AUROC {a['auroc']:.4f}; DeDe on the same samples: {a['dede_auroc']:.4f}")
        elif a:
            out.append(f"- ASSET-style offsets: {a.get('skipped')}")
        out.append("")
    if res.get("plots"):
        out += ["## Plots", ""] + [f"![{k}]({Path(v).name})" for k, v in res["plots"].items()] + [""]
    return "\n".join(out)


def write_results(out_dir: Path, res: dict) -> None:
    write_json_atomic(out_dir / "results.json", res)
    write_text_atomic(out_dir / "results.md", results_markdown(res))
