"""Frozen-feature evaluation on a labeled Arrow set: linear probe, kNN, few-shot (``evaluate_checkpoint``)."""

from maws_scale.eval.classifiers import few_shot, fit_logistic, knn_classify, linear_probe
from maws_scale.eval.evaluate import evaluate_checkpoint, evaluate_encoder, evaluate_features
from maws_scale.eval.features import Features, extract_features, split_by_key

__all__ = [
    "Features",
    "evaluate_checkpoint",
    "evaluate_encoder",
    "evaluate_features",
    "extract_features",
    "few_shot",
    "fit_logistic",
    "knn_classify",
    "linear_probe",
    "split_by_key",
]
