"""``sparsetrain`` command line: train, lottery, oneshot, prune, eval, report, bench, budget,
list.

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
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 alone reports
        return 0
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
    from sparsetrain.sparsity.methods import list_methods
    from sparsetrain.sparsity.methods.static import list_all_budgets
    from sparsetrain.sparsity.scores import list_scores

    groups = {"models": list_models(), "datasets": list_datasets(), "recipes": list_recipes(),
              "methods": list_methods(),
              "budgets": list_all_budgets(),
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


def _cmd_prune(args: argparse.Namespace) -> int:
    from sparsetrain.config import load_config
    from sparsetrain.train.eagleeye import EagleEyeOptions, run_eagleeye

    if not 0 < args.flops < 1:
        raise UserError(f"--flops must be a fraction in (0, 1), got {args.flops}")
    cfg = load_config(resolve_recipe(args.config), args.overrides)
    names = [b.strip() for b in args.baselines.split(",") if b.strip()]
    baselines = () if args.no_baselines or names == ["none"] else tuple(names)
    opts = EagleEyeOptions(flops=args.flops, candidates=args.candidates, r_min=args.r_min,
                           r_max=args.r_max, tolerance=args.tolerance,
                           abn_batches=args.abn_batches, holdout=args.holdout,
                           importance=args.importance,
                           round_to=args.round_to, baselines=baselines,
                           finetune=not args.no_finetune, winner=not args.no_winner,
                           correlate=args.correlate)
    s = run_eagleeye(cfg, args.checkpoint, opts)
    if "structured" not in s and s.get("baselines"):  # --no-winner
        print("EagleEye baselines: " + ", ".join(
            f"{k} top-1 {100 * v['final']['test_acc']:.2f}%" for k, v in s["baselines"].items())
            + f"; run dir {cfg.run_dir}")
        return 0
    if "structured" not in s:  # --no-finetune: the search (and correlation study) only
        corr = s.get("correlation")
        print(f"EagleEye search: {s['candidates']} candidates, best adaptive-BN score "
              f"{100 * s['best_abn_score']:.2f}% (candidate {s['best_index']})"
              + (f", Spearman(ABN, fine-tuned) {corr['spearman']:.3f}" if corr else "")
              + f"; run dir {cfg.run_dir}")
        return 0
    st = s["structured"]
    acc = s.get("final", {}).get("test_acc")
    print(f"EagleEye: MACs {st.get('macs', 0) / 1e6:.1f}M of {st.get('macs_dense', 0) / 1e6:.1f}M"
          + (f", fine-tuned top-1 {100 * acc:.2f}%" if acc is not None else "")
          + f"; run dir {cfg.run_dir}")
    return 0


def _cmd_bench_latency(args: argparse.Namespace) -> int:
    import torch

    from sparsetrain.checkpoint import load_checkpoint, load_model
    from sparsetrain.evaluate.cost import measure_latency, param_counts
    from sparsetrain.precision import resolve_device
    from sparsetrain.structured.macs import macs_params

    dev = resolve_device(args.device)
    print(f"{'checkpoint':<40} {'MACs':>9} {'params':>10} {'prec':>5} {'batch':>5} "
          f"{'ms':>9} {'img/s':>9}")
    for path in args.checkpoints:
        model = load_model(load_checkpoint(path), path).to(dev)
        model = model.to(memory_format=torch.channels_last)
        macs, _ = macs_params(model)
        params = param_counts(model)["total"]
        res = measure_latency(model, device=dev, batch_sizes=tuple(args.batch_sizes),
                              repeats=args.repeats)
        for r in res.values():
            print(f"{str(path)[-40:]:<40} {macs / 1e6:>8.1f}M {params:>10,} "
                  f"{r['precision']:>5} {r['batch']:>5} {r['ms']:>9.2f} "
                  f"{r['images_per_s']:>9.0f}")
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

    pr = sub.add_parser("prune", help="structured pruning (EagleEye)")
    prs = pr.add_subparsers(dest="algorithm", required=True)
    ee = prs.add_parser("eagleeye", help="adaptive-BN candidate search, then fine-tune the best")
    ee.add_argument("--config", "-c", required=True,
                    help="recipe for data and fine-tuning (model.name = the checkpoint's)")
    ee.add_argument("--checkpoint", required=True, help="trained dense model")
    ee.add_argument("--flops", type=float, default=0.5, help="target MACs fraction")
    ee.add_argument("--candidates", type=int, default=100)
    ee.add_argument("--r-min", type=float, default=0.0)
    ee.add_argument("--r-max", type=float, default=0.7)
    ee.add_argument("--tolerance", type=float, default=0.005)
    ee.add_argument("--abn-batches", type=int, default=50,
                    help="training batches that re-estimate BN statistics per candidate")
    ee.add_argument("--holdout", type=int, metavar="N",
                    help="score candidates on N images: a stratified subset of the validation "
                         "split (default: all of it; without data.val_size, 1000 training "
                         "images held out)")
    ee.add_argument("--importance", default="l1", choices=["l1", "l2", "random"])
    ee.add_argument("--round-to", type=int, help="keep channel counts multiples of N")
    ee.add_argument("--correlate", type=int, default=0, metavar="K",
                    help="fine-tune K candidates briefly and correlate scores with accuracy")
    ee.add_argument("--baselines", default="uniform,random",
                    help="baselines fine-tuned like the winner: uniform (L1 at the same MACs), "
                         "random (best vanilla-scored strategy, no adaptive BN), or none")
    ee.add_argument("--no-baselines", action="store_true", help="same as --baselines none")
    ee.add_argument("--no-winner", action="store_true",
                    help="fine-tune only the baselines (run them in a second process)")
    ee.add_argument("--no-finetune", action="store_true", help="search (and --correlate) only")
    ee.add_argument("overrides", nargs="*", metavar="key=value")
    ee.set_defaults(fn=_cmd_prune)

    bench = sub.add_parser("bench", help="measurements")
    bs = bench.add_subparsers(dest="what", required=True)
    lat = bs.add_parser("latency", help="batch-1/64 latency of checkpoints, fp32 and bf16")
    lat.add_argument("checkpoints", nargs="+")
    lat.add_argument("--device", default="auto")
    lat.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    lat.add_argument("--repeats", type=int, default=20)
    lat.set_defaults(fn=_cmd_bench_latency)

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
