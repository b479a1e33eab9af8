"""Loading victim checkpoints written by the original repositories (and by us).

Every load uses ``torch.load(..., weights_only=True)`` and strict key checking; a
mismatch raises `CheckpointError` naming the expected format and the missing and
unexpected keys, instead of silently leaving layers at their random initialisation.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

# format name -> (description of the expected layout, key prefix the layout uses)
FORMATS: dict[str, str] = {
    "badencoder": "BadEncoder/DRUPE SimCLR checkpoint: {'state_dict': ...} with keys 'f.f.*' (encoder) and 'g.*' (head)",
}


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or laid out differently than its format says."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (set attack.checkpoint to an existing file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors (found {type(obj).__name__})")
    return dict(obj)


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], fmt: str, source: str = "checkpoint") -> None:
    """``model.load_state_dict(state, strict=True)`` with an error message a user can act on."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
        parts = [f"{source} does not match the '{fmt}' format ({FORMATS.get(fmt, fmt)})."]
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if shape:
            parts.append("shape mismatch: " + ", ".join(
                f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shape[:5]))
        parts.append("Check attack.checkpoint_format and the victim architecture (attack.victim.width/blocks).")
        raise CheckpointError("\n  ".join(parts))
    model.load_state_dict(state, strict=True)


def load_victim_checkpoint(path: str | os.PathLike, fmt: str, full_model: nn.Module) -> None:
    """Load ``path`` (written in format ``fmt``) into ``full_model`` in place."""
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; known: {sorted(FORMATS)}")
    state = read_state_dict(path)
    if fmt == "badencoder":
        state = {k.removeprefix("module."): v for k, v in state.items()}
    load_strict(full_model, state, fmt, source=str(path))


def save_checkpoint(full_model: nn.Module, path: str | os.PathLike, **meta: object) -> None:
    """Write a victim in the BadEncoder layout (``{'epoch', 'state_dict'}``), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    payload = {"state_dict": {k: v.detach().cpu() for k, v in full_model.state_dict().items()}}
    payload.update({k: v for k, v in meta.items() if isinstance(v, (int, float, str))})
    torch.save(payload, tmp)
    os.replace(tmp, path)
