"""DRUPE (Tao et al., S&P 2024): a distribution-preserving, stealthier BadEncoder.

Like BadEncoder it fine-tunes a copy f' of a clean encoder f so that triggered inputs embed
like target-class reference images while clean inputs keep their embeddings. On top of
BadEncoder's three terms it

* uses several reference images and lets each triggered input approach the reference it is
  already closest to (the effectiveness term ``l0``), while keeping the per-reference
  batch-mean similarities even (``std_refs``);
* pulls the distribution of triggered embeddings towards the distribution of clean
  embeddings: a sliced-Wasserstein distance between the two, divided by the spread of the
  clean embeddings (``swd``);
* spreads the triggered embeddings so that they do not collapse on one point: the mean
  pairwise cosine among triggered embeddings of a batch, diagonal excluded (``b2b``);
* keeps the references' own embeddings apart (``ref_sim``);
* weighs the stealth terms adaptively (Neural-Cleanse style): each weight grows by
  ``up`` after an epoch in which the attack met its targets and shrinks by ``down``
  otherwise; updates start after ``adapt_after`` epochs.

Training schedule (epochs counted from 0): before ``warmup_epochs`` only the utility terms
are trained; until ``plain_epochs`` the loss is BadEncoder's plus the reference-balance
term; from then on the stealth terms are added with their adaptive weights.
"""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig

from dede.attacks.badencoder import BadEncoderModule
from dede.attacks.common import fit_on, shadow_and_references
from dede.attacks.losses import mean_pairwise_cosine
from dede.triggers import Trigger
from dede.victims.encoders import Victim

log = logging.getLogger(__name__)


def _quantiles(v: torch.Tensor, m: int) -> torch.Tensor:
    """``m`` evenly spaced empirical quantiles of each column of the sorted ``v`` (n, P)."""
    n = v.shape[0]
    if n == m:
        return v
    pos = (torch.arange(m, device=v.device, dtype=v.dtype) + 0.5) * n / m - 0.5
    pos = pos.clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo.to(v.dtype)).unsqueeze(1)
    return v[lo] * (1 - w) + v[hi] * w


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_projections: int = 50, p: int = 2,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Sliced p-Wasserstein distance between the empirical distributions of the rows of ``a``
    (n, d) and ``b`` (m, d): both are projected on ``n_projections`` random unit directions,
    each 1-D projection is sorted, and sorted values are compared (at common quantile levels
    when n != m). Returns ``(mean over directions of W_p^p) ** (1/p)``; differentiable."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (n, d) and (m, d) tensors, got {tuple(a.shape)} and {tuple(b.shape)}")
    d = a.shape[1]
    dirs = torch.randn(d, n_projections, generator=generator, dtype=torch.float32).to(a.device, a.dtype)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa = (a @ dirs).sort(dim=0).values
    pb = (b @ dirs).sort(dim=0).values
    m = max(len(pa), len(pb))
    pa, pb = _quantiles(pa, m), _quantiles(pb, m)
    return (pa - pb).abs().pow(p).mean(dim=0).mean().clamp_min(1e-12).pow(1.0 / p)


class AdaptiveWeight:
    """A loss weight steered like Neural Cleanse's: after ``patience`` consecutive successful
    epochs it is multiplied by ``up`` (or set to ``init`` if it had dropped to 0); after
    ``patience`` consecutive failures it is divided by ``down``."""

    def __init__(self, init: float, up: float = 1.25, down: float = 1.25 ** 1.25, patience: int = 1) -> None:
        if init < 0 or up < 1 or down < 1 or patience < 1:
            raise ValueError(f"need init >= 0, up >= 1, down >= 1, patience >= 1; got {init}, {up}, {down}, {patience}")
        self.init, self.up, self.down, self.patience = float(init), float(up), float(down), int(patience)
        self.value = float(init)
        self.up_count = self.down_count = 0

    def update(self, success: bool) -> float:
        if success:
            self.up_count, self.down_count = self.up_count + 1, 0
        else:
            self.up_count, self.down_count = 0, self.down_count + 1
        if self.up_count >= self.patience:
            self.up_count = 0
            self.value = self.init if self.value == 0 else self.value * self.up
        elif self.down_count >= self.patience:
            self.down_count = 0
            self.value /= self.down
        return self.value

    def __float__(self) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"AdaptiveWeight({self.value:.4g})"


def reference_separation(ref_sim: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Penalty that keeps the reference embeddings apart: ``weight / 2`` times their mean
    pairwise cosine while it is positive, a fifth of that down to -0.2, nothing below."""
    s = float(ref_sim.detach())
    w = 0.5 if s > 0 else (0.1 if s > -0.2 else 0.0)
    return (weight * w) * ref_sim


class DRUPEModule(BadEncoderModule):
    """DRUPE fine-tuning of ``victim`` (BatchNorm frozen, SGD as BadEncoder). See the module doc."""

    # keys of the per-step terms that are logged (epoch means)
    TERMS = ("l0", "l1", "l2", "std_refs", "b2b", "swd", "ref_sim")

    def __init__(self, victim: Victim, references: torch.Tensor, trigger: Trigger, lr: float = 0.05,
                 momentum: float = 0.9, weight_decay: float = 5e-4, lambda1: float = 1.0, lambda2: float = 1.0,
                 l0_reduce: str = "nearest", n_projections: int = 50, warmup_epochs: int = 1, plain_epochs: int = 5,
                 adapt_after: int = 20, spread_init: float = 0.1, dist_init: float = 0.001, up: float = 1.25,
                 down: float = 1.25 ** 1.25, patience: int = 1, l0_threshold: float = -0.96,
                 utility_threshold: float = -0.9, b2b_threshold: float = 0.6, std_refs_weight: float = 0.5,
                 std_refs_extra: float = 1.5, std_refs_limit: float = 0.1, plain_std_refs_weight: float = 2.0,
                 ref_separation_weight: float = 1.0) -> None:
        if l0_reduce not in ("nearest", "worst", "mean"):
            raise ValueError(f"l0_reduce must be nearest, worst or mean, got {l0_reduce!r}")
        super().__init__(victim, references, trigger, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         lambda1=lambda1, lambda2=lambda2)
        self.save_hyperparameters(ignore=["victim", "references", "trigger"])
        # the spreading weight (on std_refs + b2b) and the distribution weight (on swd)
        self.w_spread = AdaptiveWeight(spread_init, up, down, patience)
        self.w_dist = AdaptiveWeight(dist_init, up, down, patience)
        self._sums: torch.Tensor | None = None  # float64 sums of TERMS over the epoch's samples
        self._count = 0

    # ------------------------------------------------------------------ terms
    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        hp = self.hparams
        refs = self.references
        r, b = len(refs), len(x)
        with torch.no_grad():
            x_trig = self.trigger(x)
            clean_x = self.clean(x)
            clean_r = self.clean(refs)
            aug_r = self.ref_augment(refs)
        # BatchNorm is frozen (eval), so one forward pass over the concatenation is exact
        feats = self.victim(torch.cat([x_trig, x, refs, aug_r]))
        f_trig, f_x, f_r, f_aug_r = feats.split([b, b, r, r])
        cos = F.normalize(f_trig, dim=1) @ F.normalize(f_r, dim=1).T  # (B, R)
        per_ref = cos.mean(0)  # batch-mean similarity to each reference
        if hp.l0_reduce == "nearest":  # each triggered input approaches its closest reference
            l0 = -cos.max(dim=1).values.mean()
        elif hp.l0_reduce == "worst":  # the reference the batch is furthest from
            l0 = -per_ref.min()
        else:
            l0 = -per_ref.mean()
        std_refs = per_ref.std() if r > 1 else per_ref.new_zeros(())
        l1 = -F.cosine_similarity(f_aug_r, clean_r, dim=1).mean()
        l2 = -F.cosine_similarity(f_x, clean_x, dim=1).mean()
        # the distance is measured in units of the clean embeddings' spread (a constant
        # here: the encoder should not shrink the distance by inflating that spread)
        spread = f_x.detach().std(0).mean().clamp_min(1e-8)
        swd = sliced_wasserstein(f_trig, f_x, hp.n_projections) / spread
        return {"l0": l0, "l1": l1, "l2": l2, "std_refs": std_refs, "b2b": mean_pairwise_cosine(f_trig),
                "swd": swd, "ref_sim": mean_pairwise_cosine(f_r)}

    def phase(self, epoch: int | None = None) -> str:
        e = self.current_epoch if epoch is None else epoch
        hp = self.hparams
        if e < hp.warmup_epochs:
            return "warmup"
        return "plain" if e < hp.plain_epochs else "stealth"

    def combine(self, t: dict[str, torch.Tensor], phase: str) -> torch.Tensor:
        hp = self.hparams
        utility = (hp.lambda1 * t["l1"] + hp.lambda2 * t["l2"]
                   + reference_separation(t["ref_sim"], hp.ref_separation_weight))
        if phase == "warmup":
            return utility
        if phase == "plain":
            return t["l0"] + utility + hp.plain_std_refs_weight * t["std_refs"]
        loss = (t["l0"] + utility + self.w_spread.value * (t["std_refs"] + t["b2b"])
                + self.w_dist.value * t["swd"] + hp.std_refs_weight * t["std_refs"])
        if float(t["std_refs"].detach()) > hp.std_refs_limit:
            loss = loss + hp.std_refs_extra * t["std_refs"]
        return loss

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._sums, self._count = None, 0

    def training_step(self, batch, batch_idx):
        x = batch[0]
        terms = self.losses(x)
        loss = self.combine(terms, self.phase())
        n = len(x)
        step = torch.stack([terms[k].detach() for k in self.TERMS]).double() * n
        self._sums = step if self._sums is None else self._sums + step
        self._count += n
        self.log_dict({f"drupe/{k}": v.detach() for k, v in terms.items()}, on_step=False, on_epoch=True, batch_size=n)
        self.log("drupe/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def epoch_means(self) -> dict[str, float]:
        sums = self._sums if self._sums is not None else torch.zeros(len(self.TERMS), dtype=torch.float64)
        t = torch.cat([sums.to(self.device), torch.tensor([float(self._count)], dtype=torch.float64, device=self.device)])
        if self.trainer is not None and self.trainer.world_size > 1:
            t = self.trainer.strategy.reduce(t, reduce_op="sum")
        t = t.cpu()
        n = max(float(t[-1]), 1.0)
        return {k: float(v) / n for k, v in zip(self.TERMS, t[:-1])}

    def adapt(self, m: dict[str, float]) -> None:
        """Update the adaptive weights from an epoch's mean terms."""
        hp = self.hparams
        ok = m["l0"] < hp.l0_threshold and m["l1"] < hp.utility_threshold and m["l2"] < hp.utility_threshold
        self.w_spread.update(ok)
        self.w_dist.update(ok and m["b2b"] < hp.b2b_threshold)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the adaptive weights are state of the attack, not parameters: a resumed run needs them
        checkpoint["drupe_weights"] = {"spread": vars(self.w_spread).copy(), "dist": vars(self.w_dist).copy()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("drupe_weights", {})
        vars(self.w_spread).update(saved.get("spread", {}))
        vars(self.w_dist).update(saved.get("dist", {}))

    def on_train_epoch_end(self) -> None:
        if self.current_epoch >= self.hparams.adapt_after and self._count:
            self.adapt(self.epoch_means())
        self.log_dict({"drupe/w_spread": self.w_spread.value, "drupe/w_dist": self.w_dist.value},
                      on_step=False, on_epoch=True)


def make_drupe(cfg: DictConfig, victim: Victim, full: torch.nn.Module, log_dir: Path) -> None:
    """Turn the (cached) clean victim into a DRUPE victim in place: fine-tune on a
    ``shadow_fraction`` share of the home train set with ``n_references`` target-class
    reference images."""
    m = cfg.attack.make
    shadow, refs = shadow_and_references(cfg, victim)
    log.info("DRUPE: %d shadow images, %d reference images of class %d", len(shadow), len(refs), cfg.attack.target)
    L.seed_everything(cfg.seed, workers=True)
    keys = ["l0_reduce", "n_projections", "warmup_epochs", "plain_epochs", "adapt_after", "spread_init", "dist_init",
            "up", "down", "patience", "l0_threshold", "utility_threshold", "b2b_threshold", "std_refs_weight",
            "std_refs_extra", "std_refs_limit", "plain_std_refs_weight", "ref_separation_weight"]
    extra = {k: m[k] for k in keys if m.get(k) is not None}
    module = DRUPEModule(victim, refs, instantiate(cfg.attack.trigger), lr=m.lr, momentum=m.momentum,
                         weight_decay=m.weight_decay, lambda1=m.lambda1, lambda2=m.lambda2, **extra)
    fit_on(cfg, module, (shadow.images,), m.batch_size, m.epochs, log_dir, "drupe")
