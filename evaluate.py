"""Evaluate a trained run: detection (AUROC, AUPRC, TPR at 5% FPR), calibrated threshold,
downstream clean accuracy and attack success rate before and after filtering, plots.

    python evaluate.py run=logs/train/runs/<run dir>
"""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    from dede.pipeline.evaluate import run_evaluate

    return run_evaluate(cfg).get("auroc")  # None for a multirun table


if __name__ == "__main__":
    main()
