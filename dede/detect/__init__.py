"""Input-level detection: metrics, DeDe's scores, and the detector registry with the built-in
detectors (registered here, once, when the package is imported)."""
from dede.detect.metrics import (Threshold, apply_threshold, auprc, auroc, detection_metrics, median_threshold,
                                 quantile_threshold, roc_curve, tpr_at_fpr)
from dede.detect.scoring import dede_scores, reconstructions
from dede.detect.base import Detector, build_detector, known_detectors, register_detector, resolve_detectors
from dede.detect import detectors, literature, transplant, cascade  # noqa: E402,F401  (register the built-ins)

__all__ = ["Threshold", "apply_threshold", "auprc", "auroc", "detection_metrics", "median_threshold",
           "quantile_threshold", "roc_curve", "tpr_at_fpr", "dede_scores", "reconstructions", "Detector",
           "build_detector", "known_detectors", "register_detector", "resolve_detectors"]
