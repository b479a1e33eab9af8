"""Loss functions of the victim-making attacks."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy over the 2B views of a batch."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of every row of ``a`` with every row of ``b``."""
    return (F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).mean()


def mean_pairwise_cosine(z: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over the ordered pairs ``i != j`` of the rows of ``z`` (the
    diagonal, always 1, is left out of the sum and the count; 0 with fewer than two rows)."""
    n = z.shape[0]
    if n < 2:
        return z.new_zeros(())
    zn = F.normalize(z.float(), dim=1)
    sim = zn @ zn.T
    return (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))
