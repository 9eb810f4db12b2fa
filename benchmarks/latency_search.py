"""Latency-constrained vs MACs-constrained EagleEye strategies on this device (issue 19.2).

For ResNet-56 (CIFAR input, channels_last, random weights: speed does not depend on them), one
process, side by side:

1. the latency table (``LatencyModel.measure``, ``round_to="auto"``) at batch ``--batch`` in
   ``--search-precision``, with the time it took and the measured step per group;
2. ``--n`` strategies drawn by each sampler, the same candidate indices and seed:
   ``macs``    the MACs band at ``--target`` (EagleEye as searched: no rounding),
   ``macs_r8`` the MACs band with every count rounded to a multiple of 8 (``--round-to 8``),
   ``latency`` the predicted-latency band at ``--target`` (``--latency --no-latency-check``;
   measured steps),
   ``latency_checked`` the same, each strategy then timed against the dense model and kept
   only when measured in the band (``--latency``, the default check; prefilter ``--prefilter``);
3. each strategy physically pruned (L1) and timed interleaved with the dense model
   (``MeasuredLatency``: ratio of medians of ``--repeats`` pairs, so the machine's drift
   cancels) at batch ``--batch`` in fp32 and bf16.

Prints (and with ``--markdown`` appends to BENCHMARKS.md) per sampler the MACs ratio and the
measured speed-up over dense (median, min, max), and how well the table predicts the measured
latency ratio (Spearman, mean absolute error) for the latency sampler's strategies.

    python benchmarks/latency_search.py [--n 6] [--target 0.5] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from _common import append_markdown, header

from sparsetrain.models import create_model
from sparsetrain.structured import LatencyModel, MacsModel, StrategySampler, prune_model
from sparsetrain.structured.correlate import spearman
from sparsetrain.structured.groups import prunable_groups
from sparsetrain.structured.latency import MeasuredLatency
from sparsetrain.structured.macs import macs_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--n", type=int, default=6, help="strategies per sampler")
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--tolerance", type=float, default=0.02)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--search-precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=8, help="timing pairs, fp32")
    ap.add_argument("--bf16-repeats", type=int, default=3, help="timing pairs, bf16")
    ap.add_argument("--prefilter", type=float, default=0.15)
    ap.add_argument("--calibrate", type=int, default=8, help="whole models timed to fit the "
                                                                "table (0: none)")
    ap.add_argument("--cache", help="latency cache folder (default: a fresh temporary one, so "
                                    "the measuring time is reported)")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    os.environ["SPARSETRAIN_CACHE"] = a.cache or tempfile.mkdtemp(prefix="st-latency-")
    torch.manual_seed(0)
    dense = create_model(a.model).eval().to(memory_format=torch.channels_last)
    groups = prunable_groups(dense)
    t0 = time.perf_counter()
    table = LatencyModel.measure(dense, groups, batch=a.batch, precision=a.search_precision,
                                 progress=True)
    t_table = time.perf_counter() - t0
    steps = table.step_of()
    check = MeasuredLatency(dense, groups, steps, a.batch, a.search_precision)
    t0 = time.perf_counter()
    if a.calibrate:
        table = table.calibrate(check, n=a.calibrate)
    t_cal = time.perf_counter() - t0
    samplers = {
        "macs": StrategySampler(MacsModel.build(dense, groups), 0.0, 0.7, a.target, 0.005),
        "macs_r8": StrategySampler(MacsModel.build(dense, groups, 8), 0.0, 0.7, a.target,
                                   0.005),
        "latency": StrategySampler(MacsModel.build(dense, groups, steps), 0.0, 0.7, a.target,
                                   a.tolerance, cost=table),
        "latency_checked": StrategySampler(MacsModel.build(dense, groups, steps), 0.0, 0.7,
                                           a.target, a.tolerance, cost=table, verify=check,
                                           prefilter=a.prefilter),
    }
    rounding = {"macs": None, "macs_r8": 8, "latency": steps, "latency_checked": steps}
    reps = {"fp32": a.repeats, "bf16": a.bf16_repeats}
    dense_macs = MacsModel.build(dense, groups).dense_macs
    rows: dict[str, list[dict]] = {}
    sampling_s: dict[str, float] = {}
    for name, sampler in samplers.items():
        rows[name] = []
        t0 = time.perf_counter()
        strategies = [sampler.sample(i) for i in range(a.n)]
        sampling_s[name] = time.perf_counter() - t0
        for s in strategies:
            pruned = prune_model(dense, s.ratios, "l1", rounding[name], groups=groups)
            macs, _ = macs_params(pruned)
            row = {"index": s.index, "macs_ratio": macs / dense_macs,
                   "pred": s.latency_pred, "checked": s.latency_ratio
                   if name == "latency_checked" else None}
            for p in ("fp32", "bf16"):
                timer = MeasuredLatency(dense, groups, rounding[name], a.batch, p, reps[p])
                row[p] = 1 / timer(s.ratios)
            rows[name].append(row)
            print(name, row, flush=True)
    lines = [header(f"Latency-constrained vs MACs-constrained strategies, {a.model}, batch "
                    f"{a.batch} (`benchmarks/latency_search.py`)")]
    lines.append(f"- latency table: {a.search_precision}, batch {a.batch}, measured in "
                 f"{t_table:.0f} s (empty cache); dense measured {table.dense_ms:.1f} ms, "
                 f"units sum {table.dense_ms - table.rest_ms:.1f} ms, rest "
                 f"{table.rest_ms:.1f} ms")
    if table.calibration:
        c = table.calibration
        lines.append(f"- calibration ({a.calibrate} whole pruned models, {t_cal:.0f} s): "
                     f"measured = {c['a']:.3f} x table + {c['b']:.3f}, rms residual "
                     f"{c['rms']:.3f}; points (table, measured): "
                     + ", ".join(f"({u:.2f}, {v:.2f})" for u, v in c["points"]))
    lines.append(f"- measured steps per group: {dict(sorted(steps.items()))} (groups not "
                 f"listed: step 1)")
    lines.append(f"- sampling time for {a.n} strategies: " + ", ".join(
        f"{k} {v:.0f} s" for k, v in sampling_s.items()) + f"; the checked sampler timed "
        f"{samplers['latency_checked'].measured} strategies\n")
    lines.append("| sampler | n | MACs ratio (median) | fp32 speed-up median [min, max] | "
                 "bf16 speed-up median [min, max] |")
    lines.append("|---|---|---|---|---|")
    for name, rs in rows.items():
        def cell(p: str, rs: list[dict] = rs) -> str:
            v = [r[p] for r in rs]
            return f"{statistics.median(v):.2f}× [{min(v):.2f}, {max(v):.2f}]"
        lines.append(f"| {name} | {len(rs)} | "
                     f"{statistics.median(r['macs_ratio'] for r in rs):.3f} | {cell('fp32')} | "
                     f"{cell('bf16')} |")
    lat_rows = rows["latency"] + rows["latency_checked"]
    measured = [1 / r[a.search_precision] for r in lat_rows]
    pred = [r["pred"] for r in lat_rows]
    mae = statistics.fmean(abs(x - y) for x, y in zip(pred, measured, strict=True))
    lines.append(f"\nlatency samplers, the table's predicted vs measured {a.search_precision} "
                 f"latency ratio: Spearman {spearman(pred, measured):.2f}, mean absolute error "
                 f"{mae:.3f} (predicted {min(pred):.3f}..{max(pred):.3f}, measured "
                 f"{min(measured):.3f}..{max(measured):.3f})")
    text = "\n".join(lines)
    print(text)
    if a.markdown:
        append_markdown(text)


if __name__ == "__main__":
    main()
