"""Evaluation metrics of DESIGN.md §3.8: accuracy, calibration, OOD detection, robustness.

``evaluate_model(model, images, labels, mean, std, device=...)`` runs the whole suite and
returns a JSON-serializable dict; the pure metric functions are exported for direct use.
"""

from __future__ import annotations

from sparsetrain.evaluate.calibration import (
    accuracy_topk,
    ece,
    ece_from_bins,
    nll,
    reliability_bins,
)
from sparsetrain.evaluate.ood import (
    OOD_SETS,
    aupr,
    auroc,
    blurred,
    gaussian_noise,
    make_ood_set,
    max_softmax_score,
    pixel_shuffled,
    uniform_noise,
)
from sparsetrain.evaluate.robustness import (
    ATTACKS,
    DEFAULT_EPS,
    eps_label,
    fgsm,
    pgd,
    pixel_normalizer,
    robust_accuracy,
)
from sparsetrain.evaluate.suite import evaluate_model, predict_logits

__all__ = [
    "ATTACKS",
    "DEFAULT_EPS",
    "OOD_SETS",
    "accuracy_topk",
    "aupr",
    "auroc",
    "blurred",
    "ece",
    "ece_from_bins",
    "eps_label",
    "evaluate_model",
    "fgsm",
    "gaussian_noise",
    "make_ood_set",
    "max_softmax_score",
    "nll",
    "pgd",
    "pixel_normalizer",
    "pixel_shuffled",
    "predict_logits",
    "reliability_bins",
    "robust_accuracy",
    "uniform_noise",
]
