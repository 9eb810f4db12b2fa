"""benchmarks/sweep.py: rows are keyed by run name, so renamed runs of one recipe are trained."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from conftest import tiny_config, write_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "sweep.py"


def _sweep(*args: object) -> str:
    out = subprocess.run([sys.executable, str(SCRIPT), *map(str, args), "--no-append"],
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_renamed_run_of_the_same_recipe_is_trained_not_taken_from_the_csv(
        tmp_path: Path) -> None:
    recipe = write_config(tmp_path, tiny_config(tmp_path, train={"epochs": 1, "max_steps": 2}))
    table, runs = tmp_path / "sweep.csv", tmp_path / "runs"
    _sweep(recipe, "--csv", table, "--out-dir", runs, "--set", "name=first")
    out = _sweep(recipe, "--csv", table, "--out-dir", runs, "--set", "name=second", "seed=1")
    assert "kept from" not in out
    assert (runs / "second" / "summary.json").is_file()
    rows = {r["run"]: r for r in _rows(table)}
    assert set(rows) == {"first", "second"}
    assert (rows["first"]["seed"], rows["second"]["seed"]) == ("0", "1")
    assert rows["second"]["structure"] == "unstructured"
    # the precision each run trained in, as its summary.json records it
    summary = json.loads((runs / "second" / "summary.json").read_text())
    assert rows["second"]["precision"] == summary["precision"] in ("fp32", "bf16")
    # a third call with a finished run's name reuses it, and the table names each run
    out = _sweep(recipe, "--csv", table, "--out-dir", runs, "--set", "name=first",
                 "--table-only")
    assert "kept from" in out and "| first |" in out


def test_csvs_from_before_the_run_column_are_matched_by_recipe(tmp_path: Path) -> None:
    recipe = write_config(tmp_path, tiny_config(tmp_path))
    table = tmp_path / "old.csv"
    old = {"recipe": recipe.name, "model": "resnet20", "method": "dense", "budget": "",
           "score": "", "density": 1.0, "itop": "", "seed": 0, "epochs": 15, "test_acc": 0.855,
           "test_loss": 0.42, "flops_dense": "", "flops_sparse": "", "params_nonzero": "",
           "images_per_s": 900, "train_s": 600, "wall_s": 620, "git_commit": "abc"}
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, list(old))
        w.writeheader()
        w.writerow(old)
    out = _sweep(recipe, "--csv", table, "--out-dir", tmp_path / "runs", "--table-only")
    assert "kept from" in out and "85.50%" in out
    assert not (tmp_path / "runs").exists()
