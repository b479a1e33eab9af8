from dede.detect.metrics import (Threshold, apply_threshold, auprc, auroc, detection_metrics, median_threshold,
                                 quantile_threshold, roc_curve, tpr_at_fpr)
from dede.detect.scoring import dede_scores, reconstructions

__all__ = ["Threshold", "apply_threshold", "auprc", "auroc", "detection_metrics", "median_threshold",
           "quantile_threshold", "roc_curve", "tpr_at_fpr", "dede_scores", "reconstructions"]
