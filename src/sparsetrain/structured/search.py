"""EagleEye candidate search (Li et al., "EagleEye: Fast Sub-net Evaluation for Efficient
Neural Network Pruning", ECCV 2020; DESIGN.md §3.6 steps 2-5).

For candidate ``i = 0, 1, ...``: draw a strategy inside the FLOPs band
(:class:`StrategySampler`, seeded by ``(seed, i)``), prune the dense model by filter L1 norm,
score top-1 on a held-out split of the *training* set with the dense BN statistics ("vanilla"),
re-estimate BN statistics on training batches (adaptive BN), score again. Every candidate is one
line of ``out_dir/candidates.jsonl``::

    {"index", "ratios": {group: r}, "macs", "params", "macs_ratio", "tries",
     "vanilla_score", "abn_score", "time_s"}

The search is resumable: lines already in the file are kept (after checking that they are the
strategies these settings draw), so stopping after 4 and continuing to 6 gives the same 6 lines
as an uninterrupted 6-candidate search. ``out_dir/search.json`` records the settings; resuming
with different ones is an error. The winner is the best adaptive-BN score; the best *vanilla*
score is the "random strategy without adaptive BN" baseline.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
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
from sparsetrain.structured.macs import MacsModel, macs_params
from sparsetrain.structured.sampler import StrategySampler, candidate_generator

__all__ = [
    "Batch",
    "SearchResult",
    "abn_batches",
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
    best_vanilla: dict[str, Any]  # highest vanilla_score: random strategy without adaptive BN
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


def search_complete(out: Path, candidates: int) -> bool:
    """``out/search.json`` records a finished search of exactly ``candidates`` candidates."""
    try:
        info = json.loads((out / "search.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and "best" in info and info.get("candidates") == candidates


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text()).get("settings")
    except (ValueError, AttributeError):
        raise UserError(f"{path} is corrupt; delete it and candidates.jsonl to search again")\
            from None
    if old != settings:
        diff = sorted(k for k in set(old or {}) | set(settings)
                      if (old or {}).get(k) != settings.get(k))
        raise UserError(f"{path.parent} holds a search with different settings ({diff}); use "
                        "another output directory")


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
    round_to: int | None = None,
    precision: str = "fp32",
    progress: bool = True,
) -> SearchResult:
    """Run (or continue) the search until ``out_dir/candidates.jsonl`` holds ``candidates``
    lines; ``train_batches`` feed adaptive BN, ``holdout`` (test-time transforms, part of the
    training set) scores candidates. ``precision`` ("fp32" or "bf16" autocast, as in training)
    is the one both forward passes and adaptive BN run in."""
    if candidates < 1:
        raise UserError(f"need at least one candidate, got {candidates}")
    out = Path(out_dir)
    was_training = dense_model.training
    dense_model.eval()
    try:
        return _search(dense_model, train_batches, holdout, out, flops_target=flops_target,
                       candidates=candidates, r_min=r_min, r_max=r_max, tolerance=tolerance,
                       abn_batches=abn_batches, seed=seed, importance=importance,
                       round_to=round_to, precision=precision, progress=progress)
    finally:
        dense_model.train(was_training)


def _search(
    dense_model: nn.Module, train_batches: Sequence[Any], holdout: Sequence[Batch], out: Path,
    *, flops_target: float, candidates: int, r_min: float, r_max: float, tolerance: float,
    abn_batches: int, seed: int, importance: str, round_to: int | None, precision: str,
    progress: bool,
) -> SearchResult:
    groups = prunable_groups(dense_model)
    macs_model = MacsModel.build(dense_model, groups, round_to)
    sampler = StrategySampler(macs_model, r_min, r_max, flops_target, tolerance, seed)
    settings = _settings(dense_model, groups, flops_target=flops_target, r_min=r_min,
                         r_max=r_max, tolerance=tolerance, abn_batches=abn_batches, seed=seed,
                         importance=importance, round_to=round_to, precision=precision,
                         holdout=_fingerprint(holdout))
    _check_settings(out / "search.json", settings)
    if not (out / "search.json").is_file():
        write_json({"settings": settings}, out / "search.json")
    path = out / "candidates.jsonl"
    done = read_candidates(path)
    if path.is_file() and len(path.read_text().splitlines()) != len(done):
        # drop the partial line of a search killed while writing
        data = "".join(json.dumps(r) + "\n" for r in done).encode()
        atomic_write_bytes(path, lambda f: f.write(data))
    done = done[:candidates]
    for rec in done:  # re-draw: checks the file and keeps the acceptance count exact
        s = sampler.sample(rec["index"])
        if s.ratios != rec["ratios"] or s.macs != rec["macs"]:
            raise UserError(f"{path}: candidate {rec['index']} is not the strategy these "
                            "settings draw; use another output directory")
    dense_macs, dense_params = macs_params(dense_model)
    device = next(dense_model.parameters()).device
    with autocast(device, precision):
        dense_score = top1(dense_model, holdout)
    bar = tqdm(total=candidates, initial=len(done), unit="cand", disable=not progress,
               desc="eagleeye", dynamic_ncols=True)
    t_start, n_new = time.perf_counter(), 0
    with path.open("a") as f:
        for i in range(len(done), candidates):
            with autocast(device, precision):
                rec = _evaluate(dense_model, groups, sampler, i, train_batches, holdout,
                                abn_batches=abn_batches, importance=importance,
                                round_to=round_to, seed=seed)
            f.write(json.dumps(rec) + "\n")
            f.flush()
            done.append(rec)
            n_new += 1
            rate = 60.0 * n_new / (time.perf_counter() - t_start)
            bar.set_postfix(cand_per_min=f"{rate:.1f}", accept=f"{sampler.acceptance_rate:.3f}",
                            best_abn=f"{max(r['abn_score'] for r in done):.4f}")
            bar.update(1)
    bar.close()
    best = max(done, key=lambda r: (r["abn_score"], -r["index"]))
    best_vanilla = max(done, key=lambda r: (r["vanilla_score"], -r["index"]))
    if n_new or not search_complete(out, len(done)):  # a finished search is only read
        write_json({"settings": settings, "dense": {"macs": dense_macs, "params": dense_params,
                                                   "score": dense_score},
                    "candidates": len(done), "acceptance_rate": _finite(sampler.acceptance_rate),
                    "best": best, "best_vanilla": best_vanilla}, out / "search.json")
    return SearchResult(done, best, best_vanilla, sampler.acceptance_rate, dense_macs,
                        dense_params, dense_score, [g.name for g in groups], out)


def _evaluate(
    dense_model: nn.Module, groups: Sequence[ChannelGroup], sampler: StrategySampler,
    index: int, train_batches: Sequence[Any], holdout: Sequence[Batch], *, abn_batches: int,
    importance: str, round_to: int | None, seed: int,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    s = sampler.sample(index)
    gen = candidate_generator(seed, index, salt=1)  # only "random" importance draws from it
    pruned = prune_model(dense_model, s.ratios, importance, round_to, gen, groups=groups)
    macs, params = macs_params(pruned)
    if macs != s.macs:
        raise RuntimeError(f"analytic MACs {s.macs} != measured {macs} for candidate {index}")
    vanilla = top1(pruned, holdout)
    adaptive_bn(pruned, train_batches, abn_batches)
    abn = top1(pruned, holdout)
    return {"index": index, "ratios": s.ratios, "macs": macs, "params": params,
            "macs_ratio": s.macs_ratio, "tries": s.tries, "vanilla_score": vanilla,
            "abn_score": abn, "time_s": time.perf_counter() - t0}


def _fingerprint(batches: Sequence[Batch]) -> dict[str, Any]:
    """Size and a hash of the held-out labels: resuming with another split is an error."""
    labels = torch.cat([y.flatten().cpu() for _, y in batches]) if batches else torch.zeros(0)
    digest = hashlib.sha256(labels.to(torch.int64).numpy().tobytes()).hexdigest()[:16]
    return {"images": int(labels.numel()), "labels_sha256": digest}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
