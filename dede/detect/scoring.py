"""Batched DeDe scoring of whole image tensors."""
from __future__ import annotations

import torch

from dede.decoder.model import DeDeModel
from dede.victims.encoders import Victim


@torch.no_grad()
def dede_patch_errors(model: DeDeModel, victim: Victim, images: torch.Tensor, mask_ratio: float,
                      batch_size: int = 512, seed: int = 0, n_masks: int = 1,
                      embeddings: torch.Tensor | None = None) -> torch.Tensor:
    """Per-patch reconstruction errors ``(N, T)`` on the model's device of ``images`` (uint8 or
    [0, 1] float, (N, 3, H, W)); masks come from a seeded generator on the model's device, so the
    same call gives the same errors."""
    device = next(model.parameters()).device
    model.eval()
    victim.eval()
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device, non_blocking=True)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        emb = victim(x) if embeddings is None else embeddings[i:i + batch_size].to(device)
        out.append(model.patch_errors(x, emb, mask_ratio, g, n_masks))
    return torch.cat(out) if out else torch.empty(0, model.num_patches, device=device)


def dede_scores(model: DeDeModel, victim: Victim, images: torch.Tensor, mask_ratio: float, batch_size: int = 512,
                seed: int = 0, n_masks: int = 1, embeddings: torch.Tensor | None = None,
                rule: str = "sse") -> torch.Tensor:
    """DeDe scores of ``images`` on the CPU (``rule``: see `DeDeModel.reduce_errors`)."""
    errors = dede_patch_errors(model, victim, images, mask_ratio, batch_size, seed, n_masks, embeddings)
    return model.reduce_errors(errors, rule).cpu()


@torch.no_grad()
def reconstructions(model: DeDeModel, victim: Victim, images: torch.Tensor, mask_ratio: float,
                    seed: int = 0) -> torch.Tensor:
    device = next(model.parameters()).device
    x = images.to(device)
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    g = torch.Generator(device=device).manual_seed(seed)
    pred, mask = model(x, victim(x), mask_ratio, g)
    return model.reconstruct(x, pred.clamp(0, 1), mask).cpu()
