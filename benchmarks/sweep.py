"""Run a list of recipes one after another (CPU protocol comparisons) and tabulate them.

Each finished run adds one row to a CSV (written after every run, so a stopped sweep keeps
what it finished); a run whose directory already has summary.json is reused, not retrained,
and one stopped mid-way (last.pt but no summary.json) is resumed from its checkpoint. Rows are
keyed by run name (``--set name=...`` makes a new run of the same recipe; CSVs written before
the ``run`` column are matched by recipe file). The ``precision`` column is the precision the
run trained in (from its summary.json; empty in rows written before the column existed). At
the end the table is appended to BENCHMARKS.md (``--no-append``: printed only).

    python benchmarks/sweep.py configs/cpu/dense_resnet20_cifar10.yaml \\
        configs/cpu/static_*_resnet20_cifar10.yaml --csv benchmarks/results/static_cpu.csv
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from _common import append_markdown, header

from sparsetrain import load_config, train

FIELDS = ["recipe", "run", "model", "method", "budget", "score", "structure", "density", "itop",
          "seed", "precision", "epochs", "test_acc", "test_loss", "flops_dense", "flops_sparse",
          "params_nonzero", "images_per_s", "train_s", "wall_s", "git_commit"]


def row(recipe: str, cfg, s: dict) -> dict:
    sp = cfg.sparsity
    static = sp.method == "static"
    return {
        "recipe": recipe, "run": cfg.name, "model": cfg.model.name, "method": sp.method,
        "budget": sp.budget if static else "", "score": sp.score if static else "",
        "structure": sp.structure,
        "density": round(s.get("density", {}).get("global", 1.0), 5),
        "itop": round(s["density"]["itop"], 4) if "itop" in s.get("density", {}) else "",
        "seed": cfg.seed, "precision": s.get("precision", ""),
        "epochs": s["epochs"], "test_acc": s["final"]["test_acc"],
        "test_loss": round(s["final"]["test_loss"], 4),
        "flops_dense": s.get("flops", {}).get("dense", ""),
        "flops_sparse": s.get("flops", {}).get("sparse", ""),
        "params_nonzero": s["params"]["nonzero"] if isinstance(s["params"], dict) else "",
        "images_per_s": round(s["images_per_s"]), "train_s": round(s["train_s"]),
        "wall_s": round(s["wall_s"]), "git_commit": s.get("git_commit", ""),
    }


def _key(r: dict) -> str:
    """A CSV row's run name; rows of CSVs from before the ``run`` column by recipe file."""
    return r.get("run") or f"recipe:{r['recipe']}"


def _typed(r: dict) -> dict:
    """A CSV row back with numbers as numbers."""
    out = {k: r.get(k, "") for k in FIELDS}
    out["itop"] = float(out["itop"]) if out["itop"] != "" else ""
    for k in ("test_acc", "test_loss", "density"):
        out[k] = float(r[k])
    for k in ("flops_dense", "flops_sparse", "params_nonzero", "images_per_s", "train_s",
              "wall_s"):
        out[k] = int(r[k]) if r[k] != "" else ""
    return out


def _write(path: str, rows: list[dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipes", nargs="+")
    p.add_argument("--csv", required=True)
    p.add_argument("--out-dir", default="runs/sweep")
    p.add_argument("--set", nargs="*", default=[], metavar="key=value",
                   help="overrides applied to every recipe (e.g. seed=1)")
    p.add_argument("--title", default="CPU-protocol comparison")
    p.add_argument("--no-append", action="store_true")
    p.add_argument("--table-only", action="store_true",
                   help="tabulate the CSV's rows for the given recipes; train nothing")
    args = p.parse_args()
    previous = {}
    if Path(args.csv).is_file():  # rows of an earlier (perhaps stopped) sweep are kept
        with open(args.csv, newline="") as f:
            previous = {_key(r): r for r in csv.DictReader(f)}
    rows = []
    for recipe in args.recipes:
        cfg = load_config(recipe, [*args.set, f"out_dir={args.out_dir}", "train.progress=false"])
        done = cfg.run_dir / "summary.json"
        key = next((k for k in (cfg.name, f"recipe:{Path(recipe).name}") if k in previous), None)
        if args.table_only and key is None:
            print(f"{recipe} ({cfg.name}): not in {args.csv} yet", flush=True)
            continue
        if key is not None and (args.table_only or not done.is_file()):
            rows.append(_typed(previous[key]))
            print(f"{recipe} ({cfg.name}): kept from {args.csv}", flush=True)
            continue
        if done.is_file():
            s = json.loads(done.read_text())
        else:  # a run stopped mid-way (its last.pt is there) continues where it stopped
            s = train(cfg, resume=(cfg.run_dir / "last.pt").is_file())
        rows.append(row(Path(recipe).name, cfg, s))
        print(f"{recipe}: top-1 {100 * s['final']['test_acc']:.2f}%", flush=True)
        _write(args.csv, rows + [r for k, r in previous.items()
                                 if k not in {_key(x) for x in rows}])
    lines = ["| recipe | run | budget | score | density | ITOP | top-1 | test loss | "
             "effective FLOPs | nonzero params | train img/s | wall |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flops = (f"{r['flops_sparse'] / 1e6:.1f}M / {r['flops_dense'] / 1e6:.1f}M"
                 if r["flops_dense"] != "" else "")
        nz = f"{r['params_nonzero']:,}" if r["params_nonzero"] != "" else ""
        itop = f"{r['itop']:.3f}" if r["itop"] != "" else "—"
        nm = f" ({r['structure']})" if r["structure"] not in ("", "unstructured") else ""
        lines.append(f"| {r['recipe']} | {r['run'] or '—'} | {r['budget'] or '—'} | "
                     f"{r['score'] or '—'} | {r['density']}{nm} | {itop} | "
                     f"{100 * r['test_acc']:.2f}% | {r['test_loss']} | {flops} | {nz} | "
                     f"{r['images_per_s']} | {r['wall_s'] / 60:.1f} min |")
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        append_markdown(header(f"{args.title} (benchmarks/sweep.py)")
                        + f"Results CSV: `{args.csv}`. Final-epoch test top-1 on the 10,000 "
                        "CIFAR-10 test images, one seed.\n\n" + text)


if __name__ == "__main__":
    main()
