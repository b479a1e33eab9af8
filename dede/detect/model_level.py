"""Model-level and training-set baselines: DECREE trigger inversion and ASSET-style offsets."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dede.attacks.losses import mean_pairwise_cosine


@dataclass
class InvertedTrigger:
    mask: torch.Tensor  # (1, 1, H, W) in [0, 1]
    pattern: torch.Tensor  # (1, 3, H, W) in [0, 1]
    mask_l1_norm: float  # mean of the mask: the share of the image the trigger needs
    similarity: float  # mean pairwise cosine of the triggered embeddings
    steps: int

    def verdict(self, threshold: float = 0.1) -> bool:
        """Backdoored when a small trigger (normalised L1 norm below ``threshold``) suffices to
        collapse the embeddings (DECREE's decision rule)."""
        return self.mask_l1_norm < threshold


def decree_inversion(victim: nn.Module, clean_images: torch.Tensor, steps: int = 100, lr: float = 0.1,
                     lam: float = 1.0, target_similarity: float = 0.95, seed: int = 0,
                     init_mask: float = 0.5) -> InvertedTrigger:
    """DECREE (CVPR 2023): search for the smallest trigger that makes the encoder map all
    triggered images to (nearly) one embedding.

    ``x' = (1 - m) * x + m * p`` with ``m = (tanh(a) + 1) / 2`` (1 x H x W) and ``p = (tanh(b) + 1) / 2``;
    minimise ``-mean pairwise cos(f(x')) + lam * mean(m)``. ``lam`` adapts as in DECREE: multiplied
    by 1.5 while the similarity target is met (shrink the mask further), divided by 1.5 otherwise.
    The victim stays frozen. Returns the smallest mask that reached the target (or the last one).
    """
    g = torch.Generator().manual_seed(seed)
    x = clean_images.float()
    dev = x.device
    _, _, h, w = x.shape
    a0 = float(torch.atanh(torch.tensor(2 * min(max(init_mask, 1e-3), 1 - 1e-3) - 1)))
    a = (a0 + torch.randn(1, 1, h, w, generator=g) * 0.1).to(dev).requires_grad_(True)
    b = (torch.randn(1, 3, h, w, generator=g) * 0.1).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([a, b], lr=lr)
    was_training = victim.training
    victim.eval()
    params = list(victim.parameters())
    req = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    best = None
    try:
        for step in range(steps):
            m, p = (torch.tanh(a) + 1) / 2, (torch.tanh(b) + 1) / 2
            sim = mean_pairwise_cosine(victim((1 - m) * x + m * p))
            norm = m.mean()
            loss = -sim + lam * norm
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            s, n = float(sim.detach()), float(norm.detach())
            if s >= target_similarity:
                lam *= 1.5
                if best is None or n < best[0]:
                    best = (n, s, m.detach().clone(), p.detach().clone(), step + 1)
            else:
                lam /= 1.5
        if best is None:
            m, p = (torch.tanh(a) + 1) / 2, (torch.tanh(b) + 1) / 2
            with torch.no_grad():
                s = float(mean_pairwise_cosine(victim((1 - m) * x + m * p)))
            best = (float(m.mean()), s, m.detach(), p.detach(), steps)
    finally:
        for p_, r in zip(params, req):
            p_.requires_grad_(r)
        victim.train(was_training)
    n, s, m, p, st = best
    return InvertedTrigger(m.cpu(), p.cpu(), n, s, st)


def asset_offset_scores(base: torch.Tensor, suspect: torch.Tensor, n_directions: int = 4,
                        ridge: float = 1e-3) -> torch.Tensor:
    """ASSET-style offset scores of suspect samples (higher = more likely poisoned).

    ASSET (USENIX Security 2023) contrasts a small clean base set with the suspect training set:
    a head is optimised to keep the loss low on the base set while pushing it up on the suspect
    set, and poisoned samples stand out by their loss under that head. Adapted here to a frozen
    encoder's embeddings, the head is a linear projection ``W`` that maximises
    ``E_suspect ||W (z - mu_base)||^2 - E_base ||W (z - mu_base)||^2`` under ``W W^T = I``; its
    exact optimum is the top eigenvectors of ``Sigma_suspect - Sigma_base`` (second moments about
    the base mean), i.e. the directions in which only the suspect set varies, where a poisoned
    cluster lives. Score = the sample's energy in those directions.
    """
    base, suspect = base.double(), suspect.double().to(base.device)
    mu = base.mean(0)
    zb, zs = base - mu, suspect - mu
    diff = zs.T @ zs / len(zs) - zb.T @ zb / len(zb)
    diff = diff + ridge * diff.diagonal().abs().mean() * torch.eye(diff.shape[0], dtype=diff.dtype, device=diff.device)
    vals, vecs = torch.linalg.eigh(diff)
    top = vecs[:, -max(1, n_directions):]
    return (zs @ top).pow(2).sum(1).float()


def _decree_check(ctx, m, seed: int) -> dict:
    """DECREE trigger inversion on the victim, from clean held-out auxiliary images."""
    clean_val = ctx.calibration.subset(torch.nonzero(~ctx.calibration.poisoned)[:, 0])
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(clean_val), generator=g)[: int(m.decree_images)]
    inv = decree_inversion(ctx.victim, clean_val.subset(pick).float_images().to(ctx.device), steps=int(m.decree_steps),
                           lr=float(m.decree_lr), target_similarity=float(m.decree_similarity), seed=seed)
    return {"mask_l1_norm": float(inv.mask_l1_norm), "similarity": float(inv.similarity),
            "threshold": float(m.decree_threshold), "backdoored": bool(inv.verdict(float(m.decree_threshold)))}


def _asset_check(ctx, m, seed: int) -> dict:
    """ASSET-style offsets on the suspect (poisoned) auxiliary training set, with DeDe's AUROC on
    the same samples beside it."""
    from dede.detect.metrics import auroc

    suspect = ctx.reference
    if not (suspect.poisoned.any() and (~suspect.poisoned).any()):
        return {"skipped": "the auxiliary set has no poisoned samples (out-of-distribution aux data)"}
    clean_val = ctx.calibration.subset(torch.nonzero(~ctx.calibration.poisoned)[:, 0])
    g = torch.Generator().manual_seed(seed)
    base = clean_val.subset(torch.randperm(len(clean_val), generator=g)[: int(m.asset_base)])
    asset = asset_offset_scores(ctx.embed(base.images), ctx.embed(suspect.images)).cpu()
    dede = ctx.model.reduce_errors(ctx.patch_errors(suspect.images)).cpu()
    p = suspect.poisoned
    return {"auroc": auroc(asset[~p], asset[p]), "dede_auroc": auroc(dede[~p], dede[p]),
            "n_suspect": len(suspect), "n_poisoned": int(p.sum())}


# model-level and training-set checks: name -> check(ctx, eval.model_level settings, seed) -> dict
MODEL_CHECKS = {"decree": _decree_check, "asset": _asset_check}


def run_model_checks(ctx, m, seed: int) -> dict:
    """Every check of `MODEL_CHECKS` on the evaluation context ``ctx`` (its auxiliary data carry
    the run's own trigger, e.g. BadCLIP's optimised patch)."""
    return {name: check(ctx, m, seed) for name, check in MODEL_CHECKS.items()}
