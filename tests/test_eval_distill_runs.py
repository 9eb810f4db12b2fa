"""End to end: `sparsetrain eval` on all axes, and `distill:` sections in recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import tiny_config, write_config
from sparsetrain import load_config, train
from sparsetrain.cli import main


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("teacher")
    cfg = load_config(write_config(tmp, tiny_config(tmp, name="teacher", train={"epochs": 2})))
    train(cfg)
    return cfg.run_dir / "last.pt"


def test_eval_all_axes_and_record(teacher: Path, capsys) -> None:
    assert main(["eval", str(teacher), "--ood", "gaussian,blur", "--attack", "fgsm,pgd",
                 "--eps", "0,8", "--attack-images", "64", "--latency", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 256 and 0 <= res["ece"] <= 1 and res["nll"] > 0
    assert set(res["ood"]) == {"gaussian", "blur"}
    assert all(0 <= r["auroc"] <= 1 for r in res["ood"].values())
    rob = res["robustness"]
    assert rob["fgsm"]["0/255"] == rob["clean"]  # FGSM at eps 0 is the clean accuracy
    assert rob["pgd"]["8/255"] <= rob["fgsm"]["8/255"] + 1e-9
    assert res["params"]["total"] == 272_474 and res["flops"]["dense"] == 81_626_368
    assert {"fp32_b1", "fp32_b64", "bf16_b1", "bf16_b64"} <= set(res["latency"])
    summary = json.loads((teacher.parent / "summary.json").read_text())
    assert summary["eval"]["last.pt"]["top1"] == res["top1"]
    assert main(["eval", str(teacher), "--ood", "fog"]) == 2
    assert "fog" in capsys.readouterr().err
    assert main(["eval", str(teacher), "--eps", "x"]) == 2


def test_distill_section_trains_a_sparse_student(tmp_path: Path, teacher: Path) -> None:
    cfg = load_config(write_config(tmp_path, tiny_config(
        tmp_path, name="student", train={"epochs": 1},
        sparsity={"method": "static", "density": 0.5},
        distill={"teachers": [str(teacher)], "temperature": 4.0, "alpha": 0.5})))
    summary = train(cfg)
    lines = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["kd_loss"] > 0
    assert summary["density"]["global"] == pytest.approx(0.5, abs=1e-5)
    assert "distill" in summary


def test_missing_teacher_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    recipe = write_config(tmp_path, tiny_config(tmp_path, distill={"teachers": ["nope.pt"]}))
    assert main(["train", "--config", str(recipe)]) == 2
    assert "teacher checkpoint not found: nope.pt" in capsys.readouterr().err


def test_report_command(teacher: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "rep" / "report.html"
    assert main(["report", str(teacher.parent), "--out", str(out)]) == 0
    html = out.read_text()
    assert "teacher" in html and "data:image/png;base64," in html
    assert out.with_suffix(".md").is_file()
    assert main(["report", str(teacher.parent), "--out", str(tmp_path / "r.md")]) == 2
    assert capsys.readouterr().err.startswith("sparsetrain: error: ")


def test_prune_eagleeye_then_eval_and_latency(teacher: Path, tmp_path: Path, capsys) -> None:
    recipe = write_config(tmp_path, tiny_config(tmp_path, name="ee", train={"epochs": 1}))
    assert main(["prune", "eagleeye", "--config", str(recipe), "--checkpoint", str(teacher),
                 "--flops", "0.6", "--candidates", "3", "--abn-batches", "2",
                 "--tolerance", "0.02", "--no-baselines", "data.val_size=128"]) == 0
    run = tmp_path / "runs" / "ee"
    lines = (run / "candidates.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert all(abs(json.loads(x)["macs_ratio"] - 0.6) <= 0.02 for x in lines)
    summary = json.loads((run / "summary.json").read_text())
    assert abs(summary["structured"]["macs"] / summary["structured"]["macs_dense"] - 0.6) <= 0.02
    capsys.readouterr()
    assert main(["eval", str(run / "last.pt"), "--json", "--no-record"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["params"]["total"] == summary["structured"]["params"]
    assert main(["bench", "latency", str(run / "last.pt"), str(teacher), "--batch-sizes", "1",
                 "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("fp32") == 2 and out.count("bf16") == 2
    assert main(["prune", "eagleeye", "--config", str(recipe), "--checkpoint", str(teacher),
                 "--flops", "1.5"]) == 2
