"""Pieces shared by the train and evaluate entry points."""
from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig

from dede.data import ImageSet, home_split, load_split
from dede.victims.factory import build_trigger

log = logging.getLogger(__name__)


def route_lightning_logs() -> None:
    """Let Lightning's log records reach only the root handlers (console + run log file)
    that Hydra configured, instead of also printing them through its own handler."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True


def aux_split(cfg: DictConfig, trigger_file: str | None = None) -> ImageSet:
    """The auxiliary set, poisoned at ``data.poison_rate`` with the attack's trigger
    (an optimised trigger made with the victim is read from ``trigger_file``)."""
    d = cfg.data
    aux = load_split(d.name, d.split, d.root, d.download, d.image_size, d.get("n", 0), d.get("seed", 0))
    if d.poison_rate > 0:
        aux = aux.poison(build_trigger(cfg, trigger_file), float(d.poison_rate), seed=cfg.seed)
    return aux


def check_data_available(cfg: DictConfig) -> None:
    """Load (and cache in-process) every data set the run needs, so absent files fail fast."""
    aux_split(cfg)
    home_split(cfg, "train")
    home_split(cfg, "test")


def instantiate_list(node: DictConfig | None) -> list:
    if not node:
        return []
    return [instantiate(v) for v in node.values() if v is not None and "_target_" in v]
