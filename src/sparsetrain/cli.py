"""``sparsetrain`` command line: train, lottery, oneshot, eval, report, budget, list.

Bad input (unknown names, out-of-range values, missing or corrupt files) prints one line
``sparsetrain: error: ...`` and exits with code 2 before any work, leaving outputs untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sparsetrain.errors import UserError


def recipes_dir() -> Path:
    """``$SPARSETRAIN_RECIPES``, else ``configs/`` of the source checkout, else ./configs."""
    env = os.environ.get("SPARSETRAIN_RECIPES")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "configs"
    return repo if repo.is_dir() else Path("configs")


def list_recipes() -> list[str]:
    root = recipes_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def resolve_recipe(name: str) -> Path:
    """A path to a YAML file, or a recipe name such as ``cpu/dense_resnet20_cifar10``."""
    p = Path(name)
    if p.is_file():
        return p
    cand = recipes_dir() / (name if name.endswith(".yaml") else name + ".yaml")
    if cand.is_file():
        return cand
    raise UserError(f"config not found: {name} (not a file, not a recipe in {recipes_dir()})")


def _cmd_train(args: argparse.Namespace) -> int:
    from sparsetrain.config import load_config
    from sparsetrain.train.run import train

    overrides = list(args.overrides)
    if args.resume not in (None, True):  # --resume RUN_DIR: the saved config + overrides
        run_dir = Path(args.resume)
        if args.config is None:
            args.config = str(run_dir / "config.yaml")
        overrides = [f"out_dir={run_dir.parent}", f"name={run_dir.name}", *overrides]
    if args.config is None:
        raise UserError("train needs --config FILE (or --resume RUN_DIR)")
    cfg = load_config(resolve_recipe(args.config), overrides)
    summary = train(cfg, resume=args.resume is not None)
    final = summary["final"]
    line = ", ".join(f"{k} {v:.4f}" for k, v in final.items())
    print(f"done: {line}; {summary['images_per_s']:.0f} img/s; wall {summary['wall_s']:.0f}s; "
          f"run dir {cfg.run_dir}")
    return 0


def _names(text: str | None) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def _eps(text: str | None) -> list[float] | None:
    """``"1,2,4,8"`` in units of 1/255."""
    if not text:
        return None
    try:
        return [float(t) / 255 for t in _names(text)]
    except ValueError:
        raise UserError(f"--eps takes numbers in units of 1/255, got {text!r}") from None


def _cmd_eval(args: argparse.Namespace) -> int:
    from sparsetrain.evaluate.checkpoint import evaluate_checkpoint, format_result

    res = evaluate_checkpoint(
        args.checkpoint, data_path_override=args.data_path, device=args.device,
        precision=args.precision, batch_size=args.batch_size, ood=_names(args.ood),
        attacks=_names(args.attack), eps=_eps(args.eps), attack_images=args.attack_images,
        latency=args.latency, record=not args.no_record)
    print(json.dumps(res, indent=2) if args.json else format_result(res))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from sparsetrain.data import list_datasets
    from sparsetrain.models import list_models
    from sparsetrain.sparsity.allocate import list_budgets
    from sparsetrain.sparsity.methods import list_methods
    from sparsetrain.sparsity.scores import list_scores

    groups = {"models": list_models(), "datasets": list_datasets(), "recipes": list_recipes(),
              "methods": list_methods(),
              "budgets": [*list_budgets(), "global", "snip_ratio", "grasp_ratio"],
              "scores": list_scores()}
    for what, names in groups.items():
        if args.what in (None, what):
            print(f"{what} ({len(names)}):")
            for n in names:
                print(f"  {n}")
    return 0


def _cmd_lottery(args: argparse.Namespace) -> int:
    from sparsetrain.config import load_config
    from sparsetrain.train.lottery import run_lottery

    cfg = load_config(resolve_recipe(args.config), args.overrides)
    rewind = int(args.rewind) if args.rewind.isdigit() else args.rewind
    for r, s in enumerate(run_lottery(cfg, rounds=args.rounds, prune_fraction=args.prune_fraction,
                                      rewind=rewind)):
        print(f"round {r}: density {s['density']['global']:.4f}, "
              f"test top-1 {100 * s['final']['test_acc']:.2f}%")
    return 0


def _cmd_oneshot(args: argparse.Namespace) -> int:
    from sparsetrain.config import load_config
    from sparsetrain.train.lottery import run_oneshot

    cfg = load_config(resolve_recipe(args.config), args.overrides)
    s = run_oneshot(cfg, args.checkpoint)
    print(f"one-shot at density {s['density']['global']:.4f}: test top-1 "
          f"{100 * s['final']['test_acc']:.2f}%; run dir {cfg.run_dir}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from sparsetrain.report import build_report

    res = build_report([Path(p) for p in args.run_dirs], Path(args.out))
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {res.html} and {res.markdown} ({len(res.runs)} runs, "
          f"{len(res.figures)} figures)")
    return 0


def _cmd_budget(args: argparse.Namespace) -> int:
    from sparsetrain.sparsity.plan import format_plan, plan_budget

    plan = plan_budget(args.model, args.budget, args.density, num_classes=args.num_classes,
                       dense_first=args.dense_first, dense_classifier=args.dense_classifier)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparsetrain", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from a YAML recipe with key=value overrides")
    t.add_argument("--config", "-c", help="recipe file or name (see `sparsetrain list recipes`)")
    t.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                   help="continue from last.pt of the config's run dir (or of RUN_DIR)")
    t.add_argument("overrides", nargs="*", metavar="key=value",
                   help="e.g. train.epochs=30 data.batch_size=256")
    t.set_defaults(fn=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on its test set")
    e.add_argument("checkpoint")
    e.add_argument("--data-path", help="override the data path stored in the checkpoint")
    e.add_argument("--device", default="auto")
    e.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    e.add_argument("--batch-size", type=int, default=512)
    e.add_argument("--ood", help="OOD sets, comma-separated: gaussian,uniform,blur,shuffle")
    e.add_argument("--attack", help="adversarial attacks, comma-separated: fgsm,pgd")
    e.add_argument("--eps", help="attack budgets in 1/255 units, comma-separated (1,2,4,8)")
    e.add_argument("--attack-images", type=int, default=1000,
                   help="test images attacked (the first N)")
    e.add_argument("--latency", action="store_true", help="measure batch 1/64 latency")
    e.add_argument("--no-record", action="store_true",
                   help="do not add the result to the run's summary.json")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(fn=_cmd_eval)

    lt = sub.add_parser("lottery", help="iterative magnitude pruning with rewinding")
    lt.add_argument("--config", "-c", required=True)
    lt.add_argument("--rounds", type=int, required=True)
    lt.add_argument("--prune-fraction", type=float, default=0.2,
                    help="fraction of the remaining weights pruned per round")
    lt.add_argument("--rewind", default="0",
                    help="rewind point: steps (500), epochs ('1ep') or a fraction ('1%%')")
    lt.add_argument("overrides", nargs="*", metavar="key=value")
    lt.set_defaults(fn=_cmd_lottery)

    os_ = sub.add_parser("oneshot", help="prune a trained checkpoint once, then fine-tune")
    os_.add_argument("--config", "-c", required=True, help="fine-tuning recipe "
                     "(sparsity.density = the target)")
    os_.add_argument("--checkpoint", required=True)
    os_.add_argument("overrides", nargs="*", metavar="key=value")
    os_.set_defaults(fn=_cmd_oneshot)

    rp = sub.add_parser("report", help="an HTML + Markdown report of one or many runs")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                    help="run directories, or folders of runs")
    rp.add_argument("--out", default="report.html")
    rp.set_defaults(fn=_cmd_report)

    b = sub.add_parser("budget", help="per-layer densities, params and FLOPs of a budget")
    b.add_argument("--model", required=True)
    b.add_argument("--budget", default="erk")
    b.add_argument("--density", type=float, required=True)
    b.add_argument("--num-classes", type=int)
    b.add_argument("--dense-first", action="store_true")
    b.add_argument("--dense-classifier", action="store_true")
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=_cmd_budget)

    ls = sub.add_parser("list", help="list models, datasets, recipes and sparsity methods")
    ls.add_argument("what", nargs="?",
                    choices=["models", "datasets", "recipes", "methods", "budgets", "scores"])
    ls.set_defaults(fn=_cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as e:
        print(f"sparsetrain: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsetrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
