"""What a victim is made from: its recipe, the one config node a maker may read.

A victim that our own attack implementations make is cached under the hash of its *recipe*,
and its maker, called as ``fn(cfg, victim, full, log_dir)``, is handed a config that holds that
recipe plus the runtime-only parts it needs to run, nothing else, in OmegaConf struct and
read-only mode: a maker that reads a key outside them (``cfg.decoder``, ``cfg.eval``, ...) fails
at once instead of making a victim the cache key does not describe. No list of keys is kept by
hand: whatever the attack config holds is in the key.

Recipe (resolved, presets already applied to the fields that use them)::

    attack:     the attack node without checkpoint, checkpoint_format and presets
                (clean victim: only attack.victim and attack.pretrain; an attack trained from
                scratch, from_clean=false, has no attack.pretrain)
    data:       {home: data.home without root and download, image_size: data.image_size}
    seed:       seed
    precision:  trainer.precision, only when it is not full precision

Runtime-only parts of the maker's config (never in the key): ``trainer`` (without max_epochs:
every making phase gives its own), ``paths``, ``data.home.root``, ``data.home.download``,
``data.num_workers``. (``cfg.x.get("key", default)`` on a missing key returns the default even in
struct mode; attribute access and ``cfg.x["key"]`` fail.)
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

# attack keys that say where or how a given victim is loaded, or hold the scale presets the
# other fields already resolved: none of them changes a victim that is made
NOT_RECIPE = ("checkpoint", "checkpoint_format", "presets")
# what clean pretraining reads of the attack node (CLIP captions live in attack.pretrain.captions)
CLEAN_PARTS = ("victim", "pretrain")
FULL_PRECISION = ("32-true", "32")


def _resolved(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _common(cfg: DictConfig, attack: dict) -> dict:
    home = {k: v for k, v in _resolved(cfg.data.home).items() if k not in ("root", "download")}
    recipe = {"attack": attack, "data": {"home": home, "image_size": cfg.data.image_size}, "seed": cfg.seed}
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision not in FULL_PRECISION:  # a victim made in 16/bf16 autocast is another victim
        recipe["precision"] = precision
    return recipe


def clean_recipe(cfg: DictConfig) -> dict:
    """The recipe of the clean victim of ``cfg`` (what ``attack.pretrain.maker`` reads)."""
    return _common(cfg, {k: _resolved(cfg.attack[k]) for k in CLEAN_PARTS})


def attack_recipe(cfg: DictConfig) -> dict | None:
    """The recipe of the attacked victim of ``cfg`` (what ``attack.maker`` reads); None for a
    clean victim (no maker)."""
    a = cfg.attack
    if a.get("maker") is None:
        return None
    drop = NOT_RECIPE if a.get("from_clean", True) else (*NOT_RECIPE, "pretrain")
    return _common(cfg, {k: v for k, v in _resolved(a).items() if k not in drop})


def victim_recipes(cfg: DictConfig) -> tuple[dict, dict | None]:
    """The recipes of the clean victim and of the attacked one (None for a clean victim); the
    victim cache keys are their hashes (`dede.victims.factory.config_hash`)."""
    return clean_recipe(cfg), attack_recipe(cfg)


def maker_config(cfg: DictConfig, recipe: dict) -> DictConfig:
    """The config a maker is called with: ``recipe`` plus the runtime-only parts of ``cfg``
    (see the module's doc), struct and read-only."""
    trainer = OmegaConf.to_container(cfg.trainer, resolve=False)
    trainer.pop("max_epochs", None)  # the decoder's; every making phase gives its own
    data = recipe["data"]
    out = OmegaConf.create({
        **recipe,
        "data": {"home": {**data["home"], "root": cfg.data.home.root, "download": cfg.data.home.download},
                 "image_size": data["image_size"], "num_workers": cfg.data.num_workers},
        "trainer": trainer,
        "paths": OmegaConf.to_container(cfg.paths, resolve=False),  # may interpolate ${hydra:...}: resolved on use
    })
    OmegaConf.set_struct(out, True)
    OmegaConf.set_readonly(out, True)
    return out
