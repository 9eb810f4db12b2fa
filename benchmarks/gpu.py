"""GPU throughput and a full-recipe timing, through the real training path (``train``).

Images/s of the engine (bf16 autocast, channels_last, data resident on the GPU) for dense and
GraNet-90% models on CIFAR-10, measured between two synchronized points after a warm-up; then,
with ``--full``, the wall time and final accuracy of one whole recipe (default: the 160-epoch
GraNet ResNet-32 at 90% sparsity). Runs under ``torchrun`` too (images/s are then global).

    python benchmarks/gpu.py --models resnet50_cifar resnet20 --methods dense granet
    python benchmarks/gpu.py --full configs/granet/granet_resnet32_cifar10_s90.yaml
    torchrun --nproc_per_node 8 benchmarks/gpu.py --models resnet50_cifar

On a machine without CUDA it stops with exit code 2 unless ``--allow-cpu`` (a smoke test).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

import torch
from _common import append_markdown, header

from sparsetrain import load_config, train
from sparsetrain.callbacks import Callback

METHOD_KEYS = {
    "dense": ["sparsity.method=dense"],
    "granet": ["sparsity.method=granet", "sparsity.density=0.1", "sparsity.t_end=50%",
               "sparsity.delta_t=100", "sparsity.update_fraction=0.5"],
}


class StepTimer(Callback):
    """Wall time between the ends of optimizer steps ``warmup`` and ``warmup + steps``."""

    name = "step_timer"

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.t0 = self.t1 = 0.0

    def after_optimizer_step(self, trainer: Any) -> None:
        if trainer.step in (self.warmup, self.warmup + self.steps):
            if trainer.device.type == "cuda":
                torch.cuda.synchronize(trainer.device)
            now = time.perf_counter()
            if trainer.step == self.warmup:
                self.t0 = now
            else:
                self.t1 = now


def throughput(model: str, method: str, args: argparse.Namespace, out: str) -> float:
    timer = StepTimer(args.warmup, args.steps)
    cfg = load_config(args.recipe, [
        f"model.name={model}", *METHOD_KEYS[method], f"data.path={args.data}",
        f"data.batch_size={args.batch_size}", "train.epochs=1", "train.warmup_epochs=0",
        f"train.max_steps={args.warmup + args.steps}", "train.progress=false",
        "train.precision=bf16", f"out_dir={out}", f"name={model}_{method}",
        "data.test_subset=512",
    ])
    train(cfg, callbacks=[timer])
    # images per step are global (data.batch_size is the global batch under torchrun)
    return args.steps * args.batch_size / (timer.t1 - timer.t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=["resnet50_cifar", "resnet20"])
    p.add_argument("--methods", nargs="*", default=["dense", "granet"], choices=sorted(METHOD_KEYS))
    p.add_argument("--recipe", default="configs/cpu/dense_resnet20_cifar10.yaml",
                   help="base recipe for the throughput runs (data, optimizer)")
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--full", default=None, metavar="RECIPE",
                   help="also train this recipe to the end and report wall time and accuracy")
    p.add_argument("--out-dir", default="runs/gpu_bench")
    p.add_argument("--allow-cpu", action="store_true")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu.py: error: no CUDA device (use --allow-cpu for a smoke test)", file=sys.stderr)
        return 2
    main_rank = int(os.environ.get("RANK", "0")) == 0
    lines = [f"| model | method | images/s (bf16, batch {args.batch_size}) |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for method in args.methods:
                rate = throughput(model, method, args, tmp)
                lines.append(f"| {model} | {method} | {rate:.0f} |")
                if main_rank:
                    print(lines[-1], flush=True)
    if args.full:
        cfg = load_config(args.full, [f"data.path={args.data}", f"out_dir={args.out_dir}",
                                      "train.progress=true"])
        s = train(cfg)
        lines += ["", f"Full recipe `{args.full}`: wall {s['wall_s'] / 3600:.2f} h, "
                  f"{s['images_per_s']:.0f} img/s, final test top-1 "
                  f"{100 * s['final']['test_acc']:.2f}%, density {s['density']['global']:.3f}"]
    text = "\n".join(lines)
    if main_rank:
        print(text)
        if not args.no_append:
            world = os.environ.get("WORLD_SIZE", "1")
            append_markdown(header(f"GPU throughput, {world} process(es) (benchmarks/gpu.py)")
                            + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
