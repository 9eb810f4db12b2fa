"""TensorBoard logging through the callback hooks (``train.log: [tensorboard]``)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from conftest import tiny_config, write_config
from sparsetrain import load_config, train
from sparsetrain.train.schedules import build_schedule

# `sparsetrain.train` is also the function, so the module is imported by its full name
tb = importlib.import_module("sparsetrain.train.tensorboard")


class FakeWriter:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir, self.scalars, self.closed = log_dir, [], False

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, float(value), int(step)))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_rigl_run_logs_steps_epochs_and_mask_updates(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    writers: list[FakeWriter] = []
    monkeypatch.setattr(tb, "_summary_writer", lambda d: writers.append(FakeWriter(d))
                        or writers[-1])
    cfg = load_config(write_config(tmp_path, tiny_config(
        tmp_path, train={"log": ["tensorboard"]},
        sparsity={"method": "rigl", "density": 0.2, "delta_t": 4})))
    train(cfg)
    (w,) = writers
    assert w.log_dir == cfg.run_dir / "tensorboard" and w.closed
    tags = {t for t, _, _ in w.scalars}
    steps = sorted(s for t, _, s in w.scalars if t == "train/loss_step")
    assert steps == [10]  # every 10 steps of 16
    schedule = build_schedule(cfg.train.schedule, epochs=2, steps_per_epoch=8,
                              warmup_epochs=cfg.train.warmup_epochs)
    ((lr, at),) = [(v, s) for t, v, s in w.scalars if t == "train/lr"]
    assert at == 10 and lr == pytest.approx(cfg.train.lr * schedule(9))  # step 10 used 9
    metrics = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    got = {(t, s): v for t, v, s in w.scalars}
    for m in metrics:
        for key in ("test_acc", "train_loss", "density", "itop"):
            assert got[(f"epoch/{key}", m["step"])] == pytest.approx(m[key])
    updates = [u for m in metrics for u in m.get("mask_updates", [])]
    assert {u["step"] for u in updates} >= {0, 4, 8}
    for u in updates:
        assert got[("mask/churn", u["step"])] == pytest.approx(u["churn"])
        assert got[("mask/itop", u["step"])] == pytest.approx(u["itop"])
    layer_tags = {t for t in tags if t.startswith("density/")}
    assert "density/conv1.weight" in layer_tags and len(layer_tags) == 22  # ResNet-20's masks


def test_real_event_file(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(write_config(tmp_path, tiny_config(
        tmp_path, train={"epochs": 1, "log": ["tensorboard"]})))
    s = train(cfg)
    acc = EventAccumulator(str(cfg.run_dir / "tensorboard"))
    acc.Reload()
    (event,) = acc.Scalars("epoch/test_acc")
    assert event.step == 8 and event.value == pytest.approx(s["final"]["test_acc"], abs=1e-6)


def test_missing_package_is_a_user_error_before_training(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from sparsetrain.errors import UserError

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises
    cfg = load_config(write_config(tmp_path, tiny_config(tmp_path, train={"log": ["tensorboard"]})))
    with pytest.raises(UserError, match="pip install tensorboard"):
        train(cfg)
    assert not cfg.run_dir.exists()  # checked before the run folder is claimed
