"""EagleEye search speed (issue 19): the old search path and the new one, side by side, on the
same candidates of a trained dense model; prints a table (``--append``: also to BENCHMARKS.md).

* old path: the search before issue 19, reproduced here: one process with all of torch's
  threads, fp32; per candidate a FlopCounter pass over the pruned model, a vanilla score (dense
  BN statistics), adaptive BN on ``--old-abn`` batches and the adaptive-BN score.
* new path: ``eagleeye_search`` with its defaults (worker processes = usable cores, one thread
  each, no vanilla score, analytic MACs), once per ``--abn`` count of adaptive-BN batches, on
  ``--candidates`` candidates (the old path scores the first ``--old-candidates`` of them);
  wall time includes starting the workers.
* rank agreement: Spearman of each new run's adaptive-BN scores vs the old path's (common
  candidates) and vs the new run with the most ABN batches and scoring images (all
  candidates; the first ``--pairs`` setting when given), and whether the winner is the same
  candidate.
* ``--holdout``: a comma-separated list of scoring-set sizes; every ``--abn`` count runs on
  each (a grid), so one call measures how far both can shrink before the ranking changes;
  ``--pairs 50x5000:fp32:nofold,10x1000`` runs just those settings: ABN batches x scoring
  images, optionally a precision and whether BN is folded for scoring (default: ``--precision``,
  i.e. the recipe's as the CLI resolves it, and the CLI's folding); the first is the reference.
* ``--fold``: held-out scoring time of one candidate after adaptive BN with BN folded into
  the convolutions vs as is (same top-1 checked).

Example (the dense model of BENCHMARKS.md's issue-19 section)::

    flock /tmp/sparsetrain-bench.lock python benchmarks/eagleeye_speed.py \\
        --checkpoint /tmp/ee19/runs/dense56/last.pt --candidates 12 --old-candidates 6 \\
        --abn 50,20,10 data.train_subset=27000
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from typing import Any

import torch
from _common import append_markdown, header
from torch import nn

from sparsetrain.checkpoint import load_checkpoint
from sparsetrain.cli import resolve_recipe
from sparsetrain.config import load_config
from sparsetrain.export.plain import fold_batchnorm
from sparsetrain.loading import load_model
from sparsetrain.precision import resolve_precision
from sparsetrain.structured import (
    MacsModel,
    StrategySampler,
    abn_batches,
    adaptive_bn,
    eagleeye_search,
    eval_batches,
    holdout_split,
    macs_params,
    prunable_groups,
    prune_model,
    spearman,
    top1,
)
from sparsetrain.structured.eagleeye import EagleEyeOptions
from sparsetrain.structured.search import default_workers
from sparsetrain.train.run import load_data


def _data(cfg: Any, n_abn: int, holdout: int | None) -> tuple[list, list]:
    """ABN batches and held-out batches exactly as ``prune eagleeye`` builds them (fp32)."""
    data = load_data(cfg)
    d, fmt = cfg.data, dict(device="cpu", channels_last=cfg.train.channels_last)
    if data.val is not None:
        rest, scoring = data.train, data.val
        if holdout is not None and holdout < len(scoring):
            _, scoring = holdout_split(scoring, holdout, cfg.seed)
    else:
        rest, scoring = holdout_split(data.train, min(holdout or 1000, len(data.train) // 2),
                                      cfg.seed)
    tb = abn_batches(rest, data.info.mean, data.info.std, n=n_abn, batch_size=d.batch_size,
                     seed=cfg.seed, pad=d.pad, padding_mode=d.padding_mode, **fmt)
    hb = eval_batches(scoring, data.info.mean, data.info.std, batch_size=d.eval_batch_size,
                      **fmt)
    return tb, hb


def old_path(dense: nn.Module, groups: list, strategies: list, tb: list, hb: list,
             n_abn: int) -> tuple[list[float], float]:
    """The pre-issue-19 per-candidate work; returns (ABN scores, seconds)."""
    t0 = time.perf_counter()
    scores = []
    for s in strategies:
        pruned = prune_model(dense, s.ratios, "l1", None, None, groups=groups)
        macs, _ = macs_params(pruned)  # the FlopCounter pass the old search made
        assert macs == s.macs
        top1(pruned, hb)  # vanilla score
        adaptive_bn(pruned, tb, n_abn)
        scores.append(top1(pruned, hb))
    return scores, time.perf_counter() - t0


def new_path(dense: nn.Module, tb: list, hb: list, n: int, n_abn: int, seed: int,
             workers: int | None, precision: str, fold: bool) -> tuple[list[float], float]:
    """``eagleeye_search`` with its defaults; returns (ABN scores, seconds)."""
    with tempfile.TemporaryDirectory(prefix="ee_speed_") as out:
        t0 = time.perf_counter()
        res = eagleeye_search(dense, tb, hb, out, candidates=n, abn_batches=n_abn, seed=seed,
                              workers=workers, progress=False, precision=precision,
                              fold_bn=fold)
        return [r["abn_score"] for r in res.candidates], time.perf_counter() - t0


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy with every conv -> BN pair folded (``sparsetrain export --fold-bn``'s folding)."""
    return fold_batchnorm(copy.deepcopy(model).eval())[0]


def _rate(n: int, seconds: float) -> str:
    return f"{seconds / n:.2f} | {60.0 * n / seconds:.2f}"


def _model_name(ckpt: dict[str, Any], cfg: Any) -> str:
    """The checkpoint's model (the recipe only supplies data and settings)."""
    model = (ckpt.get("config") or {}).get("model") or {}
    return str(model.get("name") or cfg.model.name)


Setting = tuple[int, int | None, str | None, bool | None]  # ABN, images, precision, fold


def _pairs(text: str) -> list[Setting]:
    """``"50x5000:fp32:nofold,10x1000"`` -> [(50, 5000, "fp32", False), (10, 1000, None, None)]
    (None: the default)."""
    out: list[Setting] = []
    try:
        for t in text.split(","):
            size, *opts = t.split(":")
            a, b = size.split("x")
            prec = next((o for o in opts if o in ("fp32", "bf16")), None)
            fold = {"fold": True, "nofold": False}.get(next((o for o in opts if "fold" in o), ""))
            if len(opts) != (prec is not None) + (fold is not None):
                raise ValueError(t)
            out.append((int(a), int(b), prec, fold))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ABNxIMAGES[:fp32|bf16][:fold|nofold][,...], "
                                         f"got {text!r}") from None
    return out


def _images(batches: list) -> int:
    return sum(len(y) for _, y in batches)


def _winner(scores: list[float]) -> int:
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="trained dense model")
    p.add_argument("-c", "--config", default="cpu/eagleeye_resnet56_cifar10")
    p.add_argument("--candidates", type=int, default=12, help="new path")
    p.add_argument("--old-candidates", type=int, default=6, help="old path (a prefix)")
    p.add_argument("--old-abn", type=int, default=50, help="ABN batches of the old path")
    p.add_argument("--abn", type=lambda t: [int(v) for v in t.split(",")],
                   default=[EagleEyeOptions().abn_batches],
                   help="comma-separated ABN batch counts of the new path (default: the CLI's)")
    p.add_argument("--workers", type=int, help="new path (default: usable cores)")
    p.add_argument("--holdout", type=lambda t: [int(v) for v in t.split(",")], default=[None],
                   help="comma-separated scoring-set sizes (default: the CLI's, i.e. the "
                        "recipe's validation split)")
    p.add_argument("--pairs", type=_pairs, help="settings to run instead of the --abn x "
                   "--holdout grid, e.g. 50x5000:fp32:nofold,10x1000:bf16 (the first is the "
                   "reference)")
    p.add_argument("--precision", choices=["fp32", "bf16"],
                   help="of the new path (default: the recipe's, as the CLI resolves it)")
    p.add_argument("--no-fold-bn", action="store_true", help="new path: score unfolded")
    p.add_argument("--fold", action="store_true", help="time BN folding for scoring")
    p.add_argument("--append", action="store_true", help="append the tables to BENCHMARKS.md")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args()

    cfg = load_config(resolve_recipe(args.config), args.overrides)
    precision = args.precision or resolve_precision(cfg.train.precision, torch.device("cpu"))
    fold = not args.no_fold_bn and EagleEyeOptions().fold_bn
    ckpt = load_checkpoint(args.checkpoint)
    dense = load_model(ckpt, args.checkpoint).eval()
    settings = [(c, h, pr or precision, (fold if f is None else f) and (pr or precision) != "bf16")
                for c, h, pr, f in (  # the search folds BN only in fp32
        args.pairs or [(c, h, None, None) for h in args.holdout for c in args.abn])]
    if not args.pairs:  # the grid: most ABN batches on the largest scoring set first
        settings.sort(key=lambda st: (-1 if st[1] is None else -st[1], -st[0]))
    holdouts = sorted({h for _, h, _, _ in settings}, key=lambda h: -1 if h is None else -h)
    n_abn_max = max(args.old_abn, *(st[0] for st in settings))
    tb, hb = _data(cfg, n_abn_max, holdouts[0])
    scoring = {holdouts[0]: hb}
    for h in holdouts[1:]:
        scoring[h] = _data(cfg, n_abn_max, h)[1]
    groups = prunable_groups(dense)
    sampler = StrategySampler(MacsModel.build(dense, groups), seed=cfg.seed)
    n, n_old = args.candidates, min(args.old_candidates, args.candidates)
    workers = args.workers or default_workers(n)
    lines = [header("EagleEye search speed (issue 19)"),
             f"{_model_name(ckpt, cfg)}, ABN batches of {len(tb[0][1])}; load average "
             f"before: {os.getloadavg()[0]:.2f}\n",
             "| path | candidates | processes x threads | ABN batches | scoring images "
             "| precision | BN folded | vanilla | FlopCounter | s/cand | cand/min "
             "| Spearman vs old | Spearman vs reference | same winner |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    old = None
    if n_old:
        strategies = [sampler.sample(i) for i in range(n_old)]
        old, t = old_path(dense, groups, strategies, tb, hb, args.old_abn)
        lines.append(f"| old | {n_old} | 1 x {torch.get_num_threads()} | {args.old_abn} "
                     f"| {_images(hb)} | fp32 | no | yes | yes | {_rate(n_old, t)} | 1 | | |")
    runs = [(st, new_path(dense, tb, scoring[st[1]], n, st[0], cfg.seed, args.workers,
                          st[2], st[3])) for st in settings]
    ref = runs[0][1][0]
    for (c, h, prec, f), (scores, t) in runs:
        vs_old = f"{spearman(old, scores[:n_old]):.4f}" if old else ""
        same = (_winner(old) == _winner(scores[:n_old])) if old else None
        lines.append(f"| new | {n} | {workers} x 1 | {c} | {_images(scoring[h])} | {prec} "
                     f"| {'yes' if f else 'no'} | no | no | {_rate(n, t)} | {vs_old} "
                     f"| {spearman(scores, ref):.4f} | "
                     f"{'' if same is None else same} / {_winner(scores) == _winner(ref)} |")
    c0, h0, p0, f0 = settings[0]
    lines.append(f"\nload average after: {os.getloadavg()[0]:.2f}; reference: the first new run "
                 f"({c0} ABN batches, {_images(scoring[h0])} scoring images, {p0}, BN "
                 f"{'folded' if f0 else 'as is'}); same winner: vs old (on its {n_old}) / vs "
                 "the reference")
    if args.fold:
        lines += ["", *_fold(dense, groups, sampler.sample(0), tb, hb, settings[0][0])]
    text = "\n".join(lines)
    print(text)
    if args.append:
        append_markdown(text)


def _fold(dense: nn.Module, groups: list, s: Any, tb: list, hb: list, n_abn: int,
          repeats: int = 3) -> list[str]:
    pruned = prune_model(dense, s.ratios, "l1", None, None, groups=groups)
    adaptive_bn(pruned, tb, n_abn)
    out = [f"BN folding for scoring (one candidate, held-out top-1, {torch.get_num_threads()} "
           f"threads, median of {repeats}):", "", "| model | seconds | top-1 |", "|---|---|---|"]
    for label, build in (("as is", lambda: pruned), ("BN folded (incl. folding)",
                                                      lambda: fold_bn(pruned))):
        times, acc = [], 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            acc = top1(build(), hb)
            times.append(time.perf_counter() - t0)
        out.append(f"| {label} | {sorted(times)[repeats // 2]:.3f} | {acc:.4f} |")
    return out


if __name__ == "__main__":
    main()
