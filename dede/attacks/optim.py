"""The optimiser set-up shared by the victim-training modules."""
from __future__ import annotations

from typing import Iterable

import torch


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
