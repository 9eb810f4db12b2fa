"""Tar shards (webdataset layout) for data sets larger than RAM: written once, read shard by shard.

Layout: ``DST/<split>/shard-000000.tar``, ... each holding, per sample, ``<key>.jpg`` (or
``.png``: the original bytes) and ``<key>.cls`` (the label as decimal text), plus
``DST/<split>/index.json``: the class names and, per shard, every sample's data offset, size
and label. :func:`write_shards` writes both; shards from other webdataset tools work without
the index (it is rebuilt by scanning the tar headers, labels from ``.cls``).

Order, fixed by ``(seed, epoch)`` (:meth:`ShardStream.order`): the shards are permuted, and the
samples of each ``window`` of consecutive shards are permuted together (the in-shard shuffle
buffer). That sequence is cut into ``world_size`` contiguous blocks, one per rank, padded by
wrap-around for training so every rank gets as many samples (as :func:`shard_indices` does),
unpadded for evaluation. A rank therefore works through one window of shards at a time: each
sample is read at its offset (``os.pread``) by whichever worker decodes it, all workers read
the same few shard files, and the page cache's read-ahead makes the disk traffic near-
sequential. Batches are the same for any number of workers, and every sample is read exactly
once per epoch (plus training's wrap-around padding).

    python -m sparsetrain.data.shards write SRC DST --shard-size 1000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sparsetrain.data.stream import ImageFolderStream, _mix, decode_sample, sample_generator
from sparsetrain.errors import UserError

INDEX = "index.json"
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # mtime 0, uid 0, mode 0o644: byte-identical reruns
    info.size, info.mode = len(data), 0o644
    tf.addfile(info, io.BytesIO(data))


def scan_shard(path: Path) -> dict[str, list[int]]:
    """``offsets``, ``sizes``, ``labels`` of the samples in one tar shard, in file order."""
    images: dict[str, tuple[int, int]] = {}
    labels: dict[str, int] = {}
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                folder, _, base = m.name.rpartition("/")
                stem, _, ext = base.partition(".")  # webdataset: the key ends at the first dot
                key = f"{folder}/{stem}"
                if not m.isfile():
                    continue
                if "." + ext.lower() in _IMAGE_EXTS:
                    images[key] = (m.offset_data, m.size)
                elif ext == "cls":
                    labels[key] = int(tf.extractfile(m).read().decode().strip())
    except (tarfile.TarError, OSError, ValueError) as e:
        raise UserError(f"corrupt shard {path}: {e}") from None
    if set(images) != set(labels) or not images:
        bad = sorted(set(images) ^ set(labels))[:3]
        raise UserError(f"corrupt shard {path}: no samples, or image without .cls: {bad}")
    keys = list(images)
    return {"offsets": [images[k][0] for k in keys], "sizes": [images[k][1] for k in keys],
            "labels": [labels[k] for k in keys]}


def write_shards(src: str | Path, dst: str | Path, shard_size: int = 1000, seed: int = 0,
                 splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, int]:
    """Pack the image folder ``src/<split>/<class>/*`` into tar shards of ``shard_size``
    samples under ``dst/<split>/``; the samples are shuffled once (``seed``) so each shard
    mixes the classes. Returns the number of samples per split written."""
    if shard_size < 1:
        raise UserError(f"shard size must be >= 1, got {shard_size}")
    found = [s for s in splits if Path(src, s).is_dir()]
    if not found:
        raise UserError(f"no split folder ({', '.join(splits)}) in {src}")
    written = {}
    for split in found:
        folder = ImageFolderStream(src, split)
        samples = folder.samples
        perm = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))
        out = Path(dst, split)
        out.mkdir(parents=True, exist_ok=True)
        shards = []
        for k, start in enumerate(range(0, len(samples), shard_size)):
            name = f"shard-{k:06d}.tar"
            with tarfile.open(out / name, "w", format=tarfile.USTAR_FORMAT) as tf:
                for i in perm[start : start + shard_size].tolist():
                    path, label = samples[i]
                    key = f"{i:09d}"
                    _add(tf, key + Path(path).suffix.lower(), Path(path).read_bytes())
                    _add(tf, key + ".cls", str(label).encode())
            shards.append({"name": name, **scan_shard(out / name)})
        index = {"classes": list(folder.classes), "shards": shards}
        (out / INDEX).write_text(json.dumps(index))
        written[split] = len(samples)
    return written


def _read_index(folder: Path) -> dict[str, Any]:
    if (folder / INDEX).is_file():
        try:
            return json.loads((folder / INDEX).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"corrupt shard index {folder / INDEX}: {e}") from None
    names = sorted(p.name for p in folder.glob("*.tar"))
    if not names:
        raise UserError(f"no .tar shards in {folder}")
    shards = [{"name": n, **scan_shard(folder / n)} for n in names]
    n_cls = 1 + max(max(s["labels"]) for s in shards)
    return {"classes": [str(c) for c in range(n_cls)], "shards": shards}


def _check_shard(path: Path, end: int) -> None:
    """The shard exists, is as long as the index says, and starts with a valid tar header."""
    if not path.is_file():
        raise UserError(f"shard not found: {path}")
    if path.stat().st_size < end:
        raise UserError(f"corrupt shard {path}: {path.stat().st_size} bytes, index needs {end}")
    with path.open("rb") as f:
        try:
            tarfile.TarInfo.frombuf(f.read(tarfile.BLOCKSIZE), "utf-8", "surrogateescape")
        except tarfile.HeaderError as e:
            raise UserError(f"corrupt shard {path}: {e}") from None


class ShardStream(Dataset):
    """The tar shards of ``root/<split>/`` as a data set of ``(uint8 [C, H, W], label)``.

    Same interface as :class:`ImageFolderStream` (``classes``, ``load(index, epoch)`` seeded
    by ``(seed, epoch, index)``), plus :meth:`order`, which the stream loader follows.
    """

    def __init__(self, root: str | Path, split: str = "train", transform: Any = None,
                 seed: int = 0, window: int = 2) -> None:
        folder = Path(root).expanduser() / split
        if not Path(root).expanduser().is_dir():
            raise UserError(f"shard folder not found: {root}")
        if not folder.is_dir():
            raise UserError(f"split {split!r} not found in {root}")
        if window < 1:
            raise UserError(f"shuffle window must be >= 1 shard, got {window}")
        index = _read_index(folder)
        try:
            self._set_index(folder, index["shards"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"corrupt shard index {folder / INDEX}: {e!r}") from None
        for k, name in enumerate(self._names):
            sl = slice(self._starts[k], self._starts[k + 1])
            _check_shard(Path(name), int((self._offset[sl] + self._size[sl]).max(initial=0)))
        self.classes = tuple(index["classes"])
        if self._labels.size and not 0 <= self._labels.min() <= self._labels.max() < len(
                self.classes):
            raise UserError(f"{folder}: labels outside the {len(self.classes)} classes")
        self.transform, self.seed, self.window, self.epoch = transform, seed, window, 0
        self._fds: dict[int, int] = {}
        self._pid = -1

    def _set_index(self, folder: Path, shards: list[dict]) -> None:
        """Per-sample numpy arrays (shard, offset, size, label): forked workers share them."""
        if not shards:
            raise ValueError("no shards listed")
        self._names = [str(folder / s["name"]) for s in shards]
        counts = [len(s["offsets"]) for s in shards]
        self._shard = np.repeat(np.arange(len(shards), dtype=np.int32), counts)
        self._offset = np.concatenate([np.asarray(s["offsets"], np.int64) for s in shards])
        self._size = np.concatenate([np.asarray(s["sizes"], np.int64) for s in shards])
        self._labels = np.concatenate([np.asarray(s["labels"], np.int64) for s in shards])
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        if not len(self._offset) == len(self._size) == len(self._labels):
            raise ValueError("offsets, sizes and labels differ in length")

    def __len__(self) -> int:
        return len(self._labels)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": {}, "_pid": -1}  # workers open their own files

    def __del__(self) -> None:
        if getattr(self, "_pid", -1) == os.getpid():
            for fd in self._fds.values():
                os.close(fd)

    def _read(self, index: int) -> bytes:
        if self._pid != os.getpid():  # a forked worker: the parent's descriptors are shared
            self._fds, self._pid = {}, os.getpid()
        k = int(self._shard[index])
        if k not in self._fds:
            self._fds[k] = os.open(self._names[k], os.O_RDONLY)
        size = int(self._size[index])
        data = os.pread(self._fds[k], size, int(self._offset[index]))
        if len(data) != size:
            raise UserError(f"corrupt shard {self._names[k]}: sample {index} is truncated")
        return data

    def load(self, index: int, epoch: int) -> tuple[torch.Tensor, int]:
        """Sample ``index`` (its position in the index) augmented as in ``epoch``."""
        g = sample_generator(self.seed, epoch, index)
        x = decode_sample(io.BytesIO(self._read(index)), self.transform, g)
        return x, int(self._labels[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.load(index, self.epoch)

    def order(self, *, train: bool, seed: int, epoch: int, rank: int = 0,
              world_size: int = 1) -> torch.Tensor:
        """This rank's sample indices for ``epoch`` (see the module docstring)."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"bad rank {rank} for world size {world_size}")
        n_shards, starts = len(self._names), torch.from_numpy(self._starts)
        g = torch.Generator().manual_seed(_mix(seed, epoch, -2))
        shards = torch.randperm(n_shards, generator=g) if train else torch.arange(n_shards)
        pieces = []
        for k in range(0, n_shards, self.window):
            idx = torch.cat([torch.arange(starts[s], starts[s + 1])
                             for s in shards[k : k + self.window].tolist()])
            pieces.append(idx[torch.randperm(len(idx), generator=g)] if train else idx)
        seq, n = torch.cat(pieces), len(self)
        if not train:
            start = sum(len(range(q, n, world_size)) for q in range(rank))  # as shard_indices
            return seq[start : start + len(range(rank, n, world_size))]
        per = -(-n // world_size)
        if per * world_size > n:
            seq = seq.repeat(-(-per * world_size // n))[: per * world_size]
        return seq[rank * per : (rank + 1) * per]


def open_stream(path: str | Path, split: str, transform: Any = None, seed: int = 0,
                fmt: str = "folder") -> ImageFolderStream | ShardStream:
    """The ``split`` of ``path`` for the stream loader, by ``data.format``."""
    if fmt == "shards":
        return ShardStream(path, split, transform, seed=seed)
    return ImageFolderStream(path, split, transform, seed=seed)


def main(argv: list[str] | None = None) -> int:
    """``python -m sparsetrain.data.shards write SRC DST --shard-size N [--seed S]``."""
    p = argparse.ArgumentParser(prog="python -m sparsetrain.data.shards",
                                description="Pack an image folder into tar shards.")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="SRC/<split>/<class>/*.jpg -> DST/<split>/shard-*.tar")
    w.add_argument("src")
    w.add_argument("dst")
    w.add_argument("--shard-size", type=int, default=1000)
    w.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        written = write_shards(args.src, args.dst, args.shard_size, args.seed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, n in written.items():
        print(f"{split}: {n} samples in {-(-n // args.shard_size)} shards under {args.dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
