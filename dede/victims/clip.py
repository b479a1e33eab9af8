"""CLIP victims, built with ``open_clip`` without downloading anything.

* ``clip_rn50``: the OpenAI CLIP RN50 (image tower ``visual`` = "ModifiedResNet": a 3-conv
  stem, bottleneck stages with anti-aliased strides and an attention pool; 224x224 inputs,
  1024-d embedding; text tower: 12-layer transformer of width 512).
* ``clip_small``: the same design shrunk for CPU runs (e.g. vision width 16 or 32, one
  bottleneck per stage, 32x32 or 64x64 inputs, 64-d embedding, a 2-layer text tower).

The full model is the whole CLIP (image and text towers, ``logit_scale``) with the key
layout of OpenAI's CLIP (``visual.*``, ``transformer.resblocks.*``, ``token_embedding.*``,
``positional_embedding``, ``ln_final.*``, ``text_projection``, ``logit_scale``), so that
contrastive fine-tuning works on it and checkpoints of the whole model load strictly. Its
forward takes *normalised* images (see `CLIP_MEAN`, `CLIP_STD`) and token ids.

Pretrained weights cannot be downloaded here: ``weights=PATH`` loads a local state dict of
the whole model (open_clip's ``open_clip_pytorch_model.bin`` / ``.safetensors``, or a
state dict saved from OpenAI's model; ``module.`` prefixes are stripped).
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# OpenAI CLIP RN50 (the configuration open_clip names "RN50")
RN50 = {
    "embed_dim": 1024,
    "vision_cfg": {"image_size": 224, "layers": (3, 4, 6, 3), "width": 64, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
}
VOCAB_SIZE = 49408  # the BPE vocabulary shipped with open_clip's tokenizer


def clip_config(arch: str, image_size: int = 224, width: int | None = None,
                blocks: Sequence[int] | None = None, layers: Sequence[int] | None = None,
                embed_dim: int = 64, context_length: int = 32, text_width: int = 64, text_heads: int = 2,
                text_layers: int = 2, vocab_size: int = VOCAB_SIZE) -> dict:
    """The ``open_clip.CLIP`` configuration (``embed_dim``, ``vision_cfg``, ``text_cfg``) of a CLIP arch."""
    if layers is not None and blocks is not None and tuple(layers) != tuple(blocks):
        raise ValueError(f"give either layers or blocks for the CLIP image tower, not both ({layers} vs {blocks})")
    stages = layers if layers is not None else blocks
    if arch == "clip_rn50":
        rn = RN50["vision_cfg"]
        if int(image_size) != rn["image_size"]:
            raise ValueError(f"clip_rn50 is OpenAI's RN50 at 224x224, got image_size={image_size}: set "
                             "attack.victim.image_size=224 and data.image_size=224 (or use clip_small)")
        if (width is not None and int(width) != rn["width"]) or \
                (stages is not None and tuple(int(b) for b in stages) != rn["layers"]):
            raise ValueError(f"clip_rn50 has a fixed image tower (width 64, layers {rn['layers']}), got "
                             f"width={width}, layers={stages}; use clip_small for a smaller CLIP")
        return {"embed_dim": RN50["embed_dim"], "vision_cfg": dict(rn, layers=list(rn["layers"])),
                "text_cfg": dict(RN50["text_cfg"])}
    if arch == "clip_small":
        width = 32 if width is None else int(width)
        stages = [1, 1, 1, 1] if stages is None else [int(b) for b in stages]
        if len(stages) != 4:
            raise ValueError(f"the CLIP image tower has 4 stages, got layers={stages}")
        if int(image_size) % 32:
            raise ValueError(f"the CLIP image tower downsamples by 32: image_size must be a multiple of 32, "
                             f"got {image_size}")
        if width % 2:
            raise ValueError(f"the CLIP image tower width must be even, got {width}")
        if int(text_width) % int(text_heads):
            raise ValueError(f"text_width ({text_width}) must be a multiple of text_heads ({text_heads})")
        return {
            "embed_dim": int(embed_dim),
            "vision_cfg": {"image_size": int(image_size), "layers": stages, "width": width, "patch_size": None},
            "text_cfg": {"context_length": int(context_length), "vocab_size": int(vocab_size),
                         "width": int(text_width), "heads": int(text_heads), "layers": int(text_layers)},
        }
    raise ValueError(f"unknown CLIP arch {arch!r}; known: ['clip_rn50', 'clip_small']")


def build_clip(arch: str, image_size: int = 224, width: int | None = None, blocks: Sequence[int] | None = None,
               *, weights: str | os.PathLike | None = None, quick_gelu: bool = True,
               layers: Sequence[int] | None = None, embed_dim: int = 64, context_length: int = 32,
               text_width: int = 64, text_heads: int = 2, text_layers: int = 2, vocab_size: int = VOCAB_SIZE,
               **_: object) -> nn.Module:
    """A whole CLIP model (``open_clip.CLIP``), randomly initialised or from local ``weights``.

    ``quick_gelu`` (default True) uses OpenAI's QuickGELU in the text tower, as OpenAI's
    weights need; the image tower (a ResNet) has no GELU."""
    import open_clip

    cfg = clip_config(arch, image_size, width, blocks, layers, embed_dim, context_length, text_width,
                      text_heads, text_layers, vocab_size)
    model = open_clip.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=bool(quick_gelu))
    if weights:
        load_clip_weights(model, weights)
    return model


def load_clip_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load local pretrained weights of the whole CLIP into ``model``, strictly."""
    from dede.victims.checkpoints import CheckpointError, load_victim_checkpoint

    try:
        load_victim_checkpoint(path, "badclip", model)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot use the pretrained CLIP weights given as attack.victim.weights: {exc}") from exc


def tokenize(texts: str | Sequence[str], context_length: int = 77) -> torch.Tensor:
    """Token ids (``LongTensor`` of shape (len(texts), context_length)) with CLIP's BPE
    vocabulary, shipped inside open_clip (no download). Longer texts are truncated and
    keep their end-of-text token, which the text tower pools at."""
    import open_clip

    if isinstance(texts, str):
        texts = [texts]
    return open_clip.tokenize(list(texts), context_length=int(context_length))


def context_length(model: nn.Module) -> int:
    """The text context length of a CLIP model built by `build_clip`."""
    return int(model.context_length)
