"""The Python API: score images with a fitted detector in your own code, without Hydra.

    from dede import load_detector

    det = load_detector("logs/demo/<time>/train", "transplant_occlusion")
    scores, flags = det(images)      # uint8 or [0, 1] float (N, 3, H, W) at the victim's input size

``run_dir`` is a train run (``train.py`` / ``scan.py`` output: victim, decoder, auxiliary data)
or an evaluation of one (``evaluate.py`` output, holding ``results.json``). From an evaluation
the detector gets that evaluation's settings and threshold; from a train run it is fitted on
the run's auxiliary data and its threshold is set on the run's held-out auxiliary images (the
``quantile`` of their scores: nominal false-positive rate ``1 - quantile``), as evaluate.py does.
No triggered image is needed for either.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from dede.detect.base import Detector, build_detector, known_detectors
from dede.detect.context import EvalContext


@dataclass
class FittedDetector:
    """A detector fitted on one run, with its calibrated threshold. Call it on a batch of images:
    ``scores, flags = det(images)``; a score above ``threshold`` is flagged (likely triggered)."""

    name: str
    detector: Detector
    ctx: EvalContext
    threshold: float
    threshold_rule: str
    run: Path
    info: dict = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return self.ctx.victim.image_size

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Scores ``(N,)`` on the CPU, higher = more likely triggered."""
        images = _as_batch(images, self.image_size)
        return self.detector.score(images).float().cpu()

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.score(images)
        return s, s > self.threshold


def _as_batch(images, image_size: int) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (N, 3, H, W), got {type(images).__name__}")
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W) RGB, got shape {tuple(images.shape)}")
    if tuple(images.shape[-2:]) != (image_size, image_size):
        raise ValueError(f"the victim takes {image_size}x{image_size} images, got {tuple(images.shape[-2:])}: resize "
                         "them first (e.g. torchvision.transforms.v2.functional.resize)")
    if images.dtype != torch.uint8:
        if not images.is_floating_point():
            raise TypeError(f"images must be uint8 (0..255) or float in [0, 1], got {images.dtype}")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise ValueError(f"float images must lie in [0, 1] (pixel space, before normalisation); got [{lo:.3g}, "
                             f"{hi:.3g}]. The victim normalises its inputs itself")
        images = images.clamp(0, 1)
    return images.contiguous()


def _eval_settings(evaluation: dict | None, device: str, batch_size) -> OmegaConf:
    """The evaluation settings load_run reads: those of a given evaluation, else the defaults."""
    e = dict((evaluation or {}).get("config", {}).get("eval") or {})
    return OmegaConf.create({"test_mask_ratio": e.get("test_mask_ratio"), "n_masks": int(e.get("n_masks", 1)),
                             "seed": int(e.get("seed", 0)), "batch_size": batch_size if batch_size is not None
                             else e.get("batch_size", "auto"), "device": device,
                             "detector_args": e.get("detector_args") or {}})


def load_detector(run_dir: str | Path, name: str = "transplant_occlusion", device: str = "auto",
                  quantile: float = 0.95, batch_size: int | str | None = None, **detector_kwargs) -> FittedDetector:
    """The detector ``name`` fitted on the run in ``run_dir`` with its calibrated threshold.

    ``run_dir``: a train run directory, or an evaluation directory (``results.json``; its train run,
    settings and, if it evaluated ``name``, its threshold are reused). ``quantile``: the threshold
    rule for a train run (share of held-out auxiliary images kept under it). ``detector_kwargs``
    override the detector's settings (as ``eval.detector_args.<name>`` does)."""
    from dede.pipeline.evaluate import RunError, _device, load_run

    if name not in known_detectors():
        raise ValueError(f"unknown detector {name!r}; known: {known_detectors()}")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile={quantile} must be in (0, 1)")
    path = Path(run_dir).expanduser().resolve()
    evaluation = None
    if (path / "results.json").is_file() and not (path / "resolved_config.yaml").is_file():
        evaluation = json.loads((path / "results.json").read_text())
        path = Path(evaluation["run"])
        if not path.is_dir():
            raise RunError(f"{run_dir}/results.json names the train run {path}, which does not exist any more")
    e = _eval_settings(evaluation, device, batch_size)
    loaded = load_run(path, e, _device(device))
    ctx = loaded.ctx
    kwargs = dict((e.detector_args or {}).get(name) or {}) | detector_kwargs
    det = build_detector(name, **kwargs)
    missing = [n for n in det.needs if n == "reference" or (n == "probe" and ctx.probe is None)]
    if missing:
        raise ValueError(f"detector {name!r} needs {missing}, which load_detector does not build; use evaluate.py")
    det.fit(ctx)
    row = ((evaluation or {}).get("detectors") or {}).get(name)
    if row is not None and not detector_kwargs:
        threshold, rule = float(row["threshold"]), evaluation["threshold"]["rule"]
    else:
        from dede.detect.metrics import quantile_threshold

        threshold = quantile_threshold(det.score(ctx.calibration.images).float().cpu(), quantile)
        rule = f"aux_quantile_{quantile}"
    return FittedDetector(name, det, ctx, float(threshold), rule, path,
                          {"attack": loaded.cfg.attack.name, "n_calibration": len(ctx.calibration)})
