"""The evaluation context: everything about one evaluated run that detectors need, built once
and passed down (instead of the root config)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from dede.data import ImageSet
from dede.decoder.model import DeDeModel
from dede.detect.scoring import dede_patch_errors
from dede.triggers import Trigger
from dede.victims.encoders import Victim


def as_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = images.to(device, non_blocking=True)
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


@dataclass
class EvalContext:
    victim: Victim
    model: DeDeModel | None  # the run's DeDe decoder (None: embedding detectors only)
    mask_ratio: float  # test-time mask ratio of the decoder
    trigger: Trigger  # the attack's trigger (an optimised one read from the run's trigger file)
    target: int
    reference: ImageSet  # the defender's auxiliary training images
    calibration: ImageSet  # held-out auxiliary images: thresholds are calibrated on their scores
    batch_size: int = 512
    n_masks: int = 1
    seed: int = 0
    trusted: "EvalContext | None" = None  # a trusted encoder + decoder (eval.reference.run)
    probe: torch.nn.Module | None = None  # the downstream classifier on victim features (None: no downstream)
    name: str = ""
    # memo of per-image results of whole image tensors: key -> (tensor kept alive, value, seconds)
    _memo: dict = field(default_factory=dict, repr=False)
    charged_seconds: float = 0.0  # compute time of memoised results handed out again

    @property
    def device(self) -> torch.device:
        return self.victim.mean.device

    def _memoised(self, kind: str, images: torch.Tensor, compute) -> torch.Tensor:
        key = (kind, images.data_ptr(), tuple(images.shape), images.dtype)
        hit = self._memo.get(key)
        if hit is not None:
            self.charged_seconds += hit[2]
            return hit[1]
        t0, charged0 = time.perf_counter(), self.charged_seconds
        value = compute()
        # the cost of this value includes that of memoised values it used (e.g. the embeddings
        # DeDe's errors are computed from), so a later hit is charged for all of it
        self._memo[key] = (images, value, time.perf_counter() - t0 + self.charged_seconds - charged0)
        return value

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Victim embeddings ``(N, D)`` on the device (memoised per image tensor)."""
        return self._memoised("embed", images, lambda: torch.cat([
            self.victim(as_float(images[i:i + self.batch_size], self.device)).float()
            for i in range(0, len(images), self.batch_size)]) if len(images) else
            torch.empty(0, self.victim.embed_dim, device=self.device))

    def map_batches(self, images: torch.Tensor, fn, copies: int = 1, *aligned: torch.Tensor) -> torch.Tensor:
        """``fn(x, *aligned_rows)`` on float [0, 1] batches ``x`` of ``images`` on the device, each
        batch small enough that ``copies`` perturbed versions of it make about one ``batch_size``;
        the per-image results concatenated on the CPU."""
        step = max(1, self.batch_size // max(1, copies))
        out = [fn(as_float(images[i:i + step], self.device), *(a[i:i + step] for a in aligned))
               for i in range(0, len(images), step)]
        return torch.cat(out).float().cpu() if out else torch.empty(0)

    @torch.no_grad()
    def probe_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the downstream classifier for images (uint8 or [0, 1] float), batch by batch;
        not memoised (detectors call it on perturbed copies)."""
        if self.probe is None:
            raise RuntimeError("this evaluation has no downstream classifier (eval.downstream.enabled=false)")
        dev = next(self.probe.parameters(), torch.empty(0, device=self.device)).device
        out = [self.probe(self.victim(as_float(images[i:i + self.batch_size], self.device)).float().to(dev))
               for i in range(0, len(images), self.batch_size)]
        return torch.cat(out) if out else torch.empty(0)

    @torch.no_grad()
    def patch_errors(self, images: torch.Tensor) -> torch.Tensor:
        """DeDe's per-patch reconstruction errors ``(N, T)`` at the test mask ratio (memoised)."""
        if self.model is None:
            raise RuntimeError("this evaluation has no DeDe decoder")

        def compute():
            return dede_patch_errors(self.model, self.victim, images, self.mask_ratio, self.batch_size,
                                     int(self.seed), self.n_masks, self.embed(images))

        return self._memoised("patch_errors", images, compute)
