"""``sparsetrain`` command line: train, lottery, oneshot, prune, eval, report, export, bench,
budget, list.

Bad input (unknown names, out-of-range values, missing or corrupt files) prints one line
``sparsetrain: error: ...`` and exits with code 2 before any work, leaving outputs untouched.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from sparsetrain.errors import UserError


def recipes_dir() -> Path:
    """``$SPARSETRAIN_RECIPES``, else the recipes shipped inside the package (``configs/`` of
    the checkout is a link to them), so recipe names work from a wheel installed anywhere."""
    env = os.environ.get("SPARSETRAIN_RECIPES")
    if env:
        return Path(env)
    return Path(str(importlib.resources.files("sparsetrain") / "configs"))


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
    if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).exists():
        overrides.insert(0, args.resume)  # `--resume key=value`: an override, not a RUN_DIR
        args.resume = True
    if args.resume not in (None, True):  # --resume RUN_DIR: the saved config + overrides
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"cannot resume {run_dir}: no config.yaml there (not a run folder)")
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
        values = [float(t) for t in _names(text)]
    except ValueError:
        raise UserError(f"--eps takes numbers in units of 1/255, got {text!r}") from None
    if not values or any(not math.isfinite(v) or not 0 <= v <= 255 for v in values):
        raise UserError(f"--eps takes numbers in [0, 255] (units of 1/255), got {text!r}")
    return [v / 255 for v in values]


def _cmd_eval(args: argparse.Namespace) -> int:
    from sparsetrain.evaluate.checkpoint import evaluate_checkpoint, format_result

    res = evaluate_checkpoint(
        args.checkpoint, data_path_override=args.data_path, device=args.device,
        precision=args.precision, batch_size=args.batch_size, ood=_names(args.ood),
        attacks=_names(args.attack), eps=_eps(args.eps), attack_images=args.attack_images,
        latency=args.latency, record=not args.no_record)
    if res.get("note"):
        print(f"warning: {res['note']}", file=sys.stderr)
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
                                      rewind=rewind, resume=args.resume)):
        print(f"round {r}: density {s['density']['global']:.4f}, "
              f"test top-1 {100 * s['final']['test_acc']:.2f}%")
    return 0


def _cmd_oneshot(args: argparse.Namespace) -> int:
    from sparsetrain.config import load_config
    from sparsetrain.train.lottery import run_oneshot

    cfg = load_config(resolve_recipe(args.config), args.overrides)
    s = run_oneshot(cfg, args.checkpoint, resume=args.resume, budget=args.budget)
    print(f"one-shot at density {s['density']['global']:.4f}: test top-1 "
          f"{100 * s['final']['test_acc']:.2f}%; run dir {cfg.run_dir}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from sparsetrain.report import build_report

    res = build_report([Path(p) for p in args.run_dirs], Path(args.out),
                       filters=args.filter or [], group_by=_names(args.group_by))
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {res.html} and {res.markdown} ({len(res.runs)} runs, "
          f"{len(res.figures)} figures)")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from sparsetrain.config import load_config
    from sparsetrain.structured.eagleeye import EagleEyeOptions, run_eagleeye

    if not 0 < args.flops < 1:
        raise UserError(f"--flops must be a fraction in (0, 1), got {args.flops}")
    if not 0 <= args.r_min < args.r_max < 1:
        raise UserError(f"need 0 <= --r-min < --r-max < 1, got {args.r_min}, {args.r_max}")
    if args.tolerance is not None and not 0 < args.tolerance < 1:
        raise UserError(f"--tolerance must be a fraction in (0, 1), got {args.tolerance}")
    if args.latency is not None and not 0 < args.latency < 1:
        raise UserError(f"--latency must be a fraction in (0, 1), got {args.latency}")
    band = EagleEyeOptions(latency=args.latency, tolerance=args.tolerance).band()
    if not band <= args.latency_prefilter < 1:
        raise UserError(f"--latency-prefilter must be in [--tolerance, 1), got "
                        f"{args.latency_prefilter}")
    cfg = load_config(resolve_recipe(args.config), args.overrides)
    names = [b.strip() for b in args.baselines.split(",") if b.strip()]
    baselines = () if args.no_baselines or names == ["none"] else tuple(names)
    opts = EagleEyeOptions(flops=args.flops, candidates=args.candidates, r_min=args.r_min,
                           r_max=args.r_max, tolerance=args.tolerance,
                           abn_batches=args.abn_batches, holdout=args.holdout,
                           importance=args.importance,
                           round_to=args.round_to, latency=args.latency,
                           latency_batch=args.latency_batch,
                           latency_precision=args.latency_precision,
                           latency_check=not args.no_latency_check,
                           latency_prefilter=args.latency_prefilter,
                           latency_calibrate=args.latency_calibrate, baselines=baselines,
                           finetune=not args.no_finetune, winner=not args.no_winner,
                           correlate=args.correlate, vanilla=args.vanilla_score,
                           workers=args.workers, fold_bn=not args.no_fold_bn,
                           from_search=args.from_search)
    s = run_eagleeye(cfg, args.checkpoint, opts, resume=args.resume)
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


def _cmd_export(args: argparse.Namespace) -> int:
    from sparsetrain.export import ExportCheckError, export_checkpoint

    try:
        res = export_checkpoint(args.checkpoint, args.format, out=args.out,
                                fold_bn=args.fold_bn, tolerance=args.tolerance,
                                overwrite=args.overwrite)
    except ExportCheckError as e:  # a wrong artifact: nothing written, exit code 1
        print(f"sparsetrain: error: {e}", file=sys.stderr)
        return 1
    c = res.card
    print(f"wrote {res.path} ({c['format']}{', BN folded' if c['fold_bn'] else ''}; density "
          f"{c['density']:.4f}); max abs diff vs the checkpoint {c['check']['max_abs_diff']:.3g} "
          f"(tolerance {c['check']['tolerance']:g}); card {res.card_json}, {res.card_md}")
    return 0


def _cmd_bench_latency(args: argparse.Namespace) -> int:
    import torch

    from sparsetrain.evaluate.artifacts import load_timed
    from sparsetrain.evaluate.cost import measure_latency
    from sparsetrain.precision import resolve_device

    dev = resolve_device(args.device)
    models = [(path, load_timed(path)) for path in args.checkpoints]
    print(f"{'checkpoint / artifact':<40} {'kind':>12} {'MACs':>9} {'params':>10} {'prec':>5} "
          f"{'batch':>5} {'ms':>9} {'img/s':>9}")
    for path, t in models:  # every file is checked before the first measurement
        model, where = t.module, dev
        if t.kind == "checkpoint":
            model = model.to(dev).to(memory_format=torch.channels_last)
        else:  # exported artifacts run where they were exported: the CPU
            where = torch.device("cpu")
        res = measure_latency(model, device=where, batch_sizes=tuple(args.batch_sizes),
                              precisions=t.precisions, repeats=args.repeats)
        macs = "—" if t.macs is None else f"{t.macs / 1e6:.1f}M"
        params = "—" if t.params is None else f"{t.params:,}"
        for r in res.values():
            print(f"{str(path)[-40:]:<40} {t.kind:>12} {macs:>9} {params:>10} "
                  f"{r['precision']:>5} {r['batch']:>5} {r['ms']:>9.2f} "
                  f"{r['images_per_s']:>9.0f}")
    return 0


def _cmd_budget(args: argparse.Namespace) -> int:
    from sparsetrain.sparsity.plan import format_plan, plan_budget

    if not 0 < args.density <= 1:
        raise UserError(f"--density must be in (0, 1], got {args.density}")
    plan = plan_budget(args.model, args.budget, args.density, num_classes=args.num_classes,
                       dense_first=args.dense_first, dense_classifier=args.dense_classifier)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0


# -- argument types: a bad value is argparse's one-line error, exit code 2 ----------------
def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


_finite.__name__ = "number"


def _step(text: str) -> int | str:
    return "auto" if text == "auto" else _count(1)(text)


_step.__name__ = "step (a whole number >= 1, or auto)"


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (``sparsetrain: error: ...``, exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"sparsetrain: error: {message} (see `{self.prog} --help`)\n")


_FMT = argparse.RawDescriptionHelpFormatter


def _sub(sub: Any, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                          epilog="examples:\n" + examples, formatter_class=_FMT)


_RESUME_HELP = "continue the run of the same name (only the command that made it can)"
_OVERRIDES = "recipe overrides, e.g. train.epochs=30 name=other (YAML values)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sparsetrain", description=__doc__.splitlines()[0],
                epilog="examples:\n  sparsetrain train --config quickstart\n"
                       "  sparsetrain list recipes\n  sparsetrain <command> --help",
                formatter_class=_FMT)
    p.add_argument("--version", action="version", version=f"sparsetrain {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = _sub(sub, "train", "train from a YAML recipe with key=value overrides",
             "  sparsetrain train --config quickstart\n"
             "  sparsetrain train -c cpu/static_erk_resnet20_cifar10 name=erk90\n"
             "  sparsetrain train --resume runs/erk90 train.epochs=30")
    t.add_argument("--config", "-c", help="recipe file or name (see `sparsetrain list recipes`)")
    t.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                   help="continue from last.pt of the config's run dir (or of RUN_DIR)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help=_OVERRIDES)
    t.set_defaults(fn=_cmd_train)

    e = _sub(sub, "eval", "evaluate a checkpoint on its test set",
             "  sparsetrain eval runs/quickstart/last.pt\n"
             "  sparsetrain eval runs/x/best.pt --ood gaussian,blur --attack fgsm --eps 2,8")
    e.add_argument("checkpoint", help="a last.pt / best.pt of a run (or a pruned checkpoint)")
    e.add_argument("--data-path", help="override the data path stored in the checkpoint")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="evaluation precision (default fp32)")
    e.add_argument("--batch-size", type=_count(1), default=512, help="evaluation batch size")
    e.add_argument("--ood", help="OOD sets, comma-separated: gaussian,uniform,blur,shuffle")
    e.add_argument("--attack", help="adversarial attacks, comma-separated: fgsm,pgd")
    e.add_argument("--eps", help="attack budgets in 1/255 units, comma-separated (1,2,4,8)")
    e.add_argument("--attack-images", type=_count(1), default=1000,
                   help="test images attacked (the first N)")
    e.add_argument("--latency", action="store_true", help="measure batch 1/64 latency")
    e.add_argument("--no-record", action="store_true",
                   help="do not add the result to the run's summary.json")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(fn=_cmd_eval)

    lt = _sub(sub, "lottery", "iterative magnitude pruning with rewinding (lottery tickets)",
              "  sparsetrain lottery -c cpu/dense_resnet20_cifar10 --rounds 5 --rewind 1ep "
              "name=lth\n  sparsetrain lottery -c cpu/dense_resnet20_cifar10 --rounds 5 "
              "--rewind 1ep name=lth --resume")
    lt.add_argument("--config", "-c", required=True, help="recipe of the dense training")
    lt.add_argument("--rounds", type=_count(1), required=True,
                    help="pruning rounds after the dense round 0")
    lt.add_argument("--prune-fraction", type=_finite, default=0.2,
                    help="fraction of the remaining weights pruned per round")
    lt.add_argument("--rewind", default="0",
                    help="rewind point: steps (500), epochs ('1ep') or a fraction ('1%%')")
    lt.add_argument("--resume", action="store_true", help=_RESUME_HELP)
    lt.add_argument("overrides", nargs="*", metavar="key=value", help=_OVERRIDES)
    lt.set_defaults(fn=_cmd_lottery)

    os_ = _sub(sub, "oneshot", "prune a trained checkpoint once, then fine-tune",
               "  sparsetrain oneshot -c cpu/dense_resnet20_cifar10 --checkpoint "
               "runs/dense/last.pt sparsity.density=0.1 name=oneshot90\n"
               "  sparsetrain oneshot -c cpu/dense_resnet56_cifar10 --budget erk "
               "model.init_from=resnet56.pth sparsity.density=0.1 train.epochs=3 name=ft90")
    os_.add_argument("--config", "-c", required=True, help="fine-tuning recipe "
                     "(sparsity.density = the target)")
    os_.add_argument("--checkpoint", help="the trained sparsetrain model to prune (or give "
                     "foreign weights as model.init_from=PATH)")
    os_.add_argument("--budget", default="global", help="global magnitude threshold (default) "
                     "or a layer-wise budget: erk, er, uniform, uniform_plus, erk_plus")
    os_.add_argument("--resume", action="store_true", help=_RESUME_HELP)
    os_.add_argument("overrides", nargs="*", metavar="key=value", help=_OVERRIDES)
    os_.set_defaults(fn=_cmd_oneshot)

    rp = _sub(sub, "report", "an HTML + Markdown report of one or many runs",
              "  sparsetrain report runs/sweep runs/lth --out report.html\n"
              "  sparsetrain report runs --filter density=0.1* --group-by method,density")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                    help="run directories, or folders of runs")
    rp.add_argument("--out", default="report.html",
                    help="HTML file (outside any run folder); the Markdown twin is <out>.md")
    rp.add_argument("--filter", action="append", metavar="KEY=PATTERN",
                    help="keep runs whose KEY matches PATTERN (fnmatch; repeatable): name, "
                         "method, model, dataset, density, seed, budget, score or a dotted "
                         "config key, e.g. --filter method=GraNet* --filter train.epochs=15")
    rp.add_argument("--group-by", metavar="KEYS",
                    help="comma-separated keys whose runs form one mark in the comparison "
                         "figures (default: runs that differ only in seed), e.g. method,density")
    rp.set_defaults(fn=_cmd_report)

    pr = _sub(sub, "prune", "structured pruning (EagleEye)",
              "  sparsetrain prune eagleeye --help")
    prs = pr.add_subparsers(dest="algorithm", required=True, parser_class=_Parser)
    ee = _sub(prs, "eagleeye", "adaptive-BN candidate search, then fine-tune the best",
              "  sparsetrain prune eagleeye -c cpu/eagleeye_resnet56_cifar10 --checkpoint "
              "runs/dense56/last.pt --flops 0.5 --candidates 300 name=ee56\n"
              "  sparsetrain prune eagleeye ... --no-winner --baselines uniform --resume  "
              "# baselines in a second process")
    ee.add_argument("--config", "-c", required=True,
                    help="recipe for data and fine-tuning (model.name = the checkpoint's)")
    ee.add_argument("--checkpoint", help="trained dense sparsetrain model (or give foreign "
                    "weights as model.init_from=PATH)")
    ee.add_argument("--flops", type=_finite, default=0.5, help="target MACs fraction")
    ee.add_argument("--candidates", type=_count(1), default=100,
                    help="candidates searched (default 100)")
    ee.add_argument("--r-min", type=_finite, default=0.0, help="smallest per-group ratio")
    ee.add_argument("--r-max", type=_finite, default=0.7, help="largest per-group ratio")
    ee.add_argument("--tolerance", type=_finite,
                    help="accepted band around the target (fraction; default 0.005 of the "
                         "MACs, or with --latency 0.02 of the measured latency)")
    ee.add_argument("--abn-batches", type=_count(1), default=10,  # = EagleEyeOptions's
                    help="training batches that re-estimate BN statistics per candidate "
                         "(default 10: ranks candidates like 50 do, BENCHMARKS.md)")
    ee.add_argument("--holdout", type=int, metavar="N",
                    help="score candidates on N images: a stratified subset of the validation "
                         "split (default: all of it; without data.val_size, 1000 training "
                         "images held out)")
    ee.add_argument("--importance", default="l1",
                    choices=["l1", "l2", "random", "bn_scale", "taylor", "fpgm", "lamp"],
                    help="channel importance within a group (default l1, EagleEye's): l2, "
                    "bn_scale (|gamma|), taylor (|w*grad| on the adaptive-BN batches), fpgm "
                    "(geometric median), lamp (ranks as l2 within a group), random")
    ee.add_argument("--round-to", type=_step, metavar="N|auto",
                    help="keep channel counts multiples of N; auto: a step per channel group "
                         "measured on this device (the default with --latency)")
    ee.add_argument("--latency", type=_finite, metavar="FRACTION",
                    help="constrain latency instead of MACs: this fraction of the dense "
                         "model's on this device; a per-layer table (measured once, cached in "
                         "$SPARSETRAIN_CACHE, default ~/.cache/sparsetrain) pre-selects "
                         "strategies and each candidate is timed")
    ee.add_argument("--latency-batch", type=_count(1), default=64,
                    help="batch size the latency table is measured at (default 64)")
    ee.add_argument("--latency-precision", choices=["fp32", "bf16"],
                    help="precision of the latency table (default: the recipe's)")
    ee.add_argument("--latency-prefilter", type=_finite, default=0.15, metavar="W",
                    help="strategies the table predicts within W of --latency (corrected by "
                         "the table's error measured so far) are timed against the dense model; "
                         "the first measured within --tolerance is the candidate (default 0.15)")
    ee.add_argument("--latency-calibrate", type=_count(0), default=8, metavar="N",
                    help="time N whole pruned models to fit the table's predictions to this "
                         "device (default 8; 0: the per-layer table as measured)")
    ee.add_argument("--no-latency-check", action="store_true",
                    help="trust the table's prediction: no timing during the search "
                         "(deterministic, but the table can be off on some CPUs)")
    ee.add_argument("--correlate", type=_count(0), default=0, metavar="K",
                    help="fine-tune K candidates briefly and correlate scores with accuracy")
    ee.add_argument("--from-search", metavar="RUN",
                    help="reuse the finished search of EagleEye run RUN (copied, not changed; "
                         "same search settings): fine-tune its winner with this recipe, e.g. "
                         "longer, without scoring candidates again")
    ee.add_argument("--no-fold-bn", action="store_true",
                    help="score candidates with their BN layers as they are (default in fp32: "
                         "folded into the convolutions after adaptive BN, the same function "
                         "and ranking, faster; bf16 always scores unfolded). fp32 searches "
                         "from before 2026-12-04 resume only with this flag")
    ee.add_argument("--workers", type=_count(1), metavar="N",
                    help="processes scoring candidates, one thread each (default: usable "
                         "cores, at most --candidates; results do not depend on N)")
    ee.add_argument("--vanilla-score", action="store_true",
                    help="also score candidates before adaptive BN (implied by the random "
                         "baseline and --correlate, its only readers)")
    ee.add_argument("--baselines", default="uniform,random",
                    help="baselines fine-tuned like the winner: uniform (L1 at the same MACs), "
                         "random (best vanilla-scored strategy, no adaptive BN), or none")
    ee.add_argument("--no-baselines", action="store_true", help="same as --baselines none")
    ee.add_argument("--no-winner", action="store_true",
                    help="fine-tune only the baselines (run them in a second process)")
    ee.add_argument("--no-finetune", action="store_true", help="search (and --correlate) only")
    ee.add_argument("--resume", action="store_true", help=_RESUME_HELP)
    ee.add_argument("overrides", nargs="*", metavar="key=value", help=_OVERRIDES)
    ee.set_defaults(fn=_cmd_prune)

    from sparsetrain.export.formats import list_formats

    ex = _sub(sub, "export", "a checkpoint as a plain, checked TorchScript/torch.export/ONNX "
              "file with a model card",
              "  sparsetrain export runs/erk90/best.pt --format pt2\n"
              "  sparsetrain export runs/ee56/last.pt --format onnx --fold-bn --out ee56.onnx")
    ex.add_argument("checkpoint", help="a last.pt / best.pt of a run (or a pruned checkpoint)")
    ex.add_argument("--format", required=True, choices=list_formats(),
                    help="pt (TorchScript), pt2 (torch.export) or onnx (needs the "
                         "sparsetrain[export] extra)")
    ex.add_argument("--out", help="output file, outside any run folder (default "
                    "exports/<run>-<checkpoint>.<ext>); the card is <out>.card.json/.md")
    ex.add_argument("--fold-bn", action="store_true",
                    help="fold every BatchNorm that follows a conv into that conv")
    ex.add_argument("--tolerance", type=_finite,
                    help="largest max abs difference to the checkpoint's model on the check "
                         "batch (default 1e-4, with --fold-bn 1e-3); above it: exit 1, "
                         "nothing written")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing output")
    ex.set_defaults(fn=_cmd_export)

    bench = _sub(sub, "bench", "measurements", "  sparsetrain bench latency --help")
    bs = bench.add_subparsers(dest="what", required=True, parser_class=_Parser)
    lat = _sub(bs, "latency", "batch-1/64 latency of checkpoints or exported artifacts "
               "(.pt TorchScript, .pt2, .onnx), fp32 and bf16",
               "  sparsetrain bench latency runs/dense56/last.pt runs/ee56/last.pt\n"
               "  sparsetrain bench latency exports/ee56-last.pt2 exports/ee56-last.pt")
    lat.add_argument("checkpoints", nargs="+", help="checkpoints or exported artifacts")
    lat.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    lat.add_argument("--batch-sizes", type=_count(1), nargs="+", default=[1, 64],
                     help="batch sizes (default 1 64)")
    lat.add_argument("--repeats", type=_count(1), default=20,
                     help="timed repeats per setting; the median is reported")
    lat.set_defaults(fn=_cmd_bench_latency)

    b = _sub(sub, "budget", "per-layer densities, params and FLOPs of a budget",
             "  sparsetrain budget --model resnet20 --budget erk --density 0.1")
    b.add_argument("--model", required=True, help="a registered model (sparsetrain list models)")
    b.add_argument("--budget", default="erk", help="layer budget (sparsetrain list budgets)")
    b.add_argument("--density", type=_finite, required=True, help="global density in (0, 1]")
    b.add_argument("--num-classes", type=_count(1), help="classifier outputs (model default)")
    b.add_argument("--dense-first", action="store_true", help="keep the first layer dense")
    b.add_argument("--dense-classifier", action="store_true", help="keep the classifier dense")
    b.add_argument("--json", action="store_true", help="print the plan as JSON")
    b.set_defaults(fn=_cmd_budget)

    ls = _sub(sub, "list", "list models, datasets, recipes and sparsity methods",
              "  sparsetrain list\n  sparsetrain list recipes")
    ls.add_argument("what", nargs="?", help="only this group",
                    choices=["models", "datasets", "recipes", "methods", "budgets", "scores"])
    ls.set_defaults(fn=_cmd_list)
    return p


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("sparsetrain")
    except Exception:  # not installed (a source tree on sys.path)
        from sparsetrain import __version__

        return __version__


def _os_error_line(e: OSError) -> str:
    where = f" {e.filename}" if e.filename else ""
    reason = e.strerror or str(e) or type(e).__name__
    return f"cannot read or write{where}: {reason}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as e:
        print(f"sparsetrain: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `sparsetrain list | head`: the reader left; leave quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # disk full, permissions, a folder gone: the path and the reason
        if os.environ.get("SPARSETRAIN_DEBUG"):
            raise
        print(f"sparsetrain: error: {_os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsetrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
