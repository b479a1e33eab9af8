"""Victim encoder architectures.

`SimCLRNet` reproduces the module layout of the BadEncoder / DRUPE `SimCLR` model so
that their checkpoints load with strict key checking:

* ``f.f`` is an ``nn.Sequential``: ``0`` 3x3 stride-1 conv (no bias), ``1`` BatchNorm,
  ``2`` ReLU, ``3``..``6`` the four ResNet stages (torchvision ``BasicBlock`` naming,
  ``downsample.0/1``), ``7`` adaptive average pool;
* ``g`` is the projection head ``Linear(no bias) -> BN1d -> ReLU -> Linear``.

``width`` and ``blocks`` shrink the same family for CPU runs (width 64, blocks
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


def build_victim(arch: str, mean=None, std=None, image_size: int = 32, width: int = 64,
                 blocks: Sequence[int] = (2, 2, 2, 2), **_: object) -> tuple[Victim, nn.Module]:
    """Build an untrained victim. Returns ``(victim, full_model)``; the full model is what
    checkpoints of the victim's original format hold (e.g. SimCLR with its head)."""
    if arch == "simclr_resnet":
        full = SimCLRNet(width, blocks)
        return Victim(full.f, mean, std, full.f.out_dim, image_size), full
    raise ValueError(f"unknown victim arch {arch!r}; known: ['simclr_resnet']")
