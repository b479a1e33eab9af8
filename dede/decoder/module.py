"""Lightning module and data module that train a DeDe model on an auxiliary set."""
from __future__ import annotations

import logging

import lightning as L
import torch

from dede.data import ImageSet, TensorBatches, make_loader
from dede.decoder.model import DeDeModel
from dede.optim import adam, warmup_cosine
from dede.victims.encoders import Victim

log = logging.getLogger(__name__)


class AuxDataModule(L.LightningDataModule):
    """Auxiliary training / validation images, each paired with its victim embedding.

    With ``cache_embeddings`` (valid because the auxiliary transform is deterministic) the
    frozen victim runs once per image in `setup`, on the trainer's device, instead of once
    per image per epoch; the batches then carry the cached embeddings.
    """

    def __init__(self, train: ImageSet, val: ImageSet, victim: Victim, batch_size: int = 256,
                 cache_embeddings: bool = True, num_workers: int = 0, seed: int = 0,
                 embed_batch_size: int = 512) -> None:
        super().__init__()
        self.train_set, self.val_set, self.victim = train, val, victim
        self.batch_size, self.cache, self.num_workers, self.seed = batch_size, cache_embeddings, num_workers, seed
        self.embed_batch_size = embed_batch_size
        self.train_emb = self.val_emb = None

    def setup(self, stage: str | None = None) -> None:
        if not self.cache or self.train_emb is not None:
            return
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.victim.to(device)
        self.train_emb = self.victim.embed(self.train_set.float_images(), self.embed_batch_size).cpu()
        self.val_emb = self.victim.embed(self.val_set.float_images(), self.embed_batch_size).cpu()
        log.info("cached %d + %d victim embeddings", len(self.train_emb), len(self.val_emb))

    def _dataset(self, s: ImageSet, emb):
        extras = (s.poisoned,) if emb is None else (emb, s.poisoned)
        return TensorBatches(s.images, *extras)

    def train_dataloader(self):
        return make_loader(self._dataset(self.train_set, self.train_emb), self.batch_size, shuffle=True,
                           drop_last=True, num_workers=self.num_workers, seed=self.seed)

    def val_dataloader(self):
        return make_loader(self._dataset(self.val_set, self.val_emb), self.batch_size, shuffle=False,
                           num_workers=self.num_workers)


class DeDeModule(L.LightningModule):
    """Trains `DeDeModel`; the frozen victim is held outside the state dict (checkpoints
    carry only the decoder; the run directory records which victim it belongs to)."""

    def __init__(self, model: dict, victim_dim: int, mask_ratio: float = 0.9, test_mask_ratio: float = 0.99,
                 lr: float = 1e-3, weight_decay: float = 1e-6, warmup_epochs: float = 0.0,
                 scheduler: str = "cosine", mask_schedule: str = "fixed", mask_ratio_end: float | None = None,
                 mix_prob: float = 0.5, compile: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = DeDeModel(victim_dim=victim_dim, **model)
        if compile:
            self.model.compile_blocks()
        self._victim: list[Victim] = []

    def attach_victim(self, victim: Victim) -> "DeDeModule":
        victim.eval()
        for p in victim.parameters():
            p.requires_grad_(False)
        self._victim = [victim]
        return self

    @property
    def victim(self) -> Victim:
        if not self._victim:
            raise RuntimeError("DeDeModule has no victim: call attach_victim(victim) first")
        return self._victim[0]

    def on_fit_start(self) -> None:
        if self._victim:
            self.victim.to(self.device)

    def current_mask_ratio(self) -> float:
        """The train-time mask ratio of this step.

        ``fixed``: ``mask_ratio`` (the paper). ``linear``: from ``mask_ratio`` towards
        ``mask_ratio_end`` (default: the test ratio) over the epochs. ``mixed``: each step uses
        the test ratio with probability ``mix_prob``, else ``mask_ratio``, so the decoder
        practises the task it is scored on (at 32x32 / patch 4 the test ratio 0.99 leaves no
        visible patch) without giving up the easier one.
        """
        hp = self.hparams
        if hp.mask_schedule == "mixed":
            use_test = torch.rand(()).item() < hp.mix_prob
            return hp.test_mask_ratio if use_test else hp.mask_ratio
        if hp.mask_schedule == "linear" and self.trainer is not None:
            end = hp.test_mask_ratio if hp.mask_ratio_end is None else hp.mask_ratio_end
            progress = min(1.0, self.current_epoch / max(1, self.trainer.max_epochs - 1))
            return hp.mask_ratio + (end - hp.mask_ratio) * progress
        return hp.mask_ratio

    def _split(self, batch):
        if len(batch) == 3:
            x, emb, poisoned = batch
        else:
            x, poisoned = batch
            with torch.no_grad():
                emb = self.victim(x)
        return x, emb, poisoned

    def training_step(self, batch, batch_idx):
        x, emb, _ = self._split(batch)
        ratio = self.current_mask_ratio()
        pred, mask = self.model(x, emb, ratio)
        loss = self.model.loss(x, pred, mask)
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(x), sync_dist=True)
        self.log("train/mask_ratio", ratio, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def validation_step(self, batch, batch_idx):
        x, emb, _ = self._split(batch)
        g = torch.Generator(device=x.device).manual_seed(batch_idx)
        pred, mask = self.model(x, emb, self.hparams.mask_ratio, g)
        self.log("val/loss", self.model.loss(x, pred, mask), prog_bar=True, batch_size=len(x), sync_dist=True)
        score = self.model.score(x, emb, self.hparams.test_mask_ratio, g)
        self.log("val/score_clean", score.mean(), batch_size=len(x), sync_dist=True)
        if batch_idx == 0:
            self._log_reconstructions(x[:8], emb[:8])

    @torch.no_grad()
    def _log_reconstructions(self, x: torch.Tensor, emb: torch.Tensor) -> None:
        """Inputs above their reconstructions at the train and the test mask ratio, to loggers
        that take images (W&B, TensorBoard)."""
        loggers = [lg for lg in (self.loggers or []) if hasattr(lg, "log_image") or hasattr(lg.experiment, "add_image")]
        if not loggers or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        from torchvision.utils import make_grid

        rows = [x]
        for ratio in (self.hparams.mask_ratio, self.hparams.test_mask_ratio):
            g = torch.Generator(device=x.device).manual_seed(0)
            pred, mask = self.model(x, emb, ratio, g)
            rows.append(self.model.reconstruct(x, pred.clamp(0, 1), mask))
        grid = make_grid(torch.cat(rows).float().cpu(), nrow=len(x), padding=1)
        for lg in loggers:
            if hasattr(lg, "log_image"):
                lg.log_image("val/reconstructions", images=[grid], step=self.global_step,
                             caption=["input / train-ratio / test-ratio reconstruction"])
            else:
                lg.experiment.add_image("val/reconstructions", grid, self.global_step)

    def configure_optimizers(self):
        hp = self.hparams
        opt = adam(self.model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler != "cosine":
            return opt
        total = max(1, self.trainer.estimated_stepping_batches)
        warm = int(hp.warmup_epochs * total / max(1, self.trainer.max_epochs))
        sched = warmup_cosine(opt, warm, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
