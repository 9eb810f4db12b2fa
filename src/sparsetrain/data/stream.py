"""Streaming loader for image folders too large to hold in memory (ImageNet-style).

Images are read from ``root/<split>/<class>/...`` one by one in DataLoader workers, augmented
by our small transforms (:mod:`sparsetrain.data.transforms`, no torchvision) and returned as
uint8 ``[C, H, W]``;
:func:`normalize_batch` turns whole uint8 batches into normalized floats on the device.

Every random decision for sample ``index`` in ``epoch`` comes from its own generator seeded by
``(seed, epoch, index)`` (:func:`sample_generator`), and the order from one seeded by
``(seed, epoch)``, so a batch is the same whatever the number of workers. Transforms are
called as ``t(img, g)`` with a ``torch.Generator`` (``None``: torch's global generator).

``RandomResizedCrop(size, draft=True)`` is the fast training path for large JPEGs: it draws
the crop box in original coordinates first (same draws as the full path), then decodes at the
most reduced DCT scale (1/8, 1/4, 1/2, else full) that still leaves the box at least ``size``
(:mod:`sparsetrain.data._decode`).
Samples stay uint8 until :func:`normalize_batch` on the device; batches are collated in
channels-last memory, the layout ``normalize_batch`` produces.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from sparsetrain.data import _decode
from sparsetrain.data.transforms import (  # noqa: F401  (re-exported: the public names)
    CenterCrop,
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    _pil,
)
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


def to_uint8_chw(img: Any) -> torch.Tensor:
    """A PIL image (or a uint8 tensor, returned as is) as uint8 ``[C, H, W]`` (RGB), a view
    of ``[H, W, C]`` memory: :func:`collate_channels_last` stacks it without transposing."""
    if isinstance(img, torch.Tensor):
        return img
    arr = np.array(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1)


def collate_channels_last(batch: list) -> Any:
    """``(uint8 [C, H, W], label)`` samples as (uint8 ``[B, C, H, W]`` in channels-last
    memory, int64 labels); anything else through torch's ``default_collate``."""
    first = batch[0]
    if not (isinstance(first, tuple) and isinstance(first[0], torch.Tensor)
            and first[0].dim() == 3):
        return default_collate(batch)
    x = torch.stack([s[0].permute(1, 2, 0) for s in batch])  # [B, H, W, C]
    return x.permute(0, 3, 1, 2), torch.tensor([s[1] for s in batch], dtype=torch.int64)


def decode_sample(fp: Any, transform: Any, g: torch.Generator) -> torch.Tensor:
    """Open the image in ``fp`` (a path or a binary file), apply ``transform`` (to the
    undecoded image when it is ``lazy``), as uint8 ``[C, H, W]``."""
    with _pil().open(fp) as im:
        img = im if getattr(transform, "lazy", False) else im.convert("RGB")
        return to_uint8_chw(transform(img, g) if transform is not None else img)


class ImageFolderStream(Dataset):
    """``root/<split>/<class>/**/*.{jpg,jpeg,png}`` read lazily; items ``(uint8 [C,H,W], label)``.

    Classes are the sorted folder names; paths are kept in numpy arrays (not Python lists) so
    forked workers do not copy them page by page. ``decoder="torchvision"`` decodes with
    torchvision.io where installed (its transforms must take uint8 tensors:
    ``RandomResizedCrop``, ``RandomHorizontalFlip``); DALI/nvJPEG are GPU-only and not used.
    """

    def __init__(
        self, root: str | Path, split: str = "train", transform: Any = None, seed: int = 0,
        decoder: str = "pil",
    ) -> None:
        if decoder not in ("pil", "torchvision"):
            raise UserError(f"unknown decoder {decoder!r}; use pil or torchvision")
        if decoder == "torchvision" and not _decode.has_torchvision_io():
            raise UserError("decoder 'torchvision' needs torchvision, which is not installed")
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
        self.transform, self.seed, self.epoch, self.decoder = transform, seed, 0, decoder

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
        g, path = sample_generator(self.seed, epoch, index), str(self._paths[index])
        if self.decoder == "torchvision":
            img = _decode.torchvision_decode(path)
            x = self.transform(img, g) if self.transform is not None else img
        else:
            x = decode_sample(path, self.transform, g)
        return x, int(self._labels[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.load(index, self.epoch)


class _Keyed(Dataset):
    """``dataset`` indexed by ``(epoch, index)``: the epoch travels with each key, so one set
    of (persistent) workers serves every epoch."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        load = getattr(self.dataset, "load", None)
        return load(index, epoch) if load is not None else self.dataset[index]


class _Keys(torch.utils.data.Sampler):
    """The keys of the current epoch; replaced between epochs, read when iteration starts."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


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


def epoch_order(dataset: Any, *, train: bool, seed: int, epoch: int, rank: int = 0,
                world_size: int = 1) -> torch.Tensor:
    """This rank's indices for ``epoch``: the dataset's own ``order(...)`` where it has one
    (tar shards read shard by shard), else :func:`shard_indices`."""
    own = getattr(dataset, "order", None)
    if own is not None:
        return own(train=train, seed=seed, epoch=epoch, rank=rank, world_size=world_size)
    return shard_indices(len(dataset), train=train, seed=seed, epoch=epoch, rank=rank,
                         world_size=world_size)


def worker_init(worker_id: int = 0) -> None:
    """Per worker: keep up to 4 freed Pillow image buffers (``PILLOW_BLOCKS_MAX``, unless the
    environment sets it), so each decode reuses memory instead of page-faulting in a fresh
    mapping; measured up to 1.5x faster full decodes of 1000x750 JPEGs."""
    if "PILLOW_BLOCKS_MAX" not in os.environ:
        _pil().core.set_blocks_max(4)


class StreamBatches:
    """uint8 batches of this rank's share of ``dataset``, epoch after epoch, from one
    DataLoader whose ``workers`` persist across epochs and keep ``prefetch`` batches each in
    flight (worker start-up, a second or more with a large index, is paid once).

    Order from :func:`epoch_order`; ``drop_last`` defaults to ``train``. The epoch reaches the
    dataset's ``load(index, epoch)`` (if it has one) for augmentation seeding.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, train: bool, seed: int,
                 workers: int = 2, rank: int = 0, world_size: int = 1,
                 drop_last: bool | None = None, prefetch: int = 2,
                 persistent: bool = True) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size, self.train, self.seed = dataset, batch_size, train, seed
        self.rank, self.world_size = rank, world_size
        self._keys = _Keys()
        self.loader = DataLoader(
            _Keyed(dataset), batch_size=batch_size, sampler=self._keys, num_workers=workers,
            pin_memory=torch.cuda.is_available(), collate_fn=collate_channels_last,
            drop_last=train if drop_last is None else drop_last,
            persistent_workers=persistent and workers > 0,
            prefetch_factor=prefetch if workers > 0 else None, worker_init_fn=worker_init,
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Serve ``epoch`` from batch ``start_batch`` on (resume mid-epoch) at the next iter."""
        order = epoch_order(self.dataset, train=self.train, seed=self.seed, epoch=epoch,
                            rank=self.rank, world_size=self.world_size)
        self._keys.keys = [(epoch, i) for i in order[start_batch * self.batch_size :].tolist()]

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Any]:
        """An iterator over the batches of ``epoch`` (one at a time: a new one ends the last)."""
        self.set_epoch(epoch, start_batch)
        return iter(self.loader)


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
    """A one-epoch DataLoader over this rank's share of ``dataset`` (uint8 batches); see
    :class:`StreamBatches`, which keeps its workers across epochs.
    ``start_batch`` skips the first batches of the epoch (resume mid-epoch)."""
    batches = StreamBatches(dataset, batch_size, train=train, seed=seed, workers=workers,
                            rank=rank, world_size=world_size, drop_last=drop_last,
                            persistent=False)
    batches.set_epoch(epoch, start_batch)
    return batches.loader


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
