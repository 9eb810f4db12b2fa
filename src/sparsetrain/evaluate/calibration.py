"""Accuracy, negative log-likelihood and calibration of a classifier's predictions.

Every function takes a whole evaluation set at once: ``logits`` (or probabilities) ``[N, K]``
and integer ``labels`` ``[N]``, on any device; results are Python floats computed in float64.

Calibration follows Guo et al., "On Calibration of Modern Neural Networks" (ICML 2017): the
confidence of a prediction is its maximum softmax probability, the confidences are grouped
into ``n_bins`` equal-width bins, and the expected calibration error (their Eq. 3) is

    ECE = sum_b (|B_b| / N) * |acc(B_b) - conf(B_b)|.

Bin edge convention: bin ``i`` is the half-open interval ``(i / n_bins, (i + 1) / n_bins]``
(the upper edge belongs to the bin, so a confidence of exactly 1 lands in the last bin), and a
confidence of exactly 0 goes to the first bin. The edges are ``i / n_bins`` in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sparsetrain.errors import UserError


def _check(scores: torch.Tensor, labels: torch.Tensor) -> None:
    if scores.dim() != 2 or labels.dim() != 1 or len(scores) != len(labels):
        raise UserError(
            f"expected scores [N, K] and labels [N], got {tuple(scores.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if len(labels) == 0:
        raise UserError("cannot evaluate an empty set of predictions")


def accuracy_topk(
    logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}``: fraction of samples whose label is among the ``k``
    highest scores (``k`` larger than the number of classes counts every sample correct).
    Ties are broken by ``torch.topk``."""
    _check(logits, labels)
    if any(k < 1 for k in ks):
        raise UserError(f"top-k needs k >= 1, got {tuple(ks)}")
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # [N, kmax], best first
    hit = top == labels.to(top.device)[:, None]  # [N, kmax]
    n = len(labels)
    return {f"top{k}": hit[:, : min(k, kmax)].any(1).sum().item() / n for k in ks}


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood ``-mean_i log softmax(logits_i)[y_i]``, in float64."""
    _check(logits, labels)
    logp = F.log_softmax(logits.double(), dim=1)
    return -logp.gather(1, labels.to(logp.device).long()[:, None]).mean().item()


def _as_probs(scores: torch.Tensor, from_logits: bool | None) -> torch.Tensor:
    """float64 probabilities; ``from_logits=None`` treats rows that are non-negative and sum
    to 1 (within 1e-6) as probabilities and anything else as logits."""
    x = scores.double()
    if from_logits is None:
        from_logits = not (bool((x >= 0).all()) and bool(((x.sum(1) - 1).abs() <= 1e-6).all()))
    return x.softmax(1) if from_logits else x


def _bin_index(conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin of each confidence: ``i`` for ``conf`` in ``(i / n, (i + 1) / n]``, 0 for 0."""
    inner = torch.arange(1, n_bins, dtype=torch.float64, device=conf.device) / n_bins
    # bucketize(right=False) returns i with inner[i-1] < conf <= inner[i]
    return torch.bucketize(conf.double(), inner, right=False)


def reliability_bins(
    probs_or_logits: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    *,
    from_logits: bool | None = None,
) -> dict[str, list]:
    """Per-bin mean confidence, accuracy and count for a reliability diagram (Guo et al. 2017).

    Returns ``{"edges": [n_bins + 1], "confidence": [n_bins], "accuracy": [n_bins],
    "count": [n_bins]}``; empty bins have confidence and accuracy ``None`` (JSON ``null``).
    """
    _check(probs_or_logits, labels)
    if n_bins < 1:
        raise UserError(f"n_bins must be >= 1, got {n_bins}")
    probs = _as_probs(probs_or_logits, from_logits)
    conf, pred = probs.max(1)  # [N], [N]
    correct = (pred == labels.to(pred.device)).double()
    idx = _bin_index(conf, n_bins)
    count = torch.zeros(n_bins, dtype=torch.float64, device=conf.device)
    count.index_add_(0, idx, torch.ones_like(conf))
    conf_sum = torch.zeros_like(count).index_add_(0, idx, conf)
    acc_sum = torch.zeros_like(count).index_add_(0, idx, correct)
    counts = [int(c) for c in count.tolist()]
    conf_mean = [s / c if c else None for s, c in zip(conf_sum.tolist(), counts, strict=True)]
    acc_mean = [s / c if c else None for s, c in zip(acc_sum.tolist(), counts, strict=True)]
    return {
        "edges": [i / n_bins for i in range(n_bins + 1)],
        "confidence": conf_mean,
        "accuracy": acc_mean,
        "count": counts,
    }


def ece_from_bins(bins: dict[str, list]) -> float:
    """Expected calibration error (Guo et al. 2017, Eq. 3) of :func:`reliability_bins`."""
    n = sum(bins["count"])
    return sum(
        c / n * abs(a - f)
        for a, f, c in zip(bins["accuracy"], bins["confidence"], bins["count"], strict=True)
        if c
    )


def ece(
    probs_or_logits: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    *,
    from_logits: bool | None = None,
) -> float:
    """Expected calibration error over ``n_bins`` equal-width max-softmax bins (Guo et al.
    2017, Eq. 3); see the module docstring for the bin edge convention."""
    return ece_from_bins(reliability_bins(probs_or_logits, labels, n_bins, from_logits=from_logits))
