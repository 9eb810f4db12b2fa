"""benchmarks/width_table.py: dense/sparse pairing by (epochs, seed, width), seed means, PNG."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "width_table.py"
FIELDS = ["recipe", "model", "method", "budget", "score", "density", "seed", "epochs", "test_acc",
          "params_nonzero"]


def _csv(path: Path, rows: list[tuple]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for model, method, seed, epochs, acc in rows:
            w.writerow({"recipe": f"{method}_{model}.yaml", "model": model, "method": method,
                        "budget": "erk" if method == "static" else "",
                        "score": "random" if method == "static" else "",
                        "density": 0.1 if method == "static" else 1.0, "seed": seed,
                        "epochs": epochs, "test_acc": acc, "params_nonzero": 1000})
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--no-append"], cwd=REPO,
                          capture_output=True, text=True)


def test_pairs_gaps_and_seed_means(tmp_path):
    a = _csv(tmp_path / "a.csv", [("resnet20", "dense", 0, 5, 0.80),
                                  ("resnet20", "static", 0, 5, 0.74),
                                  ("resnet20_w4", "dense", 0, 5, 0.84),
                                  ("resnet20_w4", "static", 0, 5, 0.83),
                                  ("resnet20_w2", "dense", 0, 15, 0.88)])  # no sparse partner
    b = _csv(tmp_path / "b.csv", [("resnet20", "dense", 1, 5, 0.81),
                                  ("resnet20", "static", 1, 5, 0.73)])
    png = tmp_path / "w.png"
    r = _run(str(a), str(b), "--png", str(png))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "| 5 | 0 | x1 | 80.00% | erk | 0.100 | 74.00% | -6.00 | 1,000 |" in lines
    assert "| 5 | 0 | x4 | 84.00% | erk | 0.100 | 83.00% | -1.00 | 1,000 |" in lines
    assert "| 5 | 1 | x1 | 81.00% | erk | 0.100 | 73.00% | -8.00 | 1,000 |" in lines
    assert not any(line.startswith("| 15 |") for line in lines)  # dense-only budget: no row
    # the seed mean of x1 at 5 epochs: gaps -6 and -8
    assert "| 5 | erk 0.100 | x1 | 2 | 80.50% | 73.50% | -7.00 | -8.00 .. -6.00 |" in lines
    assert "| 5 | erk 0.100 | x4 | 1 | 84.00% | 83.00% | -1.00 | — |" in lines
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_several_sparse_rows_share_one_dense_row_and_stay_apart(tmp_path):
    """A static sweep's CSV (many budgets/scores at x1) must not collapse into one sparse row."""
    a = _csv(tmp_path / "a.csv", [("resnet20", "dense", 0, 15, 0.855),
                                  ("resnet20", "static", 0, 15, 0.810)])
    with open(a, "a", newline="") as f:  # a SNIP row beside the ERK row, same (epochs, seed, width)
        csv.DictWriter(f, FIELDS).writerow(
            {"recipe": "snip.yaml", "model": "resnet20", "method": "static", "budget": "global",
             "score": "snip", "density": 0.1, "seed": 0, "epochs": 15, "test_acc": 0.80,
             "params_nonzero": 900})
    r = _run(str(a))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "| 15 | 0 | x1 | 85.50% | erk | 0.100 | 81.00% | -4.50 | 1,000 |" in lines
    assert "| 15 | 0 | x1 | 85.50% | snip | 0.100 | 80.00% | -5.50 | 900 |" in lines
    r = _run(str(a), "--sparse", "erk")
    assert r.returncode == 0, r.stderr
    assert "snip" not in r.stdout and "| 15 | erk 0.100 | x1 | 1 |" in r.stdout
    r = _run(str(a), "--sparse", "rigl")
    assert r.returncode == 2 and "--sparse rigl: not among" in r.stderr


def test_bad_input_is_one_line_exit_2(tmp_path):
    r = _run(str(tmp_path / "missing.csv"))
    assert r.returncode == 2 and "no such CSV" in r.stderr
    only_dense = _csv(tmp_path / "d.csv", [("resnet20", "dense", 0, 5, 0.8)])
    r = _run(str(only_dense))
    assert r.returncode == 2 and "both a dense and a sparse row" in r.stderr
