"""EagleEye search speed (issue 19): worker processes give the lines of the sequential search,
resume works with them, the vanilla score is computed only on request, and the analytic MACs
that replace the per-candidate FLOP count equal that count."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sparsetrain.data import make_synthetic
from sparsetrain.errors import UserError
from sparsetrain.models import create_model
from sparsetrain.structured import (
    MacsModel,
    StrategySampler,
    abn_batches,
    eagleeye_search,
    eval_batches,
    holdout_split,
    macs_params,
    prunable_groups,
    prune_model,
)
from sparsetrain.structured.search import default_workers, read_candidates

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _model(name: str = "resnet20") -> nn.Module:
    torch.manual_seed(0)
    m = create_model(name)
    with torch.no_grad():  # non-trivial BN statistics, so wrong statistics would show
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


@pytest.fixture(scope="module")
def data():
    rest, held = holdout_split(make_synthetic(160, seed=0), 40, seed=0)
    return abn_batches(rest, MEAN, STD, n=2, batch_size=32), eval_batches(held, MEAN, STD, 40)


def _lines(path):
    """The file's records without the wall-clock field."""
    return [{k: v for k, v in r.items() if k != "time_s"} for r in read_candidates(path)]


KW = dict(candidates=5, abn_batches=2, seed=3, progress=False)


@pytest.fixture(scope="module")
def sequential(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("seq")
    res = eagleeye_search(_model(), *data, out, workers=1, **KW)
    return out, res


def test_two_workers_write_the_sequential_file(data, sequential, tmp_path):
    seq_dir, seq = sequential
    par = eagleeye_search(_model(), *data, tmp_path, workers=2, **KW)
    lines = _lines(tmp_path / "candidates.jsonl")
    assert lines == _lines(seq_dir / "candidates.jsonl")
    assert [r["index"] for r in lines] == [0, 1, 2, 3, 4]
    assert par.best["index"] == seq.best["index"] and par.best["abn_score"] == seq.best["abn_score"]
    assert par.acceptance_rate == seq.acceptance_rate
    a = json.loads((tmp_path / "search.json").read_text())
    b = json.loads((seq_dir / "search.json").read_text())
    assert {k: v for k, v in a.items() if k != "best"} == {k: v for k, v in b.items()
                                                           if k != "best"}
    # the scores are real: 40 held-out images, so multiples of 1/40, and they differ
    assert all(round(r["abn_score"] * 40, 9).is_integer() for r in lines)
    assert len({r["abn_score"] for r in lines}) > 1


def test_random_importance_depends_on_seed_and_index_only(data, tmp_path):
    kw = {**KW, "candidates": 3, "importance": "random"}
    eagleeye_search(_model(), *data, tmp_path / "one", workers=1, **kw)
    eagleeye_search(_model(), *data, tmp_path / "two", workers=2, **kw)
    assert _lines(tmp_path / "one" / "candidates.jsonl") == _lines(
        tmp_path / "two" / "candidates.jsonl")


def test_parallel_resume_after_a_partial_file(data, sequential, tmp_path):
    seq_dir, _ = sequential
    eagleeye_search(_model(), *data, tmp_path, workers=2, **{**KW, "candidates": 2})
    with (tmp_path / "candidates.jsonl").open("a") as f:
        f.write('{"index": 2, "ratios": {"con')  # killed while writing line 3
    res = eagleeye_search(_model(), *data, tmp_path, workers=2, **KW)
    assert _lines(tmp_path / "candidates.jsonl") == _lines(seq_dir / "candidates.jsonl")
    assert len(res.candidates) == 5


def test_vanilla_score_only_on_request(data, sequential, tmp_path):
    seq_dir, seq = sequential
    assert all("vanilla_score" not in r for r in read_candidates(seq_dir / "candidates.jsonl"))
    assert seq.best_vanilla is None
    assert json.loads((seq_dir / "search.json").read_text())["best_vanilla"] is None
    fresh = eagleeye_search(_model(), *data, tmp_path / "fresh", workers=1, vanilla=True, **KW)
    with_v = _lines(tmp_path / "fresh" / "candidates.jsonl")
    assert all(0.0 <= r["vanilla_score"] <= 1.0 for r in with_v)
    assert [{k: v for k, v in r.items() if k != "vanilla_score"} for r in with_v] == _lines(
        seq_dir / "candidates.jsonl")  # the adaptive-BN scores do not depend on it
    assert fresh.best_vanilla["vanilla_score"] == max(r["vanilla_score"] for r in with_v)
    # a search without vanilla scores, continued with them: the old lines are scored too
    eagleeye_search(_model(), *data, tmp_path / "later", workers=2, **{**KW, "candidates": 3})
    later = eagleeye_search(_model(), *data, tmp_path / "later", workers=2, vanilla=True, **KW)
    assert _lines(tmp_path / "later" / "candidates.jsonl") == with_v
    assert later.best_vanilla["index"] == fresh.best_vanilla["index"]


def test_worker_errors_reach_the_caller(data, tmp_path):
    _, held = data
    with pytest.raises(UserError, match="adaptive BN got no batches"):
        eagleeye_search(_model(), [], held, tmp_path, workers=2, **KW)
    assert read_candidates(tmp_path / "candidates.jsonl") == []
    with pytest.raises(UserError, match="workers"):
        eagleeye_search(_model(), *data, tmp_path, workers=0, **KW)


def test_default_workers():
    assert default_workers(1) == 1
    assert 1 <= default_workers(1000) <= 1000
    assert default_workers(1000, "cuda") == 1


@pytest.mark.parametrize("name", ["resnet56", "mobilenet_v2_cifar"])
def test_analytic_macs_equal_flop_counter_on_sampled_candidates(name):
    """The search records the sampler's analytic MACs without tracing the pruned model: they
    equal a torch.utils.flop_counter pass on the physically pruned candidate."""
    m = _model(name)
    groups = prunable_groups(m)
    sampler = StrategySampler(MacsModel.build(m, groups), 0.0, 0.7, 0.5, 0.005, seed=0)
    for i in range(3):
        s = sampler.sample(i)
        macs, params = macs_params(prune_model(m, s.ratios, groups=groups))
        assert s.macs == macs
        assert abs(macs / macs_params(m)[0] - 0.5) <= 0.005
        assert params < sum(p.numel() for p in m.parameters())
