"""Optimiser and learning-rate schedule set-ups shared by the training modules."""
from __future__ import annotations

import math
from typing import Iterable

import torch


def adam(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """``torch.optim.Adam`` with the fused implementation (one kernel for all parameters instead of
    a dozen small operations per parameter) where the parameters' device has one (CPU, CUDA);
    the same updates as the default one up to float rounding."""
    params = list(params)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def sgd_or_adam(params: Iterable[torch.nn.Parameter], hp, max_epochs: int):
    """SGD (with momentum) or Adam from ``hp.optimizer``/``lr``/``momentum``/``weight_decay``,
    with a per-epoch cosine schedule over ``max_epochs`` when ``hp.cosine``; in the form
    Lightning's ``configure_optimizers`` returns."""
    if hp.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
    if not hp.cosine:
        return opt
    return [opt], [torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(max_epochs)))]


def warmup_cosine(opt: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  cosine: bool = True) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule: linear warm-up over ``warmup_steps``, then a cosine decay to 0 at
    ``total_steps`` (or a constant rate with ``cosine=False``)."""
    warmup, total = int(warmup_steps), max(1, int(total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
