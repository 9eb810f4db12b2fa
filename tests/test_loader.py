"""DeviceLoader: batched crop/flip equal a per-image reference; order and sharding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparsetrain.data.arrays import ImageArrays
from sparsetrain.data.loader import DeviceLoader

MEAN, STD = (0.5, 0.25, 0.125), (0.2, 0.4, 0.8)


def _arrays(n: int = 40, h: int = 8, w: int = 8) -> ImageArrays:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8)
    return ImageArrays(images, torch.arange(n) % 4, ("a", "b", "c", "d"))


def _reference(img_hwc: torch.Tensor, dy: int, dx: int, flip: bool, pad: int, mode: str):
    """Per-image pad -> crop -> flip -> normalize, written the obvious way."""
    x = img_hwc.permute(2, 0, 1).float()[None]  # [1, C, H, W]
    x = F.pad(x, (pad,) * 4, mode="reflect" if mode == "reflect" else "constant")
    h, w = img_hwc.shape[:2]
    x = x[..., dy : dy + h, dx : dx + w]
    if flip:
        x = x.flip(-1)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((x / 255 - mean) / std)[0]


def test_train_batches_match_per_image_reference() -> None:
    data = _arrays()
    for mode in ("reflect", "zeros"):
        loader = DeviceLoader(data, 8, MEAN, STD, train=True, seed=3, pad=3, padding_mode=mode)
        plan = loader.plan(epoch=1)
        assert plan.flip.any() and (~plan.flip).any()
        for i in range(len(loader)):
            x, y = loader.batch(plan, i)
            assert x.shape == (8, 3, 8, 8) and x.is_contiguous(memory_format=torch.channels_last)
            for j in range(8):
                k = i * 8 + j
                src = int(plan.order[k])
                ref = _reference(data.images[src], int(plan.dy[k]), int(plan.dx[k]),
                                 bool(plan.flip[k]), 3, mode)
                torch.testing.assert_close(x[j], ref, rtol=0, atol=1e-5)
                assert y[j] == data.labels[src]


def test_eval_batches_are_sequential_and_unaugmented() -> None:
    data = _arrays(n=21)
    loader = DeviceLoader(data, 8, MEAN, STD, train=False, channels_last=False)
    assert len(loader) == 3
    xs, ys = zip(*loader.epoch(0), strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    assert torch.equal(y, data.labels)
    expected = torch.stack([_reference(img, 0, 0, False, 0, "zeros") for img in data.images])
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)


def test_epoch_plan_is_deterministic_and_changes_per_epoch() -> None:
    loader = DeviceLoader(_arrays(), 8, MEAN, STD, train=True, seed=7)
    a, b, c = loader.plan(0), loader.plan(0), loader.plan(1)
    assert torch.equal(a.order, b.order) and torch.equal(a.dx, b.dx)
    assert torch.equal(a.flip, b.flip)
    assert not torch.equal(a.order, c.order)
    assert sorted(a.order.tolist()) == list(range(40))  # a permutation
    other_seed = DeviceLoader(_arrays(), 8, MEAN, STD, train=True, seed=8).plan(0)
    assert not torch.equal(a.order, other_seed.order)


def test_resume_mid_epoch_yields_the_remaining_batches() -> None:
    loader = DeviceLoader(_arrays(), 8, MEAN, STD, train=True, seed=1)
    full = list(loader.epoch(2))
    tail = list(loader.epoch(2, start=3))
    assert len(full) == 5 and len(tail) == 2
    for (xa, ya), (xb, yb) in zip(full[3:], tail, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_ranks_take_disjoint_shards_of_one_permutation() -> None:
    data = _arrays(n=40)
    plans = [DeviceLoader(data, 4, MEAN, STD, train=True, seed=2, rank=r, world_size=2).plan(5)
             for r in range(2)]
    single = DeviceLoader(data, 4, MEAN, STD, train=True, seed=2).plan(5)
    assert torch.equal(plans[0].order, single.order[0::2])
    assert torch.equal(plans[1].order, single.order[1::2])
    assert set(plans[0].order.tolist()).isdisjoint(plans[1].order.tolist())
    # uneven size: padded by wrap-around so both ranks have as many samples
    odd = _arrays(n=41)
    p0, p1 = (DeviceLoader(odd, 4, MEAN, STD, train=True, rank=r, world_size=2).plan(0)
              for r in range(2))
    assert len(p0.order) == len(p1.order) == 21
    assert set(p0.order.tolist()) | set(p1.order.tolist()) == set(range(41))


def test_no_flip_and_no_pad_is_identity_crop() -> None:
    data = _arrays()
    loader = DeviceLoader(data, 8, MEAN, STD, train=True, pad=0, flip=False, channels_last=False)
    plan = loader.plan(0)
    x, _ = loader.batch(plan, 0)
    ref = torch.stack([_reference(data.images[int(k)], 0, 0, False, 0, "zeros")
                       for k in plan.order[:8]])
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-5)


def test_test_subset_is_stratified_and_seed_independent(monkeypatch) -> None:
    """A split stored class by class (as CIFAR archives often are): ``data.test_subset`` takes
    the same share of every class, whatever the run seed, not the first N images."""
    import importlib

    from sparsetrain.config import load_config

    run = importlib.import_module("sparsetrain.train.run")

    labels = torch.arange(10).repeat_interleave(100)  # 1,000 images, sorted by class
    sorted_split = ImageArrays(torch.zeros(1000, 4, 4, 3, dtype=torch.uint8), labels,
                               tuple(str(c) for c in range(10)))
    monkeypatch.setattr(run, "load_split", lambda *a, **k: sorted_split)
    subsets = []
    for seed in (0, 5):
        cfg = load_config(None, ["data.test_subset=200", f"seed={seed}"])
        sub = run.load_test_split(cfg, "unused")
        assert torch.bincount(sub.labels, minlength=10).tolist() == [20] * 10
        subsets.append(sub.labels)
    assert torch.equal(subsets[0], subsets[1])
