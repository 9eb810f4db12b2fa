"""Synthetic image classification data that a tiny CNN learns in a few steps.

Each class has a fixed template: a base colour plus a smooth oriented sine grating of its own
frequency and phase (the templates depend only on ``num_classes`` and ``image_size``). An
image is its class template, shifted by a few pixels, scaled in brightness, plus Gaussian
noise; ``seed`` decides labels, shifts and noise, so different seeds give different samples of
the same classes.

Path convention (used by :func:`sparsetrain.data.sources.read_split` and the cache)::

    "synthetic"                    512 train / 256 test images, 10 classes, 32x32
    "synthetic:<n_train>"          n_train train images, 256 test images
    "synthetic:<n_train>:<n_test>"

The train split uses ``seed=0`` and the test split ``seed=1``.
"""

from __future__ import annotations

import hashlib
import math

import torch

from sparsetrain.data.arrays import ImageArrays
from sparsetrain.errors import UserError

SYNTHETIC_PREFIX = "synthetic"
DEFAULT_TRAIN = 512
DEFAULT_TEST = 256
_TEMPLATE_SEED = 20_240_601
_SPLIT_SEEDS = {"train": 0, "test": 1}


def _templates(num_classes: int, image_size: int) -> torch.Tensor:
    """Float templates ``[K, H, W, 3]`` in 0..255, the same for every seed."""
    g = torch.Generator().manual_seed(_TEMPLATE_SEED)
    colors = 60.0 + 135.0 * torch.rand(num_classes, 3, generator=g)
    coords = torch.arange(image_size, dtype=torch.float32) / image_size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    out = torch.empty(num_classes, image_size, image_size, 3)
    for k in range(num_classes):
        angle = math.pi * k / num_classes + 0.3 * float(torch.rand(1, generator=g))
        freq = 1.0 + (k % 4) + float(torch.rand(1, generator=g))
        phase = 2 * math.pi * float(torch.rand(1, generator=g))
        wave = torch.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
        channel_gain = torch.tensor([1.0, -0.6, 0.4]).roll(k % 3)
        out[k] = colors[k] + 55.0 * wave[..., None] * channel_gain
    return out


def make_synthetic(
    n: int, num_classes: int = 10, image_size: int = 32, seed: int = 0
) -> ImageArrays:
    """``n`` deterministic, learnable uint8 images (balanced labels) of ``num_classes``."""
    if n < 0 or num_classes < 1 or image_size < 4:
        raise UserError(
            f"bad synthetic data parameters: n={n}, num_classes={num_classes}, "
            f"image_size={image_size}"
        )
    g = torch.Generator().manual_seed(int(seed) * 7_777 + 1)
    templates = _templates(num_classes, image_size)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    images = templates[labels]  # [n, H, W, 3]
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    for i in range(n):  # small translations so the task is not pure template matching
        images[i] = images[i].roll((int(shifts[i, 0]), int(shifts[i, 1])), dims=(0, 1))
    gain = 0.85 + 0.3 * torch.rand(n, 1, 1, 1, generator=g)
    images = (images - 128.0) * gain + 128.0
    images = images + 18.0 * torch.randn(images.shape, generator=g)
    images = images.round().clamp(0, 255).to(torch.uint8).contiguous()
    spec = f"synthetic:n={n}:k={num_classes}:size={image_size}:seed={seed}"
    return ImageArrays(
        images=images,
        labels=labels.long(),
        classes=tuple(f"class{k}" for k in range(num_classes)),
        checksum=hashlib.sha256(spec.encode()).hexdigest(),
    )


def is_synthetic_spec(path: object) -> bool:
    """Whether ``path`` is a ``synthetic[:n_train[:n_test]]`` spec rather than a file path."""
    if not isinstance(path, str):
        return False
    return path == SYNTHETIC_PREFIX or path.startswith(SYNTHETIC_PREFIX + ":")


def parse_synthetic_spec(spec: str) -> tuple[int, int]:
    """``(n_train, n_test)`` of a ``synthetic[:n_train[:n_test]]`` spec."""
    parts = spec.split(":")[1:]
    if len(parts) > 2 or not all(p.isdigit() for p in parts):
        raise UserError(
            f"bad synthetic data spec {spec!r}: use synthetic, synthetic:<n_train> or "
            "synthetic:<n_train>:<n_test>"
        )
    sizes = [int(p) for p in parts] + [DEFAULT_TRAIN, DEFAULT_TEST][len(parts) :]
    return sizes[0], sizes[1]


def read_synthetic(spec: str, split: str) -> ImageArrays:
    """The ``split`` ("train" or "test") of the synthetic data set named by ``spec``."""
    n_train, n_test = parse_synthetic_spec(spec)
    if split not in _SPLIT_SEEDS:
        raise UserError(f"split {split!r} is not available for {spec!r}; use 'train' or 'test'")
    n = n_train if split == "train" else n_test
    return make_synthetic(n, seed=_SPLIT_SEEDS[split])
