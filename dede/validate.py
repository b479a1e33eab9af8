"""Checks of user input that must fail before any long work starts."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from dede.data.datasets import KNOWN


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and the fix."""


def _unit_interval(name: str, value, closed_right: bool) -> None:
    ok = value is not None and 0.0 <= float(value) and (float(value) <= 1.0 if closed_right else float(value) < 1.0)
    if not ok:
        rng = "[0, 1]" if closed_right else "[0, 1)"
        raise ConfigError(f"{name}={value} is outside {rng}")


def validate_train_config(cfg: DictConfig) -> None:
    d, dec, a = cfg.data, cfg.decoder, cfg.attack
    if d.name not in KNOWN:
        raise ConfigError(f"data.name={d.name!r} is not a known data set; known: {KNOWN}")
    if d.home.name not in KNOWN:
        raise ConfigError(f"data.home.name={d.home.name!r} is not a known data set; known: {KNOWN}")
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
    if not 0 <= int(a.target):
        raise ConfigError(f"attack.target={a.target} must be a class index >= 0")
