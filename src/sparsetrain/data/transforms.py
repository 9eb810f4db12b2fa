"""Image transforms of the streaming loader (no torchvision), seeded per sample.

Each is called as ``t(img, g)`` with a PIL image and a ``torch.Generator`` (``None``: torch's
global generator). ``RandomResizedCrop(draft=True)`` takes the opened, not yet decoded image
and returns uint8 ``[C, H, W]``; ``RandomHorizontalFlip`` takes either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sparsetrain.data import _decode
from sparsetrain.errors import UserError

__all__ = ["CenterCrop", "Compose", "RandomCrop", "RandomHorizontalFlip", "RandomResizedCrop",
           "Resize"]


def _uniform(g: torch.Generator | None, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def _randint(g: torch.Generator | None, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]`` (both ends included)."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from an int or a pair."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _pil() -> Any:
    from PIL import Image  # lazy: only the transforms and the dataset need Pillow

    return Image


class Compose:
    """Apply ``transforms`` in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    @property
    def lazy(self) -> bool:
        """Whether the first transform takes the opened, not yet decoded image."""
        return bool(self.transforms) and getattr(self.transforms[0], "lazy", False)

    def __call__(self, img: Any, g: torch.Generator | None = None) -> Any:
        for t in self.transforms:
            img = t(img, g)
        return img


class RandomResizedCrop:
    """Crop a random area fraction ``scale`` and aspect ``ratio``, resize it to ``size``.

    Up to 10 tries to find a crop that fits; then a center crop with the aspect ratio clamped
    into ``ratio`` (the Inception-style recipe; Szegedy et al., 2015).

    ``draft=True`` takes the opened, not yet decoded image (``lazy``) and returns a uint8
    ``[C, H, W]`` tensor. Equivalence with ``draft=False``: the crop box is the same, from the
    same random draws, in original-image coordinates, so the crop distribution is identical.
    Only the resampling differs: a JPEG is decoded at 1/s (s in 8, 4, 2) in the DCT domain when
    the box still spans at least ``size`` pixels at 1/s, and the box (mapped exactly, by
    fractional coordinates) is then resized by bilinear interpolation; at s = 1 torch's
    antialiased bilinear replaces Pillow's (equal to within rounding). BENCHMARKS.md, "Input
    pipeline (issue 19)", gives the measured pixel difference.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        draft: bool = False,
    ) -> None:
        self.size, self.scale, self.ratio, self.draft = _pair(size), scale, ratio, draft

    @property
    def lazy(self) -> bool:
        return self.draft

    def get_params(
        self, width: int, height: int, g: torch.Generator | None = None
    ) -> tuple[int, int, int, int]:
        """``(top, left, crop_height, crop_width)``, always inside the image."""
        area = width * height
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * _uniform(g, *self.scale)
            aspect = math.exp(_uniform(g, log_lo, log_hi))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return _randint(g, 0, height - h), _randint(g, 0, width - w), h, w
        lo, hi = min(self.ratio), max(self.ratio)
        w, h = width, height
        if width / height < lo:
            h = min(height, round(width / lo))
        elif width / height > hi:
            w = min(width, round(height * hi))
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: Any, g: torch.Generator | None = None) -> Any:
        if isinstance(img, torch.Tensor):  # uint8 [C, H, W] from a tensor decoder
            box = self.get_params(img.shape[-1], img.shape[-2], g)
            return _decode.resize_box(img, box, 1, self.size)
        top, left, h, w = self.get_params(img.width, img.height, g)
        out_h, out_w = self.size
        if self.draft:
            img, used = _decode.decode_reduced(img, _decode.draft_scale(w, h, out_w, out_h))
            return _decode.resize_box(img, (top, left, h, w), used, self.size)
        return img.resize(
            (out_w, out_h), _pil().Resampling.BILINEAR, box=(left, top, left + w, top + h)
        )


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Any, g: torch.Generator | None = None) -> Any:
        if float(torch.rand(1, generator=g)) < self.p:
            if isinstance(img, torch.Tensor):
                return img.flip(-1)
            return img.transpose(_pil().Transpose.FLIP_LEFT_RIGHT)
        return img


class RandomCrop:
    """Pad by ``padding`` (``reflect``: mirror without repeating the edge; ``zeros``), then
    take a random ``size`` crop."""

    def __init__(
        self, size: int | Sequence[int], padding: int = 4, padding_mode: str = "reflect"
    ) -> None:
        if padding_mode not in ("reflect", "zeros"):
            raise UserError(f"unknown padding mode {padding_mode!r}; use reflect or zeros")
        self.size, self.padding, self.padding_mode = _pair(size), padding, padding_mode

    def __call__(self, img: Any, g: torch.Generator | None = None) -> Any:
        arr = np.asarray(img)
        p = self.padding
        if p > 0:
            pad = ((p, p), (p, p)) + ((0, 0),) * (arr.ndim - 2)
            arr = np.pad(arr, pad, mode="reflect" if self.padding_mode == "reflect" else "constant")
        th, tw = self.size
        if arr.shape[0] < th or arr.shape[1] < tw:
            raise ValueError(f"crop {self.size} is larger than the padded image {arr.shape[:2]}")
        top, left = _randint(g, 0, arr.shape[0] - th), _randint(g, 0, arr.shape[1] - tw)
        return _pil().fromarray(np.ascontiguousarray(arr[top : top + th, left : left + tw]))


class Resize:
    """Resize so the shorter side is ``size`` (an int), or to exactly ``(h, w)`` (a pair)."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = size

    def __call__(self, img: Any, g: torch.Generator | None = None) -> Any:
        if isinstance(self.size, int):
            w, h = img.size
            short, long = min(w, h), max(w, h)
            new_long = int(self.size * long / short)
            new_w, new_h = (self.size, new_long) if w <= h else (new_long, self.size)
        else:
            new_h, new_w = _pair(self.size)
        if (new_w, new_h) == img.size:
            return img
        return img.resize((new_w, new_h), _pil().Resampling.BILINEAR)


class CenterCrop:
    """The central ``size`` crop (zero-padded where the image is smaller)."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size)

    def __call__(self, img: Any, g: torch.Generator | None = None) -> Any:
        th, tw = self.size
        top, left = (img.height - th) // 2, (img.width - tw) // 2
        return img.crop((left, top, left + tw, top + th))
