"""Lightning pieces shared by every training of the project (victim making and the decoder):
progress lines in the run log."""
from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger("dede.progress")


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def train_loss(metrics: dict[str, Any]) -> float | None:
    """The epoch's training loss among logged metrics: a key whose last part is ``loss``
    (e.g. ``simclr/loss``, ``train/loss``), never a validation one."""
    keys = [k for k in metrics if k.rsplit("/", 1)[-1] == "loss" and not k.startswith("val")]
    if not keys:
        return None
    v = metrics[sorted(keys)[0]]
    return float(v) if not torch.is_tensor(v) or v.numel() == 1 else None


class EpochProgress(Callback):
    """One line per finished training epoch through Python logging (so it reaches the run's
    log file): phase, epoch / max epochs, training loss, time elapsed and an estimate of the
    time left (from the epochs run in this process, so a resumed run estimates correctly)."""

    def __init__(self, phase: str = "train") -> None:
        self.phase = phase
        self._start = time.monotonic()
        self._first_epoch = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._first_epoch = time.monotonic(), trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        done, total = trainer.current_epoch + 1, trainer.max_epochs
        elapsed = time.monotonic() - self._start
        loss = train_loss(trainer.callback_metrics)
        parts = [f"{self.phase}: epoch {done}/{total if total and total > 0 else '?'}",
                 f"loss {loss:.4f}" if loss is not None else "loss -", f"{_duration(elapsed)} elapsed"]
        if total and total > 0:
            per_epoch = elapsed / max(1, done - self._first_epoch)
            parts.append(f"about {_duration(per_epoch * max(0, total - done))} left")
        log.info(", ".join(parts))
