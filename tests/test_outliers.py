import math

import torch

from dede.detect.metrics import auroc
from dede.detect.outliers import dao, feature_norm, knn, knn_distance, mahalanobis, slof


def cloud(n, d=8, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_knn_matches_brute_force_and_chunking():
    ref, q = cloud(200), cloud(50, seed=1)
    full = torch.cdist(q, ref)
    expected = full.sort(1).values[:, :5].mean(1)
    assert torch.allclose(knn_distance(ref, q, 5, metric="euclidean"), expected, atol=1e-5)
    a = knn_distance(ref, q, 5, chunk=7)
    b = knn_distance(ref, q, 5, chunk=10000)
    assert torch.allclose(a, b)
    d, i = knn(ref, ref, 3, exclude_self=True, chunk=13)
    assert not torch.any(i == torch.arange(200)[:, None])  # a point is not its own neighbour


def test_slof_hand_computed_1d():
    # reference points on a line (euclidean), k = 1: each point's k-distance is its gap to the nearest
    ref = torch.tensor([[0.0], [1.0], [3.0]])
    # k-distances: 0 -> 1, 1 -> 1, 3 -> 2. Query 6: nearest is 3 (d = 3): SLOF = 3 / 2
    assert math.isclose(slof(ref, torch.tensor([[6.0]]), k=1, metric="euclidean").item(), 1.5, rel_tol=1e-6)
    # query 0.5: nearest is 0 or 1 (d = 0.5, both k-distance 1): SLOF = 0.5
    assert math.isclose(slof(ref, torch.tensor([[0.5]]), k=1, metric="euclidean").item(), 0.5, rel_tol=1e-6)


def test_planted_outliers_score_higher():
    ref = cloud(2000, seed=0)
    inliers = cloud(300, seed=1)
    outliers = cloud(60, seed=2) * 0.3 + 4.0  # a tight cluster far away
    for fn in (knn_distance, slof, dao):
        s = fn(ref, torch.cat([inliers, outliers]), k=16, metric="euclidean")
        assert auroc(s[:300], s[300:]) > 0.95, fn.__name__
    s = mahalanobis(ref, torch.cat([inliers, outliers]))
    assert auroc(s[:300], s[300:]) > 0.95


def test_local_methods_flag_a_dense_cluster_in_a_sparse_region():
    g = torch.Generator().manual_seed(3)
    dense = torch.randn(1500, 2, generator=g) * 0.2  # dense core
    sparse = torch.randn(500, 2, generator=g) * 3.0 + torch.tensor([8.0, 0.0])  # sparse region
    ref = torch.cat([dense, sparse])
    normal = torch.cat([torch.randn(100, 2, generator=g) * 0.2,
                        torch.randn(100, 2, generator=g) * 3.0 + torch.tensor([8.0, 0.0])])
    # queries half-way between the two regions: not far in absolute terms from the sparse region
    planted = torch.randn(40, 2, generator=g) * 0.05 + torch.tensor([2.5, 0.0])
    for fn in (slof, dao):
        s = fn(ref, torch.cat([normal, planted]), k=16, metric="euclidean")
        assert auroc(s[:200], s[200:]) > 0.9, fn.__name__


def test_mahalanobis_closed_form():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(5000, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5])
    q = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    d = mahalanobis(ref, q, shrinkage=0.0)
    mu, cov = ref.double().mean(0), torch.cov(ref.double().T)
    diff = q.double() - mu
    expected = torch.sqrt((diff @ torch.linalg.inv(cov) * diff).sum(1))
    assert torch.allclose(d.double(), expected, atol=1e-4)
    assert abs(d[0].item() - math.sqrt(3)) < 0.1  # one standard deviation along each axis


def test_feature_norm():
    q = cloud(10)
    assert torch.allclose(feature_norm(None, q), torch.linalg.norm(q, dim=1))
