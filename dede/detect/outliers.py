"""Sample-level baselines on victim embeddings: k-NN distance, SLOF, DAO, LID, Mahalanobis and
the feature norm. Scores: higher = more anomalous.

All run on the tensors' device and process queries in chunks, so 10k+ queries against 10k+
reference embeddings never materialise a full N x M distance matrix: each chunk keeps only its
k smallest distances. Distances are cosine distances of L2-normalised embeddings by default.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-12


def _distances(q: torch.Tensor, r: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "cosine":
        return (1.0 - F.normalize(q, dim=1) @ F.normalize(r, dim=1).T).clamp_min(0)
    if metric == "euclidean":
        return torch.cdist(q, r)
    raise ValueError(f"unknown metric {metric!r}: use 'cosine' or 'euclidean'")


def knn(reference: torch.Tensor, query: torch.Tensor, k: int, metric: str = "cosine", chunk: int = 1024,
        exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest reference points of every query: ``(distances (N, k) ascending, indices)``.
    ``exclude_self`` (query == reference) skips each point's own entry."""
    reference, query = reference.float(), query.float().to(reference.device)
    if k < 1 or k > len(reference) - int(exclude_self):
        raise ValueError(f"k={k} needs at least {k + int(exclude_self)} reference points, got {len(reference)}")
    dists, idxs = [], []
    for start in range(0, len(query), chunk):
        d = _distances(query[start:start + chunk], reference, metric)
        if exclude_self:
            rows = torch.arange(d.shape[0], device=d.device)
            d[rows, rows + start] = float("inf")
        v, i = d.topk(k, dim=1, largest=False)
        dists.append(v)
        idxs.append(i)
    return torch.cat(dists), torch.cat(idxs)


def knn_distance(reference: torch.Tensor, query: torch.Tensor, k: int = 16, metric: str = "cosine",
                 chunk: int = 1024) -> torch.Tensor:
    """Mean distance to the ``k`` nearest reference points."""
    return knn(reference, query, k, metric, chunk)[0].mean(1)


def lid_mle(d: torch.Tensor) -> torch.Tensor:
    """MLE local intrinsic dimensionality from the ascending distances ``(N, k)`` of each point to
    its k nearest neighbours: ``-1 / mean_i log(d_i / d_k)``."""
    kdist = d[:, -1:].clamp_min(EPS)
    return -1.0 / torch.log(d.clamp_min(EPS) / kdist).mean(1).clamp_max(-EPS)


def _reference_stats(reference: torch.Tensor, k: int, metric: str, chunk: int):
    """k-distance and MLE local intrinsic dimensionality of every reference point (itself excluded)."""
    d, _ = knn(reference, reference, k, metric, chunk, exclude_self=True)
    return d[:, -1].clamp_min(EPS), lid_mle(d)


def lid(reference: torch.Tensor, query: torch.Tensor, k: int = 20, metric: str = "cosine",
        chunk: int = 1024) -> torch.Tensor:
    """LID (Ma et al., ICLR 2018; a backdoor-sample baseline in Huang et al., ICLR 2025): the MLE
    local intrinsic dimensionality of the query estimated from its ``k`` nearest reference
    points. A query off the reference data sees its neighbours at nearly equal distances, which
    reads as a high dimensionality."""
    return lid_mle(knn(reference, query, k, metric, chunk)[0])


def slof(reference: torch.Tensor, query: torch.Tensor, k: int = 16, metric: str = "cosine",
         chunk: int = 1024) -> torch.Tensor:
    """Simplified local outlier factor: mean over the query's k reference neighbours o of
    ``kdist(query) / kdist(o)``, where kdist(o) is o's k-distance within the reference set."""
    kdist_ref, _ = _reference_stats(reference, k, metric, chunk)
    d, idx = knn(reference, query, k, metric, chunk)
    return (d[:, -1:].clamp_min(EPS) / kdist_ref[idx]).mean(1)


def dao(reference: torch.Tensor, query: torch.Tensor, k: int = 16, metric: str = "cosine",
        chunk: int = 1024, max_exponent: float = 50.0) -> torch.Tensor:
    """Dimensionality-aware outlier score: mean over the query's k reference neighbours o of
    ``(kdist(query) / kdist(o)) ** LID(o)``, with LID(o) the MLE local intrinsic dimensionality of
    o (so a distance ratio counts more where the data are locally high-dimensional). The power is
    taken as ``exp(clamp(LID * log ratio))`` for numerical safety."""
    kdist_ref, lid_ref = _reference_stats(reference, k, metric, chunk)
    d, idx = knn(reference, query, k, metric, chunk)
    log_ratio = torch.log(d[:, -1:].clamp_min(EPS)) - torch.log(kdist_ref[idx])
    return torch.exp((lid_ref[idx] * log_ratio).clamp(-max_exponent, max_exponent)).mean(1)


def mahalanobis(reference: torch.Tensor, query: torch.Tensor, shrinkage: float = 1e-3,
                chunk: int = 4096) -> torch.Tensor:
    """Mahalanobis distance to the reference mean; the covariance gets ``shrinkage * trace / D``
    added to its diagonal and is used through a Cholesky factor (no explicit inverse)."""
    ref = reference.double()
    mu = ref.mean(0)
    xc = ref - mu
    cov = xc.T @ xc / max(1, len(ref) - 1)
    cov = cov + torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device) * (shrinkage * cov.trace() / cov.shape[0])
    chol = torch.linalg.cholesky(cov)
    out = []
    for start in range(0, len(query), chunk):
        diff = (query[start:start + chunk].to(ref) - mu).T
        z = torch.linalg.solve_triangular(chol, diff, upper=False)
        out.append(z.pow(2).sum(0).sqrt())
    return torch.cat(out).float()


def feature_norm(reference: torch.Tensor | None, query: torch.Tensor) -> torch.Tensor:
    """L2 norm of the embedding (the original DeDe code's CTRL heuristic); ``reference`` unused."""
    return query.float().norm(dim=1)

