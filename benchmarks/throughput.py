"""Training throughput on CPU: sparsetrain's engine vs a reference loop written the way the
papers' code is (torch DataLoader, 2 workers, per-image PIL/numpy crop+flip, fp32, NCHW).

Both train the same model with the same optimizer on the real CIFAR-10 training images,
in interleaved windows (A, B, A, B, ...), and the median images/s of the windows is reported.
The data-loading share of sparsetrain's step is measured by timing the batch producer alone.

    python benchmarks/throughput.py --models resnet20 resnet56 --windows 5 --steps 20

``--variants`` adds levers to the engine side, each as its own interleaved side (issue 19.3):
``compile`` (``torch.compile`` of the model, inductor's CPU fusion of BN/ReLU/add; the compile
time is reported), ``fused-sgd`` (``torch.optim.SGD(fused=True)`` instead of foreach).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from _common import append_markdown, header
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from sparsetrain.data import DeviceLoader, get_dataset_info, load_split
from sparsetrain.models import create_model
from sparsetrain.precision import autocast
from sparsetrain.train.optim import build_optimizer

VARIANTS = ("engine", "compile", "fused-sgd")
MEAN = np.array(get_dataset_info("cifar10").mean, dtype=np.float32)
STD = np.array(get_dataset_info("cifar10").std, dtype=np.float32)


class ReferenceCifar(Dataset):
    """Per-image augmentation as in the papers' training scripts (PIL + numpy)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i])
        arr = np.pad(np.asarray(img), ((4, 4), (4, 4), (0, 0)), mode="reflect")
        y0, x0 = np.random.randint(0, 9, size=2)
        arr = arr[y0 : y0 + 32, x0 : x0 + 32]
        if np.random.rand() < 0.5:
            arr = arr[:, ::-1]
        x = (arr.astype(np.float32) / 255.0 - MEAN) / STD
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), int(self.labels[i])


def _worker_init(worker_id: int) -> None:
    np.random.seed(1234 + worker_id)


class Side:
    """One training setup that can run a timed window of ``steps`` optimizer steps."""

    def __init__(self, name: str, model_name: str, fast: bool, data, lever: str = "") -> None:
        torch.manual_seed(0)
        self.name, self.fast = name, fast
        self.model = create_model(model_name, num_classes=10)
        if fast:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = build_optimizer(self.model, "sgd", lr=0.05, weight_decay=5e-4)
        self.forward = self.model
        if lever == "compile":
            self.forward = torch.compile(self.model)
        elif lever == "fused-sgd":
            groups = [{k: v for k, v in g.items() if k not in ("foreach", "fused")}
                      for g in self.opt.param_groups]
            self.opt = torch.optim.SGD(groups, lr=0.05, fused=True)
        self.precision = "bf16" if fast else "fp32"
        if fast:
            info = get_dataset_info("cifar10")
            self.loader = DeviceLoader(data, 128, info.mean, info.std, train=True, seed=0)
            self._epoch, self._i, self._plan = 0, 0, self.loader.plan(0)
        else:
            ds = ReferenceCifar(data.images.numpy(), data.labels.numpy())
            self.loader = DataLoader(ds, batch_size=128, shuffle=True, num_workers=2,
                                     drop_last=True, persistent_workers=True,
                                     worker_init_fn=_worker_init)
            self._it = iter(self.loader)

    def next_batch(self):
        if self.fast:
            if self._i >= len(self.loader):
                self._epoch, self._i = self._epoch + 1, 0
                self._plan = self.loader.plan(self._epoch)
            self._i += 1
            return self.loader.batch(self._plan, self._i - 1)
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            return next(self._it)

    def window(self, steps: int) -> float:
        self.model.train()
        t0 = time.perf_counter()
        for _ in range(steps):
            x, y = self.next_batch()
            with autocast(torch.device("cpu"), self.precision):
                loss = F.cross_entropy(self.forward(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return steps * 128 / (time.perf_counter() - t0)

    def data_time(self, steps: int) -> float:
        """Seconds per batch spent producing batches alone (sparsetrain side)."""
        t0 = time.perf_counter()
        for _ in range(steps):
            self.next_batch()
        return (time.perf_counter() - t0) / steps


def run(model_name: str, data, windows: int, steps: int,
        variants: tuple[str, ...] = ("engine",)) -> list[dict]:
    """One row per engine variant; every side runs its windows interleaved with the others."""
    sides = {v: Side("sparsetrain", model_name, True, data, "" if v == "engine" else v)
             for v in variants}
    ref = Side("reference", model_name, False, data)
    warm = {}
    for v, side in sides.items():  # warm-up (allocator, oneDNN caches, compilation)
        t0 = time.perf_counter()
        side.window(3)
        warm[v] = time.perf_counter() - t0
    ref.window(3)
    rates: dict[str, list[float]] = {v: [] for v in variants}
    b = []
    for w in range(windows):
        for v, side in sides.items():
            rates[v].append(side.window(steps))
        b.append(ref.window(steps))
        shown = ", ".join(f"{v} {r[-1]:.0f}" for v, r in rates.items())
        print(f"  {model_name} window {w + 1}/{windows}: {shown}, reference {b[-1]:.0f} img/s",
              flush=True)
    med_b = statistics.median(b)
    rows = []
    for v, side in sides.items():
        a = rates[v]
        med_a = statistics.median(a)
        data_s = statistics.median(side.data_time(steps) for _ in range(3))
        rows.append({"model": model_name, "variant": v, "sparsetrain": med_a, "reference": med_b,
                     "speedup": med_a / med_b, "data_frac": data_s / (128 / med_a),
                     "warmup_s": warm[v], "spread_a": (min(a), max(a)),
                     "spread_b": (min(b), max(b))})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per window")
    p.add_argument("--variants", nargs="+", default=["engine"], choices=VARIANTS,
                   help="engine levers measured side by side (issue 19.3)")
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--no-append", action="store_true", help="do not write BENCHMARKS.md")
    args = p.parse_args()
    data = load_split("cifar10", args.data, "train")
    rows = [r for m in args.models for r in run(m, data, args.windows, args.steps,
                                                   tuple(args.variants))]
    table = ["| model | variant | sparsetrain img/s (min–max) | reference img/s (min–max) | "
             "speed-up | data loading share of step | warm-up (3 steps) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(
            f"| {r['model']} | {r['variant']} | {r['sparsetrain']:.0f} ({r['spread_a'][0]:.0f}–"
            f"{r['spread_a'][1]:.0f}) | {r['reference']:.0f} ({r['spread_b'][0]:.0f}–"
            f"{r['spread_b'][1]:.0f}) | {r['speedup']:.2f}× | {100 * r['data_frac']:.1f}% | "
            f"{r['warmup_s']:.1f} s |")
    text = "\n".join(table)
    print(text)
    if not args.no_append:
        append_markdown(header("Training throughput, batch 128 (benchmarks/throughput.py)")
                        + f"Median of {args.windows} interleaved windows of {args.steps} steps. "
                        "sparsetrain: device-resident uint8 data, batched crop/flip, bf16 "
                        "autocast, channels_last. Reference: DataLoader with 2 workers, "
                        "per-image PIL/numpy crop+flip, fp32, NCHW. Same model, SGD nesterov."
                        "\n\n" + text)


if __name__ == "__main__":
    main()
