"""``sparsetrain prune eagleeye``: trained dense checkpoint -> searched, pruned, fine-tuned model
(EagleEye, Li et al. ECCV 2020; DESIGN.md §3.6), with the issue's two baselines.

Run directory ``cfg.run_dir`` (every stage resumes; a finished stage is skipped)::

    candidates.jsonl, search.json    the search (held-out split of the training set)
    last.pt, best.pt, metrics.jsonl, summary.json   the winner fine-tuned with cfg.train
    baseline_uniform/                uniform L1 pruning at the same FLOPs, fine-tuned the same way
    baseline_random/                 best vanilla-scored random strategy (no adaptive BN), same
    correlation.json/.png, correlate/   optional correlation study (K brief fine-tunes, scored
                                     on validation images the search did not score on when
                                     --holdout takes only part of the split)
    latency_table.json               with --latency or --round-to auto: the measured latency
                                     table the search sampled with (a resume reuses it)

``from_search`` (``--from-search RUN``) starts a new run from the finished search of another
EagleEye run: its ``search.json``, ``candidates.jsonl`` and ``latency_table.json`` are copied
(never changed there) and the search resumes from them, so it must have this call's settings;
the winner is then fine-tuned with this recipe (e.g. longer) without scoring a candidate again.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from sparsetrain.checkpoint import atomic_write_bytes, write_json
from sparsetrain.config import RunConfig
from sparsetrain.errors import UserError
from sparsetrain.precision import resolve_device, resolve_precision
from sparsetrain.rundir import RunDir
from sparsetrain.structured.correlate import correlation_study
from sparsetrain.structured.finetune import finetune_pruned
from sparsetrain.structured.groups import accumulate_gradients, prunable_groups, prune_model
from sparsetrain.structured.latency import LatencyModel, MeasuredLatency
from sparsetrain.structured.macs import MacsModel, macs_params
from sparsetrain.structured.sampler import uniform_strategy
from sparsetrain.structured.search import (
    SearchResult,
    abn_batches,
    eagleeye_search,
    eval_batches,
    holdout_split,
    search_complete,
)

__all__ = ["EagleEyeOptions", "run_eagleeye"]


@dataclass(frozen=True)
class EagleEyeOptions:
    """Search options (the fine-tuning recipe is the run config's ``train`` section)."""

    flops: float = 0.5  # target MACs as a fraction of the dense model's
    candidates: int = 100
    r_min: float = 0.0
    r_max: float = 0.7
    # accepted band around the target: None = 0.005 for MACs (counted exactly) and 0.02 for a
    # measured latency (timings are noisy: at 0.005 most timed strategies fall outside the band
    # and the check times up to max_measured of them per candidate)
    tolerance: float | None = None
    # adaptive-BN batches per candidate. 10 ranks candidates like 50 on trained ResNet-20 and
    # ResNet-56 (Spearman 0.999, same winner; BENCHMARKS.md, issue 19) at half the time
    abn_batches: int = 10
    # images that score candidates: a stratified subset of the validation split (all of it
    # when None), or, without data.val_size, held out of the training set (1000 when None)
    holdout: int | None = None
    importance: str = "l1"
    round_to: int | str | None = None  # a step for every group, or "auto" (measured per group)
    # constrain the predicted latency (fraction of the dense model's, at latency_batch and
    # latency_precision: None = the search's precision) instead of the MACs; implies
    # round_to="auto" unless a step is given
    latency: float | None = None
    latency_batch: int = 64
    latency_precision: str | None = None
    # time every candidate against the dense model and keep it only when the measured ratio
    # is in the band (the table's prediction pre-selects within +-latency_prefilter); False:
    # trust the table (deterministic, no timing during the search)
    latency_check: bool = True
    latency_prefilter: float = 0.15
    # whole pruned models timed to fit the table to this device (0: the table as measured)
    latency_calibrate: int = 8
    # baselines fine-tuned like the winner: "uniform" (uniform L1 at the same MACs) and
    # "random" (the best random strategy by vanilla score, no adaptive BN)
    baselines: tuple[str, ...] = ("uniform", "random")
    finetune: bool = True
    winner: bool = True  # False: fine-tune only the baselines (e.g. in a second process)
    correlate: int = 0  # K candidates briefly fine-tuned for the correlation study
    correlate_epochs: int = 1
    # score every candidate before adaptive BN too; implied by the "random" baseline (when
    # fine-tuning) and by the correlation study, the only readers of that score
    vanilla: bool = False
    workers: int | None = None  # processes scoring candidates (None: usable cores)
    from_search: str | None = None  # a finished EagleEye run whose search this run reuses
    # score each candidate with its BNs folded into the convs after adaptive BN (same
    # function and ranking, faster; fp32 only, bf16 scores unfolded: BENCHMARKS.md, issue 19).
    # False: as fp32 searches before 2026-12-04 did
    fold_bn: bool = True

    def band(self) -> float:
        """The accepted band around the target (``tolerance``, or its default for the target)."""
        if self.tolerance is not None:
            return self.tolerance
        return 0.005 if self.latency is None else 0.02

    def needs_vanilla(self) -> bool:
        """Whether the search must record vanilla (pre-adaptive-BN) scores."""
        return self.vanilla or self.correlate > 0 or (self.finetune and "random" in self.baselines)


def _dense_model(cfg: RunConfig, checkpoint: str | Path | None
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """The dense model to prune: a sparsetrain checkpoint, or the recipe's model with the
    foreign weights of ``model.init_from`` (a plain / torchvision / timm state dict)."""
    from sparsetrain.checkpoint import init_from, load_checkpoint
    from sparsetrain.data import get_dataset_info
    from sparsetrain.loading import load_model
    from sparsetrain.models import create_model, model_info
    from sparsetrain.sparsity.masks import MASK_SUFFIX

    if (checkpoint is None) == (not cfg.model.init_from):
        raise UserError("prune eagleeye prunes either --checkpoint (a sparsetrain checkpoint) "
                        "or the recipe's model.init_from weights: give exactly one")
    if checkpoint is None:
        n = (get_dataset_info(cfg.data.dataset).num_classes
             or model_info(cfg.model.name).default_num_classes)
        model = create_model(cfg.model.name, num_classes=n, **cfg.model.kwargs)
        init_from(model, cfg.model.init_from)
        return model.eval(), {"classes": [str(k) for k in range(n)]}
    ckpt = load_checkpoint(checkpoint)
    if any(k.endswith(MASK_SUFFIX) for k in ckpt["model"]):
        raise UserError(f"{checkpoint} holds sparsity masks; EagleEye prunes dense models")
    model = load_model(ckpt, checkpoint)
    return model.eval(), ckpt


def run_eagleeye(
    cfg: RunConfig, checkpoint: str | Path | None, opts: EagleEyeOptions | None = None, *,
    resume: bool = False,
) -> dict[str, Any]:
    """Search, pick the best adaptive-BN candidate, fine-tune it (and the baselines); returns
    the winner's summary, which gains ``"structured"``, ``"search"`` and ``"baselines"``.

    ``resume`` continues the EagleEye run ``cfg.run_dir`` (finished stages are reused). Its
    folder is locked while the search, the correlation study and the winner write there; a
    ``--no-winner`` call on a finished search only reads it, so it can fine-tune the baselines
    (each in its own locked sub-folder) while another process fine-tunes the winner."""
    from sparsetrain.train.run import check_config

    o = opts or EagleEyeOptions()
    if o.latency is not None and o.round_to not in (None, "auto"):
        raise UserError("--latency measures the channel steps itself: use --round-to auto "
                        "(the default with it), not a fixed step")
    if isinstance(o.round_to, str) and o.round_to != "auto":
        raise UserError(f"round_to must be a step >= 1 or 'auto', got {o.round_to!r}")
    unknown = sorted(set(o.baselines) - {"uniform", "random"})
    if unknown:
        raise UserError(f"unknown EagleEye baseline(s) {unknown}; choose from uniform, random")
    dense, ckpt = _dense_model(cfg, checkpoint)
    checkpoint = checkpoint or cfg.model.init_from
    if cfg.model.name != getattr(dense, "arch_name", None):
        raise UserError(f"the recipe's model {cfg.model.name!r} is not the checkpoint's "
                        f"{dense.arch_name!r}")
    if cfg.data.loader != "device":
        raise UserError("prune eagleeye needs the device loader (data.loader: device)")
    check_config(cfg)
    reader = (not o.winner and o.finetune and not o.correlate and resume
              and search_complete(cfg.run_dir, o.candidates, o.needs_vanilla()))
    run = RunDir.claim(cfg.out_dir, cfg.name, command="prune eagleeye", resume=resume,
                       lock=not reader)
    try:
        return _run(cfg, dense, ckpt, checkpoint, o, run)
    except BaseException:
        run.abandon()
        raise
    finally:
        run.release()


def _run(cfg: RunConfig, dense: nn.Module, ckpt: dict[str, Any], checkpoint: str | Path,
         o: EagleEyeOptions, run: RunDir) -> dict[str, Any]:
    from sparsetrain.train.run import load_data

    data = load_data(cfg)
    if data.num_classes != len(ckpt["classes"]):
        raise UserError(f"the data has {data.num_classes} classes, {checkpoint} was trained on "
                        f"{len(ckpt['classes'])}")
    mean, std, d = data.info.mean, data.info.std, cfg.data
    if o.holdout is not None and o.holdout < 1:
        raise UserError(f"--holdout must be a positive number of images, got {o.holdout}")
    if data.val is not None:
        rest, held = data.train, data.val
        scoring = unseen = held  # unseen: what the correlation study's fine-tunes are scored on
        if o.holdout is not None and o.holdout < len(held):
            unseen, scoring = holdout_split(held, o.holdout, cfg.seed)
    else:
        n = min(o.holdout or 1000, len(data.train) // 2)
        rest, held = holdout_split(data.train, n, cfg.seed)
        scoring = unseen = held
    dev = resolve_device(cfg.train.device)  # the search runs where training runs
    dense = dense.to(dev)
    precision = resolve_precision(cfg.train.precision, dev)
    copied = _copy_search(Path(o.from_search), cfg.run_dir) if o.from_search else []
    try:  # with --from-search, a failure here removes the copied search (then the run)
        table = _latency_table(dense, cfg.run_dir, o, precision, cfg.train.progress)
        steps = (table.step_of() or None) if table is not None else o.round_to
        fmt = dict(device=dev, channels_last=cfg.train.channels_last)
        tb = abn_batches(rest, mean, std, n=o.abn_batches, batch_size=d.batch_size,
                         seed=cfg.seed, pad=d.pad, padding_mode=d.padding_mode, **fmt)
        hb = eval_batches(scoring, mean, std, batch_size=d.eval_batch_size, **fmt)
        if o.importance == "taylor":  # |w * dL/dw| per filter, gradients of the ABN batches
            accumulate_gradients(dense, tb)
        run_dir = cfg.run_dir
        target = o.flops if o.latency is None else o.latency
        res = eagleeye_search(
            dense, tb, hb, run_dir, flops_target=target, candidates=o.candidates,
            r_min=o.r_min, r_max=o.r_max, tolerance=o.band(), abn_batches=o.abn_batches,
            seed=cfg.seed, importance=o.importance, round_to=steps,
            progress=cfg.train.progress, precision=precision, vanilla=o.needs_vanilla(),
            workers=o.workers, latency=table if o.latency is not None else None,
            verify_latency=o.latency_check, latency_prefilter=o.latency_prefilter,
            fold_bn=o.fold_bn)
    except UserError as e:
        if o.from_search is None:
            raise
        for path in copied:  # not this run's search after all: leave nothing to resume
            path.unlink(missing_ok=True)
        raise UserError(f"--from-search {o.from_search}: {e}") from None
    info = _search_info(res)
    if o.correlate:
        short = cfg.model_copy(update={"train": cfg.train.model_copy(update={
            "epochs": o.correlate_epochs, "warmup_epochs": 0.0, "progress": False})})

        def brief(c: dict[str, Any]) -> float:
            rc = short.model_copy(update={"out_dir": str(run_dir / "correlate"),
                                          "name": f"cand_{c['index']}"})
            s = finetune_pruned(rc, prune_model(dense, c["ratios"], o.importance, steps),
                                rc.run_dir, train_data=rest, evals={"val": unseen},
                                info=data.info)
            return float(s["final"]["val_acc"])

        info["correlation"] = {k: v for k, v in correlation_study(
            res.candidates, brief, o.correlate, run_dir).items() if k != "points"}
    if not o.finetune:
        return info
    if not o.winner:  # the baselines lock their own folders; the winner may train meanwhile
        run.release()
    evals = {"val": data.val} if data.val is not None else {}
    evals["test"] = data.test

    def tune(ratios: dict[str, float], sub: str | None, extra: dict[str, Any]) -> dict[str, Any]:
        rc = cfg if sub is None else cfg.model_copy(update={"out_dir": str(run_dir),
                                                            "name": sub})
        pruned = prune_model(dense, ratios, o.importance, steps)
        macs, params = macs_params(pruned)
        structured = {"macs_dense": res.dense_macs, "macs": macs, "params": params,
                      "params_dense": res.dense_params, "macs_ratio": macs / res.dense_macs,
                      **extra}
        with contextlib.ExitStack() as stack:
            if sub is not None:
                stack.enter_context(run.child(sub))
            return finetune_pruned(rc, pruned, rc.run_dir, train_data=data.train,
                                   evals=evals, info=data.info,
                                   extra_summary={"structured": structured, "search": info})

    summary = None
    if o.winner:
        b = res.best
        extra = {"strategy": "eagleeye", "candidate": b["index"], "abn_score": b["abn_score"]}
        extra.update({k: b[k] for k in ("vanilla_score", "latency_ratio", "latency_pred")
                      if k in b})
        summary = tune(b["ratios"], None, extra)
    baselines = {}
    if "uniform" in o.baselines:
        groups = prunable_groups(dense)
        mm = MacsModel.build(dense, groups, steps)  # the same cost as the search's band
        uni = uniform_strategy(mm if table is None or o.latency is None else table, target)
        baselines["uniform"] = tune(uni, "baseline_uniform", {"strategy": "uniform_l1"})
    if "random" in o.baselines and res.best_vanilla is not None:
        bv = res.best_vanilla
        baselines["random_no_abn"] = tune(bv["ratios"], "baseline_random", {
            "strategy": "random_vanilla", "candidate": bv["index"],
            "vanilla_score": bv["vanilla_score"]})
    outcome = {k: {"final": v["final"], "structured": v["structured"]}
               for k, v in baselines.items()}
    if summary is None:  # baselines only (e.g. trained in another process than the winner)
        return {**info, "baselines": outcome}
    summary["baselines"] = outcome
    summary["search"] = info  # this call's view (with the correlation study if it ran)
    write_json(summary, run_dir / "summary.json")
    return summary


def _latency_table(dense: nn.Module, run_dir: Path, o: EagleEyeOptions, precision: str,
                   progress: bool) -> LatencyModel | None:
    """The run's latency table: its saved copy when resuming, else measured (layer timings
    come from the device cache when present) and saved in the run folder."""
    if o.latency is None and o.round_to != "auto":
        return None
    path = run_dir / "latency_table.json"
    prec = o.latency_precision or precision
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except ValueError:
            raise UserError(f"{path} is corrupt; delete it (and the search) to measure again") \
                from None
        table = LatencyModel.from_json(data, str(path))
        want = {"precision": prec, "batch": o.latency_batch}
        if {k: table.key.get(k) for k in want} != want:
            raise UserError(f"{path} was measured at {table.key.get('precision')}, batch "
                            f"{table.key.get('batch')}; this search asks for {prec}, batch "
                            f"{o.latency_batch}: use another run name")
        return table
    groups = prunable_groups(dense)
    table = LatencyModel.measure(dense, groups, batch=o.latency_batch, precision=prec,
                                 progress=progress)
    if o.latency is not None and o.latency_calibrate:  # steps alone need no calibration
        table = table.calibrate(MeasuredLatency(dense, groups, table.step_of() or None,
                                                o.latency_batch, prec), n=o.latency_calibrate,
                                seed=0, r_max=o.r_max)
    write_json(table.to_json(), path)
    return table


# search.json last: a copy killed half-way is redone by --resume (it copies while search.json
# is missing)
_SEARCH_FILES = ("candidates.jsonl", "latency_table.json", "search.json")


def _copy_search(src: Path, run_dir: Path) -> list[Path]:
    """Copy the finished search of the EagleEye run ``src`` into ``run_dir`` (a run this
    command is creating or resuming); nothing is written in ``src``. A resumed run that
    already holds a search keeps it. Returns the files written."""
    if src.resolve() == run_dir.resolve():
        raise UserError(f"--from-search {src} is this run; give another EagleEye run")
    if (run_dir / "search.json").is_file():
        return []
    try:
        info = json.loads((src / "search.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"--from-search {src}: no readable search.json (not an EagleEye run, "
                        "or its search did not finish)") from None
    if not isinstance(info, dict) or "best" not in info or not (
            src / "candidates.jsonl").is_file():
        raise UserError(f"--from-search {src}: its search did not finish; resume it first")
    copied = []
    for name in _SEARCH_FILES:
        if (src / name).is_file():
            data = (src / name).read_bytes()
            atomic_write_bytes(run_dir / name, lambda f, d=data: f.write(d))
            copied.append(run_dir / name)
    return copied


def _search_info(res: SearchResult) -> dict[str, Any]:
    info = {"candidates": len(res.candidates), "acceptance_rate": res.acceptance_rate,
            "dense_score": res.dense_score, "best_index": res.best["index"],
            "best_abn_score": res.best["abn_score"]}
    if res.best_vanilla is not None:  # searched with vanilla scores
        info.update(best_vanilla_index=res.best_vanilla["index"],
                    best_vanilla_score=res.best_vanilla["vanilla_score"])
    return info
