"""Obtain the victim of a run: load it from a checkpoint, or make it with our own attack
implementation and cache it under a key that hashes everything that made it."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dede.io import atomic_path, write_text_atomic
from dede.data import ImageSet, TensorBatches, load_split, make_loader
from dede.victims.checkpoints import load_victim_checkpoint, native_format, save_checkpoint
from dede.victims.encoders import Victim, build_victim
from dede.victims.making import fit_victim, interruptible, is_global_zero, maker_lock, work_folder

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


def _plain(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def home_split(cfg: DictConfig, split: str) -> ImageSet:
    h = cfg.data.home
    n = h.get("n_train" if split == "train" else "n_test", 0)
    seed = h.get("seed", 0) + (0 if split == "train" else 1)
    return load_split(h.name, h.get(f"{split}_split", split), h.root, h.download, cfg.data.image_size, n, seed)


def reference_images(cfg: DictConfig, home: ImageSet, n: int) -> torch.Tensor:
    """The target-class reference images: from ``attack.reference_file`` (the original ``.npz``
    with ``x`` (N,H,W,3) uint8) or, without one, ``n`` seeded picks of the target class."""
    path = cfg.attack.get("reference_file")
    if path:
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            x = torch.from_numpy(np.asarray(z["x"])).permute(0, 3, 1, 2)
        return x[:n].float().div(255)
    idx = torch.nonzero(home.labels == cfg.attack.target)[:, 0]
    if len(idx) == 0:
        raise ValueError(f"no image of target class {cfg.attack.target} in the home data set '{home.name}'")
    pick = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(cfg.seed))[:n]]
    return home.images[pick].float().div(255)


def make_clean(cfg: DictConfig, victim: Victim, full: torch.nn.Module, log_dir: Path) -> None:
    from dede.attacks import SimCLRModule

    p = cfg.attack.pretrain
    home = home_split(cfg, "train")
    L.seed_everything(cfg.seed, workers=True)
    module = SimCLRModule(full, victim, lr=p.lr, weight_decay=p.weight_decay, temperature=p.temperature,
                          aug_strength=p.get("aug_strength", 1.0), min_scale=p.get("min_scale", 0.2),
                          optimizer=p.get("optimizer", "adam"), cosine=p.get("cosine", False))
    loader = make_loader(TensorBatches(home.images), p.batch_size, shuffle=True, drop_last=True,
                         num_workers=cfg.data.num_workers, seed=cfg.seed)
    fit_victim(cfg, module, loader, p.epochs, log_dir, "simclr")


def make_badencoder(cfg: DictConfig, victim: Victim, full: torch.nn.Module, log_dir: Path) -> None:
    from dede.attacks import BadEncoderModule

    m = cfg.attack.make
    home = home_split(cfg, "train")
    shadow = home.split(m.shadow_fraction, cfg.seed)[1] if m.shadow_fraction < 1 else home
    refs = reference_images(cfg, home, m.n_references)
    L.seed_everything(cfg.seed, workers=True)
    module = BadEncoderModule(victim, refs, instantiate(cfg.attack.trigger), lr=m.lr, momentum=m.momentum,
                              weight_decay=m.weight_decay, lambda1=m.lambda1, lambda2=m.lambda2)
    loader = make_loader(TensorBatches(shadow.images), m.batch_size, shuffle=True, drop_last=True,
                         num_workers=cfg.data.num_workers, seed=cfg.seed)
    fit_victim(cfg, module, loader, m.epochs, log_dir, "badencoder")


@dataclass(frozen=True)
class AttackSpec:
    """How to make a victim of one attack. ``make(cfg, victim, full, log_dir)`` trains ``full``
    in place and may return an optimised `Trigger` (stored next to the cached victim).
    ``from_clean``: it fine-tunes the cached clean victim (BadEncoder, DRUPE, CLIP attacks);
    otherwise it trains the victim from scratch on poisoned data (CTRL, ASSET)."""

    make: str  # "module:function", imported on use so unused attacks cost nothing
    from_clean: bool = True

    def resolve(self) -> Callable[..., Any]:
        return _import(self.make)


def _import(spec: str) -> Callable[..., Any]:
    import importlib

    mod, fn = spec.split(":")
    return getattr(importlib.import_module(mod), fn)


# attack name -> how its victim is made
ATTACKS: dict[str, AttackSpec] = {
    "badencoder": AttackSpec("dede.victims.factory:make_badencoder"),
    "drupe": AttackSpec("dede.attacks.drupe:make_drupe"),
    "ctrl": AttackSpec("dede.attacks.ctrl:make_ctrl", from_clean=False),
    "asset": AttackSpec("dede.attacks.supervised:make_asset", from_clean=False),
    "clip": AttackSpec("dede.attacks.clip:make_clip_backdoor"),
    "badclip": AttackSpec("dede.attacks.clip:make_badclip"),
}
# attack.pretrain.kind -> how the clean victim (the `clean` control and the start of the
# fine-tuning attacks) is trained
PRETRAINERS: dict[str, str] = {
    "simclr": "dede.victims.factory:make_clean",
    "supervised": "dede.attacks.supervised:make_clean_supervised",
    "clip": "dede.attacks.clip:make_clean_clip",
}


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


def obtain_victim(cfg: DictConfig, log_dir: str | Path) -> VictimInfo:
    a = cfg.attack
    victim, full = build_victim(**_plain(a.victim))
    if a.checkpoint:
        load_victim_checkpoint(a.checkpoint, a.checkpoint_format, full)
        return VictimInfo(victim, full, str(a.checkpoint), a.checkpoint_format, made=False)
    if a.name != "clean" and a.name not in ATTACKS:
        raise ValueError(f"attack '{a.name}' has no implementation to make a victim; known: {sorted(ATTACKS)} "
                         "(or give attack.checkpoint=PATH)")
    kind = a.pretrain.get("kind", "simclr")
    if kind not in PRETRAINERS:
        raise ValueError(f"attack.pretrain.kind={kind!r} is unknown; known: {sorted(PRETRAINERS)}")
    fmt = native_format(a.victim.arch)
    cache = Path(cfg.paths.cache_dir) / "victims"
    cache.mkdir(parents=True, exist_ok=True)
    log_dir = Path(log_dir)
    lock_timeout = float(cfg.get("victim_lock_timeout", -1))
    home = _plain(cfg.data.home) | {"image_size": cfg.data.image_size}
    home.pop("root", None), home.pop("download", None)
    clean_key = {"victim": _plain(a.victim), "pretrain": _plain(a.pretrain), "home": home, "seed": cfg.seed}
    made = False
    spec = ATTACKS.get(a.name)
    if a.name == "clean" or spec.from_clean:
        pretrain = _import(PRETRAINERS[kind])
        path, made, _ = _cached(cache, "clean", clean_key, fmt, victim, full,
                                lambda: pretrain(cfg, victim, full, log_dir), lock_timeout)
        if a.name == "clean":
            victim.eval()
            return VictimInfo(victim, full, path, fmt, made)
    attack_key = clean_key | {"attack": a.name, "make": _plain(a.make), "trigger": _plain(a.trigger),
                              "target": a.target, "reference_file": a.get("reference_file")}
    path, made2, trigger_file = _cached(cache, a.name, attack_key, fmt, victim, full,
                                        lambda: spec.resolve()(cfg, victim, full, log_dir), lock_timeout)
    victim.eval()
    return VictimInfo(victim, full, path, fmt, made or made2, trigger_file)


def build_trigger(cfg: DictConfig, trigger_file: str | None = None):
    """The attack's trigger; an optimised one (e.g. BadCLIP's patch) is read from ``trigger_file``."""
    if trigger_file:
        return instantiate(cfg.attack.trigger, path=trigger_file)
    return instantiate(cfg.attack.trigger)
