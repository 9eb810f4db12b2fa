"""Dataset registry and readers that decode a whole split into :class:`ImageArrays`.

``read_split(path, split)`` recognises, from ``path`` itself:

* a CIFAR-10 python batch folder (``data_batch_1..5``, ``test_batch``, ``batches.meta``), a
  CIFAR-100 python folder (``train``, ``test``, ``meta``; fine labels), a folder holding
  ``cifar-10-batches-py``/``cifar-100-python``, or the official ``cifar-1*-python.tar.gz``;
* an image folder ``root/{train,test,val}/<class>/*.{jpg,jpeg,png}`` (all images one size);
* a ``.tar``/``.tar.gz``/``.tgz`` archive of such folders, optionally under one top folder;
* ``synthetic[:n_train[:n_test]]`` (see :mod:`sparsetrain.data.synthetic`).

Archives are read in one sequential streaming pass; :func:`read_all_splits` decodes every
split in that pass (the cache uses it). CIFAR pickles are loaded with an unpickler that only
admits numpy arrays, so a hostile file cannot run code.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import io
import os
import pickle
import tarfile
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from tqdm import tqdm

from sparsetrain.data.arrays import ImageArrays
from sparsetrain.data.synthetic import is_synthetic_spec, read_synthetic
from sparsetrain.errors import UserError

SPLITS = ("train", "test", "val")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
CIFAR10_DIR, CIFAR100_DIR = "cifar-10-batches-py", "cifar-100-python"
_CIFAR_DIRS = {CIFAR10_DIR: "cifar10", CIFAR100_DIR: "cifar100"}
_CIFAR_FILES = {  # kind -> (split -> pickle names, meta name, label key, names key)
    "cifar10": (
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "batches.meta",
        b"labels",
        b"label_names",
    ),
    "cifar100": (
        {"train": ["train"], "test": ["test"]},
        "meta",
        b"fine_labels",
        b"fine_label_names",
    ),
}
_CIFAR_NAMES = {"batches.meta", "meta", "test_batch", "train", "test"} | {
    f"data_batch_{i}" for i in range(1, 6)
}
CIFAR_ARCHIVES = {  # which -> (url, md5)
    "cifar10": (
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
    ),
    "cifar100": (
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
    ),
}


@dataclass(frozen=True)
class DatasetInfo:
    """What the training code needs to know about a named data set."""

    name: str
    num_classes: int | None  # None: taken from the data (class folders)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int | None
    default_path: str | None


_REGISTRY: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo, *, replace: bool = False) -> DatasetInfo:
    """Add ``info`` to the registry (``replace=True`` to overwrite an existing name)."""
    if info.name in _REGISTRY and not replace:
        raise ValueError(f"dataset {info.name!r} is already registered")
    _REGISTRY[info.name] = info
    return info


def get_dataset_info(name: str) -> DatasetInfo:
    """The registered :class:`DatasetInfo` called ``name``; UserError with suggestions if none."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown dataset {name!r}{hint} (known: {', '.join(list_datasets())})")
    return _REGISTRY[name]


def list_datasets() -> list[str]:
    """Sorted names of the registered data sets."""
    return sorted(_REGISTRY)


_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
for _info in (
    DatasetInfo(
        "cifar10",
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        32,
        "../shared/data/cifar10-jpeg.tar.gz",
    ),
    DatasetInfo("cifar100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 32, None),
    DatasetInfo("imagefolder", None, *_IMAGENET, None, None),
    DatasetInfo("synthetic", 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 32, "synthetic"),
):
    register_dataset(_info)


try:
    import numpy._core.multiarray as _multiarray
except ImportError:  # numpy < 2
    import numpy.core.multiarray as _multiarray


class _NumpyOnlyUnpickler(pickle.Unpickler):
    _ALLOWED = frozenset({("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})

    def find_class(self, module: str, name: str) -> object:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
            "_reconstruct",
            "scalar",
        ):
            return getattr(_multiarray, name)  # numpy.core is a deprecated alias in numpy 2
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR pickle")


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:
        raise UserError(f"cannot read CIFAR pickle {where}: {e}") from e
    if not isinstance(obj, dict):
        raise UserError(f"cannot read CIFAR pickle {where}: not a dict")
    return obj


def _cifar_splits(
    kind: str, get: Callable[[str], bytes | None], splits: Iterable[str], checksum: str, where: str
) -> dict[str, ImageArrays]:
    files, meta_name, label_key, names_key = _CIFAR_FILES[kind]
    meta = get(meta_name)
    if meta is None:
        raise UserError(f"{where} has no {meta_name} (class names)")
    classes = tuple(
        n.decode() if isinstance(n, bytes) else str(n)
        for n in _unpickle(meta, f"{where}/{meta_name}")[names_key]
    )
    out = {}
    for split in (s for s in splits if s in files):
        batches = [(n, b) for n in files[split] if (b := get(n)) is not None]
        if not batches:
            continue
        data, labels = [], []
        for name, raw in batches:
            d = _unpickle(raw, f"{where}/{name}")
            try:
                data.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(d[label_key], dtype=np.int64).reshape(-1))
            except (KeyError, ValueError) as e:
                raise UserError(f"{where}/{name} is not a CIFAR batch: {e!r}") from e
            if len(labels[-1]) != len(data[-1]):
                raise UserError(
                    f"{where}/{name} has {len(data[-1])} images, {len(labels[-1])} labels"
                )
        images = np.ascontiguousarray(np.concatenate(data).transpose(0, 2, 3, 1))
        out[split] = ImageArrays(
            torch.from_numpy(images), torch.from_numpy(np.concatenate(labels)), classes, checksum
        )
    return out


def _decode(data: bytes, name: str) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError("decoding images needs Pillow: pip install pillow") from e
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.array(im.convert("RGB"))
    except Exception as e:
        raise UserError(f"cannot decode image {name}: {e}") from e


def _folder_result(
    found: dict[str, dict[str, list]], checksum: str, where: str
) -> dict[str, ImageArrays]:
    """``found``: split -> class -> [(class, name, HWC array)]; classes may be empty."""
    out = {}
    for split, by_class in found.items():
        items = sorted((t for v in by_class.values() for t in v), key=lambda t: t[:2])
        if not items:
            continue
        for cls, name, arr in items:
            if arr.shape != items[0][2].shape:
                raise UserError(
                    f"images in {where} [{split}] differ in size: {items[0][2].shape[:2]} for "
                    f"{items[0][0]}/{items[0][1]}, {arr.shape[:2]} for {cls}/{name}; use "
                    "sparsetrain.data.stream.ImageFolderStream for such data"
                )
        index = {c: i for i, c in enumerate(sorted(by_class))}
        images = torch.from_numpy(np.stack([t[2] for t in items]))
        labels = torch.tensor([index[t[0]] for t in items], dtype=torch.int64)
        out[split] = ImageArrays(images, labels, tuple(sorted(by_class)), checksum)
    return out


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


# An entry of a folder tree or archive: (path parts, is a directory, function reading the bytes)
_Entry = tuple[tuple[str, ...], bool, Callable[[], bytes]]


def _dir_entries(root: Path, splits: list[str]) -> Iterator[_Entry]:
    for split in splits:
        for dirpath, dirnames, filenames in os.walk(root / split):
            dirnames.sort()
            rel = Path(dirpath).relative_to(root).parts
            for d in dirnames:
                yield (*rel, d), True, bytes
            for f in sorted(filenames):
                yield (*rel, f), False, Path(dirpath, f).read_bytes


def _tar_entries(tf: tarfile.TarFile) -> Iterator[_Entry]:
    for m in tf:  # streaming: each entry's bytes must be read before the next one
        if m.isfile() or m.isdir():
            parts = tuple(p for p in PurePosixPath(m.name).parts if p not in (".", "/"))
            yield parts, m.isdir(), functools.partial(_read_member, tf, m)


def _read_member(tf: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    f = tf.extractfile(m)
    assert f is not None
    return f.read()


def _collect(
    entries: Iterable[_Entry], splits: list[str], where: str, progress: bool, checksum: str
) -> dict[str, ImageArrays]:
    """Decode the images (or CIFAR pickles) of ``splits`` among ``entries``, in one pass."""
    pickles: dict[str, bytes] = {}
    found: dict[str, dict[str, list]] = {}
    prefixes: set[tuple[str, ...]] = set()
    cifar_kind = None
    name = Path(where).name
    bar = tqdm(
        entries, f"decoding {name}", unit=" files", delay=1.5, mininterval=1.0, disable=not progress
    )
    for parts, is_dir, read in bar:
        if any(p.startswith(".") for p in parts[-3:]) or parts[:1] == ("__MACOSX",):
            continue
        if is_dir and len(parts) >= 2 and parts[-2] in SPLITS:
            prefixes.add(parts[:-2])
            if parts[-2] in splits:
                found.setdefault(parts[-2], {}).setdefault(parts[-1], [])
        elif not is_dir and len(parts) >= 2 and parts[-2] in _CIFAR_DIRS:
            if parts[-1] in _CIFAR_NAMES:
                cifar_kind = _CIFAR_DIRS[parts[-2]]
                pickles[parts[-1]] = read()
        elif not is_dir and len(parts) >= 3 and parts[-3] in SPLITS and _is_image(parts[-1]):
            split, cls, name = parts[-3:]
            prefixes.add(parts[:-3])
            if split in splits:
                arr = _decode(read(), f"{where}:{'/'.join(parts)}")
                found.setdefault(split, {}).setdefault(cls, []).append((cls, name, arr))
    if cifar_kind is not None:
        return _cifar_splits(cifar_kind, pickles.get, splits, checksum, where)
    if len(prefixes) > 1 or any(len(p) > 1 for p in prefixes):
        raise UserError(
            f"{where} mixes folder layouts; expected <split>/<class>/<image>, optionally under "
            "one top-level folder"
        )
    return _folder_result(found, checksum, where)


def _layout(path: Path) -> tuple[str, Path]:
    """(kind, path) with kind in cifar10, cifar100, folder, archive."""
    if path.is_file():
        return "archive", path
    if any((path / n).is_file() for n in ("batches.meta", "data_batch_1", "test_batch")):
        return "cifar10", path
    if (path / "meta").is_file() and ((path / "train").is_file() or (path / "test").is_file()):
        return "cifar100", path
    for sub in _CIFAR_DIRS:
        if (path / sub).is_dir():
            return _layout(path / sub)
    for url, _ in CIFAR_ARCHIVES.values():
        if (path / url.rsplit("/", 1)[1]).is_file():
            return "archive", path / url.rsplit("/", 1)[1]
    if any((path / s).is_dir() for s in SPLITS):
        return "folder", path
    raise UserError(
        f"cannot tell the data format of {path}: expected CIFAR python batches, "
        "<split>/<class>/<image> folders or a .tar/.tar.gz of them"
    )


def _check_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"data path not found: {path}")
    return p


def _read(path: str | Path, splits: list[str], progress: bool) -> dict[str, ImageArrays]:
    p = _check_path(path)
    kind, where = _layout(p)
    checksum = source_fingerprint(p)
    if kind == "archive":
        try:
            with tarfile.open(where, "r|*") as tf:
                return _collect(_tar_entries(tf), splits, str(where), progress, checksum)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise UserError(f"cannot read archive {where}: {e}") from e
    if kind == "folder":
        return _collect(_dir_entries(where, splits), splits, str(where), progress, checksum)

    def get(name: str) -> bytes | None:
        return (where / name).read_bytes() if (where / name).is_file() else None

    return _cifar_splits(kind, get, splits, checksum, str(where))


def check_split(split: str) -> str:
    """``split`` if it is one of train, test, val; else UserError."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split


def read_split(path: str | Path, split: str, *, progress: bool = False) -> ImageArrays:
    """Decode one split ("train", "test" or "val" where present) of the data at ``path``."""
    if is_synthetic_spec(path):
        return read_synthetic(str(path), split)
    check_split(split)
    out = _read(path, [split], progress)
    if split not in out:
        raise UserError(f"split {split!r} not found (or empty) in {path}")
    return out[split]


def read_all_splits(path: str | Path, *, progress: bool = False) -> dict[str, ImageArrays]:
    """Decode every split found at ``path`` in one pass: {"train": ..., "test": ...}."""
    if is_synthetic_spec(path):
        return {s: read_synthetic(str(path), s) for s in ("train", "test")}
    out = _read(path, list(SPLITS), progress)
    if not out:
        raise UserError(f"no images found in {path}")
    return out


def _hash_file(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def source_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes, or of sorted (relpath, size, mtime_ns) of a folder's data."""
    p = _check_path(path)
    if p.is_file():
        return _hash_file(p, "sha256")
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(p):
        dirnames.sort()
        for name in sorted(filenames):
            if _is_image(name) or name in _CIFAR_NAMES or name.endswith((".tar", ".gz", ".tgz")):
                st = os.stat(os.path.join(dirpath, name))
                rel = Path(dirpath, name).relative_to(p).as_posix()
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def md5_file(path: str | Path) -> str:
    """Hex md5 of the file at ``path`` (read in chunks)."""
    return _hash_file(Path(path), "md5")


def verify_md5(path: str | Path, expected: str) -> None:
    """Raise UserError unless the md5 of ``path`` is ``expected``."""
    actual = md5_file(path)
    if actual != expected.lower():
        raise UserError(f"md5 mismatch for {path}: got {actual}, expected {expected}")


def _fetch(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))


def download_cifar(root: str | Path, which: str = "cifar10") -> Path:
    """Download the official CIFAR python archive into ``root`` (md5-checked); its path."""
    if which not in CIFAR_ARCHIVES:
        raise UserError(f"unknown CIFAR variant {which!r}; use cifar10 or cifar100")
    url, md5 = CIFAR_ARCHIVES[which]
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    dest = root / url.rsplit("/", 1)[1]
    if dest.is_file() and md5_file(dest) == md5:
        return dest
    part = dest.with_name(dest.name + ".part")
    try:
        try:
            _fetch(url, part)
        except OSError as e:
            raise UserError(f"could not download {url}: {e}") from e
        verify_md5(part, md5)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest
