"""The command line: bad input gives one line and exit code 2 and touches nothing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from conftest import tiny_config, write_config
from sparsetrain.cli import build_parser, main


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("sparsetrain: error: ")
    return err


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["model.name=resnet21"], "resnet21"),
        (["data.dataset=cifar11"], "cifar11"),
        (["data.path=/nonexistent/data.tar.gz"], "/nonexistent/data.tar.gz"),
        (["train.epochs=-3"], "train.epochs"),
        (["train.optimiser=sgd"], "train.optimiser: unknown key"),
        (["train.device=cuda"], "cuda"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: list[str], fragment: str
) -> None:
    recipe = write_config(tmp_path, tiny_config(tmp_path))
    if overrides == ["train.device=cuda"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    assert main(["train", "--config", str(recipe), *overrides]) == 2
    assert fragment in _err_line(capsys)
    assert not (tmp_path / "runs").exists()  # nothing was created


def test_existing_run_is_not_overwritten(tmp_path: Path, capsys) -> None:
    recipe = write_config(tmp_path, tiny_config(tmp_path, train={"max_steps": 2}))
    assert main(["train", "--config", str(recipe)]) == 0
    run = tmp_path / "runs" / "tiny"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert main(["train", "--config", str(recipe)]) == 2
    assert "already exists" in _err_line(capsys)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resume_without_checkpoint_and_missing_config(tmp_path: Path, capsys) -> None:
    recipe = write_config(tmp_path, tiny_config(tmp_path))
    assert main(["train", "--config", str(recipe), "--resume"]) == 2
    assert "no checkpoint" in _err_line(capsys)
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in _err_line(capsys)


def test_eval_matches_training_summary_and_rejects_corrupt(tmp_path: Path, capsys) -> None:
    recipe = write_config(tmp_path, tiny_config(tmp_path, train={"epochs": 1}))
    assert main(["train", "--config", str(recipe)]) == 0
    run = tmp_path / "runs" / "tiny"
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run / "last.pt"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 256
    assert res["acc"] == pytest.approx(summary["final"]["test_acc"], abs=1e-9)
    assert res["loss"] == pytest.approx(summary["final"]["test_loss"], rel=1e-5)

    bad = tmp_path / "bad.pt"
    bad.write_bytes((run / "last.pt").read_bytes()[:1000])
    assert main(["eval", str(bad)]) == 2
    assert "corrupt" in _err_line(capsys)
    assert main(["eval", str(tmp_path / "none.pt")]) == 2
    assert "not found" in _err_line(capsys)


def test_resume_a_run_directory_with_more_epochs(tmp_path: Path, capsys) -> None:
    recipe = write_config(tmp_path, tiny_config(tmp_path, train={"epochs": 1}))
    assert main(["train", "--config", str(recipe)]) == 0
    run = tmp_path / "runs" / "tiny"
    assert main(["train", "--resume", str(run), "train.epochs=2"]) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and lines[-1]["step"] == 16


def test_list(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("resnet20", "resnet50", "mobilenet_v2", "cifar10", "synthetic",
                 "cpu/dense_resnet20_cifar10", "smoke"):
        assert f"  {name}\n" in out
    assert main(["list", "recipes"]) == 0
    assert "models" not in capsys.readouterr().out


def test_prune_eagleeye_search_only(tmp_path: Path, capsys) -> None:
    """``--no-finetune``: the search runs and the one-line result names its best candidate;
    a bad ``--holdout`` is a one-line error."""
    import torch

    from sparsetrain.checkpoint import save_checkpoint
    from sparsetrain.models import create_model

    recipe = write_config(tmp_path, tiny_config(tmp_path, data={"path": "synthetic:128:32"}))
    save_checkpoint({"format": 1, "config": {"model": {"name": "resnet20", "kwargs": {}}},
                     "model": create_model("resnet20").state_dict(),
                     "classes": [f"c{k}" for k in range(10)]}, tmp_path / "dense.pt")
    torch.manual_seed(0)
    args = ["prune", "eagleeye", "--config", str(recipe), "--checkpoint",
            str(tmp_path / "dense.pt"), "--candidates", "2", "--abn-batches", "1",
            "--no-finetune"]
    assert main([*args, "--holdout", "-5"]) == 2
    assert "--holdout" in _err_line(capsys)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "EagleEye search: 2 candidates, best adaptive-BN score" in out
    run_dir = Path(out.strip().rsplit("run dir ", 1)[1])
    assert len((run_dir / "candidates.jsonl").read_text().splitlines()) == 2
    best = out.split("best adaptive-BN score ", 1)[1].split(";")[0]
    # --from-search: another run reuses the finished search; a bad source is a one-line error
    for source, fragment in ((tmp_path / "nothing", "no readable search.json"),
                             (run_dir, "abn_batches 1 there, 2 now")):
        assert main([*args[:-3], "--abn-batches", "2", "--no-finetune", "--from-search",
                     str(source), "name=again"]) == 2
        assert fragment in _err_line(capsys)
        assert not (run_dir.parent / "again").exists()
    assert main([*args, "--from-search", str(run_dir), "name=again"]) == 0
    assert f"best adaptive-BN score {best};" in capsys.readouterr().out
    assert (run_dir.parent / "again" / "candidates.jsonl").read_bytes() == (
        run_dir / "candidates.jsonl").read_bytes()


def _parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return [p] + [q for s in subs for child in s.choices.values() for q in _parsers(child)]


def test_every_option_has_help_and_every_command_an_example() -> None:
    parsers = _parsers(build_parser())
    assert len(parsers) >= 12  # the top level, 9 commands, prune eagleeye, bench latency
    for p in parsers:
        assert p.epilog and p.epilog.startswith("examples:\n  sparsetrain"), p.prog
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction | argparse._HelpAction):
                continue
            assert a.help and a.help.strip(), f"{p.prog} {a.option_strings or a.dest}"


def test_eagleeye_cli_defaults_are_the_library_defaults() -> None:
    """The CLI's search defaults are EagleEyeOptions's (the adaptive-BN batch count is a
    measured trade-off: one number, in one place)."""
    from sparsetrain.structured.eagleeye import EagleEyeOptions

    args = build_parser().parse_args(["prune", "eagleeye", "-c", "x.yaml"])
    want = EagleEyeOptions()
    for field in ("flops", "candidates", "r_min", "r_max", "tolerance", "abn_batches",
                  "holdout", "importance"):
        assert getattr(args, field) == getattr(want, field), field
    # the band: exact MACs are held to 0.5%, noisy latency timings to 2%, unless given
    assert want.band() == 0.005
    assert EagleEyeOptions(latency=0.5).band() == 0.02
    assert EagleEyeOptions(latency=0.5, tolerance=0.04).band() == 0.04


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == "sparsetrain 0.1.0"


def test_list_into_a_closed_pipe_is_quiet() -> None:
    """`sparsetrain list | head`: no BrokenPipeError traceback when the reader leaves (here
    `true`, which exits before the listing is written, so every write meets a closed pipe)."""
    import subprocess
    import sys

    r = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m sparsetrain.cli "
                        "list | true"], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (0, "")
