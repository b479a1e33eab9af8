"""Score the same clean and triggered test images with several detectors and compare them.

Every detector is calibrated the same way: its threshold is the ``quantile`` of its scores on
held-out auxiliary images (no triggered data), and downstream clean accuracy / ASR after
filtering use that threshold. Embedding-based detectors use the victim embeddings of the
auxiliary training images as their reference set.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from dede.detect.metrics import apply_threshold, detection_metrics, quantile_threshold

log = logging.getLogger(__name__)


@dataclass
class Pools:
    """Victim embeddings of every image set a comparison needs."""

    reference: torch.Tensor  # auxiliary training images (the defender's data)
    calibration: torch.Tensor  # held-out auxiliary images
    clean: torch.Tensor  # clean test images
    triggered: torch.Tensor  # triggered test images
    train: torch.Tensor | None = None  # downstream training images (for filtering)
    embed_seconds_per_image: float = 0.0


@dataclass
class DetectorScores:
    name: str
    clean: torch.Tensor
    triggered: torch.Tensor
    calibration: torch.Tensor
    train: torch.Tensor | None
    images_per_second: float
    extra: dict = field(default_factory=dict)


def score_embedding_detector(name: str, fn: Callable, pools: Pools, **kw) -> DetectorScores:
    ref = pools.reference
    t0 = time.perf_counter()
    clean = fn(ref, pools.clean, **kw)
    trig = fn(ref, pools.triggered, **kw)
    dt = time.perf_counter() - t0
    n = len(pools.clean) + len(pools.triggered)
    ips = n / (dt + n * pools.embed_seconds_per_image)  # the victim forward pass counts too
    cal = fn(ref, pools.calibration, **kw)
    train = fn(ref, pools.train, **kw) if pools.train is not None else None
    return DetectorScores(name, clean.cpu(), trig.cpu(), cal.cpu(), None if train is None else train.cpu(), ips)


def summarise(s: DetectorScores, quantile: float, fpr_target: float, downstream: Callable | None) -> dict:
    """The comparison row of one detector. ``downstream(train_keep, test_keep, trig_keep)``
    returns CA / ASR after filtering (None: not measured)."""
    row = detection_metrics(s.clean, s.triggered, fpr_target)
    thr = quantile_threshold(s.calibration, quantile)
    t = apply_threshold(f"aux_quantile_{quantile}", thr, s.clean, s.triggered)
    row.update({"images_per_second": float(s.images_per_second), "flag_rate_clean": t.fpr,
                "flag_rate_triggered": t.tpr, "threshold": thr})
    if downstream is not None and s.train is not None:
        d = downstream(s.train <= thr, s.clean <= thr, s.triggered <= thr)
        row.update({"clean_accuracy_defended": d["clean_accuracy"], "asr_defended": d["asr"]})
    else:
        row.update({"clean_accuracy_defended": float("nan"), "asr_defended": float("nan")})
    row.update(s.extra)
    return row


EMBEDDING_DETECTORS = ("dao", "slof", "knn", "mahalanobis", "feature_norm")
ALL_DETECTORS = ("dede", "dede_patch_top") + EMBEDDING_DETECTORS


def resolve_detectors(names) -> list[str]:
    """``"all"`` or a list of names -> the list, checked, with ``dede`` first."""
    if isinstance(names, str):
        names = list(ALL_DETECTORS) if names == "all" else [names]
    names = list(names or ["dede"])
    if "all" in names:
        names = list(ALL_DETECTORS)
    unknown = [n for n in names if n not in ALL_DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; known: {list(ALL_DETECTORS)} or 'all'")
    return ["dede"] + [n for n in dict.fromkeys(names) if n != "dede"]


def compare_detectors(names, dede_row: DetectorScores, model, victim, ratio, e, tcfg, test, trig, aux_val, ds):
    """The comparison table (name -> row) and the scores for the joint ROC figure."""
    from dede.detect.outliers import SAMPLE_DETECTORS
    from dede.detect.scoring import dede_scores
    from dede.pipeline.common import aux_split

    q, fpr_t = float(e.threshold.quantile), float(e.fpr_target)
    downstream = ds.run if ds is not None else None
    rows, scores = {}, {}

    def add(s: DetectorScores) -> None:
        rows[s.name] = summarise(s, q, fpr_t, downstream)
        scores[s.name] = (s.clean, s.triggered)
        log.info("detector %s: %s", s.name, {k: round(v, 4) for k, v in rows[s.name].items()
                                             if isinstance(v, float)})

    add(dede_row)
    if "dede_patch_top" in names:
        sc = lambda x, seed: dede_scores(model, victim, x, ratio, e.batch_size, seed, e.n_masks,  # noqa: E731
                                         rule="patch_top")
        t0 = time.perf_counter()
        c, t = sc(test.images, e.seed), sc(trig.images, e.seed + 1)
        ips = (len(c) + len(t)) / (time.perf_counter() - t0)
        add(DetectorScores("dede_patch_top", c, t, sc(aux_val.images, e.seed + 2),
                           sc(ds.train.images, e.seed + 3) if ds is not None else None, ips))
    wanted = [n for n in names if n in EMBEDDING_DETECTORS]
    if wanted:
        reference_set = aux_split(tcfg).split(float(tcfg.data.val_fraction), tcfg.seed)[0]
        t0 = time.perf_counter()
        clean_emb = victim.embed(test.float_images())
        per_image = (time.perf_counter() - t0) / max(1, len(test))
        pools = Pools(reference=victim.embed(reference_set.float_images()), calibration=victim.embed(
            aux_val.float_images()), clean=clean_emb, triggered=victim.embed(trig.float_images()),
            train=ds.feats["train"].to(clean_emb.device) if ds is not None else None,
            embed_seconds_per_image=per_image)
        kw = dict(e.get("detector_args") or {})
        for name in wanted:
            add(score_embedding_detector(name, SAMPLE_DETECTORS[name], pools, **dict(kw.get(name) or {})))
    return rows, scores


def model_level_checks(victim, tcfg, e, model, ratio) -> dict:
    """DECREE trigger inversion on the victim (model level) and ASSET-style offset scores on
    the suspect auxiliary set (poisoned vs clean training samples), next to DeDe's AUROC on
    the same auxiliary samples."""
    from dede.detect.model_level import asset_offset_scores, decree_inversion
    from dede.detect.metrics import auroc
    from dede.detect.scoring import dede_scores
    from dede.pipeline.common import aux_split

    m = e.model_level
    aux_train, aux_val = aux_split(tcfg).split(float(tcfg.data.val_fraction), tcfg.seed)
    out: dict = {}
    clean_val = aux_val.subset(torch.nonzero(~aux_val.poisoned)[:, 0])
    g = torch.Generator().manual_seed(int(e.seed))
    pick = torch.randperm(len(clean_val), generator=g)[: int(m.decree_images)]
    inv = decree_inversion(victim, clean_val.subset(pick).float_images().to(victim.mean.device),
                           steps=int(m.decree_steps),
                           lr=float(m.decree_lr), target_similarity=float(m.decree_similarity),
                           seed=int(e.seed))
    out["decree"] = {"mask_l1_norm": float(inv.mask_l1_norm), "similarity": float(inv.similarity),
                     "threshold": float(m.decree_threshold),
                     "backdoored": bool(inv.verdict(float(m.decree_threshold)))}
    if aux_train.poisoned.any() and (~aux_train.poisoned).any():
        base = clean_val.subset(torch.randperm(len(clean_val), generator=g)[: int(m.asset_base)])
        base_emb, sus_emb = victim.embed(base.float_images()), victim.embed(aux_train.float_images())
        asset = asset_offset_scores(base_emb, sus_emb).cpu()
        dede_aux = dede_scores(model, victim, aux_train.images, ratio, e.batch_size, e.seed + 4, e.n_masks,
                               rule=e.score_rule)
        poisoned = aux_train.poisoned
        out["asset"] = {"auroc": auroc(asset[~poisoned], asset[poisoned]),
                        "dede_auroc": auroc(dede_aux[~poisoned], dede_aux[poisoned]),
                        "n_suspect": len(aux_train), "n_poisoned": int(poisoned.sum())}
    else:
        out["asset"] = {"skipped": "the auxiliary set has no poisoned samples (out-of-distribution aux data)"}
    return out
