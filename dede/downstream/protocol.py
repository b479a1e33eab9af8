"""The downstream protocol of an evaluation: an MLP (and a weighted k-NN vote) trained on the
victim's features of its home data, measuring clean accuracy and attack success rate before
and after a detector filters the inputs."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig

from dede.data import ImageSet, home_split
from dede.downstream.classifier import downstream_metrics, knn_metrics, predict, train_classifier

if TYPE_CHECKING:  # pragma: no cover
    from dede.detect.context import EvalContext

log = logging.getLogger(__name__)


class DownstreamProtocol:
    """The downstream protocol on the victim's home data: features computed once, one MLP
    trained per call (before filtering, and once per detector after filtering).

    ``tcfg``: the train run's config (its home data); ``e``: the eval settings (``e.downstream``,
    ``e.seed``); ``ctx``: the evaluation context (the victim's memoised ``embed`` and the attack's
    ``target``); ``test``, ``trig``, ``benign``: the clean, triggered and benign-perturbed test
    images (``benign`` may be None); ``device``: where the k-NN vote runs."""

    def __init__(self, tcfg: DictConfig, e: DictConfig, ctx: "EvalContext", test: ImageSet, trig: ImageSet,
                 benign: ImageSet | None, device: torch.device) -> None:
        d = e.downstream
        train = home_split(tcfg, "train")
        if d.n_train:
            train = train.subset(torch.arange(min(int(d.n_train), len(train))))
        self.train = train
        sets = {"train": train, "test": test, "trig": trig} | ({"benign": benign} if benign is not None else {})
        # through the context's memo: the embedding detectors reuse these embeddings
        self.feats = {k: ctx.embed(s.images).cpu() for k, s in sets.items()}
        target = ctx.target
        self.n_classes = int(max(train.labels.max(), test.labels.max()) + 1)
        self.kw = dict(epochs=int(d.epochs), batch_size=int(d.batch_size), lr=float(d.lr), hidden=tuple(d.hidden),
                       dropout=float(d.dropout), seed=int(e.seed),
                       accelerator="gpu" if device.type == "cuda" else "cpu")
        # (train feats, train labels, test feats, test labels, triggered feats, target, classes)
        self.data = (self.feats["train"], train.labels, self.feats["test"], test.labels, self.feats["trig"], target,
                     self.n_classes)
        self.target = target
        self.knn_kw = dict(k=int(d.knn_k), temperature=float(d.knn_temperature))
        self.device = device

    def run(self, train_keep=None, test_keep=None, trig_keep=None) -> dict:
        return downstream_metrics(train_classifier, *self.data, train_keep=train_keep, test_keep=test_keep,
                                  trig_keep=trig_keep, **self.kw)

    def fit_classifier(self):
        """The downstream MLP on the unfiltered training features."""
        return train_classifier(self.feats["train"], self.train.labels, self.n_classes, **self.kw)

    def before(self) -> dict:
        """CA / ASR without filtering, the ASR of the benign-perturbed images under the same
        classifier, and the weighted k-NN classifier's CA / ASR."""
        clf = self.classifier = self.fit_classifier()
        pred = {k: predict(clf, v) for k, v in self.feats.items() if k != "train"}
        out = {"clean_accuracy": float((pred["test"] == self.data[3]).double().mean()),
               "asr": float((pred["trig"] == self.target).double().mean())}
        if "benign" in pred:
            out["asr_benign"] = float((pred["benign"] == self.target).double().mean())
        bank, *rest = self.data
        knn = knn_metrics(bank.to(self.device), *rest, **self.knn_kw)  # the vote runs where the bank is
        out.update({"clean_accuracy_knn": knn["clean_accuracy"], "asr_knn": knn["asr"]})
        log.info("downstream before filtering: %s", out)
        return out
