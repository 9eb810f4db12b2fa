"""Streaming image-folder loader: transforms, per-sample seeding, sharding, normalization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from sparsetrain.data.stream import (
    CenterCrop,
    Compose,
    ImageFolderStream,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    make_stream_loader,
    normalize_batch,
    sample_generator,
    shard_indices,
    to_uint8_chw,
)
from sparsetrain.errors import UserError


@pytest.fixture
def pil():
    return pytest.importorskip("PIL.Image")


def _ramp(h: int, w: int) -> np.ndarray:
    """uint8 [h, w, 3] whose pixels all differ (r = row, g = col, b = row*w + col)."""
    r, c = np.mgrid[0:h, 0:w]
    return np.stack([r, c, (r * w + c) % 256], axis=-1).astype(np.uint8)


def test_transform_output_sizes(pil) -> None:
    img = pil.fromarray(_ramp(12, 20))  # PIL size is (width, height) = (20, 12)
    g = torch.Generator().manual_seed(0)
    assert RandomResizedCrop(8)(img, g).size == (8, 8)
    assert RandomResizedCrop((6, 10))(img, g).size == (10, 6)
    assert RandomCrop(12, padding=4)(img, g).size == (12, 12)
    assert Resize(8)(pil.fromarray(_ramp(20, 40))).size == (16, 8)
    assert Resize(8)(pil.fromarray(_ramp(40, 20))).size == (8, 16)
    assert Resize((5, 7))(img).size == (7, 5)
    arr = _ramp(8, 10)
    assert np.array_equal(np.asarray(CenterCrop(4)(pil.fromarray(arr))), arr[2:6, 3:7])
    padded = np.asarray(CenterCrop((10, 10))(pil.fromarray(arr)))  # zero-padded rows 0, 9
    assert np.array_equal(padded[1:9], arr) and padded[0].max() == 0 and padded[9].max() == 0
    chw = to_uint8_chw(pil.fromarray(arr))
    assert chw.dtype == torch.uint8 and torch.equal(chw, torch.from_numpy(arr).permute(2, 0, 1))
    pipeline = Compose([Resize(16), CenterCrop(14), RandomHorizontalFlip()])
    assert to_uint8_chw(pipeline(img, g)).shape == (3, 14, 14)


def test_random_resized_crop_stays_inside(pil) -> None:
    t = RandomResizedCrop(8)
    for seed in range(300):
        top, left, h, w = t.get_params(37, 23, torch.Generator().manual_seed(seed))
        assert h > 0 and w > 0 and top >= 0 and left >= 0
        assert top + h <= 23 and left + w <= 37
    # no crop of 90%+ of a 100x10 image has aspect 1: fallback to the centered 10x10 square
    narrow = RandomResizedCrop(4, scale=(0.9, 1.0), ratio=(1.0, 1.0))
    assert narrow.get_params(100, 10, torch.Generator().manual_seed(0)) == (0, 45, 10, 10)
    white = pil.fromarray(np.full((23, 37, 3), 255, np.uint8))
    for seed in range(20):  # sampling outside the image would bring in black pixels
        out = np.asarray(t(white, torch.Generator().manual_seed(seed)))
        assert out.min() == 255


def test_flip_and_crop_exact_pixels(pil) -> None:
    arr = _ramp(4, 5)
    img = pil.fromarray(arr)
    assert np.array_equal(np.asarray(RandomHorizontalFlip(1.0)(img)), arr[:, ::-1])
    assert np.array_equal(np.asarray(RandomHorizontalFlip(0.0)(img)), arr)
    flips = {
        bool(
            np.array_equal(np.asarray(RandomHorizontalFlip()(img, sample_generator(0, 0, i))), arr)
        )
        for i in range(20)
    }
    assert flips == {True, False}
    for mode, np_mode in (("reflect", "reflect"), ("zeros", "constant")):
        padded = np.pad(arr, ((2, 2), (2, 2), (0, 0)), mode=np_mode)
        seen = set()
        for seed in range(40):
            out = np.asarray(RandomCrop((4, 5), 2, mode)(img, torch.Generator().manual_seed(seed)))
            hits = [
                (y, x)
                for y in range(5)
                for x in range(5)
                if np.array_equal(padded[y : y + 4, x : x + 5], out)
            ]
            assert len(hits) == 1  # the output is exactly one window of the padded image
            seen.add(hits[0])
        assert len(seen) > 5
    assert np.asarray(RandomCrop(4, 2, "zeros")(img, torch.Generator().manual_seed(0))).shape[:2]
    with pytest.raises(UserError, match="'edge'"):
        RandomCrop(4, 2, "edge")


@pytest.fixture
def folder(tmp_path: Path, pil) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("dog", "cat"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(6):
            arr = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            pil.fromarray(arr).save(tmp_path / "train" / cls / f"{i}.png")
    return tmp_path


def _augmenting(root: Path) -> ImageFolderStream:
    return ImageFolderStream(
        root, "train", Compose([RandomCrop(8, padding=2), RandomHorizontalFlip()]), seed=5
    )


def test_image_folder_stream_samples_and_seeding(folder: Path) -> None:
    ds = _augmenting(folder)
    assert ds.classes == ("cat", "dog") and len(ds) == 12
    assert [label for _, label in ds.samples] == [0] * 6 + [1] * 6
    assert ds.samples[7][0].endswith("dog/1.png")
    x, y = ds.load(7, epoch=0)
    assert x.shape == (3, 8, 8) and x.dtype == torch.uint8 and y == 1
    assert torch.equal(ds.load(7, epoch=0)[0], x)  # same (seed, epoch, index): same pixels
    assert any(not torch.equal(ds.load(i, 0)[0], ds.load(i, 1)[0]) for i in range(12))
    plain = ImageFolderStream(folder, "train")
    assert plain[0][0].shape == (3, 12, 12)
    with pytest.raises(UserError, match="'test'"):
        ImageFolderStream(folder, "test")


class _Indices(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _order(n: int, **kw) -> list[int]:
    loader = make_stream_loader(_Indices(n), 4, workers=0, **kw)
    return [i for batch in loader for i in batch.tolist()]


def test_loader_order_and_shards() -> None:
    a = _order(12, train=True, seed=1, epoch=0)
    assert a == _order(12, train=True, seed=1, epoch=0) and sorted(a) == list(range(12))
    assert a != _order(12, train=True, seed=1, epoch=1) and a != _order(
        12, train=True, seed=2, epoch=0
    )
    assert len(_order(10, train=True, seed=0, epoch=0)) == 8  # drop_last when training
    assert _order(10, train=False, seed=0, epoch=0) == list(range(10))
    r0, r1 = (
        _order(12, train=True, seed=3, epoch=2, rank=r, world_size=2, drop_last=False)
        for r in (0, 1)
    )
    assert len(r0) == len(r1) == 6 and set(r0).isdisjoint(r1) and set(r0 + r1) == set(range(12))
    perm = torch.cat(
        [shard_indices(12, train=True, seed=3, epoch=2, rank=r, world_size=2) for r in (0, 1)]
    )
    assert sorted(perm.tolist()) == list(range(12))
    odd = [shard_indices(11, train=True, seed=0, epoch=0, rank=r, world_size=2) for r in (0, 1)]
    assert len(odd[0]) == len(odd[1]) == 6 and set(torch.cat(odd).tolist()) == set(range(11))
    ev = [shard_indices(11, train=False, seed=0, epoch=0, rank=r, world_size=2) for r in (0, 1)]
    assert ev[0].tolist() == [0, 2, 4, 6, 8, 10] and ev[1].tolist() == [1, 3, 5, 7, 9]
    with pytest.raises(UserError, match="rank 2"):
        shard_indices(11, train=True, seed=0, epoch=0, rank=2, world_size=2)


def test_same_batches_with_and_without_workers(folder: Path) -> None:
    ds = _augmenting(folder)
    batches = {}
    for workers in (0, 2):
        loader = make_stream_loader(ds, 4, train=True, seed=7, epoch=3, workers=workers)
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2]) == 3
    for (x0, y0), (x2, y2) in zip(batches[0], batches[2], strict=True):
        assert x0.shape == (4, 3, 8, 8) and x0.dtype == torch.uint8
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    epoch4 = list(make_stream_loader(ds, 4, train=False, seed=7, epoch=4, workers=0))
    epoch3 = list(make_stream_loader(ds, 4, train=False, seed=7, epoch=3, workers=0))
    assert [y.tolist() for _, y in epoch3] == [y.tolist() for _, y in epoch4]
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(epoch3, epoch4, strict=True))


def test_normalize_batch() -> None:
    x = torch.randint(
        0, 256, (2, 3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    expected = (x.double() / 255 - torch.tensor(mean).double().view(1, 3, 1, 1)) / torch.tensor(
        std
    ).double().view(1, 3, 1, 1)
    out = normalize_batch(x, mean, std)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out.double(), expected, atol=1e-5)
    # one value by hand: (x / 255 - mean_c) / std_c
    assert abs(out[1, 2, 3, 4].item() - (x[1, 2, 3, 4].item() / 255 - 0.3) / 0.3) < 1e-5
    plain = normalize_batch(x, mean, std, dtype=torch.bfloat16, channels_last=False)
    assert plain.dtype == torch.bfloat16 and plain.is_contiguous()
    assert torch.allclose(plain.double(), expected, atol=3e-2)
    xf = x.float()
    normalize_batch(xf, mean, std)
    assert torch.equal(xf, x.float())  # the input is not modified in place
    with pytest.raises(ValueError, match="expected"):
        normalize_batch(x[:, :2], mean, std)
