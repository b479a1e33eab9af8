"""Checks of user input that must fail before any long work starts."""
from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from dede.data.datasets import KNOWN, NUM_CLASSES, check_version


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""


def _unit_interval(name: str, value, closed_right: bool) -> None:
    ok = value is not None and 0.0 <= float(value) and (float(value) <= 1.0 if closed_right else float(value) < 1.0)
    if not ok:
        rng = "[0, 1]" if closed_right else "[0, 1)"
        raise ConfigError(f"{name}={value} is outside {rng}")


def _open_unit_interval(name: str, value) -> None:
    if not _is_number(value) or not 0.0 < float(value) < 1.0:
        raise ConfigError(f"{name}={value} is outside (0, 1); give a value strictly between 0 and 1")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(name: str, value, least: int = 1, allow_none: bool = False, also: tuple = ()) -> None:
    """``value`` must be a whole number >= ``least`` (or None / one of ``also`` where allowed)."""
    if (allow_none and value is None) or value in also:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        extra = "".join(f" or {a!r}" for a in also) + (" or null" if allow_none else "")
        raise ConfigError(f"{name}={value} must be a whole number >= {least}{extra}")


def validate_train_config(cfg: DictConfig) -> None:
    d, dec, a = cfg.data, cfg.decoder, cfg.attack
    if d.name not in KNOWN:
        raise ConfigError(f"data.name={d.name!r} is not a known data set; known: {KNOWN}")
    if d.home.name not in KNOWN:
        raise ConfigError(f"data.home.name={d.home.name!r} is not a known data set; known: {KNOWN}")
    try:
        check_version(d.home.name, d.home.get("version"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.scale not in ("tiny", "paper"):
        raise ConfigError(f"scale={cfg.scale!r}: use 'tiny' or 'paper'")
    _unit_interval("decoder.mask_ratio", dec.mask_ratio, closed_right=False)
    _unit_interval("decoder.test_mask_ratio", dec.test_mask_ratio, closed_right=False)
    if dec.get("mask_ratio_end") is not None:
        _unit_interval("decoder.mask_ratio_end", dec.mask_ratio_end, closed_right=False)
    if dec.mask_schedule not in ("fixed", "linear", "mixed"):
        raise ConfigError(f"decoder.mask_schedule={dec.mask_schedule!r}: use 'fixed', 'linear' or 'mixed'")
    _unit_interval("decoder.mix_prob", dec.mix_prob, closed_right=True)
    _unit_interval("data.poison_rate", d.poison_rate, closed_right=True)
    _unit_interval("data.val_fraction", d.val_fraction, closed_right=False)
    size = int(d.image_size)
    if int(dec.patch_size) <= 0 or size % int(dec.patch_size):
        raise ConfigError(f"decoder.patch_size={dec.patch_size} does not divide the image size {size}; "
                          f"choose a divisor of {size} (e.g. 2, 4, 8)")
    if int(dec.embed_dim) % int(dec.num_heads):
        raise ConfigError(f"decoder.embed_dim={dec.embed_dim} is not divisible by decoder.num_heads={dec.num_heads}")
    if a.checkpoint and not Path(a.checkpoint).is_file():
        raise ConfigError(f"attack.checkpoint={a.checkpoint} does not exist; give the path of a "
                          f"'{a.checkpoint_format}' checkpoint or null to make the victim")
    if a.victim.arch in ("timm", "torchvision", "open_clip"):
        if not a.checkpoint:
            raise ConfigError(f"attack.victim.arch={a.victim.arch} names a model of that library, which is not made "
                              "here: give its weights as attack.checkpoint=PATH (scan.py: checkpoint=PATH)")
        if not a.victim.get("model"):
            raise ConfigError(f"attack.victim.arch={a.victim.arch} needs attack.victim.model=<model name>")
    _check_target(a.target, d.home.name)
    _whole("data.batch_size", d.batch_size)
    _whole("decoder.epochs", dec.epochs)
    if not a.checkpoint:  # the victim is made: its training settings are used
        for group in ("pretrain", "make"):
            for key in ("batch_size", "epochs", "patch_batch_size", "patch_steps"):
                node = a.get(group)
                if node is not None and node.get(key) is not None:
                    _whole(f"attack.{group}.{key}", node[key])
    _check_trigger(cfg)
    _check_accelerator(cfg.trainer)
    _check_precision("trainer.precision", cfg.trainer.get("precision", "32-true"))
    if dec.get("precision") is not None:
        _check_precision("decoder.precision", dec.precision)
    timeout = cfg.get("victim_lock_timeout", -1)
    if not _is_number(timeout) or (timeout < 0 and timeout != -1):
        raise ConfigError(f"victim_lock_timeout={timeout} must be a number of seconds >= 0, or -1 to wait as long "
                          "as another process takes to make the same victim")
    if cfg.get("eval") is not None:
        validate_eval_config(cfg.eval)


def _check_target(target, home: str) -> None:
    n = NUM_CLASSES.get(home)
    if isinstance(target, bool) or not isinstance(target, int) or target < 0 or (n is not None and target >= n):
        allowed = f"a class index of the home data set '{home}': 0..{n - 1}" if n else "a class index >= 0"
        raise ConfigError(f"attack.target={target} is not {allowed}")


def _check_trigger(cfg: DictConfig) -> None:
    """Build the attack's trigger and check that it fits the images (for BadCLIP: the starting
    patch, whose size and place the optimised one keeps)."""
    size = int(cfg.data.image_size)
    try:
        trigger = instantiate(cfg.attack.trigger)
    except Exception as exc:  # noqa: BLE001 - whatever the trigger's own check says, with the key named
        cause = exc.__cause__ or exc
        raise ConfigError(f"attack.trigger ({cfg.attack.trigger.get('_target_')}) cannot be built: "
                          f"{type(cause).__name__}: {cause}") from exc
    try:
        trigger.check_size(size)
    except ValueError as exc:
        raise ConfigError(f"attack.trigger does not fit the {size}x{size} images (data.image_size): {exc}") from exc


def _check_precision(key: str, value) -> None:
    """A precision Lightning knows (its own list), named before any victim is made."""
    from typing import get_args

    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    known = [*get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS)]
    if str(value) not in known:
        raise ConfigError(f"{key}={value} is not a precision Lightning knows; use one of {known}")


def _check_accelerator(trainer: DictConfig) -> None:
    acc = str(trainer.get("accelerator", "cpu")).lower()
    if acc not in ("gpu", "cuda"):
        return
    if not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={acc} but this machine has no CUDA device "
                          "(torch.cuda.is_available() is False); use trainer=cpu (or trainer=ddp_sim for two "
                          "DDP processes on the CPU)")
    devices, have = trainer.get("devices"), torch.cuda.device_count()
    if _is_number(devices) and int(devices) > have:
        raise ConfigError(f"trainer.devices={devices} but this machine has {have} CUDA device(s); "
                          f"use trainer.devices={have} or fewer")


def validate_eval_config(e: DictConfig, prefix: str = "eval") -> None:
    """The ranges of the evaluation settings (``eval`` of train.py and evaluate.py)."""
    _open_unit_interval(f"{prefix}.threshold.quantile", e.threshold.quantile)
    _open_unit_interval(f"{prefix}.fpr_target", e.fpr_target)
    _whole(f"{prefix}.n_masks", e.n_masks)
    _whole(f"{prefix}.n_test", e.n_test, least=0, allow_none=True)
    _whole(f"{prefix}.batch_size", e.batch_size, also=("auto",))
    if e.get("test_mask_ratio") is not None:
        _unit_interval(f"{prefix}.test_mask_ratio", e.test_mask_ratio, closed_right=False)
    rule = e.threshold.get("rule", "quantile")
    if rule not in ("quantile", "mean_std"):
        raise ConfigError(f"{prefix}.threshold.rule={rule!r}: use 'quantile' or 'mean_std'")
    main = e.get("main_detector", "dede")
    if main is not None:
        from dede.detect.base import known_detectors

        if main not in known_detectors():
            raise ConfigError(f"{prefix}.main_detector={main!r} is not a registered detector; known: "
                              f"{known_detectors()}")
    control = e.get("control") or {}
    from dede.triggers.benign import KINDS

    if control.get("enabled", True) and control.get("kind", "auto") not in KINDS:
        raise ConfigError(f"{prefix}.control.kind={control.kind!r}: use one of {', '.join(KINDS)}")
    device = str(e.get("device", "auto"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{prefix}.device={device} but this machine has no CUDA device; use {prefix}.device=auto "
                          "or cpu")
    ds = e.get("downstream")
    if ds is not None and ds.get("enabled", True):
        for key in ("epochs", "batch_size", "knn_k"):
            if key in ds:
                _whole(f"{prefix}.downstream.{key}", ds[key])
        _whole(f"{prefix}.downstream.n_train", ds.get("n_train"), least=0, allow_none=True)
