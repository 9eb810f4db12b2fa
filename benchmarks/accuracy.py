"""Accuracy and wall time of a recipe on the shared CIFAR-10, in one or more precisions.

Runs ``<out-dir>/<recipe name>_<precision>`` for each precision (a run that already has a
summary.json is reused, not retrained) and appends a table to BENCHMARKS.md.

    python benchmarks/accuracy.py configs/cpu/dense_resnet20_cifar10.yaml --precisions bf16 fp32
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import append_markdown, header

from sparsetrain import load_config, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    p.add_argument("--out-dir", default="runs/bench")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()
    rows = []
    for prec in args.precisions:
        base = load_config(args.recipe, args.overrides)
        cfg = load_config(args.recipe, [*args.overrides, f"train.precision={prec}",
                                        f"out_dir={args.out_dir}", f"name={base.name}_{prec}",
                                        "train.progress=false"])
        summary_path = cfg.run_dir / "summary.json"
        if summary_path.is_file():
            print(f"reusing {summary_path}")
            summary = json.loads(summary_path.read_text())
        else:
            summary = train(cfg)
        rows.append((prec, summary, cfg))
    lines = ["| model | precision | epochs | final test top-1 | test loss | train img/s | "
             "train time | wall time | seed |", "|---|---|---|---|---|---|---|---|---|"]
    for prec, s, _cfg in rows:
        lines.append(
            f"| {s['model']} | {prec} | {s['epochs']} | {100 * s['final']['test_acc']:.2f}% | "
            f"{s['final']['test_loss']:.4f} | {s['images_per_s']:.0f} | "
            f"{s['train_s'] / 60:.1f} min | {s['wall_s'] / 60:.1f} min | {s['seed']} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_append:
        recipe = Path(args.recipe).as_posix()
        append_markdown(header(f"Accuracy of `{recipe}` (benchmarks/accuracy.py)")
                        + "Final-epoch test accuracy on the shared CIFAR-10 test split "
                        "(10,000 images); no checkpoint selection. Train time excludes "
                        "evaluation; wall time includes data loading and evaluation.\n\n" + text)


if __name__ == "__main__":
    main()
