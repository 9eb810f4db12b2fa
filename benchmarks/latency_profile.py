"""Where a latency table says the time goes: per layer shape, at uniform pruning ratios (19.2).

Reads the latency table a latency-constrained search stored (``RUN/latency_table.json``; no
timing is done) and prints, for each uniform ratio, the predicted milliseconds of every layer
shape (all units of that shape together, channel counts snapped to the table's steps as the
search snaps them), the constant rest (residual adds, pooling, ...), the table's latency ratio
and, when the table was calibrated, the calibrated ratio the search compares with its target.

    python benchmarks/latency_profile.py runs/s11/r56_ee_lat50_bf16/latency_table.json \\
        [--ratios 0,0.25,0.5,0.75,0.9]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _common import fail

from sparsetrain.structured.latency import LatencyModel
from sparsetrain.structured.macs import kept_counts

PROG = "latency_profile"


def load(path: Path) -> LatencyModel:
    """The table at ``path`` (a file or a run folder holding ``latency_table.json``)."""
    if path.is_dir():
        path = path / "latency_table.json"
    try:
        return LatencyModel.from_json(json.loads(path.read_text()), str(path))
    except (OSError, ValueError) as e:  # JSONDecodeError and UserError are ValueErrors
        fail(f"cannot read a latency table from {path}: {e}", PROG)


def _shape(spec: dict) -> str:
    if spec.get("kind") == "conv":
        size = f"@{spec['h']}×{spec['w']}"
        return f"conv {spec['in']}→{spec['out']} {spec['k']} s{spec['s'][0]} {size}"
    return f"{spec.get('kind')} {spec.get('in')}→{spec.get('out')}"


def profile(model: LatencyModel, ratios: list[float]) -> str:
    g = len(model.names)
    rows = torch.tensor([[r] * g for r in ratios], dtype=torch.float64)
    ms = model.unit_ms(kept_counts(rows, model.channels, model.round_to))  # [R, units]
    shapes: dict[str, list[int]] = {}
    for j, u in enumerate(model.units):
        shapes.setdefault(_shape(u.spec), []).append(j)
    key = model.key
    lines = [f"table: {key.get('device')}, {key.get('precision')}, batch {key.get('batch')}, "
             f"{key.get('threads')} threads; dense measured {model.dense_ms:.1f} ms, "
             f"units' sum {model.dense_pred - model.rest_ms:.1f} ms",
             "", "| layer shape (units) | " + " | ".join(f"ms @ r = {r:g}" for r in ratios) + " |",
             "|---|" + "---|" * len(ratios)]
    for name, cols in shapes.items():
        cells = " | ".join(f"{float(ms[i, cols].sum()):.1f}" for i in range(len(ratios)))
        lines.append(f"| {name} (×{len(cols)}) | {cells} |")
    lines.append("| rest (adds, pooling, ...) | " + " | ".join(
        f"{model.rest_ms:.1f}" for _ in ratios) + " |")
    total = ms.sum(dim=1) + model.rest_ms
    lines.append("| **total** | " + " | ".join(f"**{float(t):.1f}**" for t in total) + " |")
    lines.append("| table ratio | " + " | ".join(
        f"{float(t) / model.dense_pred:.3f}" for t in total) + " |")
    if model.calibration is not None:
        cal = model.ratio_of_ratios(rows)
        lines.append(f"| calibrated ratio (a = {model.calibration['a']:.3f}, "
                     f"b = {model.calibration['b']:.3f}) | "
                     + " | ".join(f"{float(c):.3f}" for c in cal) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("table", type=Path, help="latency_table.json, or the run folder holding it")
    ap.add_argument("--ratios", default="0,0.25,0.5,0.75,0.9",
                    help="uniform pruning ratios, comma-separated, each in [0, 1)")
    args = ap.parse_args(argv)
    try:
        ratios = [float(r) for r in args.ratios.split(",")]
    except ValueError:
        fail(f"--ratios must be numbers separated by commas, got {args.ratios!r}", PROG)
    if not all(0 <= r < 1 for r in ratios):
        fail(f"--ratios must each be in [0, 1), got {args.ratios}", PROG)
    print(profile(load(args.table), ratios))


if __name__ == "__main__":
    main()
