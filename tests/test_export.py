"""`sparsetrain export`: plain artifacts that run without sparsetrain, BN folding, model cards,
and the check that refuses a wrong artifact."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import BLOCK_SPARSETRAIN, tiny_config
from sparsetrain.checkpoint import load_checkpoint, save_checkpoint, write_json
from sparsetrain.cli import main
from sparsetrain.config import validate
from sparsetrain.evaluate.cost import flop_counts
from sparsetrain.export import FORMATS, fold_batchnorm, plain_model
from sparsetrain.export.formats import Format
from sparsetrain.loading import load_model
from sparsetrain.models import create_model, list_models
from sparsetrain.models.pointwise import SubsampledPointwiseConv2d
from sparsetrain.sparsity.masks import MaskSet, prunable_parameters
from sparsetrain.structured.groups import prunable_groups, prune_model
from sparsetrain.structured.io import pruned_checkpoint

HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript"))
FMTS = ["pt", "pt2", pytest.param("onnx", marks=pytest.mark.skipif(
    not HAS_ONNX, reason="the sparsetrain[export] extra (onnx, onnxscript) is not installed"))]
CLASSES = [f"c{k}" for k in range(10)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize_bn(model: nn.Module, seed: int) -> None:
    """Eval statistics far from (0, 1), so folding BN is a real transformation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.4 * torch.rand(n, generator=g) - 0.2)


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/tiny/last.pt: a ResNet-20 with random masks at density 0.3 and a summary.json."""
    tmp = tmp_path_factory.mktemp("sparse")
    torch.manual_seed(0)
    model = create_model("resnet20")
    masks = MaskSet(model, prunable_parameters(model))
    g = torch.Generator().manual_seed(1)
    masks.set_masks({n: (torch.rand(p.shape, generator=g) < 0.3).float()
                     for n, p in masks.params.items()})
    _randomize_bn(model, 2)
    cfg = validate(tiny_config(tmp)).model_dump(mode="json")
    run = tmp / "runs" / "tiny"
    run.mkdir(parents=True)
    save_checkpoint({"format": 1, "config": cfg, "model": model.state_dict(),
                     "classes": CLASSES}, run / "last.pt")
    write_json({"name": "tiny", "final": {"test_acc": 0.625, "test_loss": 1.5},
                "best": {"test_acc": 0.7}}, run / "summary.json")
    return run / "last.pt"


@pytest.fixture(scope="module")
def pruned_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An EagleEye-style channel-pruned ResNet-20 checkpoint (12 of 16 channels kept in stage
    1, so layer2.0's strided 1x1 shortcut is a SubsampledPointwiseConv2d)."""
    tmp = tmp_path_factory.mktemp("pruned")
    torch.manual_seed(3)
    dense = create_model("resnet20")
    _randomize_bn(dense, 4)
    pruned = prune_model(dense, {g.name: 0.25 for g in prunable_groups(dense)})
    cfg = validate(tiny_config(tmp)).model_dump(mode="json")
    save_checkpoint(pruned_checkpoint(pruned, cfg, CLASSES), tmp / "ee" / "last.pt")
    return tmp / "ee" / "last.pt"


_RELOAD = BLOCK_SPARSETRAIN + '''
import torch

fmt, artifact, inputs, result = sys.argv[1:5]
x = torch.load(inputs, weights_only=True)
if fmt == "pt":
    m = torch.jit.load(artifact)
    y, weights = m(x), m.state_dict()
elif fmt == "pt2":
    ep = torch.export.load(artifact)
    y, weights = ep.module()(x), ep.state_dict
else:
    import onnx
    import onnx.numpy_helper
    import onnxruntime
    s = onnxruntime.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    y = torch.from_numpy(s.run(None, {"input": x.numpy()})[0])
    weights = {i.name: torch.from_numpy(onnx.numpy_helper.to_array(i).copy())
               for i in onnx.load(artifact).graph.initializer}
torch.save({"y": y.detach(), "keys": sorted(weights),
            "zeros": {k: int((v == 0).sum()) for k, v in weights.items()},
            "shapes": {k: list(v.shape) for k, v in weights.items()},
            "sparsetrain": [k for k in sys.modules if k.startswith("sparsetrain")]}, result)
'''


def _reload_elsewhere(fmt: str, artifact: Path, x: torch.Tensor, tmp: Path) -> dict:
    """Run ``artifact`` in a fresh interpreter (the venv's) where sparsetrain cannot load."""
    if fmt == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed")
    (tmp / "reload.py").write_text(_RELOAD)
    torch.save(x, tmp / "x.pt")
    r = subprocess.run([sys.executable, str(tmp / "reload.py"), fmt, str(artifact.resolve()),
                        str(tmp / "x.pt"), str(tmp / "out.pt")], cwd=tmp, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = torch.load(tmp / "out.pt", weights_only=True)
    assert res["sparsetrain"] == []
    return res


def _export(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["export", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("fmt", FMTS)
def test_export_runs_without_sparsetrain_with_the_masks_folded_in(
        fmt: str, sparse_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = _export([str(sparse_run), "--format", fmt], capsys)
    assert code == 0, err
    artifact = tmp_path / "exports" / f"tiny-last.{fmt}"  # default: exports/<run>-<stem>.<ext>
    assert artifact.is_file() and f"wrote exports/tiny-last.{fmt}" in out
    assert sorted(p.name for p in artifact.parent.iterdir()) == sorted(
        [artifact.name, artifact.name + ".card.json", artifact.name + ".card.md"])
    ckpt = load_checkpoint(sparse_run)
    reference = load_model(ckpt, sparse_run).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))  # batch != 4
    res = _reload_elsewhere(fmt, artifact, x, tmp_path)
    with torch.no_grad():
        assert (res["y"] - reference(x)).abs().max() <= 1e-5
    assert not [k for k in res["keys"] if k.endswith("_mask")]
    masks = MaskSet.from_model(reference)
    assert len(masks.names) == 22  # 19 convs, 2 shortcut convs, fc
    for name, m in masks.masks.items():
        assert res["zeros"][name] == int((m == 0).sum()), name


def test_card_matches_the_masks_and_the_run(sparse_run: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = _export([str(sparse_run), "--format", "pt2", "--out", "m/model.pt2"], capsys)
    assert code == 0, err
    card = json.loads((tmp_path / "m/model.pt2.card.json").read_text())
    ckpt = load_checkpoint(sparse_run)
    reference = load_model(ckpt, sparse_run)
    masks = MaskSet.from_model(reference)
    counts = masks.counts()
    assert set(card["layers"]) == set(masks.names)
    for name, m in masks.masks.items():
        layer = card["layers"][name]
        assert layer["nonzero"] == counts[name] and layer["total"] == m.numel()
        assert layer["density"] == masks.layer_densities()[name]
    assert card["density"] == masks.density()
    params = list(reference.parameters())
    assert card["parameters"] == {"total": 272_474,  # the dense ResNet-20's, masks not counted
                                  "nonzero": sum(int(p.count_nonzero()) for p in params)}
    assert card["flops"] == {"dense": 81_626_368, "effective": flop_counts(reference)["sparse"]}
    assert card["macs"]["dense"] == 40_813_184
    assert card["architecture"] == "resnet20" and card["input_shape"] == [3, 32, 32]
    assert card["classes"] == CLASSES and card["num_classes"] == 10
    assert card["accuracy"]["test_acc"] == 0.625 and card["accuracy"]["section"] == "final"
    assert card["recipe"] == ckpt["config"]
    assert card["format"] == "pt2" and card["fold_bn"] is False
    assert card["versions"]["torch"] == torch.__version__ and card["versions"]["sparsetrain"]
    assert 0 <= card["check"]["max_abs_diff"] <= card["check"]["tolerance"] == 1e-4
    md = (tmp_path / "m/model.pt2.card.md").read_text()
    assert "| layer1.0.conv1.weight | 16x16x3x3 |" in md and "test_acc 0.6250" in md


def test_fold_batchnorm_hand_computed() -> None:
    """1x1 conv weights (2, 0), BN eps 0, var (4, 1), mean (1, .5), gamma (1, 3), beta (.5, -1):
    scale (1/2, 3), W' = (1, 0), b' = (0 - 1) / 2 + .5 = 0 and (0 - .5) * 3 - 1 = -2.5."""
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2, eps=0.0))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([2.0, 0.0]).reshape(2, 1, 1, 1))
        net[1].running_var.copy_(torch.tensor([4.0, 1.0]))
        net[1].running_mean.copy_(torch.tensor([1.0, 0.5]))
        net[1].weight.copy_(torch.tensor([1.0, 3.0]))
        net[1].bias.copy_(torch.tensor([0.5, -1.0]))
    x = torch.randn(2, 1, 3, 3)
    expected = net.eval()(x)
    folded, n = fold_batchnorm(net)
    assert n == 1 and not [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    assert folded.get_submodule("0").weight.flatten().tolist() == [1.0, 0.0]
    assert folded.get_submodule("0").bias.tolist() == [0.0, -2.5]
    assert torch.allclose(folded(x), expected, atol=1e-6)


class _SharedConv(nn.Module):
    """The conv's output feeds the BN and the residual sum: folding would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_fold_batchnorm_leaves_a_conv_with_other_users_alone() -> None:
    net = _SharedConv()
    _randomize_bn(net, 0)
    x = torch.randn(1, 2, 4, 4)
    expected = net.eval()(x)
    folded, n = fold_batchnorm(copy.deepcopy(net))
    assert n == 0 and torch.equal(folded(x), expected)


@pytest.mark.parametrize("name", list_models())
def test_fold_batchnorm_every_registered_model(name: str) -> None:
    """Every conv -> BN pair folds (WRN's pre-activation BNs follow an addition or the input of
    a block, not a conv, and stay); the output is the model's to fp32 rounding."""
    model = create_model(name)
    _randomize_bn(model, 7)
    model.eval()
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded, n = fold_batchnorm(plain_model(copy.deepcopy(model)))
    left = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert n + left == bns and n > 0
    if not name.startswith("wrn"):
        assert left == 0
    x = torch.randn(1, *model.input_size, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        y = model(x)
        assert (folded(x) - y).abs().max() <= 1e-5 * max(1.0, float(y.abs().max()))


def test_fold_bn_on_a_sparse_resnet(sparse_run: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    reference = load_model(load_checkpoint(sparse_run), sparse_run).eval()
    plain = plain_model(copy.deepcopy(reference))
    nonzero = {n: int(m.weight.count_nonzero()) for n, m in plain.named_modules()
               if isinstance(m, nn.Conv2d | nn.Linear)}
    folded, n = fold_batchnorm(plain)
    assert n == 21 and not [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {n: int(m.weight.count_nonzero()) for n, m in folded.named_modules()
            if isinstance(m, nn.Conv2d | nn.Linear)} == nonzero
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (folded(x) - reference(x)).abs().max() <= 1e-5
    monkeypatch.chdir(tmp_path)
    code, _, err = _export([str(sparse_run), "--format", "pt", "--fold-bn"], capsys)
    assert code == 0, err
    card = json.loads((tmp_path / "exports/tiny-last.pt.card.json").read_text())
    assert card["fold_bn"] is True and card["batchnorm_folded"] == 21
    assert card["check"]["tolerance"] == 1e-3 and card["check"]["max_abs_diff"] <= 1e-5
    assert card["parameters"]["total"] == 272_474 - 2 * sum(
        m.num_features for m in reference.modules() if isinstance(m, nn.BatchNorm2d)) + sum(
        m.out_channels for m in reference.modules() if isinstance(m, nn.Conv2d))
    assert set(card["layers"]) == {f"{k}.weight" for k in nonzero}
    res = _reload_elsewhere("pt", tmp_path / "exports/tiny-last.pt", x, tmp_path)
    assert not [k for k in res["keys"] if "bn" in k or "running" in k]
    with torch.no_grad():
        assert (res["y"] - reference(x)).abs().max() <= 1e-5


def test_channel_pruned_checkpoint_exports_a_plain_module(
        pruned_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    reference = load_model(load_checkpoint(pruned_ckpt), pruned_ckpt).eval()
    assert any(type(m) is SubsampledPointwiseConv2d for m in reference.modules())
    monkeypatch.chdir(tmp_path)
    code, _, err = _export([str(pruned_ckpt), "--format", "pt2", "--fold-bn"], capsys)
    assert code == 0, err
    artifact = tmp_path / "exports" / "ee-last.pt2"  # a folder with a last.pt counts as a run
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    res = _reload_elsewhere("pt2", artifact, x, tmp_path)
    with torch.no_grad():
        assert (res["y"] - reference(x)).abs().max() <= 1e-5
    pruned_shapes = {f"{n}.weight": list(m.weight.shape) for n, m in reference.named_modules()
                     if isinstance(m, nn.Conv2d | nn.Linear)}
    assert {k: res["shapes"][k] for k in pruned_shapes} == pruned_shapes
    assert pruned_shapes["layer2.0.shortcut.0.weight"] == [24, 12, 1, 1]
    program = torch.export.load(artifact)
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not [o for o in ops if "batch_norm" in o]
    assert all(o.startswith(("aten.", "<built-in")) for o in ops), ops
    card = json.loads((tmp_path / "exports/ee-last.pt2.card.json").read_text())
    assert card["channel_pruned"] is True and card["accuracy"] is None
    assert card["layers"]["layer2.0.shortcut.0.weight"]["shape"] == [24, 12, 1, 1]


def _off_by(fmt: Format, delta: float) -> Format:
    def load(path: Path):
        run = fmt.load(path)
        return lambda x: run(x) + delta
    return Format(fmt.name, fmt.suffix, fmt.save, load, fmt.runtime, fmt.requires)


def test_a_wrong_artifact_exits_1_and_leaves_nothing(
        sparse_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(FORMATS, "pt", _off_by(FORMATS["pt"], 1e-3))
    code, out, err = _export([str(sparse_run), "--format", "pt"], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "max abs" in err and "> --tolerance 0.0001" in err
    assert list(tmp_path.iterdir()) == []  # no artifact, no card, no exports/ folder
    # a looser tolerance accepts the same artifact; a failed --overwrite keeps it intact
    code, _, err = _export([str(sparse_run), "--format", "pt", "--tolerance", "2e-3"], capsys)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in (tmp_path / "exports").iterdir()}
    code, _, err = _export([str(sparse_run), "--format", "pt", "--overwrite"], capsys)
    assert code == 1 and "nothing written" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "exports").iterdir()} == before


@pytest.mark.parametrize("fmt", FMTS)
def test_bench_latency_times_exported_artifacts(fmt: str, pruned_ckpt: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """What a user ships is what they time: bench latency reads the artifact and its card."""
    from sparsetrain.evaluate.artifacts import load_timed

    monkeypatch.chdir(tmp_path)
    out = tmp_path / f"model.{fmt}"
    assert main(["export", str(pruned_ckpt), "--format", fmt, "--out", str(out)]) == 0
    card = json.loads(out.with_name(out.name + ".card.json").read_text())
    timed = load_timed(out)
    assert timed.macs == card["macs"]["effective"] > 0
    assert timed.kind == {"pt": "torchscript", "pt2": "torch.export", "onnx": "onnx"}[fmt]
    reference = load_model(load_checkpoint(pruned_ckpt), pruned_ckpt).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(timed.module(x), reference(x), atol=1e-4, rtol=1e-4)
    capsys.readouterr()
    assert main(["bench", "latency", str(out), str(pruned_ckpt), "--batch-sizes", "2",
                 "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [ln for ln in lines if str(out)[-40:] in ln]
    expected = ["fp32"] if fmt == "onnx" else ["fp32", "bf16"]
    assert [ln.split()[-4] for ln in rows] == expected
    assert f"{card['macs']['effective'] / 1e6:.1f}M" in rows[0]
    assert sum("checkpoint" in ln for ln in lines[1:]) == 2  # the checkpoint itself, 2 rows


def test_bench_latency_rejects_a_corrupt_artifact(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "broken.pt2"
    bad.write_bytes(b"not an archive")
    assert main(["bench", "latency", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.pt2" in err[0]
