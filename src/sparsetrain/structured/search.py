"""EagleEye candidate search (Li et al., "EagleEye: Fast Sub-net Evaluation for Efficient
Neural Network Pruning", ECCV 2020; DESIGN.md §3.6 steps 2-5).

For candidate ``i = 0, 1, ...``: draw a strategy inside the FLOPs band
(:class:`StrategySampler`, seeded by ``(seed, i)``), prune the dense model by filter L1 norm,
re-estimate BN statistics on training batches (adaptive BN) and score top-1 on a held-out split
of the *training* set. With ``vanilla=True`` the pruned model is also scored before adaptive BN,
with the dense BN statistics ("vanilla"): only the random-strategy baseline and the correlation
study read that score, so it is not computed otherwise. With ``fold_bn`` (the default) the
adaptive-BN score is computed after folding each conv -> BN pair into the conv: the same
function, fewer memory-bound ops, the same ranking in fp32. Not in bf16, where the folded bias
is rounded to bf16 and the ranking is lost (BENCHMARKS.md, issue 19), nor for a model
``torch.fx`` cannot trace: those are scored unfolded. Every candidate is one line of
``out_dir/candidates.jsonl``::

    {"index", "ratios": {group: r}, "macs", "params", "macs_ratio", "tries",
     ["vanilla_score",] "abn_score", "time_s"}

``macs`` is the sampler's exact analytic count (:class:`MacsModel`, equal to a
``torch.utils.flop_counter`` pass over the pruned model, which the tests check), so no
candidate is traced for its FLOPs.

Candidates are scored single-threaded (``torch.set_num_threads(1)``), either in this process
(``workers=1``) or by ``workers`` processes (``spawn`` context) that receive the dense model and
the batches once (tensors in shared memory) and take candidate indices from a queue. Candidate
``i`` depends only on ``(seed, i)`` (its strategy, and its channel scores for ``random``
importance), so the lines are identical for every worker count; they are written in index
order.

The search is resumable: lines already in the file are kept (after checking that they are the
strategies these settings draw), so stopping after 4 and continuing to 6 gives the same 6 lines
as an uninterrupted 6-candidate search. ``out_dir/search.json`` records the settings; resuming
with different ones is an error (the worker count and ``vanilla`` are not settings: asking for
vanilla scores on a search that has none scores the existing lines before adaptive BN and
rewrites the file). The winner is the best adaptive-BN score; the best *vanilla* score is the
"random strategy without adaptive BN" baseline.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from sparsetrain.checkpoint import atomic_write_bytes, write_json
from sparsetrain.data import DeviceLoader, ImageArrays, train_val_split
from sparsetrain.errors import UserError
from sparsetrain.precision import autocast
from sparsetrain.structured.adaptive_bn import adaptive_bn
from sparsetrain.structured.groups import ChannelGroup, prunable_groups, prune_model
from sparsetrain.structured.latency import LatencyModel, MeasuredLatency
from sparsetrain.structured.macs import MacsModel, RoundTo
from sparsetrain.structured.sampler import Strategy, StrategySampler, candidate_generator

__all__ = [
    "Batch",
    "SearchResult",
    "abn_batches",
    "default_workers",
    "eagleeye_search",
    "eval_batches",
    "holdout_split",
    "read_candidates",
    "top1",
]

Batch = tuple[torch.Tensor, torch.Tensor]


def holdout_split(train: ImageArrays, size: int, seed: int = 0) -> tuple[ImageArrays, ImageArrays]:
    """(rest of the training set, stratified held-out part of ``size`` images): EagleEye scores
    candidates on training images the model did not see in ABN, never on the test set."""
    rest, held = train_val_split(train.labels, size, seed=seed)
    return train.subset(rest), train.subset(held)


def eval_batches(
    data: ImageArrays, mean: Sequence[float], std: Sequence[float], batch_size: int = 256,
    device: torch.device | str = "cpu", channels_last: bool = True,
) -> list[Batch]:
    """All of ``data`` as normalized batches with test-time transforms (no augmentation)."""
    loader = DeviceLoader(data, batch_size, tuple(mean), tuple(std), train=False, device=device,
                          channels_last=channels_last)
    plan = loader.plan(0)
    return [loader.batch(plan, i) for i in range(len(loader))]


def abn_batches(
    data: ImageArrays, mean: Sequence[float], std: Sequence[float], n: int = 50,
    batch_size: int = 128, seed: int = 0, device: torch.device | str = "cpu",
    channels_last: bool = True, pad: int = 4, padding_mode: str = "reflect",
) -> list[Batch]:
    """``n`` augmented training batches (crop + flip, as in training), drawn once so that
    every candidate's BN statistics come from the same images (epoch plan ``-1``)."""
    loader = DeviceLoader(data, min(batch_size, len(data)), tuple(mean), tuple(std), train=True,
                          seed=seed, device=device, channels_last=channels_last, pad=pad,
                          padding_mode=padding_mode)
    out: list[Batch] = []
    epoch = -1
    while len(out) < n:  # small data sets: continue with further (deterministic) epochs
        plan = loader.plan(epoch)
        out += [loader.batch(plan, i) for i in range(min(len(loader), n - len(out)))]
        epoch -= 1
    return out


@torch.no_grad()
def top1(model: nn.Module, batches: Sequence[Batch]) -> float:
    """Top-1 accuracy of ``model`` (eval mode) over ``batches``; the mode is restored."""
    was_training = model.training
    model.eval()
    correct = n = 0
    for x, y in batches:
        correct += int((model(x).argmax(1) == y).sum())
        n += len(y)
    model.train(was_training)
    if n == 0:
        raise UserError("the held-out split is empty")
    return correct / n


@dataclass
class SearchResult:
    """All candidates (file order), the winner and the baselines' reference numbers."""

    candidates: list[dict[str, Any]]
    best: dict[str, Any]  # highest abn_score (ties: lowest index)
    best_vanilla: dict[str, Any] | None  # highest vanilla_score (None: not computed)
    acceptance_rate: float
    dense_macs: int
    dense_params: int
    dense_score: float
    groups: list[str] = field(default_factory=list)
    out_dir: Path | None = None


def read_candidates(path: str | Path) -> list[dict[str, Any]]:
    """The complete lines of a ``candidates.jsonl``; an unreadable *last* line (a search killed
    while writing) is dropped, an unreadable earlier line is an error."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text().splitlines(keepends=True)
    out = []
    for k, line in enumerate(lines):
        try:
            rec = json.loads(line)
            if not line.endswith("\n") or rec.get("index") != len(out):
                raise ValueError("incomplete line or index out of order")
            out.append(rec)
        except (ValueError, AttributeError) as e:
            if k == len(lines) - 1:
                break
            raise UserError(f"{path}: line {k + 1} is corrupt ({e})") from None
    return out


def _settings(dense_model: nn.Module, groups: Sequence[ChannelGroup], **kw: Any) -> dict[str, Any]:
    return {"arch": getattr(dense_model, "arch_name", type(dense_model).__name__),
            "groups": {g.name: g.channels for g in groups}, **kw}


def search_complete(out: Path, candidates: int, vanilla: bool = False) -> bool:
    """``out/search.json`` records a finished search of exactly ``candidates`` candidates (with
    vanilla scores when ``vanilla``)."""
    try:
        info = json.loads((out / "search.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(info, dict) and "best" in info and info.get("candidates") == candidates
            and (not vanilla or info.get("best_vanilla") is not None))


def default_workers(candidates: int, device: torch.device | str = "cpu") -> int:
    """Worker processes for a search: the usable CPU cores (this process's affinity mask), at
    most ``candidates``; 1 when the model is not on the CPU."""
    if torch.device(device).type != "cpu":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, candidates))


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text()).get("settings")
    except (ValueError, AttributeError):
        raise UserError(f"{path} is corrupt; delete it and candidates.jsonl to search again")\
            from None
    if old != settings:
        old = old or {}
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        shown = ", ".join(_was_now(k, old.get(k), settings.get(k)) for k in diff)
        raise UserError(f"{path.parent} holds a search with different settings ({shown}); "
                        "pass its values to resume it (defaults changed on 2026-12-04: "
                        "--abn-batches was 50, BN was not folded for scoring: --no-fold-bn) "
                        "or use another output directory")


def _was_now(key: str, was: Any, now: Any) -> str:
    """``abn_batches 50 there, 10 now`` for scalars; just the key for nested settings."""
    scalar = (int, float, str, bool, type(None))
    if isinstance(was, scalar) and isinstance(now, scalar):
        return f"{key} {was!r} there, {now!r} now"
    return key


def eagleeye_search(
    dense_model: nn.Module,
    train_batches: Sequence[Any],
    holdout: Sequence[Batch],
    out_dir: str | Path,
    *,
    flops_target: float = 0.5,
    candidates: int = 100,
    r_min: float = 0.0,
    r_max: float = 0.7,
    tolerance: float = 0.005,
    abn_batches: int = 50,
    seed: int = 0,
    importance: str = "l1",
    round_to: RoundTo = None,
    precision: str = "fp32",
    progress: bool = True,
    vanilla: bool = False,
    workers: int | None = None,
    latency: LatencyModel | None = None,
    verify_latency: bool = True,
    latency_prefilter: float = 0.15,
    fold_bn: bool = True,
) -> SearchResult:
    """Run (or continue) the search until ``out_dir/candidates.jsonl`` holds ``candidates``
    lines; ``train_batches`` feed adaptive BN, ``holdout`` (test-time transforms, part of the
    training set) scores candidates. ``precision`` ("fp32" or "bf16" autocast, as in training)
    is the one both forward passes and adaptive BN run in. ``vanilla`` adds the score before
    adaptive BN; ``workers`` processes score candidates (default :func:`default_workers`).
    With ``latency`` (a measured :class:`LatencyModel`) the band ``flops_target ± tolerance``
    constrains the predicted latency ratio instead of the MACs ratio, and channel counts are
    snapped to the table's steps (``round_to`` must be None or those steps); with
    ``verify_latency`` the prediction pre-selects strategies within ``latency_prefilter`` and
    each candidate's latency is measured (:class:`MeasuredLatency`) into the band. ``fold_bn``
    scores the adaptive-BN model with its BNs folded into the convolutions (faster, same
    function; fp32 and fp64 only: in bf16 it is ignored)."""
    if candidates < 1:
        raise UserError(f"need at least one candidate, got {candidates}")
    device = next(dense_model.parameters()).device
    n_workers = default_workers(candidates, device) if workers is None else int(workers)
    if n_workers < 1 or (n_workers > 1 and device.type != "cpu"):
        raise UserError(f"workers must be >= 1, and 1 unless the search runs on the CPU "
                        f"(got {workers} on {device.type})")
    out = Path(out_dir)
    was_training = dense_model.training
    dense_model.eval()
    try:
        return _search(dense_model, train_batches, holdout, out, flops_target=flops_target,
                       candidates=candidates, r_min=r_min, r_max=r_max, tolerance=tolerance,
                       abn_batches=abn_batches, seed=seed, importance=importance,
                       round_to=round_to, precision=precision, progress=progress,
                       vanilla=vanilla, workers=n_workers, latency=latency,
                       verify_latency=verify_latency, latency_prefilter=latency_prefilter,
                       fold_bn=fold_bn)
    finally:
        dense_model.train(was_training)


def _search(
    dense_model: nn.Module, train_batches: Sequence[Any], holdout: Sequence[Batch], out: Path,
    *, flops_target: float, candidates: int, r_min: float, r_max: float, tolerance: float,
    abn_batches: int, seed: int, importance: str, round_to: RoundTo, precision: str,
    progress: bool, vanilla: bool, workers: int, latency: LatencyModel | None,
    verify_latency: bool, latency_prefilter: float, fold_bn: bool,
) -> SearchResult:
    groups = prunable_groups(dense_model)
    if latency is not None:
        if round_to and round_to != latency.step_of():
            raise UserError("a latency-constrained search snaps channels to its table's steps; "
                            "do not pass round_to as well")
        round_to = latency.step_of() or None
    macs_model = MacsModel.build(dense_model, groups, round_to)
    verify = None
    if latency is not None and verify_latency:
        verify = MeasuredLatency(dense_model, groups, round_to, int(latency.key["batch"]),
                                 str(latency.key["precision"]))
    sampler = StrategySampler(macs_model, r_min, r_max, flops_target, tolerance, seed,
                              cost=latency, verify=verify, prefilter=latency_prefilter)
    settings = _settings(dense_model, groups, flops_target=flops_target, r_min=r_min,
                         r_max=r_max, tolerance=tolerance, abn_batches=abn_batches, seed=seed,
                         importance=importance, round_to=round_to, precision=precision,
                         holdout=_fingerprint(holdout))
    # bf16: a folded conv's bias (beta - mean * gamma / sigma) is cast to bf16 with the conv,
    # and its rounding error is large against the differences between candidates (Spearman
    # 0.24 vs fp32 scores on ResNet-56; unfolded bf16: 0.999): fold only in full precision
    fold_bn = fold_bn and precision != "bf16"
    if fold_bn:  # absent when off, so that searches from before the option resume with it off
        settings["fold_bn"] = True
    if latency is not None:  # the band is on this table's predictions (or measurements)
        settings["latency"] = {"table": latency.digest(), **latency.key,
                               "measured": verify is not None,
                               "prefilter": latency_prefilter if verify is not None else None}
    _check_settings(out / "search.json", settings)
    if not (out / "search.json").is_file():
        write_json({"settings": settings}, out / "search.json")
    path = out / "candidates.jsonl"
    done = _resumable(path, sampler, candidates)
    dense_macs = macs_model.dense_macs
    dense_params = sum(p.numel() for p in dense_model.parameters())
    with autocast(next(dense_model.parameters()).device, precision):
        dense_score = top1(dense_model, holdout)
    scorer = _Scorer(dense_model, train_batches, holdout, abn_batches, importance, round_to,
                     seed, precision, groups, fold_bn)
    n_old = _add_vanilla(path, done, sampler, scorer, workers, progress) if vanilla else 0
    bar = tqdm(total=candidates, initial=len(done), unit="cand", disable=not progress,
               desc="eagleeye", dynamic_ncols=True)
    todo = range(len(done), candidates)
    if verify is not None:  # timing strategies until they land in the band: show it
        todo = tqdm(todo, unit="cand", disable=not progress, desc="latency-checked strategies")
    tasks = [(sampler.sample(i), vanilla, True) for i in todo]
    t_start = time.perf_counter()
    with path.open("a") as f:
        for n_new, rec in enumerate(_scored(scorer, tasks, workers), 1):
            f.write(json.dumps(rec) + "\n")
            f.flush()
            done.append(rec)
            rate = 60.0 * n_new / (time.perf_counter() - t_start)
            bar.set_postfix(cand_per_min=f"{rate:.1f}", accept=f"{sampler.acceptance_rate:.3f}",
                            best_abn=f"{max(r['abn_score'] for r in done):.4f}")
            bar.update(1)
    bar.close()
    best = max(done, key=lambda r: (r["abn_score"], -r["index"]))
    best_vanilla = (max(done, key=lambda r: (r["vanilla_score"], -r["index"]))
                    if all("vanilla_score" in r for r in done) else None)
    if tasks or n_old or not search_complete(out, len(done), vanilla):  # else only read
        write_json({"settings": settings, "dense": {"macs": dense_macs, "params": dense_params,
                                                   "score": dense_score},
                    "candidates": len(done), "acceptance_rate": _finite(sampler.acceptance_rate),
                    "best": best, "best_vanilla": best_vanilla}, out / "search.json")
    return SearchResult(done, best, best_vanilla, sampler.acceptance_rate, dense_macs,
                        dense_params, dense_score, [g.name for g in groups], out)


def _resumable(path: Path, sampler: StrategySampler, candidates: int) -> list[dict[str, Any]]:
    """The complete lines of ``path`` (a partial last line is dropped from the file), each
    checked against the strategy ``sampler`` draws for its index (which also keeps the
    sampler's acceptance count exact)."""
    done = read_candidates(path)
    if path.is_file() and len(path.read_text().splitlines()) != len(done):
        data = "".join(json.dumps(r) + "\n" for r in done).encode()
        atomic_write_bytes(path, lambda f: f.write(data))
    done = done[:candidates]
    for rec in done:
        if sampler.verify is not None:  # measured: the clock chose it; check what can be
            measured = torch.tensor([float(rec.get("latency_ratio", "nan"))], dtype=torch.float64)
            if sampler.model.macs(rec["ratios"]) != rec["macs"] or not sampler.in_band(
                    measured).all():
                raise UserError(f"{path}: candidate {rec['index']} is not a strategy of these "
                                "settings; use another output directory")
            continue
        s = sampler.sample(rec["index"])
        if s.ratios != rec["ratios"] or s.macs != rec["macs"]:
            raise UserError(f"{path}: candidate {rec['index']} is not the strategy these "
                            "settings draw; use another output directory")
    return done


def _add_vanilla(
    path: Path, done: list[dict[str, Any]], sampler: StrategySampler, scorer: _Scorer,
    workers: int, progress: bool,
) -> int:
    """Score the lines of ``done`` that have no vanilla score (a search run without them) and
    rewrite ``path`` with them; returns how many were scored."""
    todo = [k for k, r in enumerate(done) if "vanilla_score" not in r]
    if not todo:
        return 0
    tasks = [(_strategy(done[k], sampler), True, False) for k in todo]
    for k, rec in zip(todo, tqdm(_scored(scorer, tasks, workers), total=len(tasks), unit="cand",
                                 disable=not progress, desc="vanilla scores"), strict=True):
        old = done[k]
        done[k] = {**{n: v for n, v in old.items() if n not in ("abn_score", "time_s")},
                   "vanilla_score": rec["vanilla_score"], "abn_score": old["abn_score"],
                   "time_s": old["time_s"] + rec["time_s"]}
    data = "".join(json.dumps(r) + "\n" for r in done).encode()
    atomic_write_bytes(path, lambda f: f.write(data))
    return len(todo)


def _strategy(rec: dict[str, Any], sampler: StrategySampler) -> Strategy:
    m = int(rec["macs"])
    return Strategy(int(rec["index"]), rec["ratios"], m, m / sampler.model.dense_macs,
                    int(rec["tries"]), rec.get("latency_ratio"), rec.get("latency_pred"))


@dataclass
class _Scorer:
    """Everything scoring one candidate needs. Sent once to each worker process (``spawn``
    pickles it; torch moves the tensors to shared memory); the channel groups hold a dependency
    graph of this process's model, so a worker rebuilds them from its copy."""

    dense: nn.Module
    train_batches: Sequence[Any]
    holdout: Sequence[Batch]
    abn_batches: int
    importance: str
    round_to: RoundTo
    seed: int
    precision: str
    groups: list[ChannelGroup] | None = None
    fold_bn: bool = False

    def __getstate__(self) -> dict[str, Any]:
        # pickling a parameter drops its .grad: ship the gradients the taylor importance reads
        grads = {n: p.grad for n, p in self.dense.named_parameters() if p.grad is not None}
        return {**self.__dict__, "groups": None, "_grads": grads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        grads = state.pop("_grads", {})
        self.__dict__.update(state)
        for n, p in self.dense.named_parameters():
            if n in grads:
                p.grad = grads[n]

    def __call__(self, s: Strategy, vanilla: bool, abn: bool = True) -> dict[str, Any]:
        """The record of candidate ``s``: pruned by filter importance (``random``: drawn from
        ``(seed, index)``), scored before (``vanilla``) and after adaptive BN (``abn``)."""
        t0 = time.perf_counter()
        if self.groups is None:
            self.groups = prunable_groups(self.dense)
        gen = candidate_generator(self.seed, s.index, salt=1)  # only "random" draws from it
        with autocast(next(self.dense.parameters()).device, self.precision):
            pruned = prune_model(self.dense, s.ratios, self.importance, self.round_to, gen,
                                 groups=self.groups)
            rec: dict[str, Any] = {
                "index": s.index, "ratios": s.ratios, "macs": s.macs,
                "params": sum(p.numel() for p in pruned.parameters()),
                "macs_ratio": s.macs_ratio, "tries": s.tries}
            if s.latency_ratio is not None:  # dense = 1: measured, else predicted
                rec["latency_ratio"] = s.latency_ratio
                rec["latency_pred"] = s.latency_pred
            if vanilla:
                rec["vanilla_score"] = top1(pruned, self.holdout)
            if abn:
                adaptive_bn(pruned, self.train_batches, self.abn_batches)
                rec["abn_score"] = top1(_folded(pruned) if self.fold_bn else pruned,
                                        self.holdout)
        rec["time_s"] = time.perf_counter() - t0
        return rec


def _folded(model: nn.Module) -> nn.Module:
    """``model`` (eval mode; its convs are changed in place) with BN folded into the convs, or
    ``model`` itself where ``torch.fx`` cannot trace it."""
    from sparsetrain.export.plain import fold_batchnorm  # export imports loading imports this

    try:
        return fold_batchnorm(model.eval())[0]
    except UserError:
        return model


_Task = tuple[Strategy, bool, bool]  # strategy, vanilla score?, adaptive-BN score?


def _scored(scorer: _Scorer, tasks: Sequence[_Task], workers: int) -> Iterator[dict[str, Any]]:
    """The records of ``tasks`` in task order, each scored single-threaded: in this process
    when ``workers`` is 1, else by ``workers`` spawned processes."""
    if workers > 1 and len(tasks) > 1:
        yield from _pool(scorer, tasks, min(workers, len(tasks)))
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for task in tasks:
            yield scorer(*task)
    finally:
        torch.set_num_threads(threads)


def _worker(scorer: _Scorer, tasks: Any, results: Any) -> None:
    """Worker process: score tasks from the queue until ``None``; an error is sent back."""
    torch.set_num_threads(1)
    for task in iter(tasks.get, None):
        try:
            results.put((task[0].index, scorer(*task), None))
        except Exception as e:  # the parent raises it and stops the search
            results.put((task[0].index, None, (isinstance(e, UserError), f"{e}")))
            return


def _pool(scorer: _Scorer, tasks: Sequence[_Task], workers: int) -> Iterator[dict[str, Any]]:
    ctx = torch.multiprocessing.get_context("spawn")
    todo, results = ctx.Queue(), ctx.Queue()
    for task in tasks:
        todo.put(task)
    for _ in range(workers):
        todo.put(None)
    procs = [ctx.Process(target=_worker, args=(scorer, todo, results), daemon=True)
             for _ in range(workers)]
    for p in procs:
        p.start()
    ready: dict[int, dict[str, Any]] = {}
    try:
        for task in tasks:
            while task[0].index not in ready:
                index, rec, err = _next_result(results, procs)
                if err is not None:
                    user, msg = err
                    raise (UserError if user else RuntimeError)(
                        msg if user else f"EagleEye worker failed on candidate {index}: {msg}")
                ready[index] = rec
            yield ready.pop(task[0].index)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()


def _next_result(results: Any, procs: Sequence[Any]) -> tuple[int, Any, Any]:
    """The next ``(index, record, error)`` from the workers; a worker that died (killed, out
    of memory) is an error instead of a hang."""
    while True:
        try:
            return results.get(timeout=1.0)
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or all(p.exitcode == 0 for p in procs):
                try:
                    return results.get(timeout=5.0)
                except queue.Empty:
                    raise RuntimeError(f"EagleEye worker processes ended early (exit codes "
                                       f"{[p.exitcode for p in procs]})") from None


def _fingerprint(batches: Sequence[Batch]) -> dict[str, Any]:
    """Size and a hash of the held-out labels: resuming with another split is an error."""
    labels = torch.cat([y.flatten().cpu() for _, y in batches]) if batches else torch.zeros(0)
    digest = hashlib.sha256(labels.to(torch.int64).numpy().tobytes()).hexdigest()[:16]
    return {"images": int(labels.numel()), "labels_sha256": digest}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
