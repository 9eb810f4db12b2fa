"""The practitioner's path on real data (issue 17): dense weights trained elsewhere in, three
sparse or channel-pruned models out, each exported and checked in a process where sparsetrain
cannot be imported.

Every step is the CLI call a user would type (``python -m sparsetrain ...``), on the recipe's
data:

* ``oneshot``: ``sparsetrain oneshot --budget erk`` to ``--density`` (ERK budget, magnitude
  inside each layer), then ``--epochs`` of fine-tuning;
* ``granet``: ``sparsetrain train`` with ``sparsity.method=granet`` from the weights to
  ``--density`` within ``--epochs`` (GraNet's official defaults: pruning over the first half);
* ``eagleeye``: ``sparsetrain prune eagleeye --flops F --candidates N``, the winner fine-tuned
  for ``--epochs``;

then ``sparsetrain export --format pt2`` and the artifact's test top-1 in a fresh process
(plain torch, sparsetrain blocked), next to the top-1 the run recorded. All flows fine-tune at
``--lr`` with a cosine schedule and no warm-up. The weights given are first saved as a bare
``state_dict`` outside any run folder, as a model zoo ships them.

Example (from the repository root; the dense run of ``cpu/dense_resnet56_cifar10.yaml``)::

    python benchmarks/practitioner.py --weights runs/cpu/cpu_dense_resnet56_cifar10/last.pt \\
        -c configs/cpu/dense_resnet56_cifar10.yaml --work /tmp/practitioner56 \\
        --json benchmarks/results/practitioner_resnet56.json train.threads=2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import append_markdown, header

from sparsetrain.checkpoint import foreign_state_dict
from sparsetrain.cli import resolve_recipe
from sparsetrain.config import load_config
from sparsetrain.models import create_model
from sparsetrain.train.run import load_data, make_loaders

FLOWS = ("oneshot", "granet", "eagleeye")

# the artifact's accuracy in a process where importing sparsetrain fails
_ARTIFACT_TOP1 = '''
import sys

class _NoSparsetrain:
    def find_spec(self, name, path=None, target=None):
        if name == "sparsetrain" or name.startswith("sparsetrain."):
            raise ImportError("sparsetrain is blocked in this process")
        return None

sys.meta_path.insert(0, _NoSparsetrain())
import torch

artifact, data = sys.argv[1:3]
x, y = torch.load(data, weights_only=True)
module = torch.export.load(artifact).module()
with torch.no_grad():
    pred = torch.cat([module(x[i:i + 250]).argmax(1) for i in range(0, len(x), 250)])
print((pred == y).double().mean().item())
'''

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--weights", required=True,
               help="dense weights: a bare state_dict, or a run's checkpoint (its weights are "
                    "saved as a bare state_dict first)")
p.add_argument("-c", "--config", required=True, help="the dense model's recipe (data, model)")
p.add_argument("--work", required=True,
               help="a new folder for the weights file, the runs (<work>/runs) and artifacts")
p.add_argument("--flows", nargs="+", choices=FLOWS, default=list(FLOWS))
p.add_argument("--density", type=float, default=0.1, help="oneshot / granet target density")
p.add_argument("--flops", type=float, default=0.5, help="eagleeye MACs fraction")
p.add_argument("--candidates", type=int, default=50, help="eagleeye candidates")
p.add_argument("--abn-batches", type=int, default=50, help="eagleeye adaptive-BN batches")
p.add_argument("--workers", type=int, help="eagleeye search processes (default: its own)")
p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of every flow")
p.add_argument("--lr", type=float, default=0.01, help="fine-tuning peak LR")
p.add_argument("--json", help="write the rows as JSON")
p.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
p.add_argument("overrides", nargs="*", metavar="key=value", help="for every flow")


def _cli(*argv: str) -> float:
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, "-m", "sparsetrain", *argv], check=False).returncode
    if rc:  # the command has printed its own one-line error
        print(f"error: `sparsetrain {argv[0]}` exited with {rc}", file=sys.stderr)
        sys.exit(rc)
    return time.perf_counter() - t0


def _test_inputs(cfg: Any, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The recipe's test set as the runs evaluate it (normalized fp32 NCHW), saved to ``path``."""
    _, evals = make_loaders(cfg, load_data(cfg), torch.device("cpu"))
    test = evals["test"]
    plan = test.plan(0)
    xs, ys = zip(*(test.batch(plan, i) for i in range(len(test))), strict=True)
    x, y = torch.cat(xs).float().contiguous(), torch.cat(ys)
    torch.save((x, y), path)
    return x, y


def _dense_top1(cfg: Any, weights: Path, x: torch.Tensor, y: torch.Tensor) -> float:
    model = create_model(cfg.model.name, num_classes=int(y.max()) + 1, **cfg.model.kwargs)
    model.load_state_dict(foreign_state_dict(weights))
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 250]).argmax(1) for i in range(0, len(x), 250)])
    return (pred == y).double().mean().item()


def _artifact_top1(artifact: Path, data: Path) -> float:
    out = subprocess.run([sys.executable, "-c", _ARTIFACT_TOP1, str(artifact), str(data)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    args = p.parse_args()
    work = Path(args.work)
    if work.exists():  # never reuse a folder: it is the user's data
        p.error(f"--work {work} exists; give a new folder")
    if not Path(args.weights).is_file():
        p.error(f"--weights {args.weights}: no such file")
    work.mkdir(parents=True)
    weights = work / "weights" / "dense.pth"
    weights.parent.mkdir()
    torch.save(foreign_state_dict(args.weights), weights)  # a bare state_dict

    common = [f"out_dir={work / 'runs'}", f"model.init_from={weights}", "train.progress=false",
              f"train.epochs={args.epochs}", f"train.lr={args.lr}", "train.warmup_epochs=0",
              *args.overrides]
    cfg = load_config(resolve_recipe(args.config), common)
    data = work / "test_inputs.pt"
    x, y = _test_inputs(cfg, data)
    rows: list[dict[str, Any]] = [{"flow": "dense weights (as given)",
                                   "run_top1": _dense_top1(cfg, weights, x, y)}]
    for flow in args.flows:
        name = flow
        if flow == "oneshot":
            secs = _cli("oneshot", "-c", args.config, "--budget", "erk", *common,
                        f"sparsity.density={args.density}", f"name={name}")
        elif flow == "granet":
            secs = _cli("train", "-c", args.config, *common, "sparsity.method=granet",
                        f"sparsity.density={args.density}", f"name={name}")
        else:
            secs = _cli("prune", "eagleeye", "-c", args.config, "--flops", str(args.flops),
                        "--candidates", str(args.candidates),
                        "--abn-batches", str(args.abn_batches), "--baselines", "none",
                        *(["--workers", str(args.workers)] if args.workers else []), *common,
                        f"name={name}")
        run = work / "runs" / name
        summary = json.loads((run / "summary.json").read_text())
        artifact = work / "artifacts" / f"{name}.pt2"
        artifact.parent.mkdir(exist_ok=True)
        _cli("export", str(run / "last.pt"), "--format", "pt2", "--out", str(artifact))
        card = json.loads(artifact.with_name(artifact.name + ".card.json").read_text())
        rows.append({
            "flow": flow, "run": str(run), "artifact": str(artifact), "minutes": secs / 60,
            "run_top1": summary["final"]["test_acc"], "artifact_top1": _artifact_top1(artifact,
                                                                                     data),
            "density": card["density"], "params_nonzero": card["parameters"]["nonzero"],
            "flops_effective": card["flops"]["effective"], "flops_dense": card["flops"]["dense"],
            "export_max_abs_diff": card["check"]["max_abs_diff"],
            "artifact_bytes": artifact.stat().st_size,
        })
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    lines = [header("The practitioner's path on real data (issue 17)"),
             f"{cfg.model.name}, {len(y)} test images, weights `{args.weights}`; run top-1 is "
             "what the run recorded (bf16 autocast where the recipe uses it), the artifact's "
             "is fp32\n",
             "| flow | minutes | density | effective MFLOPs | run top-1 | artifact top-1 "
             "(fresh process, no sparsetrain) | export max abs diff |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "artifact" not in r:
            lines.append(f"| {r['flow']} | | 1.0000 | | {100 * r['run_top1']:.2f}% | | |")
            continue
        lines.append(f"| {r['flow']} | {r['minutes']:.1f} | {r['density']:.4f} | "
                     f"{r['flops_effective'] / 1e6:.1f} | {100 * r['run_top1']:.2f}% | "
                     f"{100 * r['artifact_top1']:.2f}% | {r['export_max_abs_diff']:.2g} |")
    text = "\n".join(lines)
    print(text)
    if args.append:
        append_markdown(text)


if __name__ == "__main__":
    main()
