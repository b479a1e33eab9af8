"""Lightning pieces shared by every training of the project (victim making and the decoder):
progress lines in the run log, checkpoints that are written atomically and carry the random
state, and resuming from them."""
from __future__ import annotations

import logging
import random
import re
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dede.io import atomic_path

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


def _generators(loader: Any) -> list[torch.Generator]:
    """The random generators that decide a data loader's order (its own and its sampler's)."""
    found: list[torch.Generator] = []
    for g in (getattr(loader, "generator", None), getattr(getattr(loader, "sampler", None), "generator", None)):
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


class RandomState(Callback):
    """Keeps the random state in the checkpoints (torch CPU and CUDA, NumPy, Python and the
    data loader's generators), so a run resumed after epoch k draws the same augmentations and
    batch orders as one that never stopped. Only tensors, numbers and tuples are stored: the
    checkpoint still loads with ``weights_only=True``."""

    def __init__(self, loader: Any = None) -> None:
        self.generators = _generators(loader)

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": (str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                          float(gauss)),
                "python": random.getstate(),
                "loader": [g.get_state() for g in self.generators]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])
        for g, s in zip(self.generators, state["loader"]):
            g.set_state(s)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written through a unique temporary file and renamed into place:
    an interruption while saving never leaves a truncated checkpoint to resume from."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.ckpt$")


def latest_checkpoint(folder: Path) -> tuple[Path, int] | None:
    """The checkpoint ``epoch_NNN.ckpt`` of the highest epoch in ``folder`` and the number of
    epochs it has finished (NNN + 1), or None."""
    found = [(int(m.group(1)), p) for p in Path(folder).glob("epoch_*.ckpt") if (m := _EPOCH_FILE.match(p.name))]
    if not found:
        return None
    epoch, path = max(found)
    return path, epoch + 1


def _fit_takes_weights_only() -> bool:
    import inspect

    return "weights_only" in inspect.signature(L.Trainer.fit).parameters


def fit(trainer: L.Trainer, module: L.LightningModule, data: Any, ckpt_path: str | Path | None = None) -> None:
    """``trainer.fit``, resuming from ``ckpt_path`` if given; the checkpoint is read with
    ``weights_only=True`` where Lightning supports it."""
    ckpt = str(ckpt_path) if ckpt_path else None
    if _fit_takes_weights_only():
        trainer.fit(module, data, ckpt_path=ckpt, weights_only=True)
    else:
        trainer.fit(module, data, ckpt_path=ckpt)


def checkpoint_callbacks(folder: Path, loader: Any) -> list[Callback]:
    """An ``epoch_NNN.ckpt`` checkpoint in ``folder`` after every training epoch (the latest
    only) that carries the random state of the run and of ``loader``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    return [ModelCheckpoint(dirpath=str(folder), filename="epoch_{epoch:03d}", auto_insert_metric_name=False,
                            monitor=None, save_top_k=1, save_last=False, every_n_epochs=1,
                            save_on_train_epoch_end=True, enable_version_counter=False),
            RandomState(loader)]
