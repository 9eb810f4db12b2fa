"""Streaming loader for image folders too large to hold in memory (ImageNet-style).

Images are read from ``root/<split>/<class>/...`` one by one in DataLoader workers, augmented
by the small PIL transforms below (no torchvision) and returned as uint8 ``[C, H, W]``;
:func:`normalize_batch` turns whole uint8 batches into normalized floats on the device.

Every random decision for sample ``index`` in ``epoch`` comes from its own generator seeded by
``(seed, epoch, index)`` (:func:`sample_generator`), and the order from one seeded by
``(seed, epoch)``, so a batch is the same whatever the number of workers. Transforms are
called as ``t(img, g)`` with a ``torch.Generator`` (``None``: torch's global generator).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sparsetrain.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 63-bit seed mixing ``values`` (splitmix64 steps), for independent generators."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = ((x ^ (int(v) & _MASK64)) * 0xBF58476D1CE4E5B9) & _MASK64
        x ^= x >> 31
        x = (x * 0x94D049BB133111EB) & _MASK64
        x ^= x >> 29
    return x & ((1 << 63) - 1)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator for the random augmentation of sample ``index`` in ``epoch``."""
    return torch.Generator().manual_seed(_mix(seed, epoch, index))


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

    def __call__(self, img: Any, g: torch.Generator | None = None) -> Any:
        for t in self.transforms:
            img = t(img, g)
        return img


class RandomResizedCrop:
    """Crop a random area fraction ``scale`` and aspect ``ratio``, resize it to ``size``.

    Up to 10 tries to find a crop that fits; then a center crop with the aspect ratio clamped
    into ``ratio`` (the Inception-style recipe).
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        self.size, self.scale, self.ratio = _pair(size), scale, ratio

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
        top, left, h, w = self.get_params(img.width, img.height, g)
        out_h, out_w = self.size
        return img.resize(
            (out_w, out_h), _pil().Resampling.BILINEAR, box=(left, top, left + w, top + h)
        )


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Any, g: torch.Generator | None = None) -> Any:
        if float(torch.rand(1, generator=g)) < self.p:
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


def to_uint8_chw(img: Any) -> torch.Tensor:
    """A PIL image as a uint8 ``[C, H, W]`` tensor (RGB)."""
    arr = np.array(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class ImageFolderStream(Dataset):
    """``root/<split>/<class>/**/*.{jpg,jpeg,png}`` read lazily; items ``(uint8 [C,H,W], label)``.

    Classes are the sorted folder names; paths are kept in numpy arrays (not Python lists) so
    forked workers do not copy them page by page.
    """

    def __init__(
        self, root: str | Path, split: str = "train", transform: Any = None, seed: int = 0
    ) -> None:
        split_dir = Path(root).expanduser() / split
        if not Path(root).expanduser().exists():
            raise UserError(f"data path not found: {root}")
        if not split_dir.is_dir():
            raise UserError(f"split {split!r} not found in {root}")
        self.classes = tuple(
            sorted(d.name for d in split_dir.iterdir() if d.is_dir() and d.name[0] != ".")
        )
        paths, labels = [], []
        for label, cls in enumerate(self.classes):
            for dirpath, dirnames, files in os.walk(split_dir / cls):
                dirnames.sort()
                for f in sorted(files):
                    if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                        paths.append(os.path.join(dirpath, f))
                        labels.append(label)
        if not paths:
            raise UserError(f"no images found in {split_dir}")
        self._paths = np.array(paths)
        self._labels = np.array(labels, dtype=np.int64)
        self.transform, self.seed, self.epoch = transform, seed, 0

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``(path, label)`` of every image, in index order."""
        return list(zip(self._paths.tolist(), self._labels.tolist(), strict=True))

    def __len__(self) -> int:
        return len(self._paths)

    def set_epoch(self, epoch: int) -> None:
        """The epoch used by ``__getitem__`` (the stream loader passes it explicitly)."""
        self.epoch = epoch

    def load(self, index: int, epoch: int) -> tuple[torch.Tensor, int]:
        """Sample ``index`` augmented as in ``epoch``."""
        with _pil().open(str(self._paths[index])) as im:
            img = im.convert("RGB")
        if self.transform is not None:
            img = self.transform(img, sample_generator(self.seed, epoch, index))
        return to_uint8_chw(img), int(self._labels[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.load(index, self.epoch)


class _EpochView(Dataset):
    """``dataset`` as seen in ``epoch`` (picklable, so workers get the epoch with it)."""

    def __init__(self, dataset: Dataset, epoch: int) -> None:
        self.dataset, self.epoch = dataset, epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        load = getattr(self.dataset, "load", None)
        return load(index, self.epoch) if load is not None else self.dataset[index]


def shard_indices(
    n: int, *, train: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """This rank's sample indices: ``perm[rank::world_size]`` of a (seed, epoch) permutation.

    Training pads the permutation by wrap-around so every rank gets the same count (as
    DistributedSampler does); evaluation keeps ``arange(n)`` unpadded, so no image is counted
    twice and the shards are disjoint.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"bad rank {rank} for world size {world_size}")
    if not train:
        return torch.arange(n)[rank::world_size]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, epoch, -1)))
    total = -(-n // world_size) * world_size
    if total > n:
        order = order.repeat(-(-total // n))[:total]
    return order[rank::world_size]


def make_stream_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int,
    epoch: int,
    workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool | None = None,
    start_batch: int = 0,
) -> DataLoader:
    """A DataLoader over this rank's shard of ``dataset`` for ``epoch`` (uint8 batches).

    Order from :func:`shard_indices`; ``drop_last`` defaults to ``train``. The epoch reaches
    the dataset's ``load(index, epoch)`` (if it has one) for augmentation seeding.
    ``start_batch`` skips the first batches of the epoch (resume mid-epoch).
    """
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    indices = shard_indices(
        len(dataset), train=train, seed=seed, epoch=epoch, rank=rank, world_size=world_size
    )
    return DataLoader(
        _EpochView(dataset, epoch),
        batch_size=batch_size,
        sampler=indices[start_batch * batch_size :].tolist(),
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=train if drop_last is None else drop_last,
        persistent_workers=False,
    )


@functools.lru_cache(maxsize=16)
def _stats(std: tuple, mean: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel std and mean as [1, C, 1, 1] tensors on ``device``, made once (a host to
    device copy per batch would synchronize the GPU stream)."""
    return (torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1),
            torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1))


def normalize_batch(
    x_uint8: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> torch.Tensor:
    """``(x / 255 - mean) / std`` for a ``[B, C, H, W]`` batch, on its device, as ``dtype``."""
    if x_uint8.dim() != 4 or x_uint8.shape[1] != len(mean) or len(std) != len(mean):
        raise ValueError(
            f"expected [B, {len(mean)}, H, W] for {len(mean)} means, got {tuple(x_uint8.shape)}"
        )
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    std_t, mean_t = _stats(tuple(std), tuple(mean), x_uint8.device)
    x = x_uint8.to(torch.float32, copy=True, memory_format=fmt)  # never the caller's tensor
    x.mul_(1.0 / (255.0 * std_t)).sub_(mean_t / std_t)
    return x.to(dtype).contiguous(memory_format=fmt)
