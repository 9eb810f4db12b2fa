"""benchmarks/seed_table.py: cells pool seeds across CSVs, say when seeds are missing or
trained in different precisions, and reject a (method, sparsity, seed) that two CSVs both
claim."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "seed_table.py"


def _csv(path: Path, rows: list[tuple[str, str, float, int, float]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["recipe", "method", "density", "seed", "test_acc"])
        w.writeheader()
        for recipe, method, density, seed, acc in rows:
            w.writerow({"recipe": recipe, "method": method, "density": density, "seed": seed,
                        "test_acc": acc})
    return path


def _run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args), "--no-append"],
                          capture_output=True, text=True, timeout=60, check=False)


def test_seeds_pool_across_csvs_and_missing_seeds_are_named(tmp_path: Path) -> None:
    a = _csv(tmp_path / "s0.csv", [("dense_v2_resnet20_cifar10.yaml", "dense", 1.0, 0, 0.87),
                                   ("gmp_v2_resnet20_cifar10.yaml", "gmp", 0.1, 0, 0.83),
                                   ("granet_v2_resnet20_cifar10.yaml", "granet", 0.1, 0, 0.82),
                                   ("gmp_v2_resnet20_cifar10.yaml", "gmp", 0.02, 0, 0.78)])
    b = _csv(tmp_path / "s1.csv", [("gmp_v2_resnet20_cifar10.yaml", "gmp", 0.1, 1, 0.8250)])
    out = _run(a, b, "--seeds", "2")
    assert out.returncode == 0, out.stderr
    rows = {line.split(" | ")[0].strip("| "): line for line in out.stdout.splitlines()}
    assert "top-1 @ 90%" in out.stdout and "top-1 @ 98%" in out.stdout
    # GMP at 90%: mean 82.75, half-range 0.25, both seeds; 98%: one seed, no spread claimed
    assert "82.75 ± 0.25 (83.00 / 82.50)" in rows["GMP"]
    assert "78.00 (1 of 2 seeds)" in rows["GMP"]
    assert "82.00 (1 of 2 seeds)" in rows["GraNet (s_i = 0)"]
    assert rows["GraNet (s_i = 0)"].rstrip(" |").endswith("—")  # no 98% run
    assert rows["dense"].count("87.00 (1 of 2 seeds)") == 2  # repeated under each sparsity


@pytest.mark.parametrize("case", ["duplicate", "missing"])
def test_bad_input_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    a = _csv(tmp_path / "a.csv", [("gmp_v2_resnet20_cifar10.yaml", "gmp", 0.1, 0, 0.83)])
    other = (_csv(tmp_path / "b.csv", [("gmp_v2_resnet20_cifar10.yaml", "gmp", 0.1, 0, 0.84)])
             if case == "duplicate" else tmp_path / "nope.csv")
    out = _run(a, other)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ")
    assert ("twice" in out.stderr) if case == "duplicate" else ("no such CSV" in out.stderr)


def test_itop_column_per_sparsity(tmp_path: Path) -> None:
    """--itop adds the mean ITOP rate after each sparsity's top-1; a static row from before
    ITOP was logged counts as its density, and dense has none."""
    path = tmp_path / "v1.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["recipe", "method", "density", "itop", "seed", "test_acc"])
        w.writeheader()
        w.writerow({"recipe": "dense_resnet20_cifar10.yaml", "method": "dense",
                    "density": 1.0, "itop": "", "seed": 0, "test_acc": 0.855})
        w.writerow({"recipe": "static_erk_resnet20_cifar10.yaml", "method": "static",
                    "density": 0.09999, "itop": "", "seed": 0, "test_acc": 0.8097})
        for seed, itop in ((0, 0.485), (1, 0.495)):
            w.writerow({"recipe": "set_resnet20_cifar10.yaml", "method": "set",
                        "density": 0.1, "itop": itop, "seed": seed, "test_acc": 0.81})
    out = _run(path, "--seeds", "1", "--itop")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "| method | top-1 @ 90% (per seed) | ITOP @ 90% |"
    assert "| dense | 85.50 | — |" in lines
    assert "| static ERK (random) | 80.97 | 0.100 |" in lines
    assert "| SET | 81.00 ± 0.00 (81.00 / 81.00) | 0.490 |" in lines


def test_a_cell_with_mixed_precisions_names_each_seeds_precision(tmp_path: Path) -> None:
    """Seeds trained in one precision print plainly; a cell pooling bf16 (or rows from before
    the precision column) with fp32 names each seed's precision and says they differ."""
    path = tmp_path / "mixed.csv"
    rows = [("set", 0.02, 0, "", 0.7420), ("set", 0.02, 1, "fp32", 0.7500),
            ("rigl", 0.02, 0, "bf16", 0.7601), ("rigl", 0.02, 1, "bf16", 0.7491),
            ("gmp", 0.02, 0, "bf16", 0.7848), ("gmp", 0.02, 1, "fp32", 0.7817)]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["recipe", "method", "density", "seed", "precision", "test_acc"])
        w.writeheader()
        for m, density, seed, prec, acc in rows:
            w.writerow({"recipe": f"{m}_v2_resnet20_cifar10.yaml", "method": m,
                        "density": density, "seed": seed, "precision": prec, "test_acc": acc})
    out = _run(path, "--seeds", "2")
    assert out.returncode == 0, out.stderr
    rows_out = {line.split(" | ")[0].strip("| "): line for line in out.stdout.splitlines()}
    assert "74.60 ± 0.40 (74.20 unrecorded / 75.00 fp32, precisions differ)" in rows_out["SET"]
    assert "75.46 ± 0.55 (76.01 / 74.91) |" in rows_out["RigL"]
    assert "78.33 ± 0.16 (78.48 bf16 / 78.17 fp32, precisions differ)" in rows_out["GMP"]
