"""Obtain the victim of a run: load it from a checkpoint, or make it with our own attack
implementation and cache it under the hash of its recipe (`dede.victims.recipe`): the one config
node its maker is given, so the key holds everything that made it."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dede.io import atomic_path, write_text_atomic
from dede.victims.checkpoints import load_victim_checkpoint, native_format, save_checkpoint
from dede.victims.encoders import Victim, build_victim
from dede.victims.making import interruptible, is_global_zero, maker_lock, work_folder
from dede.victims.recipe import maker_config, victim_recipes

__all__ = ["VictimInfo", "build_trigger", "config_hash", "make_function", "obtain_victim", "victim_is_clean",
           "victim_recipes"]

log = logging.getLogger(__name__)


@dataclass
class VictimInfo:
    victim: Victim
    full: torch.nn.Module
    path: str  # the checkpoint that holds it (a given one, or one in the cache)
    fmt: str
    made: bool  # made in this process (False: loaded from a checkpoint or the cache)
    trigger_file: str | None = None  # an optimised trigger made with the victim


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_function(node: Any, what: str) -> Callable[..., Any]:
    """The victim-making function a config node names with ``_target_`` (``_partial_: true``)."""
    if node is None or "_target_" not in node:
        raise ValueError(f"{what} names no function to make the victim: give it a `_target_` (with `_partial_: true`) "
                         "naming a function (cfg, victim, full, log_dir), or give attack.checkpoint=PATH")
    fn = instantiate(node)
    if not callable(fn):
        raise ValueError(f"{what} = {node._target_} is not callable")
    return fn


def _cached(cache: Path, kind: str, key_obj: dict, fmt: str, victim: Victim, full: torch.nn.Module,
            make: Callable[[], Any], lock_timeout: float = -1) -> tuple[str, bool, str | None]:
    """Load the victim cached under ``key_obj`` or make it (and cache it). Returns the
    checkpoint path, whether it was made now, and the file of an optimised trigger if any.

    One process at a time checks, makes and publishes an entry (a file lock; the others wait
    up to ``lock_timeout`` seconds, -1 = as long as it takes, and then reuse it). Making
    checkpoints every epoch into ``<kind>-<key>.work/`` and resumes from there; the entry
    ``<kind>-<key>.pt`` is written last and atomically, so it exists only when complete."""
    key = config_hash(key_obj)
    stem = f"{kind}-{key}"
    path, trigger_path, work = cache / f"{stem}.pt", cache / f"{stem}.trigger.pt", cache / f"{stem}.work"
    with maker_lock(cache / f"{stem}.lock", f"{kind} victim (cache key {key})", lock_timeout):
        if path.is_file():
            log.info("reusing cached %s victim %s", kind, path)
            load_victim_checkpoint(path, fmt, full)
            return str(path), False, str(trigger_path) if trigger_path.is_file() else None
        log.info("making %s victim (cache key %s; epoch checkpoints in %s)", kind, key, work)
        with work_folder(work), interruptible(f"{kind} victim (cache key {key})", work):
            made_trigger = make()
        if is_global_zero():
            if made_trigger is not None:
                with atomic_path(trigger_path) as tmp:
                    made_trigger.save(tmp)
            write_text_atomic(cache / f"{stem}.json", json.dumps(key_obj, indent=2, sort_keys=True, default=str))
            save_checkpoint(full, path, kind=kind)  # last: the entry exists only once everything is there
            shutil.rmtree(work, ignore_errors=True)
    return str(path), True, str(trigger_path) if made_trigger is not None else None


def victim_is_clean(cfg: DictConfig) -> bool:
    """Whether the run's victim carries no backdoor by construction: made by clean pretraining
    alone (no ``attack.maker``), not loaded from a checkpoint (whose history we do not know),
    whatever the attack config is named (``clean``, ``clean_clip``, a user's own)."""
    return cfg.attack.get("maker") is None and not cfg.attack.get("checkpoint")


def obtain_victim(cfg: DictConfig, log_dir: str | Path) -> VictimInfo:
    a = cfg.attack
    victim, full = build_victim(**OmegaConf.to_container(a.victim, resolve=True))
    if a.checkpoint:
        load_victim_checkpoint(a.checkpoint, a.checkpoint_format, full)
        return VictimInfo(victim, full, str(a.checkpoint), a.checkpoint_format, made=False)
    attack = a.get("maker")
    make_attack = None if attack is None else make_function(attack, f"attack.maker of attack '{a.name}'")
    from_clean = make_attack is None or bool(a.get("from_clean", True))
    pretrain = make_function(a.pretrain.get("maker"), "attack.pretrain.maker") if from_clean else None
    fmt = native_format(a.victim.arch)
    cache = Path(cfg.paths.cache_dir) / "victims"
    cache.mkdir(parents=True, exist_ok=True)
    log_dir = Path(log_dir)
    lock_timeout = float(cfg.get("victim_lock_timeout", -1))
    clean, attacked = victim_recipes(cfg)
    made = False
    if from_clean:
        path, made, _ = _cached(cache, "clean", clean, fmt, victim, full,
                                lambda: pretrain(maker_config(cfg, clean), victim, full, log_dir), lock_timeout)
        if make_attack is None:
            victim.eval()
            return VictimInfo(victim, full, path, fmt, made)
    path, made2, trigger_file = _cached(cache, a.name, attacked, fmt, victim, full,
                                        lambda: make_attack(maker_config(cfg, attacked), victim, full, log_dir),
                                        lock_timeout)
    victim.eval()
    return VictimInfo(victim, full, path, fmt, made or made2, trigger_file)


def build_trigger(cfg: DictConfig, trigger_file: str | None = None):
    """The attack's trigger; an optimised one (e.g. BadCLIP's patch) is read from ``trigger_file``."""
    if trigger_file:
        return instantiate(cfg.attack.trigger, path=trigger_file)
    return instantiate(cfg.attack.trigger)
