"""Figures for a run: ROC curve, score histograms, reconstruction grid."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402


def _save(fig, path: Path) -> str:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return str(path)


def plot_roc(curves: dict[str, tuple[torch.Tensor, torch.Tensor, float]], path: Path, title: str = "") -> str:
    """``curves``: name -> (fpr, tpr, auroc)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr.numpy(), tpr.numpy(), label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_histogram(clean: torch.Tensor, triggered: torch.Tensor, threshold: float | None, path: Path,
                   title: str = "", xlabel: str = "DeDe score (reconstruction error)") -> str:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    lo = float(torch.cat([clean, triggered]).min())
    hi = float(torch.cat([clean, triggered]).max())
    bins = torch.linspace(lo, hi, 60).numpy()
    ax.hist(clean.numpy(), bins=bins, alpha=0.6, label=f"clean (n={len(clean)})", density=True)
    ax.hist(triggered.numpy(), bins=bins, alpha=0.6, label=f"triggered (n={len(triggered)})", density=True)
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label="calibrated threshold")
    ax.set(xlabel=xlabel, ylabel="density", title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_reconstructions(rows: dict[str, torch.Tensor], path: Path, upscale: int = 3) -> str:
    """``rows``: label -> images (n, 3, H, W) in [0, 1]; one row of the grid per entry."""
    names = list(rows)
    n = min(len(v) for v in rows.values())
    grid = make_grid(torch.cat([rows[k][:n] for k in names]), nrow=n, padding=1, pad_value=1.0)
    fig, ax = plt.subplots(figsize=(1.0 * n, 1.05 * len(names)))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    h = grid.shape[1] / len(names)
    ax.set_yticks([h * (i + 0.5) for i in range(len(names))], names, fontsize=7)
    ax.set_xticks([])
    return _save(fig, path)
