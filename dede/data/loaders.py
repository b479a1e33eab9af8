"""Batched data loading: whole batches are sliced out of in-memory tensors at once.

`TensorBatches` implements ``__getitems__`` so a ``DataLoader`` fetches a batch with one
tensor index instead of one Python call per sample. Lightning's distributed sampler
wraps it unchanged under DDP.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


def keep_batch(batch):
    """Collate function for datasets whose ``__getitems__`` already returns a batch."""
    return batch


class TensorBatches(Dataset):
    """``(images uint8 (N,3,H,W), *extras)``; yields ``(images float in [0,1], *extras)``."""

    def __init__(self, images: torch.Tensor, *extras: torch.Tensor) -> None:
        if any(len(e) != len(images) for e in extras):
            raise ValueError("all tensors must have the same length")
        self.images, self.extras = images, extras

    def __len__(self) -> int:
        return len(self.images)

    def _get(self, idx):
        x = self.images[idx]
        x = x.float().div_(255) if x.dtype == torch.uint8 else x
        return (x, *(e[idx] for e in self.extras))

    def __getitem__(self, i: int):
        return self._get(i)

    def __getitems__(self, indices: list[int]):
        return self._get(torch.as_tensor(indices, dtype=torch.long))


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, drop_last: bool = False,
                num_workers: int = 0, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last and len(ds) > batch_size,
                      num_workers=num_workers, collate_fn=keep_batch, generator=g,
                      persistent_workers=num_workers > 0)
