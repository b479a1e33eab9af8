"""Loading victim checkpoints written by the original repositories (and by us).

Every load uses ``torch.load(..., weights_only=True)`` and strict key checking; a
mismatch raises `CheckpointError` naming the expected format and the missing and
unexpected keys, instead of silently leaving layers at their random initialisation, and,
when the keys look like another known format, says which one.

Formats (`FORMATS`) and the victim architectures they load into:
``badencoder`` (simclr_resnet), ``ctrl`` (ctrl_resnet), ``supervised``
(supervised_resnet), ``decree_clip`` (image tower of clip_rn50 / clip_small) and
``badclip`` (whole clip_rn50 / clip_small), ``state_dict`` (a timm / torchvision /
open_clip model by name). `save_checkpoint` writes the full model's own
keys, which `native_format` names for each arch.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from dede.io import atomic_path

@dataclass(frozen=True)
class CheckpointFormat:
    """One checkpoint layout: what it looks like, the victim architectures (``attack.victim.arch``)
    whose full model it holds, the keys a state dict may be wrapped in, whether `save_checkpoint`
    writes it for those architectures, and how its keys map onto the model (``adapt``:
    ``(state, full_model) -> (state, module to load into, hint or None)``)."""

    layout: str
    archs: tuple[str, ...]
    wrappers: tuple[str, ...] = ("state_dict",)
    native: bool = True
    adapt: Callable[[dict, nn.Module], tuple[dict, nn.Module, str | None]] | None = None


# keys that OpenAI's serialised CLIP carries next to the weights (hyper-parameters, not weights)
_CLIP_SCALARS = ("input_resolution", "context_length", "vocab_size")


def _ctrl(state: dict, full_model: nn.Module) -> tuple[dict, nn.Module, str | None]:
    hint = None
    if state and all(k.startswith("backbone.") for k in state):
        hint = ("the checkpoint holds only the backbone (no 'proj_head.*' keys); the 'ctrl' format is the "
                "whole SimCLR model as CTRL's training script saves it")
    return state, full_model, hint


def _decree_clip(state: dict, full_model: nn.Module) -> tuple[dict, nn.Module, str | None]:
    target = getattr(full_model, "visual", None)
    if not isinstance(target, nn.Module):
        f = FORMATS["decree_clip"]
        raise CheckpointError(f"format 'decree_clip' ({f.layout}) loads the image tower of a CLIP victim "
                              f"(attack.victim.arch={' or '.join(f.archs)}), but this victim "
                              f"({type(full_model).__name__}) has none")
    if state and all(k.startswith("visual.") for k in state):
        state = {k.removeprefix("visual."): v for k, v in state.items()}
    return state, target, None


def _named_state(state: dict, full_model: nn.Module) -> tuple[dict, nn.Module, str | None]:
    """A model of timm / torchvision / open_clip: its own keys. The victim has no classification
    head, so a head the checkpoint still holds is dropped (only keys under the head's name); an
    open_clip checkpoint may hold the whole CLIP (``visual.*`` and the text tower) or the image
    tower alone."""
    head = getattr(full_model, "dede_head_prefix", None)
    if head:
        state = {k: v for k, v in state.items() if k != head and not k.startswith(head + ".")}
    visual = getattr(full_model, "visual", None)
    if isinstance(visual, nn.Module) and state and not any(k.startswith("visual.") for k in state):
        return state, visual, None
    return state, full_model, None


def _badclip(state: dict, full_model: nn.Module) -> tuple[dict, nn.Module, str | None]:
    return {k: v for k, v in state.items() if k not in _CLIP_SCALARS}, full_model, None


FORMATS: dict[str, CheckpointFormat] = {
    "badencoder": CheckpointFormat(
        "BadEncoder/DRUPE SimCLR checkpoint: {'state_dict': ...} with keys 'f.f.*' (encoder) and 'g.*' (head)",
        ("simclr_resnet",)),
    "ctrl": CheckpointFormat(
        "CTRL SimCLR checkpoint: {'epoch', 'state_dict', 'optimizer'} with keys 'backbone.*' (CIFAR ResNet with "
        "'shortcut' skips) and 'proj_head.*' (head), optionally prefixed 'module.'", ("ctrl_resnet",), adapt=_ctrl),
    "supervised": CheckpointFormat(
        "supervised CIFAR ResNet classifier: a state dict, or {'state_dict' | 'model' | 'net': ...}, with keys "
        "'conv1.*', 'bn1.*', 'layer1.*'..'layer4.*' ('shortcut' skips) and 'linear.*', optionally prefixed 'module.'",
        ("supervised_resnet",), wrappers=("state_dict", "model", "net")),
    "decree_clip": CheckpointFormat(
        "CLIP image tower only (DECREE / BadEncoder CLIP): keys 'conv1.weight', ..., 'attnpool.*', without prefix "
        "or all prefixed 'visual.'; loaded into the image tower of a CLIP victim", ("clip_rn50", "clip_small"),
        native=False, adapt=_decree_clip),
    "badclip": CheckpointFormat(
        "whole CLIP model (BadCLIP): {'epoch', 'name', 'state_dict', 'optimizer'} with keys 'visual.*', "
        "'transformer.*', 'token_embedding.weight', 'positional_embedding', 'ln_final.*', 'text_projection', "
        "'logit_scale', optionally prefixed 'module.'", ("clip_rn50", "clip_small"), adapt=_badclip),
    "state_dict": CheckpointFormat(
        "a timm / torchvision / open_clip model's own state dict (attack.victim.model names the model), plain or "
        "in {'state_dict' | 'model' | 'net': ...}, optionally prefixed 'module.'; a classification head is dropped, "
        "an open_clip file may hold the whole CLIP or its image tower", ("timm", "torchvision", "open_clip"),
        wrappers=("state_dict", "model", "net"), native=False, adapt=_named_state),
}


def native_format(arch: str) -> str:
    """The format whose keys are exactly ``full_model.state_dict()`` of ``arch``, i.e. the
    one `save_checkpoint` writes for it and that reads such a checkpoint back."""
    for name, fmt in FORMATS.items():
        if fmt.native and arch in fmt.archs:
            return name
    raise ValueError(f"unknown victim arch {arch!r}; known: {sorted({a for f in FORMATS.values() for a in f.archs})}")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or laid out differently than its format says."""


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n or n.endswith("/constants.pkl") for n in names)


def read_state_dict(path: str | os.PathLike,
                    wrappers: tuple[str, ...] = ("state_dict",)) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, read without unpickling arbitrary objects
    (``weights_only=True``; ``.safetensors`` files with safetensors). A dict that holds the
    state dict under one of ``wrappers`` (e.g. ``{'epoch', 'state_dict', 'optimizer'}``) is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (set attack.checkpoint to an existing file)")
    if _is_torchscript(path):
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is a TorchScript archive (like OpenAI's released CLIP .pt files), "
            "which is not loaded here; convert it once to a state dict with "
            "torch.save(torch.jit.load(path, map_location='cpu').state_dict(), out) and give that file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, Mapping):
        for w in wrappers:
            if w in obj and isinstance(obj[w], Mapping):
                obj = obj[w]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors (found {type(obj).__name__}"
                              + (f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else "")
                              + ")")
    return dict(obj)


def guess_format(keys) -> str | None:
    """The known format that a set of state-dict keys looks like, or None."""
    ks = {str(k).removeprefix("module.") for k in keys}
    if not ks:
        return None
    if any(k.startswith(("f.f.", "g.")) for k in ks):
        return "badencoder"
    if any(k.startswith(("backbone.", "proj_head.")) for k in ks):
        return "ctrl"
    if "token_embedding.weight" in ks or any(k.startswith("transformer.resblocks.") for k in ks):
        return "badclip"
    if all(k.startswith("visual.") for k in ks) or any(k.startswith("attnpool.") for k in ks):
        return "decree_clip"
    if "linear.weight" in ks and "conv1.weight" in ks and any(k.startswith("layer1.") for k in ks):
        return "supervised"
    return None


def _format_hint(fmt: str, keys) -> str | None:
    guess = guess_format(keys)
    if guess is None or guess == fmt:
        return None
    return (f"these keys look like the '{guess}' format ({FORMATS[guess].layout}); set "
            f"attack.checkpoint_format={guess} (with attack.victim.arch={' or '.join(FORMATS[guess].archs)})")


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], fmt: str, source: str = "checkpoint",
                hint: str | None = None) -> None:
    """``model.load_state_dict(state, strict=True)`` with an error message a user can act on."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
        parts = [f"{source} does not match the '{fmt}' format ({FORMATS[fmt].layout if fmt in FORMATS else fmt})."]
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if shape:
            parts.append("shape mismatch: " + ", ".join(
                f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shape[:5]))
            if any(k.startswith("linear.") for k in shape):
                parts.append("the classifier differs: check attack.victim.num_classes")
        if hint:
            parts.append(hint)
        archs = " or ".join(FORMATS[fmt].archs if fmt in FORMATS else ())
        parts.append("Check attack.checkpoint_format" + (f" (this format is for attack.victim.arch={archs})"
                                                          if archs else "")
                     + " and the victim architecture (attack.victim.width/blocks).")
        raise CheckpointError("\n  ".join(parts))
    model.load_state_dict(state, strict=True)


def _strip_module(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix that (Distributed)DataParallel puts on every key."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_victim_checkpoint(path: str | os.PathLike, fmt: str, full_model: nn.Module) -> None:
    """Load ``path`` (written in format ``fmt``, see `FORMATS`) into ``full_model`` in place.

    ``full_model`` is the second value of `build_victim` for an arch of the format
    (``FORMATS[fmt].archs``); ``decree_clip`` loads only its image tower ``full_model.visual``."""
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; known: {sorted(FORMATS)}")
    source = str(path)
    f = FORMATS[fmt]
    state = read_state_dict(path, f.wrappers)
    raw_keys = list(state)
    state = _strip_module(state)
    target, hint = full_model, None
    if f.adapt is not None:
        state, target, hint = f.adapt(state, full_model)
    hint = _format_hint(fmt, raw_keys) or hint
    load_strict(target, state, fmt, source=source, hint=hint)


def save_checkpoint(full_model: nn.Module, path: str | os.PathLike, **meta: object) -> None:
    """Write ``{'state_dict': full_model.state_dict(), **meta}`` atomically.

    The keys are the full model's own, so the checkpoint reads back with
    ``load_victim_checkpoint(path, native_format(arch), full_model)`` for every arch (for
    SimCLR victims this is exactly the BadEncoder layout)."""
    payload = {"state_dict": {k: v.detach().cpu() for k, v in full_model.state_dict().items()}}
    payload.update({k: v for k, v in meta.items() if isinstance(v, (int, float, str))})
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
