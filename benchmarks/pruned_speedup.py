"""Measured speed-up of trained channel-pruned checkpoints over their dense model (issue 19.2).

Each pruned model is timed interleaved with the dense one (one warm-up pair, then ``--repeats``
pairs of single forwards at ``--batch``, channels_last, eval mode, random input); the speed-up is
the ratio of the medians, so a drift of the machine's speed hits both sides alike. fp32 and bf16
(autocast). Prints a Markdown table with MACs, the test accuracy each run recorded, and the
speed-ups; ``--markdown`` also appends it to BENCHMARKS.md.

    python benchmarks/pruned_speedup.py runs/dense56/last.pt runs/ee_macs/last.pt \\
        runs/ee_latency/last.pt [--batch 64] [--repeats 8] [--bf16-repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from _common import append_markdown, header
from torch import nn

from sparsetrain.checkpoint import load_checkpoint
from sparsetrain.errors import UserError
from sparsetrain.loading import load_model
from sparsetrain.structured.latency import interleaved_medians
from sparsetrain.structured.macs import macs_params


def speedup(dense: nn.Module, pruned: nn.Module, x: torch.Tensor, precision: str,
            repeats: int) -> tuple[float, float, float]:
    """(dense ms, pruned ms, dense / pruned) from interleaved single forwards."""
    md, mp = interleaved_medians(dense, pruned, x, precision, repeats)
    return 1000 * md, 1000 * mp, md / mp


def _test_acc(path: Path) -> str:
    summary = path.parent / "summary.json"
    try:
        return f"{100 * json.loads(summary.read_text())['final']['test_acc']:.2f}%"
    except (OSError, KeyError, TypeError, ValueError):
        return "n/a"


def _model(path: Path) -> nn.Module:
    """A checkpoint's model for timing; a missing or unreadable file is a one-line error."""
    try:
        m = load_model(load_checkpoint(path), path).eval()
    except (UserError, OSError) as e:
        print(f"pruned_speedup: error: {e}", file=sys.stderr)
        sys.exit(2)
    return m.to(memory_format=torch.channels_last)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dense", type=Path, help="the dense checkpoint")
    ap.add_argument("pruned", type=Path, nargs="+", help="channel-pruned checkpoints")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=8, help="timing pairs, fp32")
    ap.add_argument("--bf16-repeats", type=int, default=3, help="timing pairs, bf16")
    ap.add_argument("--markdown", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args()

    torch.manual_seed(0)
    dense = _model(args.dense)
    x = torch.randn(args.batch, *getattr(dense, "input_size", (3, 32, 32)))
    x = x.contiguous(memory_format=torch.channels_last)
    dense_macs = macs_params(copy.deepcopy(dense))[0]
    lines = [header("Measured speed-up of pruned checkpoints over dense"),
             f"batch {args.batch}, interleaved pairs: {args.repeats} fp32, {args.bf16_repeats} "
             "bf16; speed-up = dense median / pruned median\n",
             "| checkpoint | MACs ratio | test top-1 | fp32 ms (dense / pruned) | fp32 speed-up "
             "| bf16 ms (dense / pruned) | bf16 speed-up |",
             "|---|---|---|---|---|---|---|",
             f"| {args.dense} | 1.000 | {_test_acc(args.dense)} | | | | |"]
    for path in args.pruned:
        pruned = _model(path)
        ratio = macs_params(copy.deepcopy(pruned))[0] / dense_macs
        cells = []
        for precision, n in (("fp32", args.repeats), ("bf16", args.bf16_repeats)):
            d, p, s = speedup(dense, pruned, x, precision, n)
            cells.append(f"{d:.1f} / {p:.1f} | {s:.2f}×")
        lines.append(f"| {path} | {ratio:.3f} | {_test_acc(path)} | {' | '.join(cells)} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        append_markdown(text)


if __name__ == "__main__":
    main()
