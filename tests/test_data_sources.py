"""Readers, registry, decode-once cache, train/val split and synthetic data."""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsetrain.data import cache as cache_mod
from sparsetrain.data import sources
from sparsetrain.data.arrays import train_val_split
from sparsetrain.data.cache import CacheWarning, load_cached
from sparsetrain.data.sources import (
    DatasetInfo,
    download_cifar,
    get_dataset_info,
    list_datasets,
    md5_file,
    read_all_splits,
    read_split,
    register_dataset,
    source_fingerprint,
    verify_md5,
)
from sparsetrain.data.synthetic import make_synthetic
from sparsetrain.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
C10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _batch(rng: np.random.Generator, n: int, label_key: bytes = b"labels") -> dict:
    """A batch in the official layout: data uint8 [n, 3072] as RRR..GGG..BBB, row-major."""
    return {
        b"batch_label": b"testing batch 1 of 1",
        label_key: rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


@pytest.fixture
def cifar10(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": _batch(rng, 3) for i in range(1, 6)}
    batches["test_batch"] = _batch(rng, 4)
    meta = {b"label_names": [c.encode() for c in C10], b"num_cases_per_batch": 3}
    for name, obj in [*batches.items(), ("batches.meta", meta)]:
        (root / name).write_bytes(pickle.dumps(obj, protocol=2))
    return root, batches


def _pack(archive: Path, root: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root, arcname=arcname)
    return archive


def test_cifar10_batches_exact_pixels_and_layouts(cifar10: tuple[Path, dict]) -> None:
    root, batches = cifar10
    train = read_split(root, "train")
    data = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    assert train.images.shape == (15, 32, 32, 3) and train.images.dtype == torch.uint8
    # pixel (row 1, col 2) of image 0: R at 0*1024 + 1*32 + 2, G at +1024, B at +2048
    assert train.images[0, 1, 2].tolist() == [data[0, 34], data[0, 1058], data[0, 2082]]
    assert np.array_equal(train.images.numpy(), data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels = [y for i in range(1, 6) for y in batches[f"data_batch_{i}"][b"labels"]]
    assert train.labels.tolist() == labels and train.classes == C10
    test = read_split(root, "test")
    assert test.labels.tolist() == batches["test_batch"][b"labels"] and len(test) == 4
    assert train.checksum == source_fingerprint(root)
    parent = read_split(root.parent, "test")  # folder holding cifar-10-batches-py
    assert torch.equal(parent.images, test.images)
    archive = _pack(root.parent / "cifar-10-python.tar.gz", root, "cifar-10-batches-py")
    from_tar = read_all_splits(archive)  # the official archive
    assert torch.equal(from_tar["test"].images, test.images)
    assert torch.equal(from_tar["train"].labels, train.labels) and from_tar["train"].classes == C10
    with pytest.raises(UserError, match="'val'"):
        read_split(root, "val")


def _py2_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled as Python 2 did for the official files (protocol 0, numpy.core names)."""
    raw = "".join(f"\\x{b:02x}" for b in data.tobytes())
    n = data.shape[0]
    array = (
        "cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I0\ntS'b'\ntR"
        f"(I1\n(I{n}\nI3072\ntcnumpy\ndtype\n(S'u1'\nI0\nI1\ntR(I3\nS'|'\nNNNI-1\nI-1\nI0\ntb"
        f"I00\nS'{raw}'\ntb"
    )
    items = "".join(f"I{y}\na" for y in labels)
    return f"(dS'data'\n{array}sS'labels'\n(l{items}s.".encode("latin1")


def test_python2_pickles_as_in_official_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
    (tmp_path / "data_batch_1").write_bytes(_py2_pickle(data, [4, 9]))
    (tmp_path / "test_batch").write_bytes(_py2_pickle(data[::-1], [9, 4]))
    names = "".join(f"S'{c}'\na" for c in C10)
    (tmp_path / "batches.meta").write_bytes(f"(dS'label_names'\n(l{names}s.".encode())
    got = read_split(tmp_path, "train")
    assert got.labels.tolist() == [4, 9] and got.classes == C10
    assert got.images[1, 31, 0].tolist() == [data[1, 992], data[1, 2016], data[1, 3040]]
    assert torch.equal(read_split(tmp_path, "test").images, got.images.flip(0))
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": os.system}, protocol=2))
    with pytest.raises(UserError, match="refusing to load"):  # no code runs from a pickle
        read_split(tmp_path, "train")


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(1)
    train, test = _batch(rng, 5, b"fine_labels"), _batch(rng, 3, b"fine_labels")
    train[b"fine_labels"] = [99, 0, 42, 7, 63]
    train[b"coarse_labels"] = [1, 2, 3, 4, 5]
    names = [f"c{i:02d}".encode() for i in range(100)]
    meta = {b"fine_label_names": names, b"coarse_label_names": [b"x"] * 20}
    for name, obj in (("train", train), ("test", test), ("meta", meta)):
        (root / name).write_bytes(pickle.dumps(obj, protocol=2))
    got = read_split(tmp_path, "train")
    assert got.labels.tolist() == [99, 0, 42, 7, 63]
    assert len(got.classes) == 100 and got.classes[42] == "c42"
    assert np.array_equal(got.images[4].permute(2, 0, 1).reshape(-1).numpy(), train[b"data"][4])


@pytest.fixture
def pngs(tmp_path: Path) -> tuple[Path, dict]:
    image = pytest.importorskip("PIL.Image")
    root = tmp_path / "pngs"
    rng = np.random.default_rng(2)
    expected: dict[str, list] = {}
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "ant", "bee"):  # labels follow the sorted names: ant, bee, cat
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)  # H != W
                image.fromarray(arr).save(root / split / cls / f"{i:02d}.png")
                expected.setdefault(split, []).append((cls, i, arr))
    return root, {s: sorted(v, key=lambda t: t[:2]) for s, v in expected.items()}


def test_image_folder_and_archives_round_trip(pngs: tuple[Path, dict], tmp_path: Path) -> None:
    root, expected = pngs
    nested = _pack(tmp_path / "nested.tar.gz", root, "pngs")  # under one top-level folder
    flat = tmp_path / "flat.tar"
    with tarfile.open(flat, "w") as tf:
        for split in ("train", "test"):
            tf.add(root / split, arcname=split)
    for source in (root, nested, flat):
        splits = read_all_splits(source)
        assert sorted(splits) == ["test", "train"]
        for split, items in expected.items():
            got = splits[split]
            assert got.classes == ("ant", "bee", "cat")
            assert np.array_equal(got.images.numpy(), np.stack([t[2] for t in items]))
            assert got.labels.tolist() == [("ant", "bee", "cat").index(t[0]) for t in items]
    assert read_split(nested, "test").checksum == hashlib.sha256(nested.read_bytes()).hexdigest()
    with pytest.raises(UserError, match="'val'"):
        read_split(root, "val")


def test_image_folder_sizes_must_match(pngs: tuple[Path, dict]) -> None:
    root, _ = pngs
    image = pytest.importorskip("PIL.Image")
    image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(root / "train" / "bee" / "odd.png")
    with pytest.raises(UserError, match="ImageFolderStream"):
        read_split(root, "train")


def test_user_errors_name_the_bad_value(cifar10: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = cifar10
    with pytest.raises(UserError, match="no_such_dir"):
        read_split(tmp_path / "no_such_dir", "train")
    with pytest.raises(UserError, match="no_such_dir"):
        load_cached(tmp_path / "no_such_dir", "train", cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match=r"'cifar11'.*did you mean cifar10"):
        get_dataset_info("cifar11")
    with pytest.raises(UserError, match="'validation'"):
        read_split(root, "validation")
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"this is not a tar archive")
    with pytest.raises(UserError, match=r"broken\.tar\.gz"):
        read_split(broken, "train")
    archive = _pack(tmp_path / "cut.tar.gz", root, "cifar-10-batches-py")
    archive.write_bytes(archive.read_bytes()[:5000])
    with pytest.raises(UserError, match=r"cut\.tar\.gz"):
        read_split(archive, "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        read_split(tmp_path / "empty", "train")


def test_registry() -> None:
    assert {"cifar10", "cifar100", "imagefolder", "synthetic"} <= set(list_datasets())
    c10 = get_dataset_info("cifar10")
    assert c10.num_classes == 10 and c10.mean == (0.4914, 0.4822, 0.4465)
    assert c10.std == (0.2470, 0.2435, 0.2616)
    assert c10.default_path == "../shared/data/cifar10-jpeg.tar.gz"
    assert get_dataset_info("cifar100").std == (0.2673, 0.2564, 0.2762)
    assert get_dataset_info("imagefolder").num_classes is None
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(c10)


def test_registry_register_new_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "_REGISTRY", dict(sources._REGISTRY))
    info = DatasetInfo("tiny", 3, (0.1, 0.2, 0.3), (1.0, 1.0, 1.0), 8, None)
    assert register_dataset(info) is info and get_dataset_info("tiny") == info


def _spy(monkeypatch: pytest.MonkeyPatch) -> list:
    calls: list = []
    real = cache_mod.read_all_splits

    def counting(path, **kw):
        calls.append(path)
        return real(path, **kw)

    monkeypatch.setattr(cache_mod, "read_all_splits", counting)
    return calls


def test_cache_reuse_stale_and_corrupt(
    cifar10: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = cifar10
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("SPARSETRAIN_CACHE", str(cache_dir))
    calls = _spy(monkeypatch)
    first = load_cached(root, "train")
    assert len(calls) == 1 and len(list(cache_dir.glob("*.pt"))) == 2  # both splits, one pass
    assert torch.equal(first.images, read_split(root, "train").images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        test = load_cached(root, "test")
        again = load_cached(root, "train")
    assert len(calls) == 1 and len(test) == 4 and torch.equal(again.images, first.images)
    assert again.classes == C10 and again.checksum == source_fingerprint(root)

    st = os.stat(root / "data_batch_1")  # touching the source makes the cache stale
    os.utime(root / "data_batch_1", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    (old,) = [f for f in cache_dir.glob("*-train-*.pt")]
    with pytest.warns(CacheWarning, match=old.name):
        load_cached(root, "train")
    assert len(calls) == 2 and not old.exists() and len(list(cache_dir.glob("*.pt"))) == 2

    (file,) = cache_dir.glob("*-train-*.pt")
    raw = file.read_bytes()
    pos = raw.find(first.images.numpy().tobytes()[:64])
    assert pos > 0
    flipped = bytearray(raw)
    flipped[pos + 10] ^= 0xFF
    damages = [raw[: len(raw) // 2], b"garbage, not a torch file", bytes(flipped)]
    for n, damaged in enumerate(damages, start=3):
        file.write_bytes(damaged)
        with pytest.warns(CacheWarning, match=rf"{file.name} is corrupt"):
            rebuilt = load_cached(root, "train")
        assert len(calls) == n and torch.equal(rebuilt.images, first.images)
        assert torch.equal(rebuilt.labels, first.labels) and file.read_bytes() != damaged
    load_cached(root, "test", rebuild=True)
    assert len(calls) == 6
    with pytest.raises(UserError, match="'val'"):
        load_cached(root, "val")


def test_cache_file_source_replaced(cifar10: tuple[Path, dict], tmp_path: Path) -> None:
    root, batches = cifar10
    archive = _pack(tmp_path / "cifar-10-python.tar.gz", root, "cifar-10-batches-py")
    cache_dir = tmp_path / "explicit"
    before = load_cached(archive, "test", cache_dir=cache_dir)
    batches["test_batch"][b"data"][0, 0] ^= 0xFF  # change one pixel and re-pack
    (root / "test_batch").write_bytes(pickle.dumps(batches["test_batch"], protocol=2))
    _pack(archive, root, "cifar-10-batches-py")
    with pytest.warns(CacheWarning, match="stale"):
        after = load_cached(archive, "test", cache_dir=cache_dir)
    assert int(after.images[0, 0, 0, 0]) == int(before.images[0, 0, 0, 0]) ^ 0xFF
    assert torch.equal(after.images[1:], before.images[1:])


@pytest.mark.skipif(not SHARED.exists(), reason="shared CIFAR-10 JPEG archive not present")
def test_shared_cifar10_jpeg_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("PIL.Image")
    monkeypatch.setenv("SPARSETRAIN_CACHE", str(tmp_path))
    calls = _spy(monkeypatch)
    t0 = time.perf_counter()
    train = load_cached(SHARED, "train")
    decode_s = time.perf_counter() - t0
    test = load_cached(SHARED, "test")
    assert len(calls) == 1, "the test split must come from the same decoding pass"
    assert train.images.shape == (50_000, 32, 32, 3) and test.images.shape == (10_000, 32, 32, 3)
    assert train.images.dtype == torch.uint8 and train.images.is_contiguous()
    assert train.classes == C10 and test.classes == C10
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    mean = train.images.float().mean(dim=(0, 1, 2)) / 255
    assert torch.allclose(mean, torch.tensor(get_dataset_info("cifar10").mean), atol=2e-3)
    assert decode_s < 60, f"decoding took {decode_s:.1f} s"


def test_train_val_split() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[torch.randperm(100)]
    train, val = train_val_split(labels, 10, seed=3)
    assert torch.bincount(labels[val]).tolist() == [5, 3, 2]
    assert len(train) == 90 and len(val) == 10
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(100))
    assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)
    again = train_val_split(labels, 10, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    assert not torch.equal(train_val_split(labels, 10, seed=4)[1], val)
    balanced = torch.arange(1000) % 10
    _, val15 = train_val_split(balanced, 15, seed=0)
    counts = torch.bincount(balanced[val15], minlength=10)
    assert len(val15) == 15 and counts.min() == 1 and counts.max() == 2
    assert len(train_val_split(balanced, 0, seed=0)[1]) == 0
    for bad in (-1, 1000):
        with pytest.raises(UserError, match=f"val_size={bad}"):
            train_val_split(balanced, bad, seed=0)


def test_md5_and_download_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "blob.bin"
    f.write_bytes(b"sparsetrain md5 check\n" * 1000)
    assert md5_file(f) == hashlib.md5(f.read_bytes()).hexdigest()
    verify_md5(f, md5_file(f).upper())
    with pytest.raises(UserError, match="md5 mismatch"):
        verify_md5(f, "0" * 32)

    monkeypatch.setattr(sources, "_fetch", lambda url, dest: dest.write_bytes(b"truncated"))
    with pytest.raises(UserError, match="md5 mismatch"):
        download_cifar(tmp_path / "dl", "cifar10")
    assert list((tmp_path / "dl").iterdir()) == []  # nothing half-downloaded is left behind

    good = tmp_path / "dl" / "cifar-100-python.tar.gz"
    good.write_bytes(f.read_bytes())
    url = "http://example.invalid/cifar-100-python.tar.gz"
    monkeypatch.setitem(sources.CIFAR_ARCHIVES, "cifar100", (url, md5_file(f)))
    monkeypatch.setattr(sources, "_fetch", lambda url, dest: pytest.fail("must not download"))
    assert download_cifar(tmp_path / "dl", "cifar100") == good
    with pytest.raises(UserError, match="'cifar1000'"):
        download_cifar(tmp_path / "dl", "cifar1000")


def test_synthetic_is_deterministic() -> None:
    a, b = make_synthetic(60, seed=3), make_synthetic(60, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, make_synthetic(60, seed=4).images)
    assert a.images.shape == (60, 32, 32, 3) and torch.bincount(a.labels).tolist() == [6] * 10
    assert len(read_split("synthetic", "train")) == 512
    tr, te = read_split("synthetic:40:20", "train"), read_split("synthetic:40:20", "test")
    assert len(tr) == 40 and len(te) == 20 and not torch.equal(tr.images[:20], te.images)
    with pytest.raises(UserError, match="synthetic:x"):
        read_split("synthetic:x", "train")


@pytest.fixture
def one_thread():
    """Tiny CPU models train far faster on one thread on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_synthetic_is_learnable(one_thread: None) -> None:
    torch.manual_seed(0)
    data, held_out = make_synthetic(100, image_size=16, seed=0), make_synthetic(100, 10, 16, 1)

    def inputs(d):
        return d.images.permute(0, 3, 1, 2).float() / 255 - 0.5

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(128, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(model(inputs(data)), data.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::5]
    accuracy = (model(inputs(held_out)).argmax(1) == held_out.labels).float().mean().item()
    assert accuracy >= 0.8, accuracy
