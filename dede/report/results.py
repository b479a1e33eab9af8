"""results.json / results.md of an evaluation, written atomically."""
from __future__ import annotations

from pathlib import Path

from dede.io import write_json_atomic, write_text_atomic

# the controls of a detection number: triggered vs benign-perturbed images, and the same images
# scored on a clean victim (with control_run)
CONTROL_KEYS = ("auroc_vs_benign", "flag_rate_benign", "asr_benign", "auroc_clean_victim", "flag_rate_clean_victim")
DETECTOR_KEYS = ["auroc", "auroc_vs_benign", "auroc_clean_victim", "tpr_at_fpr_05", "flag_rate_clean",
                 "flag_rate_triggered", "flag_rate_benign", "flag_rate_clean_victim", "clean_accuracy_defended",
                 "asr_defended", "images_per_second"]
MAIN_KEYS = ["auroc", "auprc", "tpr_at_fpr_05", "clean_accuracy", "asr", "clean_accuracy_defended", "asr_defended"]
# the weighted k-NN classifier's view of the victim (shown when present)
KNN_KEYS = ["clean_accuracy_knn", "asr_knn"]
# the embedding-level view: mean pairwise cosine of each test set's embeddings (shown when present)
CONCENTRATION_KEYS = ["concentration_clean", "concentration_triggered", "concentration_benign"]


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
           *([markdown_table([res], [k for k in CONCENTRATION_KEYS if k in res]), "",
              "Mean pairwise cosine of the victim's embeddings of each test set: a backdoor that fires maps "
              "triggered images to one point (near 1), whatever the downstream classifier makes of it.", ""]
             if any(k in res for k in CONCENTRATION_KEYS) else []),
           "## Controls", "", markdown_table([res], [k for k in CONTROL_KEYS if k in res]) if any(
               k in res for k in CONTROL_KEYS) else "No controls (eval.control.enabled=false, no control_run).", "",
           _controls_text(res), "",
           "## Thresholds", "",
           markdown_table([thr] + res.get("other_thresholds", []), ["rule", "value", "tpr", "fpr"]), "",
           f"The `{thr['rule']}` threshold is calibrated on held-out auxiliary images only (no triggered test data); "
           "`median` is the original code's rule over the 1:1 test mix, shown for comparison.", ""]
    if res.get("detectors"):
        present = {k for v in res["detectors"].values() for k in v}
        cols = ["detector"] + [k for k in DETECTOR_KEYS if k in present]
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


def _controls_text(res: dict) -> str:
    c = res.get("control") or {}
    parts = []
    if c.get("benign"):
        parts.append(f"Benign perturbation: {c['benign']} on the same clean test images as the trigger "
                     "(`auroc_vs_benign`: triggered vs benign-perturbed; `asr_benign`: the backdoor should not fire).")
    if c.get("clean_victim_run"):
        parts.append(f"Clean-victim control: the same images scored with the victim and decoder of "
                     f"`{c['clean_victim_run']}` (`auroc_clean_victim` should be near 0.5 for a backdoor-specific "
                     "detector).")
    return " ".join(parts)


def write_results(out_dir: Path, res: dict) -> None:
    write_json_atomic(out_dir / "results.json", res)
    write_text_atomic(out_dir / "results.md", results_markdown(res))
