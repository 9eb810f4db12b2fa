"""Run folders: names stay inside the runs folder, a run is claimed once, a lock dies with its
process, only the command that made a run writes into it again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config, write_config
from sparsetrain.errors import UserError
from sparsetrain.rundir import LOCK, MARKER, RunDir, check_run_name, made_by

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["a", "run-1_x.y", "ÜnicodeRun", "a" * 200, "a b"])
def test_plain_names_pass(name: str) -> None:
    assert check_run_name(name) == name


@pytest.mark.parametrize(("name", "fragment"), [
    ("", "non-empty"), ("  ", "non-empty"), ("../x", "single folder"), ("a/b", "single folder"),
    ("/abs", "single folder"), ("..", "single folder"), (".", "single folder"),
    ("a\\b", "single folder"), (".hidden", "must not start"), ("a\nb", "control"),
    ("a" * 201, "at most 200"), (5, "non-empty folder name"),
])
def test_bad_names_fail(name: object, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        check_run_name(name)


def test_claim_marks_locks_and_refuses_a_second_claim(tmp_path: Path) -> None:
    with RunDir.claim(tmp_path / "runs", "a", command="train") as run:
        assert json.loads((run.path / MARKER).read_text())["command"] == "train"
        assert json.loads((run.path / LOCK).read_text())["pid"] == os.getpid()
        with pytest.raises(UserError, match="in use by process"):  # same folder, resumed
            RunDir.claim(tmp_path / "runs", "a", command="train", resume=True)
    with pytest.raises(UserError, match="already exists"):  # finished: needs --resume
        RunDir.claim(tmp_path / "runs", "a", command="train")
    with pytest.raises(UserError, match="made by `sparsetrain train`"):
        RunDir.claim(tmp_path / "runs", "a", command="lottery", resume=True)
    RunDir.claim(tmp_path / "runs", "a", command="train", resume=True).release()


def test_empty_existing_folder_can_be_claimed_and_abandon_removes_it(tmp_path: Path) -> None:
    (tmp_path / "runs" / "a").mkdir(parents=True)
    run = RunDir.claim(tmp_path / "runs", "a", command="oneshot")
    assert not run.created  # it was there: abandon leaves the folder
    run.abandon()
    assert (tmp_path / "runs" / "a").is_dir()
    new = RunDir.claim(tmp_path / "out", "b", command="train")
    new.abandon()  # failed before writing anything: no trace, not even the runs folder
    assert not (tmp_path / "out").exists()
    kept = RunDir.claim(tmp_path / "runs", "c", command="train")
    (kept.path / "last.pt").write_bytes(b"x")
    kept.abandon()  # a checkpoint exists: kept for --resume
    assert (kept.path / "last.pt").is_file() and made_by(kept.path) == ("train",)


def test_legacy_runs_are_recognised_by_their_files(tmp_path: Path) -> None:
    for files, cmds in ((["search.json"], ("prune eagleeye",)), (["rewind.pt"], ("lottery",)),
                        (["last.pt"], ("train", "oneshot")), ([], ())):
        d = tmp_path / "_".join(files or ["none"])
        d.mkdir()
        for f in files:
            (d / f).write_bytes(b"")
        assert made_by(d) == cmds


def test_children_and_stale_temp_files(tmp_path: Path) -> None:
    with RunDir.claim(tmp_path, "lth", command="lottery") as run:
        (run.path / ".last.pt.x1.tmp").write_bytes(b"")
        with run.child("round_0") as sub:
            assert made_by(sub.path) == ("lottery",)
            with pytest.raises(UserError, match="in use"):
                run.child("round_0")
        with pytest.raises(UserError, match="single folder"):
            run.child("../x")
    with RunDir.claim(tmp_path, "lth", command="lottery", resume=True) as run:
        assert not (run.path / ".last.pt.x1.tmp").exists()


def test_a_killed_owner_leaves_no_stale_lock(tmp_path: Path) -> None:
    """The lock is an flock: the kernel drops it when its process dies (kill -9)."""
    code = textwrap.dedent(f"""
        import sys, time
        from sparsetrain.rundir import RunDir
        run = RunDir.claim({str(tmp_path)!r}, "held", command="train")
        print("claimed", flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "claimed"
        with pytest.raises(UserError, match=f"in use by process {p.pid}"):
            RunDir.claim(tmp_path, "held", command="train", resume=True)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    RunDir.claim(tmp_path, "held", command="train", resume=True).release()


def test_two_same_name_starts_exactly_one_runs(tmp_path: Path) -> None:
    """Two real `sparsetrain train` processes started together with one name: one trains, the
    other stops with a one-line error, and the run holds one run's metrics only."""
    cfg = tiny_config(tmp_path, name="twin", train={"epochs": 2, "max_steps": 10})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "sparsetrain.cli", "train", "--config",
           str(tmp_path / "recipe.yaml")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    t0 = time.monotonic()
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert time.monotonic() - t0 < 600
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    last = loser[2].strip().splitlines()[-1]
    assert last.startswith("sparsetrain: error: run directory ") and (
        "in use by process" in last or "already exists" in last), last
    run = tmp_path / "runs" / "twin"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert json.loads((run / "summary.json").read_text())["steps"] == 10


def test_summary_records_the_commit_the_run_started_with(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # a commit made while a run trains must not relabel the code that ran
    from sparsetrain import load_config, train, utils
    from sparsetrain.callbacks import Callback

    head = {"now": "a" * 40}
    monkeypatch.setattr(utils, "_head", lambda: head["now"])

    class CommitDuringTheRun(Callback):
        def on_epoch_end(self, trainer, metrics) -> None:
            head["now"] = "b" * 40

    utils.git_commit.cache_clear()
    try:
        cfg = load_config(write_config(tmp_path, tiny_config(tmp_path, train={"epochs": 1})))
        summary = train(cfg, callbacks=[CommitDuringTheRun()])
    finally:
        utils.git_commit.cache_clear()
    assert head["now"] == "b" * 40  # the callback ran: HEAD moved during the run
    assert summary["git_commit"] == "a" * 40
    saved = json.loads((cfg.run_dir / "summary.json").read_text())
    assert saved["git_commit"] == "a" * 40
