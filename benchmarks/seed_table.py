"""Methods x sparsity over seeds: mean ± half-range of final top-1 from sweep CSVs.

    python benchmarks/seed_table.py benchmarks/results/v2_table_s0.csv \\
        benchmarks/results/v2_table_s1.csv --seeds 2 --no-append
    python benchmarks/seed_table.py benchmarks/results/dst_cpu_resnet20_d0.{1,02}.csv \\
        --seeds 1 --itop --no-append   # one seed, with the ITOP rate per sparsity

Rows of all CSVs are pooled and grouped by method (the recipe file without its model/data
suffix and ``_v2``) and sparsity; each cell is ``mean ± half-range`` over the seeds found, with
the per-seed values after it. A cell with fewer seeds than ``--seeds`` says how many it has, so
a table of unfinished sweeps cannot pass for a finished one. The dense row is repeated under
every sparsity. A (method, sparsity, seed) found twice is an error (two CSVs disagree on which
run counts). ``--itop`` adds, per sparsity, the mean ITOP rate (fraction of weights ever
active) over the seeds; a static mask's rows from before ITOP was logged count as their density.
A cell whose seeds trained in different precisions (the CSVs' ``precision`` column; "unrecorded"
in rows from before it) names each seed's precision and says so, so pooled bf16 and fp32 runs
cannot pass for one setting.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from _common import append_markdown, fail, header

LABELS = {
    "dense": "dense",
    "static_erk": "static ERK (random)",
    "set": "SET",
    "rigl": "RigL",
    "gmp": "GMP",
    "granet": "GraNet (s_i = 0)",
    "granet_st": "GraNet (s_i = 0.5)",
    "gmp_papershape": "GMP, paper-shaped schedule",
    "granet_papershape": "GraNet, paper-shaped schedule",
}


def method_of(recipe: str) -> str:
    """``granet_st_v2_resnet20_cifar10.yaml`` -> ``granet_st``."""
    stem = Path(recipe).name.removesuffix(".yaml")
    stem = stem.split("_resnet")[0]
    return stem.removesuffix("_v2")


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and half-range (half of max - min) of one cell's seeds."""
    return sum(values) / len(values), (max(values) - min(values)) / 2


Cell = dict[int, tuple[float, float | None, str]]  # seed -> (top-1, ITOP or None, precision)
Cells = dict[tuple[str, float], Cell]


def _itop(r: dict[str, str]) -> float | None:
    if r.get("itop"):
        return float(r["itop"])
    # rows from before ITOP was logged: a fixed mask's union is the mask itself
    return float(r["density"]) if r["method"] == "static" else None


def collect(paths: list[str]) -> Cells:
    """{(method, sparsity): {seed: (top-1, ITOP, precision)}} from sweep CSVs; 0.0 is dense."""
    cells: Cells = {}
    for path in paths:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                m = method_of(r["recipe"])
                s = 0.0 if r["method"] == "dense" else round(1 - float(r["density"]), 2)
                seed = int(r["seed"])
                cell = cells.setdefault((m, s), {})
                if seed in cell:
                    fail(f"{m} at {100 * s:.0f}% seed {seed} is in the CSVs twice "
                         f"({path} has the second)")
                cell[seed] = (float(r["test_acc"]), _itop(r), r.get("precision") or "")
    return cells


def _top1_cell(cell: Cell, seeds: int) -> str:
    mixed = len({prec for _, _, prec in cell.values()}) > 1
    per = " / ".join(f"{100 * acc:.2f}" + (f" {prec or 'unrecorded'}" if mixed else "")
                     for acc, _, prec in (cell[k] for k in sorted(cell)))
    if len(cell) == 1:  # no spread to show: the value, and that it is one seed
        return f"{per} (1 of {seeds} seeds)" if seeds > 1 else per
    mean, half = spread([100 * acc for acc, _, _ in cell.values()])
    note = "" if len(cell) >= seeds else f", {len(cell)} of {seeds} seeds"
    note += ", precisions differ" if mixed else ""
    return f"{mean:.2f} ± {half:.2f} ({per}{note})"


def _itop_cell(cell: Cell) -> str:
    vals = [i for _, i, _ in cell.values() if i is not None]
    return f"{sum(vals) / len(vals):.3f}" if vals else "—"


def table(cells: Cells, seeds: int, itop: bool = False) -> str:
    sparsities = sorted({s for _, s in cells if s > 0})
    methods = sorted({m for m, _ in cells},
                     key=lambda m: (list(LABELS).index(m) if m in LABELS else len(LABELS), m))
    heads = []
    for s in sparsities:
        heads += [f"top-1 @ {100 * s:.0f}% (per seed)"] + [f"ITOP @ {100 * s:.0f}%"] * itop
    lines = ["| method | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for m in methods:
        row = []
        for s in sparsities:
            cell = cells.get((m, 0.0 if m == "dense" else s))
            row.append(_top1_cell(cell, seeds) if cell else "—")
            if itop:  # a dense run has no mask, so no ITOP rate
                row.append(_itop_cell(cell) if cell and m != "dense" else "—")
        lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csvs", nargs="+")
    p.add_argument("--seeds", type=int, default=2, help="seeds a finished cell has")
    p.add_argument("--itop", action="store_true", help="add the ITOP rate per sparsity")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    for path in args.csvs:
        if not Path(path).is_file():
            fail(f"no such CSV: {path}")
    text = table(collect(args.csvs), args.seeds, args.itop)
    print(text)
    if not args.no_append:
        srcs = ", ".join(f"`{p}`" for p in args.csvs)
        append_markdown(header("Methods x sparsity over seeds (benchmarks/seed_table.py)")
                        + f"Results CSVs: {srcs}. Final-epoch test top-1, mean ± half-range "
                        "over seeds.\n\n" + text)


if __name__ == "__main__":
    main()
