"""Out-of-distribution detection: the max-softmax score, AUROC/AUPR and generated OOD sets.

The baseline of Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
Out-of-Distribution Examples in Neural Networks" (ICLR 2017): score each image by its maximum
softmax probability (MSP) and measure how well the score separates the in-distribution test set
(the positive class, higher score = more in-distribution) from an OOD set, by the area under
the ROC curve and the area under the precision-recall curve (average precision).

Generated OOD sets are made from the uint8 ``[N, H, W, C]`` test images. Every entry of
:data:`OOD_SETS` shares one signature, ``make(images, seed) -> uint8 [N, H, W, C]`` (same shape
and device as ``images``), and is deterministic for a given ``seed``; random draws happen on
the CPU so the sets are the same on every device.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from sparsetrain.errors import UserError

_CHUNK = 1024  # images per chunk of float work in the generators


def max_softmax_score(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability per row (Hendrycks & Gimpel 2017), float32 ``[N]``."""
    return logits.float().softmax(1).amax(1)


def _scores(scores_in: torch.Tensor | np.ndarray, scores_out: torch.Tensor | np.ndarray):
    s_in = np.asarray(torch.as_tensor(scores_in).detach().cpu().double()).reshape(-1)
    s_out = np.asarray(torch.as_tensor(scores_out).detach().cpu().double()).reshape(-1)
    if len(s_in) == 0 or len(s_out) == 0:
        raise UserError("AUROC/AUPR need at least one in-distribution and one OOD score")
    if np.isnan(s_in).any() or np.isnan(s_out).any():
        raise UserError("OOD scores contain NaN")
    return s_in, s_out


def auroc(scores_in: torch.Tensor | np.ndarray, scores_out: torch.Tensor | np.ndarray) -> float:
    """Area under the ROC curve with in-distribution as the positive class.

    Exact Mann-Whitney statistic ``P(s_in > s_out) + P(s_in = s_out) / 2`` over all pairs,
    from average ranks of the pooled scores (ties share the mean of their ranks).
    """
    s_in, s_out = _scores(scores_in, scores_out)
    pooled = np.concatenate([s_in, s_out])
    order = np.argsort(pooled, kind="stable")
    sorted_vals = pooled[order]
    # start and end (exclusive) of each run of equal values in sorted order
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(pooled)]
    avg_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(len(pooled))
    ranks[order] = np.repeat(avg_rank, ends - starts)
    n_in, n_out = len(s_in), len(s_out)
    u = ranks[:n_in].sum() - n_in * (n_in + 1) / 2.0
    return float(u / (n_in * n_out))


def aupr(scores_in: torch.Tensor | np.ndarray, scores_out: torch.Tensor | np.ndarray) -> float:
    """Average precision with in-distribution as the positive class.

    Step-wise, as scikit-learn's ``average_precision_score``: ``sum_k (R_k - R_{k-1}) P_k``
    over the distinct score thresholds in decreasing order (tied scores enter together).
    """
    s_in, s_out = _scores(scores_in, scores_out)
    scores = np.concatenate([s_in, s_out])
    positive = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), len(scores) - 1]  # end of each tie
    tp = np.cumsum(positive)[last]
    precision = tp / (last + 1)
    recall = tp / len(s_in)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def gaussian_noise(n: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """``n`` uint8 ``[H, W, C]`` images of i.i.d. ``clip(N(0.5, 0.25^2), 0, 1) * 255`` pixels."""
    g = torch.Generator().manual_seed(int(seed))
    out = torch.empty((n, *shape), dtype=torch.uint8)
    for s in range(0, n, _CHUNK):  # fixed-size chunks bound the float memory
        x = torch.randn((min(_CHUNK, n - s), *shape), generator=g)
        out[s : s + _CHUNK] = x.mul_(0.25).add_(0.5).clamp_(0.0, 1.0).mul_(255.0).round_()
    return out


def uniform_noise(n: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """``n`` uint8 ``[H, W, C]`` images of i.i.d. uniform pixels in 0..255."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)


def gaussian_kernel(sigma: float, taps: int = 9) -> torch.Tensor:
    """Normalized 1-D Gaussian kernel of ``taps`` (odd) samples, float32."""
    if sigma <= 0 or taps < 1 or taps % 2 == 0:
        raise UserError(f"need sigma > 0 and an odd number of taps, got {sigma}, {taps}")
    r = torch.arange(taps, dtype=torch.float64) - taps // 2
    k = torch.exp(-(r**2) / (2 * sigma**2))
    return (k / k.sum()).float()


def blurred(
    images: torch.Tensor, seed: int = 0, sigma: float = 2.0
) -> torch.Tensor:
    """Separable Gaussian blur (9 taps, reflect padding) of uint8 ``[N, H, W, C]`` images.

    Deterministic; ``seed`` is accepted for the common :data:`OOD_SETS` signature only.
    Images must be larger than 4 pixels per side (reflect padding of 4).
    """
    del seed
    k = gaussian_kernel(sigma).to(images.device)
    c = images.shape[-1]
    pad = len(k) // 2
    kh = k.view(1, 1, -1, 1).repeat(c, 1, 1, 1)  # [C, 1, 9, 1] depthwise, vertical
    kw = k.view(1, 1, 1, -1).repeat(c, 1, 1, 1)  # [C, 1, 1, 9] depthwise, horizontal
    out = torch.empty_like(images)
    for s in range(0, len(images), _CHUNK):
        x = images[s : s + _CHUNK].permute(0, 3, 1, 2).float()  # [B, C, H, W]
        x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), kh, groups=c)
        x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), kw, groups=c)
        out[s : s + _CHUNK] = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return out


def pixel_shuffled(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Images with their pixel positions permuted by one fixed random permutation (the same
    for every image and channel): colour statistics kept, spatial structure destroyed."""
    n, h, w, c = images.shape
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(h * w, generator=g).to(images.device)
    return images.reshape(n, h * w, c)[:, perm].reshape(n, h, w, c)


OodSet = Callable[[torch.Tensor, int], torch.Tensor]


def _gaussian(images: torch.Tensor, seed: int) -> torch.Tensor:
    return gaussian_noise(len(images), tuple(images.shape[1:]), seed).to(images.device)


def _uniform(images: torch.Tensor, seed: int) -> torch.Tensor:
    return uniform_noise(len(images), tuple(images.shape[1:]), seed).to(images.device)


OOD_SETS: dict[str, OodSet] = {
    "gaussian": _gaussian,
    "uniform": _uniform,
    "blur": blurred,
    "shuffle": pixel_shuffled,
}


def make_ood_set(name: str, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The generated OOD set ``name`` (a key of :data:`OOD_SETS`) built from ``images``."""
    if name not in OOD_SETS:
        raise UserError(f"unknown OOD set {name!r}; choose from {sorted(OOD_SETS)}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise UserError(f"expected uint8 [N, H, W, C] images, got {images.dtype} "
                        f"{tuple(images.shape)}")
    if name == "blur" and min(images.shape[1:3]) <= 4:
        raise UserError(f"blur needs images larger than 4x4, got {tuple(images.shape[1:3])}")
    return OOD_SETS[name](images, seed)

