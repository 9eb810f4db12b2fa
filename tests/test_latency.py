"""The latency lookup table of latency-aware structured pruning (issue 19.2): measured steps,
predictions equal to a hand sum over the physically pruned model, the device cache, the
latency band of the sampler, and the EagleEye workflow with ``--latency`` (a deterministic fake
timer stands in for the clock, so every number below is exact)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import tiny_config
from sparsetrain.checkpoint import save_checkpoint
from sparsetrain.config import validate
from sparsetrain.errors import UserError
from sparsetrain.models import create_model
from sparsetrain.structured import MacsModel, StrategySampler, prunable_groups, prune_model
from sparsetrain.structured import latency as lat
from sparsetrain.structured.eagleeye import EagleEyeOptions, run_eagleeye
from sparsetrain.structured.latency import LatencyModel, measure_steps
from sparsetrain.structured.search import read_candidates


def block_ms(spec: dict, kin: int, kout: int) -> float:
    """A kernel that works in blocks of 8 channels (oneDNN on AVX2): cost ~ padded blocks."""
    if spec["kind"] == "linear":
        return 0.01 * math.ceil(kin / 8) * math.ceil(kout / 8)
    area = spec["h"] * spec["w"] * (9 if spec["k"] == "3x3" else 1)
    if spec["kind"] == "dwconv":  # one filter per channel: linear in the channels
        return 1e-4 * area * math.ceil(kout / 8)
    return 1e-4 * area * math.ceil(kin / 8) * math.ceil(kout / 8)


class Counting:
    def __init__(self, fn=block_ms):
        self.fn, self.calls = fn, 0

    def __call__(self, spec, kin, kout):
        self.calls += 1
        return self.fn(spec, kin, kout)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSETRAIN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _resnet20():
    torch.manual_seed(0)
    return create_model("resnet20").eval()


def hand_ms(model: nn.Module) -> float:
    """The fake timer summed over the Conv2d/Linear layers of a (pruned) model."""
    shapes = lat._input_shapes(model)
    total = 0.0
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            spec = lat._unit_spec(m, shapes[name])
            total += block_ms(spec, m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            total += block_ms({"kind": "linear"}, m.in_features, m.out_features)
    return total


@pytest.mark.parametrize("curve,channels,step", [
    ({k: float(math.ceil(k / 8)) for k in range(1, 65)}, 64, 8),  # blocks of 8
    ({k: float(math.ceil(k / 16)) for k in range(1, 65)}, 64, 16),  # blocks of 16
    ({k: float(k) for k in range(1, 65)}, 64, 1),  # every channel costs: no free rounding
    ({k: float(math.ceil(k / 8)) for k in range(1, 9)}, 8, 4),  # a step is below the width
])
def test_measured_step_is_the_block_size(curve, channels, step):
    assert measure_steps(curve, channels) == step


@pytest.mark.parametrize("arch", ["resnet20", "mobilenet_v1_cifar"])  # + depthwise convs
def test_prediction_equals_the_hand_sum_over_the_pruned_model(arch):
    torch.manual_seed(0)
    dense = create_model(arch).eval()
    groups = prunable_groups(dense)
    t = Counting()
    lm = LatencyModel.measure(dense, groups, batch=8, timer=t, dense_ms=hand_ms(dense) + 3.0)
    assert set(lm.round_to) == {8}  # every group has a multiple of 16 channels
    assert lm.rest_ms == pytest.approx(3.0) and lm.dense_pred == pytest.approx(lm.dense_ms)
    mm = MacsModel.build(dense, groups, lm.step_of())
    sampler = StrategySampler(mm, 0.0, 0.7, 0.5, 0.05, seed=1)
    for i in range(4):
        s = sampler.sample(i)
        pruned = prune_model(dense, s.ratios, "l1", lm.step_of(), groups=groups)
        row = mm.as_tensor(s.ratios)
        want = (hand_ms(pruned) + 3.0) / lm.dense_pred
        assert float(lm.ratio_of_ratios(row)[0]) == pytest.approx(want, rel=1e-12)


def test_every_kept_count_is_a_multiple_of_the_step():
    dense = _resnet20()
    groups = prunable_groups(dense)
    lm = LatencyModel.measure(dense, groups, batch=8, timer=block_ms, dense_ms=1.0)
    for r in (0.05, 0.3, 0.55, 0.7):
        pruned = prune_model(dense, dict.fromkeys(lm.names, r), "l1", lm.step_of())
        counts = {m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)}
        assert all(c % 8 == 0 for c in counts), (r, counts)


def test_cache_measures_once_per_device_key(cache_dir):
    dense = _resnet20()
    groups = prunable_groups(dense)
    first = Counting()
    a = LatencyModel.measure(dense, groups, batch=8, timer=first, dense_ms=100.0)
    assert first.calls > 0 and len(list((cache_dir / "latency").iterdir())) == 1
    again = Counting()
    b = LatencyModel.measure(dense, groups, batch=8, timer=again, dense_ms=100.0)
    assert again.calls == 0 and b.to_json() == a.to_json()
    other = Counting()  # another precision (or batch) is another key: measured anew
    LatencyModel.measure(dense, groups, batch=8, precision="bf16", timer=other, dense_ms=100.0)
    assert other.calls == first.calls
    assert len(list((cache_dir / "latency").iterdir())) == 2
    for f in (cache_dir / "latency").iterdir():  # a corrupt cache is measured again
        f.write_text("{not json")
    fresh = Counting()
    c = LatencyModel.measure(dense, groups, batch=8, timer=fresh, dense_ms=100.0)
    assert fresh.calls == first.calls and c.to_json() == a.to_json()
    off = Counting()
    LatencyModel.measure(dense, groups, batch=8, timer=off, dense_ms=100.0, cache=False)
    assert off.calls == first.calls


def test_cache_key_tells_processors_with_the_same_name_apart(cache_dir, monkeypatch):
    """Cloud VMs of different generations can share a model name ("AMD EPYC"): a table measured
    on one must not be reused on the other."""
    import sparsetrain.structured.latency as latency

    dense = _resnet20()
    groups = prunable_groups(dense)
    monkeypatch.setattr(latency, "cpu_name", lambda: "AMD EPYC")
    monkeypatch.setattr(latency, "cpu_signature", lambda: "family/model/stepping 25/17/1, AVX512")
    first = Counting()
    LatencyModel.measure(dense, groups, batch=8, timer=first, dense_ms=100.0)
    monkeypatch.setattr(latency, "cpu_signature", lambda: "family/model/stepping 26/2/0, AVX2")
    other = Counting()
    LatencyModel.measure(dense, groups, batch=8, timer=other, dense_ms=100.0)
    assert first.calls > 0 and other.calls == first.calls
    assert len(list((cache_dir / "latency").iterdir())) == 2
    key = latency.device_key(torch.device("cpu"), "fp32", 8)
    assert key["device"] == "cpu:AMD EPYC (family/model/stepping 26/2/0, AVX2)"


def test_table_roundtrips_and_bad_tables_are_one_line_errors():
    dense = _resnet20()
    lm = LatencyModel.measure(dense, prunable_groups(dense), batch=8, timer=block_ms,
                              dense_ms=50.0)
    back = LatencyModel.from_json(json.loads(json.dumps(lm.to_json())))
    r = torch.rand(16, len(lm.names), generator=torch.Generator().manual_seed(0)) * 0.7
    assert torch.equal(back.ratio_of_ratios(r.double()), lm.ratio_of_ratios(r.double()))
    assert back.digest() == lm.digest()
    for bad in ({}, {"units": 3}, {**lm.to_json(), "units": [{"name": "x"}]}):
        with pytest.raises(UserError, match="not a latency table"):
            LatencyModel.from_json(bad, "t.json")


def test_calibration_fits_whole_model_measurements():
    dense = _resnet20()
    lm = LatencyModel.measure(dense, prunable_groups(dense), batch=8, timer=block_ms,
                              dense_ms=hand_ms(dense))
    mm = MacsModel.build(dense, prunable_groups(dense), lm.step_of())
    timed = []

    def device(ratios):  # layers save less inside the network than alone: 0.7x + 0.25
        timed.append(ratios)
        return 0.7 * float(lm.table_ratio(mm.as_tensor(ratios))[0]) + 0.25

    cal = lm.calibrate(device, n=6, seed=1)
    assert len(timed) == 6 and len({tuple(r.values()) for r in timed}) == 6
    c = cal.calibration
    assert c["a"] == pytest.approx(0.7) and c["b"] == pytest.approx(0.25)
    assert c["rms"] == pytest.approx(0.0, abs=1e-12) and len(c["points"]) == 6
    r = torch.rand(5, len(lm.names), generator=torch.Generator().manual_seed(2)).double() * 0.7
    assert torch.allclose(cal.ratio_of_ratios(r), 0.7 * lm.ratio_of_ratios(r) + 0.25)
    assert torch.equal(cal.table_ratio(r), lm.table_ratio(r))
    back = LatencyModel.from_json(json.loads(json.dumps(cal.to_json())))
    assert torch.equal(back.ratio_of_ratios(r), cal.ratio_of_ratios(r))
    assert back.digest() == cal.digest() != lm.digest()


def test_bilinear_is_exact_on_the_grid_and_linear_between():
    gx = torch.tensor([1.0, 4.0, 8.0], dtype=torch.float64)
    gy = torch.tensor([2.0, 6.0], dtype=torch.float64)
    t = torch.tensor([[1.0, 2.0], [3.0, 5.0], [7.0, 11.0]], dtype=torch.float64)
    x = torch.tensor([1.0, 4.0, 8.0, 2.5, 6.0, 8.0], dtype=torch.float64)
    y = torch.tensor([2.0, 6.0, 6.0, 2.0, 4.0, 9.0], dtype=torch.float64)
    got = lat._bilinear(gx, gy, t, x, y).tolist()
    assert got[:3] == [1.0, 5.0, 11.0]
    assert got[3] == pytest.approx(2.0)  # halfway between 1 and 3
    assert got[4] == pytest.approx((3.0 + 7.0 + 5.0 + 11.0) / 4)  # the cell's centre
    assert got[5] == 11.0  # clamped to the grid


def test_uneven_axis_is_exact_where_rounding_lands():
    assert lat._axis(64, 8) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert lat._axis(20, 8) == [8, 16, 20]  # the full width is always possible
    assert lat._axis(10, 1) == list(range(1, 11))
    wide = lat._axis(512, 1)
    assert len(wide) == lat.GRID and wide[0] == 1 and wide[-1] == 512


def test_sampler_with_a_latency_band():
    dense = _resnet20()
    groups = prunable_groups(dense)
    lm = LatencyModel.measure(dense, groups, batch=8, timer=block_ms, dense_ms=hand_ms(dense))
    mm = MacsModel.build(dense, groups, lm.step_of())
    s1 = StrategySampler(mm, 0.0, 0.7, 0.5, 0.02, seed=3, cost=lm)
    s2 = StrategySampler(mm, 0.0, 0.7, 0.5, 0.02, seed=3, cost=lm)
    for i in range(5):
        a, b = s1.sample(i), s2.sample(i)
        assert a == b and abs(a.latency_ratio - 0.5) <= 0.02
        assert a.macs == mm.macs(a.ratios)  # the MACs are still the exact analytic count
    with pytest.raises(UserError, match="latency target"):
        StrategySampler(mm, 0.0, 0.1, 0.2, 0.01, cost=lm)
    with pytest.raises(UserError, match="differ"):  # tables and MACs must snap alike
        StrategySampler(MacsModel.build(dense, groups), cost=lm)


def _world(tmp_path, monkeypatch, timer=block_ms):
    """A tiny EagleEye recipe, a dense ResNet-20 checkpoint at ``tmp_path/dense.pt``, layers
    timed by ``timer`` and the dense model by no clock (rest 0: predictions exact)."""
    cfg = validate(tiny_config(tmp_path, data={"path": "synthetic:192:64"},
                               train={"epochs": 1, "max_steps": 1, "warmup_epochs": 0}))
    save_checkpoint({"format": 1, "config": cfg.model_dump(mode="json"),
                     "model": _resnet20().state_dict(),
                     "classes": [f"class{k}" for k in range(10)]}, tmp_path / "dense.pt")
    monkeypatch.setattr(lat, "make_timer", lambda *a, **k: timer)
    monkeypatch.setattr(lat, "time_forward", lambda *a, **k: 0.0)
    return cfg


def test_eagleeye_with_a_latency_target(tmp_path, monkeypatch):
    t = Counting()
    cfg = _world(tmp_path, monkeypatch, t)
    opts = EagleEyeOptions(candidates=3, abn_batches=1, holdout=64, latency=0.5,
                           tolerance=0.03, baselines=("uniform",), latency_check=False,
                           latency_calibrate=0)
    s = run_eagleeye(cfg, tmp_path / "dense.pt", opts)
    run = cfg.run_dir
    table = LatencyModel.from_json(json.loads((run / "latency_table.json").read_text()))
    lines = read_candidates(run / "candidates.jsonl")
    assert all(abs(r["latency_ratio"] - 0.5) <= 0.03 for r in lines)
    settings = json.loads((run / "search.json").read_text())["settings"]
    assert settings["latency"]["table"] == table.digest()
    assert settings["round_to"] == table.step_of()
    assert s["structured"]["latency_ratio"] == max(
        lines, key=lambda r: (r["abn_score"], -r["index"]))["latency_ratio"]
    uni = s["baselines"]["uniform"]["structured"]
    assert uni["strategy"] == "uniform_l1"
    # resume: the saved table is used, nothing is timed again
    monkeypatch.setattr(lat, "make_timer", lambda *a, **k: pytest.fail("timed again"))
    monkeypatch.setattr(LatencyModel, "measure", lambda *a, **k: pytest.fail("measured again"))
    again = run_eagleeye(cfg, tmp_path / "dense.pt", opts, resume=True)
    assert again["structured"] == s["structured"]
    (run / "latency_table.json").write_text("{")
    with pytest.raises(UserError, match="corrupt"):
        run_eagleeye(cfg, tmp_path / "dense.pt", opts, resume=True)


def test_sampler_keeps_only_strategies_measured_in_the_band():
    """verify: proposals the table puts within the prefilter are measured in draw order; the
    first measured inside the tolerance is the candidate, with both numbers recorded."""
    dense = _resnet20()
    groups = prunable_groups(dense)
    lm = LatencyModel.measure(dense, groups, batch=8, timer=block_ms, dense_ms=hand_ms(dense))
    mm = MacsModel.build(dense, groups, lm.step_of())
    seen = []

    centers = []

    def clock(ratios):  # the "device" is 12% slower than the table says, plus a bump
        pred = float(lm.ratio_of_ratios(mm.as_tensor(ratios))[0])
        seen.append(pred)
        centers.append(sp.prefilter_center())
        return pred + 0.12 + 0.01 * (len(seen) % 3)

    sp = StrategySampler(mm, 0.0, 0.7, 0.5, 0.02, seed=4, cost=lm, verify=clock, prefilter=0.2)
    for i in range(3):
        n0 = len(seen)
        s = sp.sample(i)
        assert abs(s.latency_ratio - 0.5) <= 0.02
        assert s.latency_ratio == pytest.approx(s.latency_pred + 0.12 + 0.01 * (len(seen) % 3))
        # only pre-selected ones are timed: near the target corrected by the errors seen so far
        assert all(abs(p - c) <= 0.2 + 0.02 for p, c in zip(seen[n0:], centers[n0:],
                                                             strict=True))
        assert all(abs(p + 0.12 + 0.01 * ((n0 + k + 1) % 3) - 0.5) > 0.02
                   for k, p in enumerate(seen[n0:-1]))  # the ones before it were rejected
    assert centers[0] == 0.5 and 0.5 - 0.14 <= sp.prefilter_center() <= 0.5 - 0.12
    assert sp.measured == len(seen)
    flip = iter(range(100))
    for clock, seen_text in ((lambda r: 0.5 + 0.1 * (-1) ** next(flip), "measured 0.400-0.600"),
                             (lambda r: float("nan"), "no finite measurement")):
        never = StrategySampler(mm, 0.0, 0.7, 0.5, 0.02, seed=4, cost=lm, verify=clock,
                                prefilter=0.2, max_measured=5)
        with pytest.raises(UserError, match=f"5 strategies measured \\({seen_text}\\)"):
            never.sample(0)
    with pytest.raises(UserError, match="prefilter"):
        StrategySampler(mm, cost=lm, verify=clock, tolerance=0.05, prefilter=0.01)


def test_measured_latency_leaves_the_dense_model_alone():
    dense = _resnet20()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    groups = prunable_groups(dense)
    m = lat.MeasuredLatency(dense, groups, 8, batch=2, precision="fp32", repeats=1)
    r = m(dict.fromkeys((g.name for g in groups), 0.5))
    assert math.isfinite(r) and r > 0
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())


def test_eagleeye_latency_check_records_measurements_and_resumes_without_timing(
        tmp_path, monkeypatch):
    cfg = _world(tmp_path, monkeypatch)
    calls = []

    def clock(self, ratios):  # 5% slower than a table that knows only the blocks
        calls.append(ratios)
        return float(tables[0].ratio_of_ratios(torch.tensor(
            [[ratios[n] for n in tables[0].names]], dtype=torch.float64))[0]) + 0.05

    tables = []
    real_measure = LatencyModel.measure

    def measure(*a, **k):
        tables.append(real_measure(*a, **k))
        return tables[0]

    monkeypatch.setattr(LatencyModel, "measure", measure)
    monkeypatch.setattr(lat.MeasuredLatency, "__call__", clock)
    opts = EagleEyeOptions(candidates=2, abn_batches=1, holdout=64, latency=0.5,
                           tolerance=0.03, latency_prefilter=0.2, finetune=False,
                           latency_calibrate=0)
    run_eagleeye(cfg, tmp_path / "dense.pt", opts)
    lines = read_candidates(cfg.run_dir / "candidates.jsonl")
    assert len(lines) == 2 and calls
    for r in lines:
        assert abs(r["latency_ratio"] - 0.5) <= 0.03
        assert r["latency_ratio"] == pytest.approx(r["latency_pred"] + 0.05)
    settings = json.loads((cfg.run_dir / "search.json").read_text())["settings"]
    assert settings["latency"]["measured"] is True and settings["latency"]["prefilter"] == 0.2
    n = len(calls)
    more = EagleEyeOptions(**{**opts.__dict__, "candidates": 3})
    run_eagleeye(cfg, tmp_path / "dense.pt", more, resume=True)
    assert read_candidates(cfg.run_dir / "candidates.jsonl")[:2] == lines  # kept, not re-timed
    assert len(calls) > n  # the new candidate was measured, the recorded ones were not
    assert not any(c == r["ratios"] for c in calls[n:] for r in lines)


def test_eagleeye_measured_steps_with_a_macs_band(tmp_path, monkeypatch):
    """--round-to auto alone: the MACs band as usual, counts snapped to the measured steps,
    nothing timed beyond the table (no calibration, no candidate checks)."""
    cfg = _world(tmp_path, monkeypatch)
    monkeypatch.setattr(lat.MeasuredLatency, "__call__", lambda *a: pytest.fail("timed"))
    run_eagleeye(cfg, tmp_path / "dense.pt", EagleEyeOptions(
        candidates=2, abn_batches=1, holdout=64, round_to="auto", tolerance=0.03,
        finetune=False))
    table = json.loads((cfg.run_dir / "latency_table.json").read_text())
    assert table["calibration"] is None
    settings = json.loads((cfg.run_dir / "search.json").read_text())["settings"]
    assert "latency" not in settings and set(settings["round_to"].values()) == {8}
    dense = _resnet20()
    for r in read_candidates(cfg.run_dir / "candidates.jsonl"):
        assert abs(r["macs_ratio"] - 0.5) <= 0.03 and "latency_ratio" not in r
        pruned = prune_model(dense, r["ratios"], "l1", settings["round_to"])
        assert all(m.out_channels % 8 == 0 for m in pruned.modules()
                   if isinstance(m, nn.Conv2d))


def test_an_unwritable_cache_only_warns(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SPARSETRAIN_CACHE", str(blocker))  # latency/ cannot be created in it
    dense = _resnet20()
    with pytest.warns(UserWarning, match="latency cache not saved"):
        lm = LatencyModel.measure(dense, prunable_groups(dense), batch=8, timer=block_ms,
                                  dense_ms=1.0)
    assert lm.round_to and blocker.read_text() == "not a folder"


def _run_profile(*args: object) -> subprocess.CompletedProcess:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "latency_profile.py"
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True,
                          text=True, timeout=120, check=False)


def test_unit_breakdown_and_profile_script(tmp_path):
    """``unit_ms`` is each layer's hand-timed cost in the pruned model; the profile script
    prints those sums per layer shape and the total over the dense prediction."""
    dense = _resnet20()
    groups = prunable_groups(dense)
    lm = LatencyModel.measure(dense, groups, batch=8, timer=block_ms, dense_ms=hand_ms(dense) + 3)
    pruned = prune_model(dense, dict.fromkeys(lm.names, 0.5), "l1", lm.step_of(), groups=groups)
    row = torch.full((1, len(lm.names)), 0.5, dtype=torch.float64)
    per_unit = lm.unit_ms(lat.kept_counts(row, lm.channels, lm.round_to))[0]
    assert float(per_unit.sum()) == pytest.approx(hand_ms(pruned), rel=1e-12)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "latency_table.json").write_text(json.dumps(lm.to_json()))
    out = _run_profile(tmp_path / "run", "--ratios", "0,0.5")
    assert out.returncode == 0, out.stderr
    rows = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ")[1:]
            for line in out.stdout.splitlines() if line.startswith("| ")}
    assert rows["rest (adds, pooling, ...)"] == ["3.0", "3.0"]
    assert rows["**total**"] == [f"**{hand_ms(dense) + 3:.1f}**", f"**{hand_ms(pruned) + 3:.1f}**"]
    want = (hand_ms(pruned) + 3) / (hand_ms(dense) + 3)
    assert rows["table ratio"] == ["1.000", f"{want:.3f}"]
    assert "calibrated" not in out.stdout  # an uncalibrated table has no such row


@pytest.mark.parametrize("case,args,message", [
    ("missing", ["nope.json"], "cannot read a latency table"),
    ("not json", ["bad.json"], "cannot read a latency table"),
    ("not a table", ["other.json"], "is not a latency table"),
    ("ratio 1", ["t.json", "--ratios", "0,1"], "in [0, 1)"),
    ("not a number", ["t.json", "--ratios", "x"], "numbers separated by commas"),
])
def test_profile_script_bad_input(tmp_path, case, args, message):
    dense = _resnet20()
    lm = LatencyModel.measure(dense, prunable_groups(dense), batch=8, timer=block_ms,
                              dense_ms=1.0)
    (tmp_path / "t.json").write_text(json.dumps(lm.to_json()))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"key": {}}))
    out = _run_profile(*(tmp_path / a if a.endswith(".json") else a for a in args))
    assert out.returncode == 2, case
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
