"""Making victims that survive long runs.

* Every victim-making phase (clean pretraining, the attack, an optimised trigger) is fitted
  through `fit_victim`: inside `work_folder` (the cache entry's work folder) it writes a
  checkpoint after every epoch and resumes from the latest one, so a rerun with the same cache
  key continues where an interrupted one stopped.
* `maker_lock`: one process makes a cache entry while the others wait for it.
* `interruptible`: SIGTERM ends the making like Ctrl-C does, and the log says how to resume.
"""
from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from dede.training import AtomicCheckpointIO, EpochProgress, checkpoint_callbacks, fit, latest_checkpoint

log = logging.getLogger(__name__)

# the work folder of the cache entry being made (None: fit without checkpoints)
_WORK: ContextVar[Path | None] = ContextVar("dede_victim_work_folder", default=None)


@contextmanager
def work_folder(path: str | Path) -> Iterator[Path]:
    """Victim-making phases fitted inside this block checkpoint into ``path / <phase>``."""
    token = _WORK.set(Path(path))
    try:
        yield Path(path)
    finally:
        _WORK.reset(token)


def victim_trainer(cfg: DictConfig, epochs: int, log_dir: Path, name: str, callbacks: Sequence[Callback] = (),
                   plugins: Sequence[Any] = ()) -> L.Trainer:
    """A trainer for making victims: the run's accelerator/devices/precision, its own epochs."""
    callbacks = list(callbacks)
    return instantiate(cfg.trainer, max_epochs=int(epochs), logger=CSVLogger(str(log_dir), name=name),
                       callbacks=callbacks, plugins=list(plugins),
                       enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                       enable_model_summary=False, check_val_every_n_epoch=None, limit_val_batches=0)


def fit_victim(cfg: DictConfig, module: L.LightningModule, loader: Any, epochs: int, log_dir: Path,
               name: str) -> None:
    """Fit the victim-making phase ``name`` for ``epochs`` epochs, with a progress line per
    epoch. Inside `work_folder`, a checkpoint (with the random state) is written after every
    epoch to ``<work folder>/<name>/`` and training resumes from the latest one there."""
    callbacks: list[Callback] = [EpochProgress(name)]
    plugins: list[Any] = []
    ckpt = None
    work = _WORK.get()
    if work is not None:
        folder = work / name
        callbacks += checkpoint_callbacks(folder, loader)
        plugins.append(AtomicCheckpointIO())
        found = latest_checkpoint(folder)
        if found:
            ckpt, done = found
            log.info("resuming %s from %s: %d of %d epochs done", name, ckpt, done, int(epochs))
    fit(victim_trainer(cfg, epochs, log_dir, name, callbacks, plugins), module, loader, ckpt)


# --- one maker per cache entry -------------------------------------------------------------

def launch_rank() -> int:
    """This process's rank as the launcher of a distributed run gave it in the environment
    (``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID``, ``NODE_RANK``); 0 outside one."""
    from lightning.pytorch.utilities import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0) or int(os.environ.get("NODE_RANK") or 0)


def is_global_zero() -> bool:
    """Rank zero of the process group, or of the launch before one exists (ranks launched as
    separate scripts may not have joined a group yet, e.g. when nothing was fitted)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return launch_rank() == 0


class VictimLockTimeout(TimeoutError):
    """Another process kept making a cached victim longer than ``victim_lock_timeout``."""


@contextmanager
def maker_lock(lock_path: Path, what: str, timeout: float) -> Iterator[None]:
    """Hold the file lock of one cache entry around "check the cache, make, publish", so one
    process makes it and the others wait (at most ``timeout`` seconds, -1 = as long as it takes)
    and then reuse it. Ranks other than zero of a distributed run take no lock: they make the
    victim together with rank zero, which holds it."""
    if launch_rank() != 0:
        yield
        return
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        patience = "as long as it takes" if timeout < 0 else f"up to {timeout:g} s"
        log.info("another process holds %s: waiting %s for it to publish the %s (victim_lock_timeout=%g)",
                 lock_path, patience, what, timeout)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise VictimLockTimeout(
                f"gave up after victim_lock_timeout={timeout:g} s: another process still holds {lock_path} and has "
                f"not published the {what} yet. Let it finish and run again (the victim is then reused), or set "
                f"victim_lock_timeout=-1 to wait as long as it takes") from None
    try:
        yield
    finally:
        lock.release()


# --- interruptions -----------------------------------------------------------------------------

def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def interruptible(what: str, work: Path) -> Iterator[None]:
    """While the block runs, SIGTERM raises ``SystemExit`` (unless another handler is installed)
    instead of killing the process silently, so Lightning tears down as on Ctrl-C; on either
    signal the log says where the finished epochs are and how to resume."""
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        log.warning("interrupted while the %s was being made; its finished epochs are kept in %s. To resume, run "
                    "the same command again (same config, so the same cache key, and the same cache directory): "
                    "python %s", what, work, shlex.join(sys.argv))
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
