"""Data sets, the decode-once cache and the loaders.

``load_split(dataset, path, split)`` returns a whole split as :class:`ImageArrays` (uint8 NHWC),
decoded once into the cache; :class:`DeviceLoader` serves augmented batches from the device.
"""

from __future__ import annotations

from pathlib import Path

from sparsetrain.data.arrays import ImageArrays, train_val_split
from sparsetrain.data.cache import load_cached
from sparsetrain.data.loader import DeviceLoader, EpochPlan, StreamLoader
from sparsetrain.data.sources import DatasetInfo, get_dataset_info, list_datasets
from sparsetrain.data.synthetic import is_synthetic_spec, make_synthetic, read_synthetic
from sparsetrain.errors import UserError

__all__ = [
    "DatasetInfo",
    "DeviceLoader",
    "EpochPlan",
    "ImageArrays",
    "StreamLoader",
    "get_dataset_info",
    "is_synthetic_spec",
    "list_datasets",
    "load_split",
    "make_synthetic",
    "train_val_split",
]


def load_split(
    dataset: str, path: str | Path, split: str, cache_dir: str | Path | None = None
) -> ImageArrays:
    """The ``split`` of ``dataset`` read from ``path`` (decoded once into the cache)."""
    info = get_dataset_info(dataset)
    if is_synthetic_spec(str(path)):
        arrays = read_synthetic(str(path), split)
    else:
        arrays = load_cached(path, split, cache_dir=Path(cache_dir) if cache_dir else None)
    if info.num_classes is not None and len(arrays.classes) != info.num_classes:
        raise UserError(
            f"{path} has {len(arrays.classes)} classes but dataset {dataset!r} expects "
            f"{info.num_classes}"
        )
    return arrays
