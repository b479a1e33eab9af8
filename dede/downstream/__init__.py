from dede.downstream.classifier import FeatureClassifier, downstream_metrics, predict, train_classifier

__all__ = ["FeatureClassifier", "downstream_metrics", "predict", "train_classifier"]
