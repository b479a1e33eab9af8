"""Batched SimCLR augmentations (kornia), applied on the device to whole batches."""
from __future__ import annotations

import kornia.augmentation as K
from torch import nn


def simclr_augment(image_size: int, strength: float = 1.0, min_scale: float = 0.2) -> nn.Module:
    """Random resized crop, flip, colour jitter (p=0.8) and grayscale (p=0.2), per sample."""
    s = strength
    return K.AugmentationSequential(
        K.RandomResizedCrop((image_size, image_size), scale=(min_scale, 1.0)),
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.4 * s, 0.4 * s, 0.4 * s, 0.1 * s, p=0.8),
        K.RandomGrayscale(p=0.2),
    )


def light_augment(image_size: int) -> nn.Module:
    """Crop-and-flip only (used for BadEncoder's augmented reference images)."""
    return K.AugmentationSequential(
        K.RandomResizedCrop((image_size, image_size), scale=(0.5, 1.0)),
        K.RandomHorizontalFlip(),
    )
