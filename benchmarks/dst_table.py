"""One table of methods x sparsities from sweep CSVs (top-1 and ITOP rate per sparsity).

    python benchmarks/dst_table.py benchmarks/results/dst_cpu_resnet20_d0.1.csv \\
        benchmarks/results/dst_cpu_resnet20_d0.02.csv

Each CSV is one sweep (one density, by ``--set sparsity.density=...``); rows are matched by
recipe. Prints a markdown table (appended to BENCHMARKS.md unless ``--no-append``).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from _common import append_markdown, header

LABELS = {
    "dense_resnet20_cifar10.yaml": "dense",
    "static_erk_resnet20_cifar10.yaml": "static ERK (random)",
    "set_resnet20_cifar10.yaml": "SET",
    "rigl_resnet20_cifar10.yaml": "RigL",
    "gmp_resnet20_cifar10.yaml": "GMP",
    "granet_resnet20_cifar10.yaml": "GraNet (s_i = 0)",
    "granet_st_resnet20_cifar10.yaml": "GraNet (s_i = 0.5)",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csvs", nargs="+")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()
    sweeps = []
    for path in args.csvs:
        with open(path, newline="") as f:
            rows = {r["recipe"]: r for r in csv.DictReader(f)}
        sparse = [float(r["density"]) for r in rows.values() if r["method"] != "dense"]
        sweeps.append((round(1 - min(sparse), 2) if sparse else 0.0, rows, path))
    recipes = [k for k in LABELS if any(k in rows for _, rows, _ in sweeps)]
    head = "| method | " + " | ".join(
        f"top-1 @ {100 * s:.0f}% | ITOP @ {100 * s:.0f}%" for s, _, _ in sweeps) + " |"
    lines = [head, "|---|" + "---|---|" * len(sweeps)]
    for recipe in recipes:
        cells = []
        for _, rows, _ in sweeps:
            r = rows.get(recipe)
            if r is None:
                cells += ["—", "—"]
                continue
            itop = r.get("itop", "")
            if itop in ("", None) and r["method"] == "static":  # rows from before ITOP was
                itop = r["density"]  # logged: a fixed mask's union is the mask itself
            cells += [f"{100 * float(r['test_acc']):.2f}%",
                      f"{float(itop):.3f}" if itop not in ("", None) else "—"]
        lines.append(f"| {LABELS[recipe]} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        srcs = ", ".join(f"`{Path(p)}`" for _, _, p in sweeps)
        append_markdown(header("Methods x sparsity (benchmarks/dst_table.py)")
                        + f"Results CSVs: {srcs}.\n\n" + text)


if __name__ == "__main__":
    main()
