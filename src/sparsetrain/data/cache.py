"""Decode-once cache: every split of a source is decoded in one pass and kept as a ``.pt`` file.

Location: the ``cache_dir`` argument, else ``$SPARSETRAIN_CACHE``, else ``~/.cache/sparsetrain``.
One file per (source, split): ``<stem>-<path8>-<split>-<fp16>.pt``, where ``stem`` is the
source's file name without archive suffixes, ``path8`` hashes the source's absolute path and
``fp16`` starts the source fingerprint (:func:`sparsetrain.data.sources.source_fingerprint`).
A file holds ``{"format", "images", "labels", "classes", "source_checksum", "payload_sha256"}``
and is written atomically (temporary file + ``os.replace``). On load the format, the source
fingerprint and the sha256 of the image and label bytes are checked; a stale or corrupt file
triggers a :class:`CacheWarning` naming it and is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from sparsetrain.data.arrays import ImageArrays
from sparsetrain.data.sources import check_split, read_all_splits, read_split, source_fingerprint
from sparsetrain.data.synthetic import is_synthetic_spec
from sparsetrain.errors import UserError

CACHE_FORMAT = 1
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".gz")


class CacheWarning(UserWarning):
    """A cache file was stale, corrupt or could not be written; the data is decoded again."""


def default_cache_dir() -> Path:
    """``$SPARSETRAIN_CACHE`` if set, else ``~/.cache/sparsetrain``."""
    env = os.environ.get("SPARSETRAIN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sparsetrain"


def _prefix(path: Path) -> str:
    """``<stem>-<path8>-``: what all cache files of one source start with."""
    name = path.name
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    stem = re.sub(r"[^A-Za-z0-9._]+", "_", name).strip("._") or "data"
    where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    return f"{stem}-{where}-"


def cache_file(path: str | Path, split: str, fingerprint: str, cache_dir: Path) -> Path:
    """The cache file of ``split`` of the source at ``path`` with the given fingerprint."""
    return cache_dir / f"{_prefix(Path(path))}{split}-{fingerprint[:16]}.pt"


def payload_sha256(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 over the raw bytes of ``images`` then ``labels`` (both made contiguous)."""
    h = hashlib.sha256()
    for t in (images, labels):
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _load_verified(file: Path, fingerprint: str) -> ImageArrays:
    """Load ``file``; raise ValueError saying what is wrong if it cannot be trusted."""
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, garbage, not a torch file...
        raise ValueError(f"unreadable ({type(e).__name__}: {str(e)[:120]})") from e
    if not isinstance(obj, dict) or obj.get("format") != CACHE_FORMAT:
        raise ValueError("unknown format")
    if obj.get("source_checksum") != fingerprint:
        raise ValueError("written for a different version of the source")
    images, labels, classes = obj.get("images"), obj.get("labels"), obj.get("classes")
    if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)):
        raise ValueError("missing tensors")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError("bad class list")
    if payload_sha256(images, labels) != obj.get("payload_sha256"):
        raise ValueError("payload sha256 mismatch")
    return ImageArrays(images, labels, tuple(classes), fingerprint)  # checks dtypes and shapes


def _write(file: Path, arrays: ImageArrays) -> None:
    """torch.save ``arrays`` to ``file`` atomically (temporary file in the same folder)."""
    obj = {
        "format": CACHE_FORMAT,
        "images": arrays.images.contiguous(),
        "labels": arrays.labels.contiguous(),
        "classes": list(arrays.classes),
        "source_checksum": arrays.checksum,
        "payload_sha256": payload_sha256(arrays.images, arrays.labels),
    }
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_stale(source: Path, fingerprint: str, cache_dir: Path) -> None:
    """Delete, with one warning naming them, cache files of ``source`` for another version."""
    stale = [
        f
        for f in sorted(cache_dir.glob(f"{_prefix(source)}*.pt"))
        if not f.stem.endswith("-" + fingerprint[:16])
    ]
    if stale:
        names = ", ".join(str(f) for f in stale)
        warnings.warn(
            f"cache file(s) {names} are stale (source {source} changed); rebuilding",
            CacheWarning,
            stacklevel=3,
        )
        for f in stale:
            f.unlink(missing_ok=True)


def load_cached(
    path: str | Path, split: str, cache_dir: Path | None = None, rebuild: bool = False
) -> ImageArrays:
    """``split`` of the data at ``path``, decoded once (all splits, one pass) into the cache."""
    if is_synthetic_spec(path):
        return read_split(str(path), split)  # generated in milliseconds: nothing to cache
    check_split(split)
    source = Path(path).expanduser()
    fingerprint = source_fingerprint(source)  # UserError if the path does not exist
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    file = cache_file(source, split, fingerprint, cache_dir)
    if file.is_file() and not rebuild:
        try:
            return _load_verified(file, fingerprint)
        except ValueError as e:
            warnings.warn(f"cache file {file} is corrupt: {e}; rebuilding", CacheWarning, 2)
    print(f"sparsetrain: decoding {source} once into cache {cache_dir} ...", file=sys.stderr)
    splits = read_all_splits(source, progress=True)
    fingerprint = next(iter(splits.values())).checksum  # of what was read, had the source moved
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale(source, fingerprint, cache_dir)
        for name, arrays in splits.items():
            _write(cache_file(source, name, fingerprint, cache_dir), arrays)
    except OSError as e:
        warnings.warn(f"could not write the cache in {cache_dir}: {e}", CacheWarning, 2)
    if split not in splits:
        raise UserError(f"split {split!r} not found in {path} (found: {', '.join(splits)})")
    return splits[split]
