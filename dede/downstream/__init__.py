from dede.downstream.classifier import (FeatureClassifier, downstream_metrics, knn_metrics, knn_predict, predict,
                                       train_classifier)

__all__ = ["FeatureClassifier", "downstream_metrics", "knn_metrics", "knn_predict", "predict", "train_classifier"]
