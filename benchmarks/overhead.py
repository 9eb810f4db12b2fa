"""Per-step cost of masking: a static 90%-sparse ResNet-20 epoch vs a dense epoch.

Both run through the real engine (Trainer) on the shared CIFAR-10 with the CPU protocol's
optimizer and precision; epochs alternate A/B/A/B... and the median epoch time of each side is
reported. The sparse side pays one foreach multiply of the gradients by the masks per step.

    python benchmarks/overhead.py --pairs 3
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


def make_trainer(model_name: str, data, density: float | None) -> Trainer:
    torch.manual_seed(0)
    info = get_dataset_info("cifar10")
    loader = DeviceLoader(data, 128, info.mean, info.std, train=True, seed=0)
    model = create_model(model_name).to(memory_format=torch.channels_last)
    opt = build_optimizer(model, "sgd", lr=0.1, weight_decay=5e-4)
    callbacks = []
    if density is not None:
        method = create_method("static", model, opt, density=density, budget="erk", seed=0)
        callbacks.append(method.prepare())
    sched = build_schedule("cosine", epochs=1000, steps_per_epoch=len(loader), warmup_epochs=1)
    return Trainer(model, opt, sched, loader, {}, epochs=1000, device=torch.device("cpu"),
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
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="steps per window (default: epoch)")
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()
    data = load_split("cifar10", args.data, "train")
    dense = make_trainer(args.model, data, None)
    sparse = make_trainer(args.model, data, args.density)
    timed_epoch(dense, 20)  # warm-up
    timed_epoch(sparse, 20)
    td, ts = [], []
    for i in range(args.pairs):
        td.append(timed_epoch(dense, args.steps))
        ts.append(timed_epoch(sparse, args.steps))
        print(f"pair {i + 1}/{args.pairs}: dense {td[-1]:.2f} s, sparse {ts[-1]:.2f} s", flush=True)
    md, msp = statistics.median(td), statistics.median(ts)
    density = sparse.callbacks[0].masks.density()
    window = f"{args.steps} steps" if args.steps else "one epoch (390 steps)"
    text = (f"| model | window | dense median | static density {density:.3f} median | "
            f"overhead |\n|---|---|---|---|---|\n| {args.model} | {window} | {md:.2f} s "
            f"({min(td):.2f}–{max(td):.2f}) | {msp:.2f} s ({min(ts):.2f}–{max(ts):.2f}) | "
            f"{100 * (msp / md - 1):+.1f}% |")
    print(text)
    if not args.no_append:
        append_markdown(header("Mask overhead (benchmarks/overhead.py)")
                        + f"{args.pairs} interleaved A/B pairs through the engine (bf16, "
                        "channels_last, batch 128, SGD nesterov); ERK random mask.\n\n" + text)


if __name__ == "__main__":
    main()
