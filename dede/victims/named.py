"""Victims named by a model library: ``timm``, ``torchvision`` or ``open_clip`` model names,
built without downloading anything (weights come from a local file, ``attack.checkpoint``).

``attack.victim.arch`` is the library, ``attack.victim.model`` the model name in it:

* ``timm``: ``timm.create_model(model, pretrained=False, num_classes=0)``: the pooled features.
* ``torchvision``: ``torchvision.models.get_model(model, weights=None)`` with its classification
  head (``fc``, ``heads``, ``head`` or ``classifier``) replaced by the identity.
* ``open_clip``: ``open_clip.create_model(model, pretrained=None)``; the victim is the image
  tower ``visual``. A model config of your own can be registered with
  ``open_clip.add_model_config`` before the run.

The embedding size comes from one forward pass at ``image_size``, which also tells at once
when the model cannot take that size. Checkpoints load in the ``state_dict`` format
(`dede.victims.checkpoints`): the model's own keys, with or without the classification head.
"""
from __future__ import annotations

import torch
from torch import nn

NAMED_ARCHS = ("timm", "torchvision", "open_clip")
HEAD_NAMES = ("fc", "heads", "head", "classifier")


class NamedModelError(ValueError):
    """A named model that cannot be built (unknown name, input size it cannot take)."""


def _timm(model: str) -> tuple[nn.Module, nn.Module, str | None]:
    import timm

    if model not in timm.list_models():
        raise NamedModelError(f"timm has no model {model!r}; see timm.list_models()")
    m = timm.create_model(model, pretrained=False, num_classes=0)
    return m, m, (getattr(m, "pretrained_cfg", None) or {}).get("classifier")


def _torchvision(model: str) -> tuple[nn.Module, nn.Module, str | None]:
    import torchvision

    if model not in torchvision.models.list_models():
        raise NamedModelError(f"torchvision has no model {model!r}; see torchvision.models.list_models()")
    m = torchvision.models.get_model(model, weights=None)
    head = next((h for h in HEAD_NAMES if isinstance(getattr(m, h, None), nn.Module)), None)
    if head is not None:
        setattr(m, head, nn.Identity())
    return m, m, head


def _open_clip(model: str) -> tuple[nn.Module, nn.Module, str | None]:
    import open_clip

    if model not in open_clip.list_models():
        raise NamedModelError(f"open_clip has no model config {model!r}; see open_clip.list_models() (register "
                              "your own with open_clip.add_model_config)")
    full = open_clip.create_model(model, pretrained=None)
    return full, full.visual, None


BUILDERS = {"timm": _timm, "torchvision": _torchvision, "open_clip": _open_clip}


def build_named(family: str, image_size: int, model: str | None = None, **_) -> tuple[nn.Module, nn.Module, int]:
    """``(full model, trunk, embedding size)`` of ``model`` from the library ``family``."""
    if not model:
        raise NamedModelError(f"attack.victim.arch={family} needs attack.victim.model=<a {family} model name>")
    full, trunk, head = BUILDERS[family](str(model))
    full.dede_head_prefix = head  # the classification head a checkpoint may still hold (dropped on load)
    trunk.eval()
    try:
        with torch.no_grad():
            out = trunk(torch.zeros(1, 3, int(image_size), int(image_size)))
    except Exception as exc:  # noqa: BLE001 - any failure here means the size does not fit the model
        raise NamedModelError(f"{family} model {model!r} cannot take {image_size}x{image_size} images ({exc}); set "
                              "attack.victim.image_size to a size it takes") from exc
    if out.dim() != 2:
        raise NamedModelError(f"{family} model {model!r} gives features of shape {tuple(out.shape)}, not (N, D) "
                              "embeddings: choose a model whose pooled output is the embedding")
    return full, trunk, int(out.shape[1])
