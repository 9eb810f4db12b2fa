"""Extra training time of distillation, with and without the soft-label cache (issue 6).

Four ResNet-20 students train through the real engine on the shared CIFAR-10 (CPU protocol:
bf16, channels_last, batch 128, seed 0), in interleaved windows of the same epochs:

- ``alone``: label loss only;
- ``kd``: distilled from the teacher checkpoint(s), no cache (teachers run every step);
- ``kd_cache_fill``: the same with a soft-label cache that is empty for this epoch (teachers
  run and their targets are stored: the first student of a shared cache pays this);
- ``kd_cache_hit``: a second student reading the targets the previous side stored for the same
  epoch (what every later student, or a repeated run with the same data seed, pays).

The median window time of each side and its difference to ``alone`` are reported.

    python benchmarks/distill_overhead.py --teacher runs/cpu_dense_resnet56_cifar10/last.pt \\
        --rounds 5 --steps 100
"""

from __future__ import annotations

import argparse
import statistics

from _common import append_markdown, header
from overhead import make_trainer, timed_epoch

from sparsetrain.data import load_split
from sparsetrain.distill import build_distillation
from sparsetrain.distill.teachers import SoftLabelCache


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", nargs="+", required=True, help="teacher checkpoint(s)")
    p.add_argument("--model", default="resnet20", help="student")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=5, help="interleaved windows per side")
    p.add_argument("--steps", type=int, default=100, help="steps per window (0: one epoch)")
    p.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()
    data = load_split("cifar10", args.data, "train")

    def kd(cache: SoftLabelCache | None):
        cb = build_distillation(args.teacher, precision="bf16", channels_last=True,
                                temperature=args.temperature)
        cb.cache = cache
        return cb

    shared = SoftLabelCache()  # in memory: the fill side stores, the hit side reads
    sides = {
        "alone": make_trainer(args.model, data, None, 1.0),
        "kd": make_trainer(args.model, data, None, 1.0, [kd(None)]),
        "kd_cache_fill": make_trainer(args.model, data, None, 1.0, [kd(shared)]),
        "kd_cache_hit": make_trainer(args.model, data, None, 1.0, [kd(shared)]),
    }
    steps = args.steps or None
    for tr in sides.values():
        timed_epoch(tr, 20)  # warm-up (epoch 0, which the timed windows then leave)
    times: dict[str, list[float]] = {k: [] for k in sides}
    for i in range(args.rounds):
        for name, tr in sides.items():  # fill runs before hit: same epoch, same batches
            times[name].append(timed_epoch(tr, steps))
        if misses := sides["kd_cache_hit"].callbacks[0]._misses:
            raise SystemExit(f"the cache-hit side missed {misses} batches: timings invalid")
        print(f"round {i + 1}/{args.rounds}: " + ", ".join(
            f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    window = f"{args.steps} steps" if args.steps else "one epoch (390 steps)"
    lines = ["| side | window | median (min–max) | extra vs alone |", "|---|---|---|---|"]
    for k, v in times.items():
        lines.append(f"| {k} | {window} | {med[k]:.2f} s ({min(v):.2f}–{max(v):.2f}) | "
                     f"{100 * (med[k] / med['alone'] - 1):+.1f}% |")
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        append_markdown(header("Distillation overhead (benchmarks/distill_overhead.py)")
                        + f"Student {args.model}, teachers {', '.join(args.teacher)}, T = "
                        f"{args.temperature}, {args.rounds} interleaved rounds through the engine "
                        "(bf16, channels_last, batch 128).\n\n" + text)


if __name__ == "__main__":
    main()
