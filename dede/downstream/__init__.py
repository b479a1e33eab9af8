from dede.downstream.classifier import (FeatureClassifier, downstream_metrics, knn_metrics, knn_predict, predict,
                                       train_classifier)
from dede.downstream.protocol import DownstreamProtocol

__all__ = ["DownstreamProtocol", "FeatureClassifier", "downstream_metrics", "knn_metrics", "knn_predict", "predict",
           "train_classifier"]
