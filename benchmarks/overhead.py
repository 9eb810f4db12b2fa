"""Per-step cost of sparsity methods: epochs of sparse ResNet-20 vs dense, interleaved.

Every side runs through the real engine (Trainer) on the shared CIFAR-10 with the CPU
protocol's optimizer, precision and schedule lengths (15 epochs, ΔT = 100); epochs alternate
dense, method 1, method 2, ... and the median epoch time of each side is reported. Static masks
cost one foreach multiply of the gradients per step; GraNet/RigL add a mask update every ΔT.

    python benchmarks/overhead.py --methods static --pairs 3
    python benchmarks/overhead.py --methods granet rigl --pairs 3
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _common import append_markdown, header

from sparsetrain.data import DeviceLoader, get_dataset_info, load_split
from sparsetrain.models import create_model
from sparsetrain.sparsity.methods import create_method
from sparsetrain.train.engine import Trainer
from sparsetrain.train.optim import build_optimizer
from sparsetrain.train.schedules import build_schedule


def make_trainer(model_name: str, data, method: str | None, density: float,
                 callbacks: list | None = None) -> Trainer:
    """A CPU-protocol Trainer (bf16, channels_last, 15-epoch schedules) on ``data``, with the
    sparsity ``method`` (None: dense) and any extra ``callbacks``."""
    torch.manual_seed(0)
    info = get_dataset_info("cifar10")
    loader = DeviceLoader(data, 128, info.mean, info.std, train=True, seed=0)
    model = create_model(model_name).to(memory_format=torch.channels_last)
    opt = build_optimizer(model, "sgd", lr=0.1, weight_decay=5e-4)
    spe, epochs = len(loader), 15
    callbacks = list(callbacks or [])
    if method is not None:
        m = create_method(method, model, opt, density=density, seed=0,
                          total_steps=epochs * spe, steps_per_epoch=spe)
        callbacks.insert(0, m.prepare())
    sched = build_schedule("cosine", epochs=epochs, steps_per_epoch=spe, warmup_epochs=1)
    return Trainer(model, opt, sched, loader, {}, epochs=epochs, device=torch.device("cpu"),
                   precision="bf16", callbacks=callbacks, progress=False, max_steps=None)


def timed_epoch(tr: Trainer, steps: int | None) -> float:
    """Train one epoch (or ``steps`` steps) and return its training time (no evaluation)."""
    tr.max_steps = tr.step + steps if steps else None
    tr._train_epoch()
    if tr.batch_in_epoch:  # a partial window: the next one starts a fresh epoch
        tr.epoch, tr.batch_in_epoch = tr.epoch + 1, 0
    return tr.history[-1]["epoch_time_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--methods", nargs="+", default=["static"])
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--pairs", type=int, default=3, help="rounds of one epoch per side")
    p.add_argument("--steps", type=int, default=None, help="steps per window (default: epoch)")
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()
    data = load_split("cifar10", args.data, "train")
    sides = {"dense": make_trainer(args.model, data, None, args.density)}
    for m in args.methods:
        sides[m] = make_trainer(args.model, data, m, args.density)
    for tr in sides.values():
        timed_epoch(tr, 20)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in sides}
    for i in range(args.pairs):
        for name, tr in sides.items():
            times[name].append(timed_epoch(tr, args.steps))
        print(f"round {i + 1}/{args.pairs}: " + ", ".join(
            f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    window = f"{args.steps} steps" if args.steps else "one epoch (390 steps)"
    lines = ["| model | method | window | median epoch (min–max) | vs dense | mask updates |",
             "|---|---|---|---|---|---|"]
    for k, v in times.items():
        cb = sides[k].callbacks
        updates = sum(e["event"] == "update" for e in cb[0].log) if cb else 0
        lines.append(f"| {args.model} | {k} | {window} | {med[k]:.2f} s ({min(v):.2f}–"
                     f"{max(v):.2f}) | {100 * (med[k] / med['dense'] - 1):+.1f}% | {updates} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        append_markdown(header("Method overhead (benchmarks/overhead.py)")
                        + f"{args.pairs} interleaved rounds through the engine (bf16, "
                        f"channels_last, batch 128, SGD nesterov), density {args.density}, "
                        "schedules of a 15-epoch run (ΔT = 100).\n\n" + text)


if __name__ == "__main__":
    main()
