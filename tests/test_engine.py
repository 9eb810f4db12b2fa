"""Training engine: learning happens, callbacks fire, runs resume exactly after a real kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_config, write_config
from sparsetrain import Callback, load_config, train
from sparsetrain.checkpoint import load_checkpoint


class Recorder(Callback):
    name = "recorder"

    def __init__(self) -> None:
        self.events: list[str] = []
        self.grad_seen_dense = False
        self.count = 0

    def before_optimizer_step(self, trainer) -> None:
        self.events.append("before")
        self.grad_seen_dense = all(p.grad is not None for p in trainer.model.parameters())

    def after_optimizer_step(self, trainer) -> None:
        self.events.append("after")
        self.count += 1

    def on_epoch_end(self, trainer, metrics) -> None:
        metrics["recorded_steps"] = self.count

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]


def test_training_learns_and_writes_the_run_directory(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, tiny_config(tmp_path, train={"epochs": 3})))
    rec = Recorder()
    summary = train(cfg, callbacks=[rec])
    run = cfg.run_dir
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "last.pt",
                                              "best.pt", "summary.json"}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert [m["step"] for m in lines] == [8, 16, 24]  # 512 images / batch 64, drop_last
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert summary["final"]["test_acc"] > 0.5  # 10 classes: chance is 0.1
    assert summary["steps"] == 24 and summary["epochs"] == 3
    assert summary["params"]["total"] == summary["params"]["nonzero"] == 272_474
    assert rec.events[:4] == ["before", "after", "before", "after"] and rec.grad_seen_dense
    assert [m["recorded_steps"] for m in lines] == [8, 16, 24]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["trainer"]["callbacks"]["recorder"] == {"count": 24}
    assert ckpt["trainer"]["step"] == 24
    saved = json.loads((run / "summary.json").read_text())
    assert saved["final"] == summary["final"] and saved["versions"]["torch"] == torch.__version__


def test_validation_split_selects_best_checkpoint(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, tiny_config(
        tmp_path, data={"val_size": 128}, train={"epochs": 3})))
    summary = train(cfg)
    lines = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    best_epoch = max(lines, key=lambda m: (m["val_acc"], -m["epoch"]))["epoch"]
    assert summary["best"]["selected_on"] == "val_acc"
    assert summary["best"]["epoch"] == best_epoch
    best = load_checkpoint(cfg.run_dir / "best.pt")
    assert best["metrics"]["epoch"] == best_epoch


def test_max_steps_and_bf16_autocast(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, tiny_config(
        tmp_path, train={"max_steps": 5, "precision": "bf16"})))
    summary = train(cfg)
    assert summary["steps"] == 5 and summary["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in load_checkpoint(
        cfg.run_dir / "last.pt")["model"].values() if p.is_floating_point())


@pytest.mark.parametrize(("asked", "fast", "resolved", "warns"), [
    ("bf16", False, "bf16", True),  # honoured, but the user is told it is emulated
    ("bf16", True, "bf16", False),
    ("auto", False, "fp32", False),
    ("auto", True, "bf16", False),
    ("fp32", False, "fp32", False),
])
def test_bf16_without_bf16_units_warns(monkeypatch, asked: str, fast: bool, resolved: str,
                                       warns: bool) -> None:
    import warnings

    from sparsetrain import precision as prec
    monkeypatch.setattr(prec, "has_fast_bf16", lambda device: fast)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert prec.resolve_precision(asked, torch.device("cpu")) == resolved
    slow = [w for w in caught if issubclass(w.category, prec.SlowPrecisionWarning)]
    assert len(slow) == int(warns)
    if warns:
        assert "emulated" in str(slow[0].message) and "fp32" in str(slow[0].message)


def _run_cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "sparsetrain", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_killed_run_resumes_to_identical_weights(tmp_path: Path) -> None:
    """Kill -9 a real training process mid-epoch; the resumed run must end bitwise equal
    to an uninterrupted one (fp32, CPU, one thread)."""
    cfg = tiny_config(tmp_path, data={"path": "synthetic:1024:128"},
                      train={"epochs": 3, "checkpoint_every": 5})
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref = _run_cli(["train", "--config", str(write_config(ref_dir, cfg))])
    assert ref.wait(timeout=300) == 0, ref.stdout.read()

    cfg["out_dir"] = str(tmp_path / "killed_runs")
    kdir = tmp_path / "killed"
    kdir.mkdir()
    recipe = write_config(kdir, cfg)
    proc = _run_cli(["train", "--config", str(recipe)])
    last = Path(cfg["out_dir"]) / "tiny" / "last.pt"
    killed_at = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.is_file():
            state = torch.load(last, weights_only=True)["trainer"]
            # 16 steps per epoch; checkpoints every 5 steps: kill after one mid-epoch 2
            if state["epoch"] == 1 and state["batch_in_epoch"] > 0:
                proc.send_signal(signal.SIGKILL)
                killed_at = state["step"]
                break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, "kill did not land"
    resumed = _run_cli(["train", "--config", str(recipe), "--resume"])
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "resuming" in out

    a = load_checkpoint(tmp_path / "runs" / "tiny" / "last.pt")
    b = load_checkpoint(last)
    assert a["trainer"]["step"] == b["trainer"]["step"] == 48
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for sa, sb in zip(a["trainer"]["optimizer"]["state"].values(),
                      b["trainer"]["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    lines = (Path(cfg["out_dir"]) / "tiny" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


@pytest.mark.parametrize("precision", ["fp32"])
def test_same_seed_same_result_in_process(tmp_path: Path, precision: str) -> None:
    results = []
    for i in range(2):
        cfg = load_config(write_config(tmp_path, tiny_config(
            tmp_path, name=f"r{i}", train={"max_steps": 6, "precision": precision})))
        train(cfg)
        results.append(load_checkpoint(cfg.run_dir / "last.pt")["model"])
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k


def test_streaming_loader_trains_and_evaluates(tmp_path: Path) -> None:
    """Image folders of mixed sizes through the streaming loader (worker-free here)."""
    import numpy as np
    from PIL import Image

    from sparsetrain.evaluate.checkpoint import evaluate_checkpoint

    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    for split, n in (("train", 16), ("test", 6)):
        for c, level in (("dark", 40), ("bright", 210)):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = 20 + i % 3, 24 - i % 4
                arr = np.clip(level + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    cfg = load_config(write_config(tmp_path, tiny_config(tmp_path, data={
        "dataset": "imagefolder", "path": str(root), "loader": "stream", "image_size": 16,
        "workers": 0, "batch_size": 8, "eval_batch_size": 5})))
    summary = train(cfg)
    assert summary["steps"] == 8  # 32 images, batch 8, 2 epochs
    res = evaluate_checkpoint(cfg.run_dir / "last.pt", batch_size=5)
    assert res["n"] == 12
    assert res["acc"] == pytest.approx(summary["final"]["test_acc"], abs=1e-9)


class _DieAtEpochEnd(Callback):
    """Stands in for a kill between the step checkpoint after an epoch's last batch and the
    end-of-epoch save."""

    name = "die"

    def on_epoch_end(self, trainer, metrics) -> None:
        raise RuntimeError("killed")


def test_resume_at_an_epoch_end_logs_the_scheduled_lr(tmp_path: Path) -> None:
    """The epoch's metrics line of such a resumed run shows the LR the schedule used last,
    not the base LR (it trains no batch before that line)."""
    ref = load_config(write_config(tmp_path, tiny_config(tmp_path, name="ref",
                                                         train={"checkpoint_every": 8})))
    train(ref)
    cfg = load_config(write_config(tmp_path, tiny_config(tmp_path, name="cut",
                                                         train={"checkpoint_every": 8})))
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, callbacks=[_DieAtEpochEnd()])
    state = load_checkpoint(cfg.run_dir / "last.pt")["trainer"]
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (0, 8, 8)
    train(cfg, resume=True)
    want = [json.loads(x) for x in (ref.run_dir / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["lr"] for m in got] == [m["lr"] for m in want]
    assert got[0]["lr"] != cfg.train.lr  # 0.05 is the base; step 7 is past the warm-up peak


def test_one_console_line_per_epoch_without_a_progress_bar(tmp_path: Path, capsys) -> None:
    cfg = load_config(write_config(tmp_path, tiny_config(tmp_path)))  # progress: false
    train(cfg)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    metrics = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [ln.split()[1] for ln in lines] == ["1/2", "2/2"]
    assert f"test {100 * metrics[-1]['test_acc']:.2f}%" in lines[-1]
    assert "img/s" in lines[-1] and "loss" in lines[-1]
