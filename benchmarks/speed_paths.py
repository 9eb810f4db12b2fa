"""Which sparse artifacts run faster than dense on this device? (issue 17, "speed paths")

Measured side by side in one process, eval mode, median of ``--repeats`` forward passes after
5 warm-up passes, random inputs (weights do not change dense-kernel speed; sparse kernels depend
only on the pattern, which is drawn at the stated density):

* whole networks (ResNet-56, CIFAR input, channels_last), batch 1 and 64, fp32 and bf16:
  dense; unstructured 90% masks folded in (what `sparsetrain export` ships: zeros in dense
  kernels); EagleEye-pruned at 50% MACs with the searched winner's ratios (as searched and with
  channel counts rounded to multiples of 8) and uniform L1 (rounded);
* 2:4 semi-structured (``torch.sparse.to_sparse_semi_structured``), tried on this device;
* unstructured CSR / block-sparse BSR (16x16) linear layers against ``F.linear``, for the
  transformer-MLP shapes where PyTorch has a CPU kernel (``torch.sparse.mm``), fp32 (and bf16 if
  the kernel exists).

    python benchmarks/speed_paths.py [--repeats 20] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import REPO, append_markdown, header
from torch import nn

from sparsetrain.evaluate.cost import measure_latency
from sparsetrain.models import create_model
from sparsetrain.structured import MacsModel, prunable_groups, prune_model, uniform_strategy
from sparsetrain.structured.macs import macs_params

SEARCH = REPO / "benchmarks/results/eagleeye_resnet56/search.json"


def networks() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    dense = create_model("resnet56").eval()
    groups = prunable_groups(dense)
    winner = json.loads(SEARCH.read_text())["best"]["ratios"]
    uniform = uniform_strategy(MacsModel.build(dense, groups, 8), 0.5)
    sparse = create_model("resnet56").eval()
    with torch.no_grad():  # 90% unstructured zeros folded into the dense weights
        g = torch.Generator().manual_seed(1)
        for m in sparse.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.weight.mul_((torch.rand(m.weight.shape, generator=g) < 0.1).float())
    return {
        "dense": dense,
        "unstructured 90% (zeros, dense kernels)": sparse,
        "EagleEye winner 50% MACs": prune_model(dense, winner, groups=groups),
        "EagleEye winner, r8": prune_model(dense, winner, round_to=8, groups=groups),
        "uniform L1 50%, r8": prune_model(dense, uniform, round_to=8, groups=groups),
    }


def network_rows(repeats: int, rounds: int) -> list[dict]:
    """Paths interleaved over ``rounds`` (a background burst hits every path alike); the
    median of the per-round medians."""
    models = {name: m.to(memory_format=torch.channels_last) for name, m in networks().items()}
    times: dict[str, dict[str, list[float]]] = {name: {} for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            res = measure_latency(model, device=torch.device("cpu"), batch_sizes=(1, 64),
                                  repeats=repeats)
            for key, r in res.items():
                times[name].setdefault(key, []).append(r["ms"])
    return [{"path": name, "macs": macs_params(models[name])[0],
             **{k: statistics.median(v) for k, v in times[name].items()}} for name in models]


def semi_structured_row() -> str:
    try:
        from torch.sparse import to_sparse_semi_structured

        to_sparse_semi_structured(torch.randn(64, 64).half())
    except (RuntimeError, ImportError, ValueError) as e:
        return f"not supported on this device ({str(e).splitlines()[0][:90]})"
    return "supported (not measured here)"


def _median_ms(fn, repeats: int) -> float:
    times = []
    for i in range(5 + repeats):
        t0 = time.perf_counter()
        fn()
        if i >= 5:
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def linear_rows(repeats: int, rounds: int) -> list[dict]:
    """Dense ``F.linear`` and each sparse format timed alternately over ``rounds``."""
    rows = []
    g = torch.Generator().manual_seed(0)
    for out_f, in_f in ((3072, 768), (4096, 4096)):
        w = torch.randn(out_f, in_f, generator=g)
        formats = {(kind, d): _sparse_weight(w, kind, d, g)
                   for kind, d in (("CSR", 0.5), ("CSR", 0.1), ("CSR", 0.02), ("BSR16", 0.1))}
        for batch in (1, 64):
            x = torch.randn(batch, in_f, generator=g)
            xt = x.t().contiguous()
            dense, sparse = [], {key: [] for key in formats}
            for _ in range(rounds):
                dense.append(_median_ms(lambda w=w, x=x: F.linear(x, w), repeats))
                for key, ws in formats.items():
                    sparse[key].append(_median_ms(lambda ws=ws, xt=xt: torch.sparse.mm(ws, xt),
                                                  repeats))
            for (kind, d), times in sparse.items():
                rows.append({"shape": f"{out_f}x{in_f}", "batch": batch, "kind": kind,
                             "density": d, "dense_ms": statistics.median(dense),
                             "sparse_ms": statistics.median(times)})
    return rows


def _sparse_weight(w: torch.Tensor, kind: str, density: float, g: torch.Generator
                   ) -> torch.Tensor:
    if kind == "CSR":
        return (w * (torch.rand(w.shape, generator=g) < density)).to_sparse_csr()
    blocks = torch.rand(w.shape[0] // 16, w.shape[1] // 16, generator=g) < density
    mask = blocks.repeat_interleave(16, 0).repeat_interleave(16, 1)
    return (w * mask).to_sparse_bsr((16, 16))


def bf16_csr_supported() -> str:
    try:
        a = torch.eye(32).to_sparse_csr().to(torch.bfloat16)
        torch.sparse.mm(a, torch.randn(32, 4).bfloat16())
    except (RuntimeError, NotImplementedError) as e:
        return f"no ({str(e).splitlines()[0][:80]})"
    return "yes"


def verdict(speedup: float) -> str:
    if speedup >= 1.05:
        return f"**faster** ({speedup:.2f}×)"
    if speedup <= 0.95:
        return f"slower ({speedup:.2f}×)"
    return f"same speed ({speedup:.2f}×)"


def markdown(nets: list[dict], lins: list[dict], semi: str, bf16: str, repeats: int) -> str:
    keys = ("fp32_b1", "fp32_b64", "bf16_b1", "bf16_b64")
    base = nets[0]
    out = [header("Speed paths: which sparse artifact is faster than dense on this device "
                  "(`benchmarks/speed_paths.py`)"),
           f"Median of {repeats} forward passes after 5 warm-up passes, then the median over "
           "rounds that interleave the paths, eval mode, both cores.\n",
           "| ResNet-56 path | MACs | fp32 b1 ms | fp32 b64 ms | bf16 b1 ms | bf16 b64 ms | "
           "verdict fp32 b64 | verdict bf16 b64 |", "|---|---|---|---|---|---|---|---|"]
    for r in nets:
        cells = " | ".join(f"{r[k]:.2f}" for k in keys)
        out.append(f"| {r['path']} | {r['macs'] / 1e6:.1f} M | {cells} | "
                   f"{verdict(base['fp32_b64'] / r['fp32_b64'])} | "
                   f"{verdict(base['bf16_b64'] / r['bf16_b64'])} |")
    out += ["", f"2:4 semi-structured (`to_sparse_semi_structured`): {semi}.", "",
            f"bf16 CSR/BSR matmul on this CPU: {bf16}.", "",
            "| linear layer (out×in) | batch | sparse format | density | dense ms | sparse ms | "
            "verdict |", "|---|---|---|---|---|---|---|"]
    for r in lins:
        out.append(f"| {r['shape']} | {r['batch']} | {r['kind']} | {r['density']:g} | "
                   f"{r['dense_ms']:.3f} | {r['sparse_ms']:.3f} | "
                   f"{verdict(r['dense_ms'] / r['sparse_ms'])} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the paths")
    ap.add_argument("--markdown", action="store_true", help="append the table to BENCHMARKS.md")
    ap.add_argument("--json", type=Path, help="also write the raw rows here")
    args = ap.parse_args()
    nets = network_rows(args.repeats, args.rounds)
    lins = linear_rows(args.repeats, args.rounds)
    text = markdown(nets, lins, semi_structured_row(), bf16_csr_supported(), args.repeats)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"networks": nets, "linear": lins}, indent=1))
    if args.markdown:
        append_markdown(text)


if __name__ == "__main__":
    main()
