"""Structured pruning (EagleEye): groups, physical removal, MACs, sampler, adaptive BN, search,
correlation statistics, save/load. Exact checks wherever the quantity is exact."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from conftest import tiny_config
from sparsetrain.checkpoint import load_checkpoint, save_checkpoint
from sparsetrain.config import validate
from sparsetrain.data import make_synthetic
from sparsetrain.errors import UserError
from sparsetrain.export.plain import fold_batchnorm
from sparsetrain.models import create_model
from sparsetrain.models.flops import layer_flops
from sparsetrain.rundir import RunDir
from sparsetrain.structured import (
    MacsModel,
    StrategySampler,
    abn_batches,
    adaptive_bn,
    correlation_study,
    eagleeye_search,
    eval_batches,
    holdout_split,
    kendall_tau_b,
    kept_count,
    load_pruned,
    macs_params,
    model_from_structure,
    pearson,
    prunable_groups,
    prune_model,
    pruned_checkpoint,
    save_pruned,
    spearman,
    top1,
    uniform_strategy,
)
from sparsetrain.structured.eagleeye import EagleEyeOptions, run_eagleeye
from sparsetrain.structured.groups import kept_indices
from sparsetrain.structured.search import read_candidates

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = create_model(name)
    # non-trivial BN statistics and affine parameters, so removal errors would show
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m.eval()


class TinyNet(nn.Module):
    """conv3x3(3->8) on 8x8, BN, ReLU, conv1x1(8->4, stride 2), BN, ReLU, pool, fc(4->5)."""

    input_size = (3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 1, stride=2, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


# -- groups and physical removal -------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2_cifar"])
def test_ratio_zero_keeps_the_function(name):
    m = _model(name)
    x = torch.randn(2, 3, 32, 32)
    pruned = prune_model(m, {g.name: 0.0 for g in prunable_groups(m)})
    assert pruned is not m
    torch.testing.assert_close(pruned(x), m(x), atol=1e-6, rtol=0)


def test_resnet_groups_tie_residual_stages():
    m = _model("resnet20")
    groups = {g.name: g for g in prunable_groups(m)}
    # 9 blocks' inner channels + one group per stage (stem/residual stream ties all its convs)
    assert len(groups) == 12
    assert set(groups["conv1"].out_layers) == {"conv1", "layer1.0.conv2", "layer1.1.conv2",
                                               "layer1.2.conv2"}
    stage3 = groups["layer3.0.shortcut.0"]
    assert stage3.channels == 64 and "fc" in stage3.in_layers and "fc" not in stage3.out_layers
    assert groups["layer2.1.conv1"].out_layers == ("layer2.1.conv1",)
    assert groups["layer2.1.conv1"].in_layers == ("layer2.1.conv2",)


FAMILIES = ["resnet20", "vgg11_bn", "resnet18_cifar", "mobilenet_v1_cifar", "mobilenet_v2_cifar",
            "wrn16_4"]


@pytest.mark.parametrize("name", FAMILIES)
def test_pruned_model_trains_saves_and_loads(name, tmp_path):
    m = _model(name)
    groups = prunable_groups(m)
    ratios = {g.name: 0.3 for g in groups}
    pruned = prune_model(m, ratios, groups=groups)
    n_cls = 10
    # every group lost floor(0.3 C) channels; the classifier's outputs never change
    for g in groups:
        for layer in g.out_layers:
            mod = pruned.get_submodule(layer)
            out = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
            assert out == kept_count(g.channels, 0.3) == g.channels - math.floor(0.3 * g.channels)
    x = torch.randn(2, 3, 32, 32)
    pruned.train()
    out = pruned(x)
    assert out.shape == (2, n_cls)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in pruned.parameters())
    # analytic MACs (no surgery) == measured MACs of the physically pruned model
    assert MacsModel.build(m, groups).macs(ratios) == macs_params(pruned)[0]
    pruned.eval()
    save_pruned(pruned, tmp_path / "p.pt", {"note": "x"})
    raw = torch.load(tmp_path / "p.pt", weights_only=True)
    assert raw["structure"]["arch"] == name and raw["note"] == "x"
    loaded = load_pruned(tmp_path / "p.pt").eval()
    assert torch.equal(loaded(x), pruned(x))
    assert macs_params(loaded) == macs_params(pruned)


def test_prune_model_never_mutates_input_and_uses_l1():
    m = _model("resnet20")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    groups = prunable_groups(m)
    g = next(g for g in groups if g.name == "layer1.1.conv1")
    w = m.layer1[1].conv1.weight
    with torch.no_grad():  # filter L1 norms 1..16 in a scrambled order
        perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
        w.copy_(torch.sign(torch.randn_like(w)) / w[0].numel())
        w.mul_((perm + 1).double().view(-1, 1, 1, 1).float())
    before["layer1.1.conv1.weight"] = w.detach().clone()
    pruned = prune_model(m, {g.name: 0.5}, groups=groups)
    kept = pruned.pruned_structure[g.name]
    assert kept == sorted(torch.nonzero(perm >= 8).flatten().tolist())  # norms 9..16 stay
    assert torch.equal(pruned.layer1[1].conv1.weight, w[kept])
    assert torch.equal(pruned.layer1[1].conv2.weight, m.layer1[1].conv2.weight[:, kept])
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_importance_options():
    m = _model("resnet20")
    groups = prunable_groups(m)
    ratios = {g.name: 0.5 for g in groups}
    l1 = kept_indices(groups, ratios, "l1")
    l2 = kept_indices(groups, ratios, "l2")
    r1 = kept_indices(groups, ratios, "random", generator=torch.Generator().manual_seed(1))
    r1b = kept_indices(groups, ratios, "random", generator=torch.Generator().manual_seed(1))
    r2 = kept_indices(groups, ratios, "random", generator=torch.Generator().manual_seed(2))
    assert r1 == r1b and r1 != r2 and l1 != r1
    # a residual group sums the filter norms of every conv tied by the additions
    g = next(g for g in groups if g.name == "conv1")
    total = sum(m.get_submodule(n).weight.detach().double().flatten(1).norm(p=2, dim=1)
                for n in g.out_layers)
    assert l2["conv1"] == sorted(torch.argsort(total, descending=True)[:8].tolist())
    with pytest.raises(UserError):
        kept_indices(groups, ratios, "hessian")
    with pytest.raises(UserError):
        prune_model(m, {"conv1": 1.0}, groups=groups)
    with pytest.raises(UserError):
        prune_model(m, {"nope": 0.1}, groups=groups)


def test_round_to_keeps_multiples():
    m = _model("resnet20")
    groups = prunable_groups(m)
    ratios = {g.name: 0.3 for g in groups}
    pruned = prune_model(m, ratios, round_to=8, groups=groups)
    # 16 - 4 = 12 -> 16 (12/8 = 1.5 rounds up); 32 - 9 = 23 -> 24; 64 - 19 = 45 -> 48
    assert pruned.conv1.out_channels == 16
    assert pruned.layer2[0].conv2.out_channels == 24
    assert pruned.layer3[1].conv1.out_channels == 48
    assert MacsModel.build(m, groups, round_to=8).macs(ratios) == macs_params(pruned)[0]


# -- MACs ---------------------------------------------------------------------------------------


def test_macs_hand_counted_tiny_net():
    m = TinyNet().eval()
    # conv1: 8 out x 3 in x 3x3 x 8x8 positions = 13824; conv2: 4 x 8 x 1 x 4x4 = 512;
    # fc: 4 x 5 = 20; BN/ReLU/pooling count 0 (MACs = FLOPs / 2 of the flop counter)
    assert macs_params(m) == (13824 + 512 + 20, 3 * 8 * 9 + 2 * 8 + 8 * 4 + 2 * 4 + 4 * 5 + 5)
    groups = {g.name: g for g in prunable_groups(m)}
    assert sorted(groups) == ["conv1", "conv2"]
    pruned = prune_model(m, {"conv1": 0.375, "conv2": 0.5})
    # keep 5 of 8 and 2 of 4: 5*3*9*64 + 2*5*16 + 2*5 = 8640 + 160 + 10
    assert macs_params(pruned)[0] == 8810
    assert MacsModel.build(m, list(groups.values())).macs({"conv1": 0.375, "conv2": 0.5}) == 8810


def test_macs_of_dense_models():
    m = _model("resnet20")
    # stem 16*3*9*1024 + stage1 6*16*16*9*1024 + stage2 (32*16*9 + 5*32*32*9 + 32*16)*256
    # + stage3 (64*32*9 + 5*64*64*9 + 64*32)*64 + fc 64*10
    hand = (16 * 3 * 9 * 1024 + 6 * 16 * 16 * 9 * 1024 + (32 * 16 * 9 + 5 * 32 * 32 * 9 + 32 * 16)
            * 256 + (64 * 32 * 9 + 5 * 64 * 64 * 9 + 64 * 32) * 64 + 640)
    assert macs_params(m)[0] == hand == 40_813_184
    for name in ("resnet20", "mobilenet_v2_cifar"):
        m = _model(name)
        groups = prunable_groups(m)
        mm = MacsModel.build(m, groups)
        assert mm.dense_macs == layer_flops(m)["total"] // 2 == mm.macs({})


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2_cifar", "vgg11_bn"])
def test_analytic_macs_equal_measured(name):
    m = _model(name)
    groups = prunable_groups(m)
    mm = MacsModel.build(m, groups)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        ratios = {cg.name: float(torch.rand(1, generator=g)) * 0.8 for cg in groups}
        assert mm.macs(ratios) == macs_params(prune_model(m, ratios, groups=groups))[0]


# -- sampler ------------------------------------------------------------------------------------


def test_sampler_band_and_determinism():
    m = _model("resnet20")
    mm = MacsModel.build(m, prunable_groups(m))
    s = StrategySampler(mm, r_min=0.1, r_max=0.6, target=0.5, tolerance=0.005, seed=7)
    draws = [s.sample(i) for i in range(20)]
    for d in draws:
        assert abs(d.macs / mm.dense_macs - 0.5) <= 0.005
        assert d.macs == mm.macs(d.ratios)
        assert all(0.1 <= r <= 0.6 for r in d.ratios.values())
    assert s.accepted == 20 and s.proposals == sum(d.tries for d in draws)
    assert 0 < s.acceptance_rate <= 1
    again = StrategySampler(mm, 0.1, 0.6, 0.5, 0.005, seed=7)
    assert again.sample(13) == draws[13]  # candidate i depends on (seed, i) only
    other = StrategySampler(mm, 0.1, 0.6, 0.5, 0.005, seed=8)
    assert other.sample(13).ratios != draws[13].ratios
    with pytest.raises(UserError, match="unreachable"):
        StrategySampler(mm, 0.0, 0.1, target=0.3)


def test_uniform_strategy_hits_target():
    m = _model("resnet20")
    mm = MacsModel.build(m, prunable_groups(m))
    u = uniform_strategy(mm, 0.5)
    assert len(set(u.values())) == 1
    got = mm.macs(u) / mm.dense_macs
    assert abs(got - 0.5) < 0.03  # ResNet-20: 16-channel groups make coarse steps
    # no other single ratio on a fine grid gets closer to the target
    grid = [k / 1000 for k in range(1000)]
    assert all(abs(mm.macs(dict.fromkeys(u, r)) / mm.dense_macs - 0.5) >= abs(got - 0.5) - 1e-12
               for r in grid)


# -- adaptive BN --------------------------------------------------------------------------------


def test_adaptive_bn_exact_cumulative_statistics():
    bn = nn.BatchNorm2d(3)
    model = nn.Sequential(bn, nn.Dropout(0.5))
    model.eval()
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(4, 3, 5, 5, generator=g) * (k + 1) + k for k in range(3)]
    assert adaptive_bn(model, [(x, None) for x in xs], n_batches=2) == 2
    means = torch.stack([x.mean((0, 2, 3)) for x in xs[:2]]).mean(0)
    vars_ = torch.stack([x.var((0, 2, 3), unbiased=True) for x in xs[:2]]).mean(0)
    torch.testing.assert_close(bn.running_mean, means, atol=1e-6, rtol=0)
    torch.testing.assert_close(bn.running_var, vars_, atol=1e-5, rtol=0)
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 2
    assert not model.training and not model[1].training and not bn.training
    with pytest.raises(UserError):
        adaptive_bn(model, [])


def test_adaptive_bn_changes_only_bn_statistics():
    m = _model("resnet20")
    m.train()
    params = {k: v.clone() for k, v in m.named_parameters()}
    buffers = {k: v.clone() for k, v in m.named_buffers()}
    data = make_synthetic(64, seed=3)
    batches = abn_batches(data, MEAN, STD, n=3, batch_size=16)
    assert adaptive_bn(m, batches, n_batches=3) == 3
    assert m.training  # mode restored
    for k, v in m.named_parameters():
        assert torch.equal(v, params[k]), k
    for k, v in m.named_buffers():
        if k.endswith(("running_mean", "running_var")):
            assert not torch.equal(v, buffers[k]), k
        elif k.endswith("num_batches_tracked"):
            assert int(v) == 3
    assert all(b.momentum == 0.1 for b in m.modules() if isinstance(b, nn.BatchNorm2d))


# -- search -------------------------------------------------------------------------------------


def _search_data():
    data = make_synthetic(160, seed=0)
    rest, held = holdout_split(data, 40, seed=0)
    assert len(rest) == 120 and len(held) == 40
    return abn_batches(rest, MEAN, STD, n=2, batch_size=32), eval_batches(held, MEAN, STD, 40)


def _strip(lines):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in lines]


def test_search_is_deterministic_and_resumable(tmp_path):
    m = _model("resnet20")
    train_b, held_b = _search_data()
    kw = dict(candidates=6, abn_batches=2, seed=3, progress=False, vanilla=True)
    fresh = eagleeye_search(m, train_b, held_b, tmp_path / "fresh", **kw)
    assert len(fresh.candidates) == 6
    first = eagleeye_search(m, train_b, held_b, tmp_path / "resumed", **{**kw, "candidates": 4})
    assert _strip(first.candidates) == _strip(fresh.candidates[:4])
    with (tmp_path / "resumed" / "candidates.jsonl").open("a") as f:
        f.write('{"index": 4, "ratios": {"con')  # killed while writing line 5
    resumed = eagleeye_search(m, train_b, held_b, tmp_path / "resumed", **kw)
    a = read_candidates(tmp_path / "resumed" / "candidates.jsonl")
    b = read_candidates(tmp_path / "fresh" / "candidates.jsonl")
    assert _strip(a) == _strip(b) == _strip(resumed.candidates)
    assert [r["ratios"] for r in a] == [r["ratios"] for r in b]
    assert [r["macs"] for r in a] == [r["macs"] for r in b]
    assert resumed.acceptance_rate == fresh.acceptance_rate
    dense = macs_params(m)[0]
    for r in a:
        assert abs(r["macs"] / dense - 0.5) <= 0.005
        assert set(r) >= {"index", "ratios", "macs", "params", "macs_ratio", "vanilla_score",
                          "abn_score", "time_s"}
    best = max(a, key=lambda r: (r["abn_score"], -r["index"]))
    assert _strip([resumed.best]) == _strip([fresh.best]) and resumed.best["index"] == best["index"]
    assert resumed.best_vanilla["vanilla_score"] == max(r["vanilla_score"] for r in a)
    summary = json.loads((tmp_path / "fresh" / "search.json").read_text())
    assert summary["best"]["index"] == best["index"] and summary["dense"]["macs"] == dense
    with pytest.raises(UserError, match="different settings") as e:
        eagleeye_search(m, train_b, held_b, tmp_path / "fresh", **{**kw, "seed": 4})
    assert "seed 3 there, 4 now" in str(e.value)  # names what differs


@pytest.mark.parametrize("fold", [True, False])
def test_search_candidates_reproduce_from_their_record(tmp_path, fold):
    """The adaptive-BN score is that of the pruned model after ABN, with its BNs folded into
    the convolutions by default (in fp32 the same score as unfolded: the same function)."""
    m = _model("resnet20")
    train_b, held_b = _search_data()
    res = eagleeye_search(m, train_b, held_b, tmp_path, candidates=2, abn_batches=2,
                          progress=False, vanilla=True, fold_bn=fold)
    rec = res.candidates[1]
    pruned = prune_model(m, rec["ratios"])
    assert macs_params(pruned) == (rec["macs"], rec["params"])
    assert top1(pruned, held_b) == rec["vanilla_score"]
    adaptive_bn(pruned, train_b, 2)
    assert top1(pruned, held_b) == rec["abn_score"]
    folded, n = fold_batchnorm(copy.deepcopy(pruned))
    assert n == sum(isinstance(x, nn.BatchNorm2d) for x in pruned.modules()) > 0
    assert top1(folded, held_b) == rec["abn_score"]
    settings = json.loads((tmp_path / "search.json").read_text())["settings"]
    assert settings.get("fold_bn", False) is fold  # absent when off: older searches resume
    with pytest.raises(UserError, match="fold_bn"):
        eagleeye_search(m, train_b, held_b, tmp_path, candidates=2, abn_batches=2,
                        progress=False, fold_bn=not fold)


def test_search_scores_untraceable_models_unfolded():
    """BN folding needs a torch.fx trace; a model with data-dependent control flow is scored
    as it is (the same score, only slower)."""
    from sparsetrain.structured.search import _folded

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    m = Branchy().eval()
    assert _folded(m) is m
    traceable = _model("resnet20").eval()
    folded = _folded(copy.deepcopy(traceable))
    assert not any(isinstance(x, nn.BatchNorm2d) for x in folded.modules())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(folded(x), traceable(x), rtol=1e-4, atol=1e-4)


def test_search_scores_in_the_training_precision(tmp_path):
    """bf16: the scores are those of the pruned model evaluated and re-estimated under bf16
    autocast (as it trains); the precision is part of the settings a resume must match."""
    from sparsetrain.precision import autocast

    m = _model("resnet20")
    train_b, held_b = _search_data()
    kw = dict(candidates=2, abn_batches=2, progress=False, vanilla=True)
    res = eagleeye_search(m, train_b, held_b, tmp_path, precision="bf16", **kw)
    rec = res.candidates[1]
    pruned = prune_model(m, rec["ratios"])
    cpu = torch.device("cpu")
    with autocast(cpu, "bf16"):
        assert top1(pruned, held_b) == rec["vanilla_score"]
        adaptive_bn(pruned, train_b, 2)
        assert top1(pruned, held_b) == rec["abn_score"]  # bf16: never folded (BENCHMARKS.md)
    settings = json.loads((tmp_path / "search.json").read_text())["settings"]
    assert settings["precision"] == "bf16" and "fold_bn" not in settings
    with pytest.raises(UserError, match="precision"):
        eagleeye_search(m, train_b, held_b, tmp_path, precision="fp32", **kw)


# -- correlation --------------------------------------------------------------------------------


def test_correlations_against_hand_values():
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    # 10 pairs, 2 discordant: (8 - 2) / 10; rho = 1 - 6 * 4 / (5 * 24)
    assert kendall_tau_b(x, y) == pytest.approx(0.6, abs=1e-12)
    assert spearman(x, y) == pytest.approx(0.8, abs=1e-12)
    assert pearson(x, y) == pytest.approx(0.8, abs=1e-12)
    x, y = [1, 2, 2, 3], [1, 2, 3, 3]
    # C = 4, D = 0, one tie in x and one in y: 4 / sqrt((6 - 1)(6 - 1))
    assert kendall_tau_b(x, y) == pytest.approx(0.8, abs=1e-12)
    # ranks [1, 2.5, 2.5, 4] and [1, 2, 3.5, 3.5]: 3.75 / sqrt(4.5 * 4.5)
    assert spearman(x, y) == pytest.approx(5 / 6, abs=1e-12)
    # centred x [-1, 0, 0, 1], y [-1.25, -0.25, 0.75, 0.75]: 2 / sqrt(2 * 2.75)
    assert pearson(x, y) == pytest.approx(2 / math.sqrt(5.5), abs=1e-12)
    assert kendall_tau_b([3, 2, 1], [1, 2, 3]) == -1.0
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_correlation_study_writes_and_resumes(tmp_path):
    cands = [{"index": i, "abn_score": 0.1 * i, "vanilla_score": 0.1 * ((i * 7) % 5),
              "macs": 100} for i in range(6)]
    calls = []

    def fine_tune(c):
        calls.append(c["index"])
        return 0.5 + c["abn_score"]

    res = correlation_study(cands, fine_tune, 5, tmp_path)
    assert calls == [0, 1, 2, 3, 4]
    assert res["pearson"] == pytest.approx(1.0) and res["kendall"] == pytest.approx(1.0)
    vanilla = [0.1 * ((i * 7) % 5) for i in range(5)]
    acc = [0.5 + 0.1 * i for i in range(5)]
    assert res["vanilla_kendall"] == pytest.approx(kendall_tau_b(vanilla, acc))
    saved = json.loads((tmp_path / "correlation.json").read_text())
    assert saved["spearman"] == pytest.approx(1.0) and saved["k"] == 5
    assert (tmp_path / "correlation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    correlation_study(cands, fine_tune, 6, tmp_path)  # resumes: only candidate 5 is new
    assert calls == [0, 1, 2, 3, 4, 5]


# -- checkpoints --------------------------------------------------------------------------------


def test_pruned_checkpoint_roundtrip_weights_only(tmp_path):
    m = _model("resnet20")
    pruned = prune_model(m, {g.name: 0.25 for g in prunable_groups(m)})
    cfg = {"model": {"name": "resnet20", "kwargs": {}}, "seed": 0}
    ckpt = pruned_checkpoint(pruned, cfg, [f"c{i}" for i in range(10)])
    assert {"format", "config", "model", "classes", "structure"} <= set(ckpt)
    save_checkpoint(ckpt, tmp_path / "best.pt")
    obj = torch.load(tmp_path / "best.pt", weights_only=True)
    loaded = model_from_structure(obj).eval()
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(loaded(x), pruned(x))
    # re-pruning a pruned model composes indices in dense coordinates
    again = prune_model(loaded, {"conv1": 0.5})
    reloaded = model_from_structure({"structure": pruned_checkpoint(again, cfg, [])["structure"],
                                     "model": again.state_dict()}).eval()
    assert torch.equal(reloaded(x), again.eval()(x))
    bad = dict(obj)
    bad["structure"] = {**obj["structure"], "kept": {**obj["structure"]["kept"], "conv1": [0]}}
    with pytest.raises(UserError):
        model_from_structure(bad)


# -- pipeline -----------------------------------------------------------------------------------


def test_run_eagleeye_end_to_end(tmp_path):
    cfg = validate(tiny_config(tmp_path, data={"path": "synthetic:192:64"},
                               train={"epochs": 1, "max_steps": 2, "warmup_epochs": 0}))
    torch.manual_seed(0)
    dense = create_model("resnet20")
    save_checkpoint({"format": 1, "config": cfg.model_dump(mode="json"),
                     "model": dense.state_dict(), "classes": [f"class{k}" for k in range(10)]},
                    tmp_path / "dense.pt")
    opts = EagleEyeOptions(candidates=3, abn_batches=2, holdout=64, correlate=3)
    s = run_eagleeye(cfg, tmp_path / "dense.pt", opts)
    run = cfg.run_dir
    lines = read_candidates(run / "candidates.jsonl")
    best = max(lines, key=lambda r: (r["abn_score"], -r["index"]))
    st = s["structured"]
    assert st["candidate"] == best["index"] and st["abn_score"] == best["abn_score"]
    assert st["macs_dense"] == 40_813_184 and abs(st["macs_ratio"] - 0.5) <= 0.005
    assert set(s["baselines"]) == {"uniform", "random_no_abn"}
    assert s["baselines"]["random_no_abn"]["structured"]["candidate"] == max(
        lines, key=lambda r: (r["vanilla_score"], -r["index"]))["index"]
    corr = json.loads((run / "correlation.json").read_text())
    assert corr["k"] == 3 and len(corr["points"]) == 3
    ckpt = load_checkpoint(run / "last.pt")
    model = model_from_structure(ckpt)
    assert macs_params(model) == (st["macs"], st["params"])
    assert ckpt["trainer"]["step"] == 2
    with pytest.raises(UserError, match="already exists"):  # a second start without --resume
        run_eagleeye(cfg, tmp_path / "dense.pt", opts)
    again = run_eagleeye(cfg, tmp_path / "dense.pt", opts, resume=True)
    assert again["structured"] == st  # finished: reused


def test_run_eagleeye_scores_on_a_stratified_part_of_the_validation_split(tmp_path):
    cfg = validate(tiny_config(tmp_path, data={"path": "synthetic:192:64", "val_size": 60},
                               train={"epochs": 1, "max_steps": 1, "warmup_epochs": 0}))
    dense = create_model("resnet20")
    save_checkpoint({"format": 1, "config": cfg.model_dump(mode="json"),
                     "model": dense.state_dict(), "classes": [f"class{k}" for k in range(10)]},
                    tmp_path / "dense.pt")
    info = run_eagleeye(cfg, tmp_path / "dense.pt", EagleEyeOptions(
        candidates=2, abn_batches=1, holdout=30, finetune=False))
    assert info["candidates"] == 2 and "structured" not in info
    settings = json.loads((cfg.run_dir / "search.json").read_text())["settings"]
    assert settings["holdout"]["images"] == 30  # 30 of the 60 validation images
    with pytest.raises(UserError, match="holdout"):
        run_eagleeye(cfg, tmp_path / "dense.pt", EagleEyeOptions(holdout=0, finetune=False),
                     resume=True)


def _dense_checkpoint(tmp_path):
    """A one-step tiny recipe and an untrained dense ResNet-20 saved as ``tmp_path/dense.pt``."""
    cfg = validate(tiny_config(tmp_path, data={"path": "synthetic:192:64"},
                               train={"epochs": 1, "max_steps": 1, "warmup_epochs": 0}))
    save_checkpoint({"format": 1, "config": cfg.model_dump(mode="json"),
                     "model": create_model("resnet20").state_dict(),
                     "classes": [f"class{k}" for k in range(10)]}, tmp_path / "dense.pt")
    return cfg


def test_run_eagleeye_baselines_in_a_separate_call(tmp_path):
    """--no-winner trains chosen baselines alone; a later full call reuses them."""
    cfg = _dense_checkpoint(tmp_path)
    kw = dict(candidates=2, abn_batches=1, holdout=64)
    with pytest.raises(UserError, match="unknown EagleEye baseline"):
        run_eagleeye(cfg, tmp_path / "dense.pt", EagleEyeOptions(baselines=("l2",), **kw))
    run_eagleeye(cfg, tmp_path / "dense.pt", EagleEyeOptions(finetune=False, **kw))
    search = {p.name: p.read_bytes() for p in cfg.run_dir.iterdir() if p.is_file()}
    # the baselines train while another process holds the run (its winner's fine-tune): a
    # finished search is only read, each baseline locks its own folder
    with RunDir.claim(cfg.out_dir, cfg.name, command="prune eagleeye", resume=True):
        only = run_eagleeye(cfg, tmp_path / "dense.pt",
                            EagleEyeOptions(baselines=("uniform",), winner=False, **kw),
                            resume=True)
        with pytest.raises(UserError, match="in use by process"):
            run_eagleeye(cfg, tmp_path / "dense.pt", EagleEyeOptions(baselines=(), **kw),
                         resume=True)
    assert {p.name: p.read_bytes() for p in cfg.run_dir.iterdir()
            if p.is_file() and p.name != ".lock"} == {k: v for k, v in search.items()
                                                     if k != ".lock"}
    assert set(only["baselines"]) == {"uniform"} and "structured" not in only
    assert not (cfg.run_dir / "summary.json").exists()  # the winner was not trained
    uniform_ckpt = cfg.run_dir / "baseline_uniform" / "last.pt"
    stamp = uniform_ckpt.stat().st_mtime_ns
    full = run_eagleeye(cfg, tmp_path / "dense.pt", EagleEyeOptions(baselines=("uniform",), **kw),
                        resume=True)
    assert full["baselines"] == only["baselines"] and full["structured"]["strategy"] == "eagleeye"
    assert uniform_ckpt.stat().st_mtime_ns == stamp  # reused, not retrained
    assert json.loads((cfg.run_dir / "summary.json").read_text())["baselines"] == full["baselines"]


def test_run_eagleeye_from_search_reuses_another_runs_search(tmp_path):
    """--from-search: a new run fine-tunes the winner of another run's finished search (copied,
    not re-scored; the source is not written); different settings, an unfinished search or the
    run itself are one-line errors that leave no new run behind."""
    cfg = _dense_checkpoint(tmp_path)
    kw = dict(candidates=3, abn_batches=1, holdout=64, baselines=())
    run_eagleeye(cfg, tmp_path / "dense.pt", EagleEyeOptions(finetune=False, **kw))
    src = cfg.run_dir
    before = {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()}
    longer = cfg.model_copy(update={"name": "longer", "train": cfg.train.model_copy(
        update={"max_steps": 2})})
    s = run_eagleeye(longer, tmp_path / "dense.pt", EagleEyeOptions(from_search=str(src), **kw))
    lines = read_candidates(src / "candidates.jsonl")
    assert read_candidates(longer.run_dir / "candidates.jsonl") == lines
    assert s["structured"]["candidate"] == max(
        lines, key=lambda r: (r["abn_score"], -r["index"]))["index"]
    assert load_checkpoint(longer.run_dir / "last.pt")["trainer"]["step"] == 2
    assert {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()} == before
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "search.json").write_text('{"settings": {}}')
    cases = [(dict(abn_batches=2), "--from-search .*abn_batches 1 there, 2 now"),
             (dict(from_search=str(tmp_path / "unfinished")), "did not finish"),
             (dict(from_search=str(tmp_path / "nothing")), "no readable search.json")]
    for k, (change, message) in enumerate(cases):
        bad = cfg.model_copy(update={"name": f"bad{k}"})
        with pytest.raises(UserError, match=message):
            run_eagleeye(bad, tmp_path / "dense.pt",
                         EagleEyeOptions(**{**kw, "from_search": str(src), **change}))
        assert not bad.run_dir.exists()
    with pytest.raises(UserError, match="is this run"):
        run_eagleeye(cfg, tmp_path / "dense.pt", EagleEyeOptions(from_search=str(src), **kw),
                     resume=True)
