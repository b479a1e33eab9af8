"""The downstream protocol: an MLP on L2-normalised frozen victim features.

Clean accuracy (CA) on clean test images; attack success rate (ASR) = share of triggered
test images (of non-target classes) classified as the target. With a detector, flagged
samples are dropped from the downstream training and test data: CA is then measured on
the clean test images that pass, and a triggered image counts as an attack success only if
it passes the detector *and* is classified as the target.

Next to the MLP, a weighted k-nearest-neighbour classifier on the same features (the
"kNN monitor" of the SSL literature, CTRL's own metric) gives a second ASR that does not
depend on how an MLP extrapolates to features unlike any it was trained on.
"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy


def mlp(in_dim: int, n_classes: int, hidden=(512, 256), dropout: float = 0.5) -> nn.Sequential:
    h1, h2 = hidden
    return nn.Sequential(nn.Linear(in_dim, h1), nn.ReLU(), nn.Dropout(dropout), nn.Linear(h1, h2), nn.ReLU(),
                         nn.Linear(h2, n_classes))


class FeatureClassifier(L.LightningModule):
    def __init__(self, in_dim: int, n_classes: int, hidden=(512, 256), dropout: float = 0.5, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = mlp(in_dim, n_classes, tuple(hidden), dropout)
        self.train_acc = MulticlassAccuracy(n_classes, average="micro")

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(F.normalize(feats, dim=1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log_dict({"downstream/loss": loss, "downstream/train_acc": self.train_acc}, on_step=False,
                      on_epoch=True, batch_size=len(x))
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def train_classifier(feats: torch.Tensor, labels: torch.Tensor, n_classes: int, epochs: int = 30,
                     batch_size: int = 256, lr: float = 1e-3, hidden=(512, 256), dropout: float = 0.5,
                     seed: int = 0, accelerator: str = "cpu") -> FeatureClassifier:
    L.seed_everything(seed, workers=True, verbose=False)
    model = FeatureClassifier(feats.shape[1], n_classes, hidden, dropout, lr)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(feats.float(), labels.long()), batch_size=batch_size, shuffle=True, generator=g)
    trainer = L.Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, loader)
    return model.eval()


@torch.no_grad()
def predict(model: FeatureClassifier, feats: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    dev = next(model.parameters()).device
    return torch.cat([model(feats[i:i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(feats), batch_size)])


@torch.no_grad()
def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, query: torch.Tensor, n_classes: int, k: int = 200,
                temperature: float = 0.1, batch_size: int = 1024) -> torch.Tensor:
    """Weighted k-NN vote on cosine similarity: each of the ``k`` nearest ``bank`` features
    votes for its label with weight ``exp(similarity / temperature)``. Runs on ``bank``'s device."""
    from dede.detect.outliers import knn

    if len(bank) == 0:
        raise ValueError("k-NN needs a non-empty feature bank")
    if len(query) == 0:
        return torch.empty(0, dtype=torch.long)
    dist, idx = knn(bank, query, min(int(k), len(bank)), "cosine", batch_size)
    onehot = F.one_hot(bank_labels.to(bank.device).long(), n_classes).float()
    votes = torch.einsum("qk,qkc->qc", ((1.0 - dist) / temperature).exp(), onehot[idx])
    return votes.argmax(1).cpu()


def _ca_asr(pred_clean, pred_trig, test_labels, target: int, test_keep=None, trig_keep=None) -> dict:
    correct = pred_clean == test_labels
    hit = pred_trig == target
    if test_keep is not None:
        correct = correct[test_keep]
    if trig_keep is not None:
        hit = hit & trig_keep
    return {"clean_accuracy": float(correct.double().mean()) if correct.numel() else 0.0,
            "asr": float(hit.double().mean()) if hit.numel() else 0.0}


def knn_metrics(train_feats, train_labels, test_feats, test_labels, trig_feats, target: int, n_classes: int,
                k: int = 200, temperature: float = 0.1) -> dict:
    """CA and ASR of the weighted k-NN classifier whose bank is the downstream training set."""
    pred_clean = knn_predict(train_feats, train_labels, test_feats, n_classes, k, temperature)
    pred_trig = knn_predict(train_feats, train_labels, trig_feats, n_classes, k, temperature)
    return _ca_asr(pred_clean, pred_trig, test_labels, target)


def downstream_metrics(model_fn, train_feats, train_labels, test_feats, test_labels, trig_feats, target: int,
                       n_classes: int, train_keep=None, test_keep=None, trig_keep=None, **train_kw) -> dict:
    """CA and ASR of a classifier trained on (optionally filtered) features.

    ``*_keep`` are boolean masks of the samples that pass a detector (None = all pass).
    """
    if train_keep is not None:
        train_feats, train_labels = train_feats[train_keep], train_labels[train_keep]
    clf = model_fn(train_feats, train_labels, n_classes, **train_kw)
    return _ca_asr(predict(clf, test_feats), predict(clf, trig_feats), test_labels, target, test_keep, trig_keep)
