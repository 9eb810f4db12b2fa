"""Input pipeline for ImageNet-sized JPEGs (issue 19): decode + augment images/s per worker.

Generates (once, cached outside the repository) ImageNet-sized JPEGs from the shared CIFAR-10
archive: each 32x32 image upscaled (bicubic) to 500x375, with mild Gaussian noise so files
carry texture like photos (a smooth upscale compresses to ~16 KB and decodes unrealistically
fast), re-encoded at quality 90, in ``train/<class>/NNNN.jpg``. Then it measures the streaming
loader's RandomResizedCrop(224) + flip to uint8 batches for each path:

* ``full``: decode the whole JPEG, crop and resize in one bilinear (antialiased) step;
* ``draft``: the same crop box, decoded at the smallest DCT scale that keeps the crop at least
  224 pixels (see :class:`sparsetrain.data.stream.RandomResizedCrop`);
* ``shards``: ``draft`` reading tar shards sequentially (:mod:`sparsetrain.data.shards`);
* ``tvio``: torchvision.io decode, when torchvision is installed (not on this machine).

Two rates per path: images per CPU-second of decode + augment in the benchmark process
(``time.process_time``, one thread: the per-core cost, least disturbed by other load on the
machine), and wall-clock images/s of the DataLoader with 1 and 2 worker processes.

    python benchmarks/input_pipeline.py [--images 3000] [--size 500x375] [--append]
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsetrain.data.shards import ShardStream, write_shards
from sparsetrain.data.stream import (
    Compose,
    ImageFolderStream,
    RandomHorizontalFlip,
    RandomResizedCrop,
    make_stream_loader,
    worker_init,
)

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparsetrain"


def make_images(root: Path, n: int, size: tuple[int, int] = (500, 375), noise: float = 8.0,
                archive: Path = ARCHIVE) -> Path:
    """``n`` ImageNet-sized JPEGs under ``root/train/<class>/`` (kept when already there)."""
    from PIL import Image

    done = root / f".done-{n}"
    if done.exists():
        return root
    rng = np.random.default_rng(0)
    per_class: dict[str, int] = {}
    with tarfile.open(archive) as tf:
        for m in tf:
            parts = m.name.split("/")
            if not (m.isfile() and parts[0] == "train" and len(parts) == 3):
                continue
            if per_class.get(parts[1], 0) >= n // 10:
                if len(per_class) == 10 and min(per_class.values()) >= n // 10:
                    break
                continue
            img = Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")
            big = np.asarray(img.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
            big = (big + rng.normal(0.0, noise, big.shape)).clip(0, 255).astype(np.uint8)
            out = root / "train" / parts[1] / parts[2]
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(big).save(out, "JPEG", quality=90)
            per_class[parts[1]] = per_class.get(parts[1], 0) + 1
    done.touch()
    return root


def _transform(draft: bool) -> Compose:
    return Compose([RandomResizedCrop(224, draft=draft), RandomHorizontalFlip()])


def _rate(loader: Any, n_batches: int) -> tuple[float, int]:
    """Images/s over the batches after the first (worker start-up excluded)."""
    it = iter(loader)
    x, _ = next(it)
    assert x.dtype == torch.uint8
    seen, t0 = 0, time.perf_counter()
    for i, (x, _) in enumerate(it):
        seen += len(x)
        if i + 2 >= n_batches:
            break
    return seen / (time.perf_counter() - t0), seen


def _dataset(root: Path, shard_dir: Path, path: str) -> ImageFolderStream | ShardStream:
    if path == "shards":
        return ShardStream(shard_dir, "train", _transform(True), seed=0)
    backend = "torchvision" if path == "tvio" else "pil"
    return ImageFolderStream(root, "train", _transform(path != "full"), seed=0, decoder=backend)


def cpu_rate(ds: Any, n: int, repeats: int = 5) -> tuple[float, float]:
    """Images per CPU-second of ``ds.load`` in this process: mean and std over ``repeats`` runs
    of ``n`` images, after 100 warm-up images (a fresh process starts up to 1.5x slower)."""
    step = max(1, len(ds) // (n * repeats + 100))
    for i in range(100):
        ds.load(i * step % len(ds), 0)
    rates = []
    for r in range(repeats):
        t0 = time.process_time()
        for i in range(100 + r * n, 100 + (r + 1) * n):
            ds.load(i * step % len(ds), 0)
        rates.append(n / (time.process_time() - t0))
    return float(np.mean(rates)), float(np.std(rates))


def measure(ds: Any, workers: int, batches: int) -> float:
    """Wall-clock images/s with ``workers`` worker processes (batch 64, epoch 0)."""
    loader = make_stream_loader(ds, 64, train=True, seed=0, epoch=0, workers=workers)
    return _rate(loader, batches)[0]


def pixel_difference(root: Path, n: int) -> tuple[float, float]:
    """Mean and max over ``n`` images of the mean |draft - full| (uint8 levels), same draws."""
    full = ImageFolderStream(root, "train", _transform(False), seed=0)
    draft = ImageFolderStream(root, "train", _transform(True), seed=0)
    step = max(1, len(full) // n)
    diffs = [(full.load(i, 0)[0].float() - draft.load(i, 0)[0].float()).abs().mean().item()
             for i in range(0, step * n, step)]
    return float(np.mean(diffs)), float(np.max(diffs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of the generated JPEGs")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--paths", nargs="+", default=["full", "draft", "shards", "tvio"])
    p.add_argument("--cache", type=Path, default=None, help="default: ~/.cache/sparsetrain/...")
    p.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    worker_init()  # as in a loader worker: the in-process rates see the same allocator
    size = tuple(int(v) for v in args.size.split("x"))
    root = make_images(args.cache or CACHE / f"input_pipeline_{args.size}", args.images, size)
    shard_dir = root.with_name(root.name + "_shards")
    if not (shard_dir / "train").is_dir():
        write_shards(root, shard_dir, shard_size=500)
    files = sorted((root / "train").rglob("*.jpg"))
    kb = np.mean([f.stat().st_size for f in files]) / 1024
    try:
        import torchvision.io  # noqa: F401
    except ImportError:
        args.paths = [q for q in args.paths if q != "tvio"]
    rows = []
    for path in args.paths:
        ds = _dataset(root, shard_dir, path)
        mean, std = cpu_rate(ds, 200)
        cells = [f"{mean:.0f} ± {std:.0f}"]
        for w in args.workers:  # median and range of 3 runs (other load on the machine)
            runs = sorted(measure(ds, w, args.batches) for _ in range(3))
            cells.append(f"{runs[1]:.0f} ({runs[0]:.0f}-{runs[2]:.0f})")
        rows.append(f"| {path} | " + " | ".join(cells) + f" | {os.getloadavg()[0]:.2f} |")
        print(rows[-1], flush=True)
    mean_d, max_d = pixel_difference(root, 300)
    wcols = " | ".join(f"img/s, {w} worker{'s' * (w > 1)}" for w in args.workers)
    text = (f"{len(files)} JPEGs {args.size} q90, mean {kb:.0f} KB; RandomResizedCrop(224) + "
            f"flip to uint8; files in the page cache; loaders: batches of 64, "
            f"{args.batches - 1} timed after the first, median (range) of 3 runs\n\n"
            f"| path | img/s per CPU-second (in process, mean ± std of 5) | {wcols} "
            "| load avg (1 min) |\n"
            "|---|---|" + "---|" * len(args.workers) + "---|\n" + "\n".join(rows) +
            f"\n\ndraft vs full, same crop boxes, 300 images: mean |diff| {mean_d:.2f} "
            f"(worst image {max_d:.2f}) uint8 levels\n")
    print(text)
    if args.append:
        from _common import append_markdown, header

        append_markdown(header("Input pipeline: decode + augment throughput") + text)


if __name__ == "__main__":
    main()
