"""The downstream protocol: MLP and weighted k-NN classifiers on frozen features, CA and ASR
before and after a detector's filtering."""
import torch

from dede.downstream import downstream_metrics, knn_metrics, knn_predict, train_classifier


def clusters(n_per: int, n_classes: int = 3, dim: int = 8, noise: float = 0.05, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:n_classes] * 3
    labels = torch.arange(n_classes).repeat_interleave(n_per)
    return centres[labels] + noise * torch.randn(len(labels), dim, generator=g), labels, centres


def test_knn_vote_is_weighted_by_similarity():
    # three bank features of class 0 at cosine 0.5 from the query, one of class 1 at 0.99:
    # a plain majority says 0, the exp(sim / 0.1) weights say 1
    q = torch.tensor([[1.0, 0.0, 0.0]])
    bank = torch.tensor([[0.5, 0.866, 0.0], [0.5, 0.0, 0.866], [0.5, -0.866, 0.0], [0.99, 0.141, 0.0]])
    labels = torch.tensor([0, 0, 0, 1])
    assert knn_predict(bank, labels, q, 2, k=4, temperature=0.1).tolist() == [1]
    assert knn_predict(bank, labels, q, 2, k=4, temperature=100.0).tolist() == [0]  # ~ unweighted
    assert knn_predict(bank, labels, q, 2, k=1).tolist() == [1]


def test_knn_batches_and_k_larger_than_bank():
    x, y, _ = clusters(20)
    full = knn_predict(x, y, x, 3, k=10, batch_size=7)
    assert torch.equal(full, y)
    assert torch.equal(knn_predict(x, y, x, 3, k=1000), y)  # k is capped at the bank size


def test_knn_metrics_count_triggered_features_near_the_target():
    x, y, centres = clusters(30)
    test, test_y, _ = clusters(10, seed=1)
    at_target = centres[2].repeat(8, 1) + 0.01
    at_own = centres[torch.tensor([0, 1] * 4)]
    assert knn_metrics(x, y, test, test_y, at_target, target=2, n_classes=3, k=20) == \
        {"clean_accuracy": 1.0, "asr": 1.0}
    assert knn_metrics(x, y, test, test_y, at_own, target=2, n_classes=3, k=20)["asr"] == 0.0


def test_mlp_metrics_and_filtering():
    x, y, centres = clusters(60)
    test, test_y, _ = clusters(20, seed=1)
    trig = centres[2].repeat(10, 1)  # triggered features land on the target class
    kw = dict(epochs=20, batch_size=32, seed=0)
    before = downstream_metrics(train_classifier, x, y, test, test_y, trig, 2, 3, **kw)
    assert before == {"clean_accuracy": 1.0, "asr": 1.0}
    # a detector that flags half the triggered inputs halves the ASR; dropped clean inputs
    # leave CA over the kept ones
    trig_keep = torch.arange(10) % 2 == 0
    test_keep = test_y != 0
    after = downstream_metrics(train_classifier, x, y, test, test_y, trig, 2, 3, train_keep=torch.ones(len(y), dtype=torch.bool),
                               test_keep=test_keep, trig_keep=trig_keep, **kw)
    assert after == {"clean_accuracy": 1.0, "asr": 0.5}


def test_the_downstream_protocol_of_an_evaluation():
    """`DownstreamProtocol` on the home data of a run: features through the context's embed,
    CA / ASR before filtering equal those of an unfiltered run (same seeded MLP), the k-NN vote,
    and a filter that drops every triggered image leaves no attack success."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from dede.data import ImageSet, home_split
    from dede.downstream import DownstreamProtocol
    from dede.triggers import PatchTrigger
    from tests.helpers import compose_train

    tcfg = compose_train(["data.home.n_train=400", "data.home.n_test=200"])
    e = OmegaConf.merge(tcfg.eval, {"downstream": {"epochs": 5, "knn_k": 20}})
    test = home_split(tcfg, "test")
    trig = test.poison(PatchTrigger(size=10, row=21, col=21), 1.0, seed=0)
    trig = ImageSet(trig.images, test.labels, trig.poisoned, test.name)
    calls = []

    def embed(images):  # colour means of a 4x4 grid: enough to tell the shapes apart
        calls.append(len(images))
        x = images.float().div(255)
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

    ds = DownstreamProtocol(tcfg, e, SimpleNamespace(embed=embed, target=0), test, trig, None, torch.device("cpu"))
    assert calls == [400, 200, 200]  # each set embedded once
    before = ds.before()
    assert before["clean_accuracy"] > 0.5 and 0 <= before["asr"] <= 1 and "asr_benign" not in before
    assert 0 < before["clean_accuracy_knn"] <= 1
    unfiltered = ds.run()
    assert unfiltered["clean_accuracy"] == before["clean_accuracy"] and unfiltered["asr"] == before["asr"]
    none_triggered = ds.run(trig_keep=torch.zeros(len(trig), dtype=torch.bool))
    assert none_triggered["asr"] == 0.0
