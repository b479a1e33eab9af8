"""Victim encoder architectures.

Each victim family reproduces the module layout of the repository whose checkpoints it
loads, so that those checkpoints load with strict key checking.

``simclr_resnet`` (BadEncoder / DRUPE): `SimCLRNet`

* ``f.f`` is an ``nn.Sequential``: ``0`` 3x3 stride-1 conv (no bias), ``1`` BatchNorm,
  ``2`` ReLU, ``3``..``6`` the four ResNet stages (torchvision ``BasicBlock`` naming,
  ``downsample.0/1``), ``7`` adaptive average pool;
* ``g`` is the projection head ``Linear(no bias) -> BN1d -> ReLU -> Linear``.

``ctrl_resnet`` (CTRL): `CTRLNet`

* ``backbone`` is a CIFAR ResNet (`ShortcutResNet`: ``conv1``, ``bn1``, ``layer1``..
  ``layer4``) whose blocks call their projection skip ``shortcut.0`` (1x1 conv) /
  ``shortcut.1`` (BatchNorm); blocks that keep stride and width have no skip weights;
* ``proj_head`` is ``Linear -> ReLU -> Linear(128)`` (both with bias).

``supervised_resnet`` (supervised CIFAR classifier, ASSET-style): `SupervisedResNet`,
the same `ShortcutResNet` at the top level plus a ``linear`` classifier; the victim is
its penultimate (globally pooled) features.

``clip_rn50`` / ``clip_small``: a whole CLIP model (see `dede.victims.clip`); the
victim is its image tower ``visual``.

``width`` and ``blocks`` shrink the ResNet families for CPU runs (width 64, blocks
(2, 2, 2, 2) is the original ResNet-18 with a 512-d embedding).

`Victim` wraps a backbone with the victim's own input normalisation: everything
outside the victim works on [0, 1] pixel images and never needs to know how a
particular victim expects its inputs.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock


def _stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
        )
    layers = [BasicBlock(inplanes, planes, stride=stride, downsample=downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class CifarResNet(nn.Module):
    """CIFAR-style ResNet (3x3 stem, no max-pool) as the ``f`` of BadEncoder's SimCLR."""

    def __init__(self, width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2)) -> None:
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"blocks must list 4 stages, got {list(blocks)}")
        widths = [width, 2 * width, 4 * width, 8 * width]
        strides = [1, 2, 2, 2]
        stages, inplanes = [], width
        for planes, n, s in zip(widths, blocks, strides):
            stages.append(_stage(inplanes, planes, int(n), s))
            inplanes = planes
        self.f = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            *stages,
            nn.AdaptiveAvgPool2d(1),
        )
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.f(x), 1)


class SimCLRNet(nn.Module):
    """Encoder ``f`` + projection head ``g`` laid out like BadEncoder's ``SimCLR``."""

    def __init__(self, width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2), proj_dim: int = 128) -> None:
        super().__init__()
        self.f = CifarResNet(width, blocks)
        d = self.f.out_dim
        self.g = nn.Sequential(
            nn.Linear(d, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, proj_dim)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.f(x)
        return h, self.g(h)


class ShortcutBlock(nn.Module):
    """Two 3x3 convolutions with a ``shortcut`` skip path (``shortcut.0`` 1x1 conv,
    ``shortcut.1`` BatchNorm) that has weights only when the block changes stride or width."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()  # identity
        if stride != 1 or inplanes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def _shortcut_trunk(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Stem, four stages and global average pool of a module holding ``conv1``, ``bn1``,
    ``layer1``..``layer4``; returns the flattened penultimate features."""
    out = torch.relu(m.bn1(m.conv1(x)))
    out = m.layer4(m.layer3(m.layer2(m.layer1(out))))
    return torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)


class ShortcutResNet(nn.Module):
    """CIFAR-style ResNet (3x3 stride-1 stem, no max-pool) with ``shortcut``-named skips:
    top-level ``conv1``, ``bn1``, ``layer1``..``layer4``; with ``num_classes`` also a
    ``linear`` classifier on the pooled features.

    The pool is a global average; at 32x32 inputs it equals the fixed 4x4 average pool
    that CIFAR classifiers of this layout usually apply."""

    def __init__(self, width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2),
                 num_classes: int | None = None) -> None:
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"blocks must list 4 stages, got {list(blocks)}")
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        inplanes = width
        for i, (planes, n, s) in enumerate(zip([width, 2 * width, 4 * width, 8 * width], blocks, [1, 2, 2, 2])):
            stage = [ShortcutBlock(inplanes, planes, s)] + [ShortcutBlock(planes, planes) for _ in range(int(n) - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            inplanes = planes
        self.out_dim = inplanes
        if num_classes is not None:
            self.linear = nn.Linear(inplanes, int(num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (after the global pool, flattened)."""
        return _shortcut_trunk(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.linear(h) if hasattr(self, "linear") else h


class SharedTrunk(nn.Module):
    """The feature layers of a `ShortcutResNet` classifier, shared (not copied) with it, so
    that a victim built on them has no unused parameters (the classifier)."""

    def __init__(self, net: ShortcutResNet) -> None:
        super().__init__()
        self.conv1, self.bn1 = net.conv1, net.bn1
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_dim = net.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _shortcut_trunk(self, x)


class CTRLNet(nn.Module):
    """``backbone`` (a `ShortcutResNet` without classifier) + ``proj_head``, laid out like
    CTRL's SimCLR model."""

    def __init__(self, width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2), proj_dim: int = 128) -> None:
        super().__init__()
        self.backbone = ShortcutResNet(width, blocks)
        d = self.backbone.out_dim
        self.proj_head = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, proj_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        return h, self.proj_head(h)


class SupervisedResNet(ShortcutResNet):
    """A supervised CIFAR ResNet classifier: ``forward`` gives logits, ``features`` the
    penultimate features, ``linear`` is the classifier."""

    def __init__(self, width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10) -> None:
        super().__init__(width, blocks, num_classes=num_classes)


class Victim(nn.Module):
    """A frozen-able encoder that takes [0, 1] pixel images and normalises them itself."""

    def __init__(self, backbone: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None,
                 embed_dim: int, image_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.embed_dim = int(embed_dim)
        self.image_size = int(image_size)
        normalise = mean is not None and std is not None
        self.register_buffer("mean", torch.tensor(mean if normalise else [0.0, 0.0, 0.0]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std if normalise else [1.0, 1.0, 1.0]).view(1, 3, 1, 1))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(
                f"victim expects {self.image_size}x{self.image_size} images, got {tuple(x.shape[-2:])}; "
                "resize the data to the victim's input size (data.image_size)"
            )
        return self.backbone(self.normalise(x))

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Embeddings of a whole tensor of images, in eval mode, batch by batch."""
        was_training = self.training
        self.eval()
        dev = self.mean.device
        out = [self(x[i:i + batch_size].to(dev, non_blocking=True)).float() for i in range(0, len(x), batch_size)]
        self.train(was_training)
        return torch.cat(out) if out else torch.empty(0, self.embed_dim, device=dev)


RESNET_ARCHS = ("simclr_resnet", "ctrl_resnet", "supervised_resnet")
CLIP_ARCHS = ("clip_rn50", "clip_small")
NAMED_ARCHS = ("timm", "torchvision", "open_clip")  # a library's model by name (dede.victims.named)
ARCHS = RESNET_ARCHS + CLIP_ARCHS + NAMED_ARCHS


def build_victim(arch: str, mean=None, std=None, image_size: int = 32, width: int | None = None,
                 blocks: Sequence[int] | None = None, **kw: object) -> tuple[Victim, nn.Module]:
    """Build an untrained victim. Returns ``(victim, full_model)``; the full model is what
    checkpoints of the victim's original format hold (e.g. SimCLR with its head, the whole
    CLIP). ``mean``/``std`` None: the victim takes [0, 1] images unnormalised.

    Architectures (``arch``) and their extra keyword arguments:

    * ``simclr_resnet``: BadEncoder/DRUPE SimCLR (`SimCLRNet`); ``width`` (64), ``blocks``.
    * ``ctrl_resnet``: CTRL's SimCLR (`CTRLNet`); ``width``, ``blocks``.
    * ``supervised_resnet``: supervised classifier (`SupervisedResNet`); ``width``,
      ``blocks``, ``num_classes`` (10). The victim is its penultimate features.
    * ``clip_rn50``: OpenAI CLIP RN50 (224x224, 1024-d); ``weights`` (a local state dict of
      the whole model), ``quick_gelu`` (True).
    * ``clip_small``: a small CLIP of the same design; ``width`` (32), ``blocks`` or
      ``layers`` ((1, 1, 1, 1)), ``embed_dim`` (64), ``context_length`` (32), ``text_width``
      (64), ``text_heads`` (2), ``text_layers`` (2), ``weights``, ``quick_gelu``.

    * ``timm``, ``torchvision``, ``open_clip``: a model of that library by name, ``model``
      (see `dede.victims.named`); ``mean`` / ``std`` as the weights were trained with.

    The CLIP victims are the image tower ``full.visual``; other keyword arguments are ignored.
    """
    if arch not in ARCH_BUILDERS:
        raise ValueError(f"unknown victim arch {arch!r}; known: {list(ARCHS)}")
    if arch in RESNET_ARCHS:
        width = 64 if width is None else int(width)
        blocks = (2, 2, 2, 2) if blocks is None else tuple(int(b) for b in blocks)
    full, trunk, dim = ARCH_BUILDERS[arch](image_size=image_size, width=width, blocks=blocks, **kw)
    return Victim(trunk, mean, std, dim, image_size), full


def _simclr(width, blocks, **_):
    full = SimCLRNet(width, blocks)
    return full, full.f, full.f.out_dim


def _ctrl(width, blocks, **_):
    full = CTRLNet(width, blocks)
    return full, full.backbone, full.backbone.out_dim


def _supervised(width, blocks, num_classes=10, **_):
    full = SupervisedResNet(width, blocks, num_classes=int(num_classes))
    return full, SharedTrunk(full), full.out_dim


def _clip(arch):
    def make(image_size, width, blocks, **kw):
        from dede.victims.clip import build_clip

        full = build_clip(arch, image_size=image_size, width=width, blocks=blocks, **kw)
        return full, full.visual, full.visual.output_dim
    return make


def _named(family):
    def make(image_size, width, blocks, **kw):
        from dede.victims.named import build_named

        return build_named(family, image_size, **kw)
    return make


# victim arch -> builder(image_size, width, blocks, **kw) -> (full model, victim trunk, embedding size)
ARCH_BUILDERS = {"simclr_resnet": _simclr, "ctrl_resnet": _ctrl, "supervised_resnet": _supervised,
                 "clip_rn50": _clip("clip_rn50"), "clip_small": _clip("clip_small"),
                 **{f: _named(f) for f in NAMED_ARCHS}}
