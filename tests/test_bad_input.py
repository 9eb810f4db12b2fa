"""Bad input, as a table: every command, every kind of mistake a user can make.

Each case runs the real CLI in a fresh copy of a small world (a recipe, a finished run, crafted
files) and asserts: exit code 2; one line ``sparsetrain: error: ...`` that ends stderr, contains
the expected fragment and is the only error output (no traceback); every file that existed
before is byte-identical afterwards, and no file or folder was added (the run folder's
``.lock`` may get its owner line rewritten, and is compared by presence only).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_config
from sparsetrain.checkpoint import save_checkpoint
from sparsetrain.cli import main
from sparsetrain.models import create_model

Prep = Callable[[Path], None]


def _recipe(world: Path) -> dict:
    cfg = tiny_config(world, name="done", out_dir="runs",
                      data={"path": "synthetic:256:128"},
                      train={"epochs": 1, "max_steps": 2, "warmup_epochs": 0})
    cfg["out_dir"] = "runs"  # relative: the world is copied, the cases run inside the copy
    return cfg


def _image_folder(root: Path, train: list[str], test: list[str]) -> None:
    from PIL import Image

    for split, classes in (("train", train), ("test", test)):
        for k, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (40 * k, 10 * i, 0)).save(d / f"{i}.png")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """recipe.yaml, a finished run runs/done, and crafted bad files."""
    w = tmp_path_factory.mktemp("world")
    cwd = Path.cwd()
    os.chdir(w)
    try:
        (w / "recipe.yaml").write_text(yaml.safe_dump(_recipe(w)))
        assert main(["train", "--config", "recipe.yaml"]) == 0
    finally:
        os.chdir(cwd)
    (w / "notutf8.yaml").write_bytes(b"name: caf\xe9\n")
    (w / "base5.yaml").write_text("base: 5\nname: x\n")
    (w / "baselist.yaml").write_text("base: [recipe.yaml]\nname: x\n")
    (w / "garbage.pt").write_bytes(b"\x80\x02 not a checkpoint at all")
    (w / "runs" / "afile").write_text("a file where a run would go\n")
    (w / "afile").write_text("a file\n")
    (w / "notes.html").write_text("<html>my own notes</html>\n")
    (w / "page.md").write_text("# my own page\n")
    (w / "empty").mkdir()
    save_checkpoint({"model": {"x": torch.zeros(2)}}, w / "fake.pt")
    torch.save([1, 2, 3], w / "notdict.pt")
    r20 = {"model": {"name": "resnet20", "kwargs": {}}}
    classes = [f"c{k}" for k in range(10)]
    save_checkpoint({"config": {"model": {"name": "nope"}}, "classes": classes,
                     "model": {}}, w / "badconfig.pt")
    save_checkpoint({"config": r20, "classes": classes,
                     "model": create_model("resnet32").state_dict()}, w / "shape.pt")
    save_checkpoint({"config": {"model": {"name": "resnet32", "kwargs": {}}}, "classes": classes,
                     "model": create_model("resnet32").state_dict()}, w / "r32.pt")
    _image_folder(w / "folder", ["cat", "dog"], ["cat", "cow"])
    return w


def _corrupt_summary(w: Path) -> None:
    (w / "runs/done/summary.json").write_text('{"final": {"test_acc": 0.1')


def _best_over_last(w: Path) -> None:
    shutil.copyfile(w / "runs/done/best.pt", w / "runs/done/last.pt")


def _bad_metrics_line(w: Path) -> None:
    m = w / "runs/done/metrics.jsonl"
    m.write_text("{not json}\n" + m.read_text())


def _truncated_last(w: Path) -> None:
    p = w / "runs/done/last.pt"
    p.write_bytes(p.read_bytes()[:2000])


def _made_by_lottery(w: Path) -> None:
    (w / "runs/done/.sparsetrain-run.json").write_text('{"command": "lottery"}\n')


def _bad_marker(w: Path) -> None:
    (w / "runs/done/.sparsetrain-run.json").write_text("{broken")


def _unfinished_search(w: Path) -> None:
    (w / "half").mkdir()
    (w / "half" / "search.json").write_text('{"settings": {}}')


def _finished_search(w: Path) -> None:
    cwd = Path.cwd()
    os.chdir(w)
    try:
        assert main([*EE, "--no-finetune", "name=s"]) == 0
    finally:
        os.chdir(cwd)


T, R = ["train", "-c", "recipe.yaml"], ["train", "--resume", "runs/done"]
E, L = ["eval"], ["bench", "latency"]
ONE = ["oneshot", "-c", "recipe.yaml", "--checkpoint", "runs/done/last.pt"]
LOT = ["lottery", "-c", "recipe.yaml", "--rounds", "1"]
EE = ["prune", "eagleeye", "-c", "recipe.yaml", "--checkpoint", "runs/done/last.pt",
      "--candidates", "2", "--abn-batches", "1"]
REP = ["report", "runs/done"]
CKPT = "runs/done/last.pt"
X = ["export", CKPT, "--format", "pt"]
HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript"))

# (id, argv, message fragment, preparation of the world)
CASES: list[tuple[str, list[str], str, Prep | None]] = [
    # -- recipes and overrides ------------------------------------------------------------
    ("recipe-not-utf8", ["train", "-c", "notutf8.yaml"], "not UTF-8", None),
    ("recipe-base-number", ["train", "-c", "base5.yaml"], "'base' must be", None),
    ("recipe-base-list", ["train", "-c", "baselist.yaml"], "'base' must be", None),
    ("recipe-missing", ["train", "-c", "missing.yaml"], "missing.yaml", None),
    ("recipe-is-folder", ["train", "-c", "empty"], "empty", None),
    ("override-no-equals", [*T, "train.epochs"], "key=value", None),
    ("override-bad-yaml", [*T, "train.milestones=[1,"], "not valid YAML", None),
    ("override-not-section", [*T, "name.x=1"], "not a section", None),
    ("unknown-key", [*T, "train.optimiser=sgd"], "train.optimiser: unknown key", None),
    ("epochs-zero", [*T, "train.epochs=0"], "train.epochs", None),
    ("epochs-text", [*T, "train.epochs=ten"], "train.epochs", None),
    ("lr-inf", [*T, "train.lr=.inf"], "train.lr: Input should be a finite number", None),
    ("lr-huge", [*T, "train.lr=1e400"], "train.lr: Input should be a finite number", None),
    ("lr-nan", [*T, "train.lr=.nan"], "train.lr", None),
    ("wd-inf", [*T, "train.weight_decay=.inf"], "train.weight_decay", None),
    ("momentum-range", [*T, "train.momentum=1.5"], "train.momentum", None),
    ("batch-negative", [*T, "data.batch_size=-1"], "data.batch_size", None),
    ("warmup-too-long", [*T, "train.warmup_epochs=5"], "warmup_epochs", None),
    ("milestones-unsorted", [*T, "train.schedule=multistep", "train.milestones=[1,0.5]"],
     "increasing", None),
    ("model-unknown", [*T, "model.name=resnet21"], "resnet21", None),
    ("model-kwargs", [*T, "model.kwargs={depth: 3}"], "depth", None),
    ("dataset-unknown", [*T, "data.dataset=cifar11"], "cifar11", None),
    ("data-missing", [*T, "data.path=/nonexistent/data.tar.gz"], "/nonexistent/data.tar.gz",
     None),
    ("device-unknown", [*T, "train.device=tpu"], "tpu", None),
    ("teacher-missing", [*T, "distill.teachers=[missing.pt]"], "missing.pt", None),
    ("init-from-missing", [*T, "model.init_from=missing.pth", "name=i"],
     "weights file not found", None),
    ("init-from-other-model", [*T, "model.init_from=r32.pt", "name=i"],
     "does not fit the model (unexpected", None),
    ("init-from-not-weights", [*T, "model.init_from=notdict.pt", "name=i"],
     "holds no state dict", None),
    ("method-unknown", [*T, "sparsity.method=foo", "sparsity.density=0.1"], "foo", None),
    ("method-without-density", [*T, "sparsity.method=rigl"], "needs sparsity.density", None),
    ("density-zero", [*T, "sparsity.method=static", "sparsity.density=0"], "sparsity.density",
     None),
    ("density-above-one", [*T, "sparsity.method=static", "sparsity.density=1.5"],
     "sparsity.density", None),
    ("budget-unknown", [*T, "sparsity.method=static", "sparsity.density=0.1",
                        "sparsity.budget=nope"], "nope", None),
    ("structure-text", [*T, "sparsity.method=static", "sparsity.density=0.1",
                        "sparsity.structure=half"], "'unstructured' or 'N:M'", None),
    ("structure-n-above-m", [*T, "sparsity.method=static", "sparsity.density=0.1",
                             "sparsity.structure=4:2"], "1 <= N < M", None),
    ("structure-density", [*T, "sparsity.method=rigl", "sparsity.density=0.7",
                           "sparsity.structure=2:4"], "keeps at most 0.5", None),
    ("structure-dense", [*T, "sparsity.structure=2:4"], "needs a sparse method", None),
    ("structure-bernoulli", [*T, "sparsity.method=static", "sparsity.density=0.1",
                             "sparsity.bernoulli=true", "sparsity.structure=2:4"],
     "exact top-k", None),
    ("revive-unknown", [*T, "sparsity.method=granet", "sparsity.density=0.1",
                        "sparsity.revive=reset"], "sparsity.revive", None),
    ("imagefolder-classes", [*T, "data.dataset=imagefolder", "data.path=folder", "name=f"],
     "different classes (test classes not in train: cow)", None),
    # -- run names and folders ------------------------------------------------------------
    ("name-parent", [*T, "name=../escape"], "single folder name", None),
    ("name-nested", [*T, "name=a/b"], "single folder name", None),
    ("name-absolute", [*T, "name=/tmp/sparsetrain-escape"], "single folder name", None),
    ("name-dotdot", [*T, "name=.."], "single folder name", None),
    ("name-hidden", [*T, "name=.hidden"], "must not start with '.'", None),
    ("name-too-long", [*T, "name=" + "a" * 300], "at most 200", None),
    ("name-is-file", [*T, "name=afile"], "exists and is not a folder", None),
    ("name-exists", [*T], "already exists", None),
    ("out-dir-is-file", [*T, "out_dir=afile", "name=x"], "not a folder", None),
    ("out-dir-under-file", [*T, "out_dir=afile/runs", "name=x"], "cannot create", None),
    # -- resume ---------------------------------------------------------------------------
    ("resume-nothing", [*T, "--resume", "name=nothing"], "no checkpoint", None),
    ("resume-not-a-run", ["train", "--resume", "empty"], "no config.yaml", None),
    ("resume-other-model", [*R, "model.name=resnet32"], "model.name is 'resnet32' here", None),
    ("resume-other-method", [*R, "sparsity.method=static", "sparsity.density=0.5"],
     "sparsity.density is 0.5 here but 1.0 in the run", None),
    ("resume-other-seed", [*R, "seed=3"], "seed is 3 here but 0", None),
    ("resume-best-as-last", R, "no training state", _best_over_last),
    ("resume-truncated-last", R, "corrupt", _truncated_last),
    ("resume-corrupt-summary", R, "summary.json is corrupt", _corrupt_summary),
    ("resume-corrupt-metrics", R, "metrics.jsonl line 1 is corrupt", _bad_metrics_line),
    ("resume-other-command", R, "made by `sparsetrain lottery`", _made_by_lottery),
    ("resume-corrupt-marker", R, ".sparsetrain-run.json is corrupt", _bad_marker),
    ("oneshot-budget-unknown", [*ONE, "--budget", "nope", "sparsity.density=0.1", "name=o"],
     "unknown oneshot budget 'nope'", None),
    ("oneshot-two-sources", [*ONE, "model.init_from=r32.pt", "sparsity.density=0.1",
                             "name=o"], "give exactly one", None),
    ("oneshot-no-source", ["oneshot", "-c", "recipe.yaml", "sparsity.density=0.1", "name=o"],
     "give exactly one", None),
    ("eagleeye-no-source", ["prune", "eagleeye", "-c", "recipe.yaml", "name=e"],
     "give exactly one", None),
    ("eagleeye-two-sources", [*EE, "model.init_from=r32.pt", "name=e"], "give exactly one",
     None),
    # -- eval -----------------------------------------------------------------------------
    ("eval-missing", [*E, "missing.pt"], "not found", None),
    ("eval-garbage", [*E, "garbage.pt"], "corrupt", None),
    ("eval-not-dict", [*E, "notdict.pt"], "not a sparsetrain checkpoint", None),
    ("eval-fake-dict", [*E, "fake.pt"], "not a sparsetrain model checkpoint", None),
    ("eval-bad-config", [*E, "badconfig.pt"], "nope", None),
    ("eval-other-shape", [*E, "shape.pt"], "does not fit the model", None),
    ("eval-attack-images", [*E, CKPT, "--attack-images", "-1"], "must be >= 1", None),
    ("eval-eps-text", [*E, CKPT, "--attack", "fgsm", "--eps", "abc"], "--eps", None),
    ("eval-eps-negative", [*E, CKPT, "--attack", "fgsm", "--eps", "-1"], "--eps", None),
    ("eval-batch-zero", [*E, CKPT, "--batch-size", "0"], "must be >= 1", None),
    ("eval-ood-unknown", [*E, CKPT, "--ood", "nope"], "unknown OOD set", None),
    ("eval-data-missing", [*E, CKPT, "--data-path", "/nonexistent"], "/nonexistent", None),
    # -- bench latency --------------------------------------------------------------------
    ("latency-repeats-zero", [*L, CKPT, "--repeats", "0"], "must be >= 1", None),
    ("latency-repeats-text", [*L, CKPT, "--repeats", "x"], "not a whole number", None),
    ("latency-batch-zero", [*L, CKPT, "--batch-sizes", "0"], "must be >= 1", None),
    ("latency-fake", [*L, "fake.pt"], "not a sparsetrain model checkpoint", None),
    ("latency-missing", [*L, CKPT, "missing.pt"], "not found", None),
    # -- oneshot --------------------------------------------------------------------------
    ("oneshot-existing-name", [*ONE, "sparsity.density=0.1", "name=done"], "already exists",
     None),
    ("oneshot-no-density", [*ONE, "name=o"], "must be below 1", None),
    ("oneshot-other-model", ["oneshot", "-c", "recipe.yaml", "--checkpoint", "r32.pt",
                             "sparsity.density=0.1", "name=o"], "holds model 'resnet32'", None),
    ("oneshot-missing-ckpt", ["oneshot", "-c", "recipe.yaml", "--checkpoint", "missing.pt",
                              "sparsity.density=0.1", "name=o"], "not found", None),
    ("oneshot-resume-nothing", [*ONE, "sparsity.density=0.1", "name=o", "--resume"],
     "no run at", None),
    ("oneshot-resume-train-run", [*ONE, "sparsity.density=0.1", "--resume"],
     "made by `sparsetrain train`", None),
    # -- lottery --------------------------------------------------------------------------
    ("lottery-rounds-zero", ["lottery", "-c", "recipe.yaml", "--rounds", "0"], "must be >= 1",
     None),
    ("lottery-fraction", [*LOT, "--prune-fraction", "1.5", "name=l"], "prune_fraction", None),
    ("lottery-fraction-nan", [*LOT, "--prune-fraction", "nan", "name=l"], "finite", None),
    ("lottery-existing-name", LOT, "already exists", None),
    ("lottery-resume-train-run", [*LOT, "--resume"], "made by `sparsetrain train`", None),
    ("lottery-bad-rewind", [*LOT, "--rewind", "99ep", "name=l"], "rewind step", None),
    # -- prune eagleeye -------------------------------------------------------------------
    ("eagleeye-existing-name", EE, "already exists", None),
    ("eagleeye-flops", [*EE, "--flops", "1.5", "name=e"], "--flops", None),
    ("eagleeye-ratios", [*EE, "--r-min", "0.8", "--r-max", "0.5", "name=e"], "--r-min", None),
    ("eagleeye-candidates", [*EE, "--candidates", "0", "name=e"], "must be >= 1", None),
    ("eagleeye-round-to", [*EE, "--round-to", "0", "name=e"], "must be >= 1", None),
    ("eagleeye-round-to-word", [*EE, "--round-to", "fast", "name=e"], "not a whole number",
     None),
    ("eagleeye-latency", [*EE, "--latency", "1.5", "name=e"], "--latency", None),
    ("eagleeye-latency-nan", [*EE, "--latency", "nan", "name=e"], "finite", None),
    ("eagleeye-latency-fixed-step", [*EE, "--latency", "0.5", "--round-to", "8", "name=e"],
     "--round-to auto", None),
    ("eagleeye-latency-prefilter", [*EE, "--latency", "0.5", "--latency-prefilter", "0.001",
                                    "name=e"], "--latency-prefilter", None),
    ("eagleeye-latency-batch", [*EE, "--latency", "0.5", "--latency-batch", "0", "name=e"],
     "must be >= 1", None),
    ("eagleeye-baseline", [*EE, "--baselines", "l2", "name=e"], "unknown EagleEye baseline",
     None),
    ("eagleeye-fake-ckpt", ["prune", "eagleeye", "-c", "recipe.yaml", "--checkpoint",
                            "fake.pt", "name=e"], "not a sparsetrain model checkpoint", None),
    ("eagleeye-other-model", ["prune", "eagleeye", "-c", "recipe.yaml", "--checkpoint",
                              "r32.pt", "name=e"], "not the checkpoint's", None),
    ("eagleeye-resume-train-run", [*EE, "--resume"], "made by `sparsetrain train`", None),
    ("eagleeye-from-search-empty", [*EE, "--from-search", "empty", "name=e"],
     "no readable search.json", None),
    ("eagleeye-from-search-train-run", [*EE, "--from-search", "runs/done", "name=e"],
     "no readable search.json", None),
    ("eagleeye-from-search-unfinished", [*EE, "--from-search", "half", "name=e"],
     "did not finish", _unfinished_search),
    ("eagleeye-from-search-other-settings", [*EE, "--from-search", "runs/s", "--flops", "0.4",
                                             "name=e"], "flops_target 0.5 there, 0.4 now",
     _finished_search),
    # -- report ---------------------------------------------------------------------------
    ("report-over-checkpoint", [*REP, "--out", "runs/done/last.pt"], "inside the run folder",
     None),
    ("report-over-summary", [*REP, "--out", "runs/done/summary.json"],
     "inside the run folder", None),
    ("report-over-own-file", [*REP, "--out", "notes.html"], "not a sparsetrain report", None),
    ("report-over-markdown", [*REP, "--out", "page.html"], "page.md exists", None),
    ("report-no-such-run", ["report", "nowhere", "--out", "r.html"], "no such run directory",
     None),
    ("report-no-runs", ["report", "empty", "--out", "r.html"], "no runs found", None),
    ("report-out-markdown", [*REP, "--out", "r.md"], "HTML file path", None),
    ("report-filter-form", [*REP, "--out", "r.html", "--filter", "method"], "key=pattern",
     None),
    ("report-filter-nothing", [*REP, "--out", "r.html", "--filter", "model=vgg*"],
     "no run matches", None),
    # -- export ---------------------------------------------------------------------------
    ("export-missing", ["export", "missing.pt", "--format", "pt"], "not found", None),
    ("export-garbage", ["export", "garbage.pt", "--format", "pt"], "corrupt", None),
    ("export-fake", ["export", "fake.pt", "--format", "pt2"],
     "not a sparsetrain model checkpoint", None),
    ("export-format-unknown", ["export", CKPT, "--format", "tflite"], "invalid choice", None),
    ("export-out-in-run", [*X, "--out", "runs/done/model.pt"], "inside the run folder", None),
    ("export-out-in-run-subfolder", [*X, "--out", "runs/done/new/model.pt"],
     "inside the run folder", None),
    ("export-out-exists", [*X, "--out", "afile"], "afile exists; pass --overwrite", None),
    ("export-out-folder", [*X, "--out", "empty"], "is a folder", None),
    ("export-over-checkpoint", ["export", "r32.pt", "--format", "pt", "--out", "r32.pt",
                                "--overwrite"], "is the checkpoint itself", None),
    ("export-tolerance-negative", [*X, "--tolerance", "-1"], "--tolerance must be >= 0", None),
    *([("export-onnx-without-extra", ["export", CKPT, "--format", "onnx"],
        "pip install 'sparsetrain[export]'", None)] if not HAS_ONNX else []),
    # -- budget and list ------------------------------------------------------------------
    ("budget-density-zero", ["budget", "--model", "resnet20", "--density", "0"], "(0, 1]",
     None),
    ("budget-density-nan", ["budget", "--model", "resnet20", "--density", "nan"], "finite",
     None),
    ("budget-model", ["budget", "--model", "nope", "--density", "0.1"], "unknown model", None),
    ("budget-name", ["budget", "--model", "resnet20", "--budget", "nope", "--density", "0.1"],
     "unknown budget", None),
    ("list-unknown", ["list", "nope"], "invalid choice", None),
    ("command-unknown", ["fly"], "invalid choice", None),
]


def _snapshot(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = None if p.is_dir() or p.name == ".lock" else p.read_bytes()
    return out


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = int(e.code or 0)
    return code, capsys.readouterr().err.strip()


def test_the_table_is_large_and_unique() -> None:
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("argv", "fragment", "prep"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input(world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str,
                   prep: Prep | None) -> None:
    if "train.device=tpu" in argv and torch.cuda.is_available():
        pytest.skip("a GPU machine")
    here = tmp_path / "w"
    shutil.copytree(world, here)
    if prep is not None:
        prep(here)
    monkeypatch.chdir(here)
    before = _snapshot(here)
    code, err = _run(argv, capsys)
    assert code == 2, err
    last = err.splitlines()[-1]  # progress lines (decoding a data set) may come before it
    assert last.startswith("sparsetrain: error: ") and "Traceback" not in err, err
    assert err.count("error") == last.count("error"), err
    assert fragment in last, err
    assert _snapshot(here) == before  # nothing written, nothing changed, nothing left behind
    assert not Path("/tmp/sparsetrain-escape").exists()


# -- the right thing, where there is one --------------------------------------------------
def test_resume_drops_a_torn_last_metrics_line(world: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A run killed while appending its metrics resumes (the torn line was logged after the
    checkpoint, so it is dropped and written again)."""
    here = tmp_path / "w"
    shutil.copytree(world, here)
    monkeypatch.chdir(here)
    m = here / "runs/done/metrics.jsonl"
    good = m.read_text()
    m.write_text(good + '{"epoch": 2, "step": 4, "lr"')
    code, err = _run([*R, "train.epochs=2", "train.max_steps=4"], capsys)
    assert code == 0, err
    lines = [json.loads(x) for x in m.read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4]


def test_stale_temp_files_are_removed_on_resume(world: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    here = tmp_path / "w"
    shutil.copytree(world, here)
    monkeypatch.chdir(here)
    stale = here / "runs/done/.last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    code, err = _run([*R, "train.epochs=2", "train.max_steps=3"], capsys)
    assert code == 0, err
    assert not stale.exists()


def test_disk_full_is_one_line_and_keeps_the_checkpoint(
        world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """No space left while saving: one line naming the file, the previous last.pt intact, no
    temp file left behind."""
    import errno

    import sparsetrain.checkpoint as ck

    here = tmp_path / "w"
    shutil.copytree(world, here)
    monkeypatch.chdir(here)
    last = (here / "runs/done/last.pt").read_bytes()

    def full(obj, f) -> None:
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full)
    code, err = _run([*R, "train.epochs=2", "train.max_steps=3"], capsys)
    assert code == 2
    assert err.startswith("sparsetrain: error: cannot write ") and err.count("\n") == 0
    assert ".pt: No space left on device" in err and "unchanged" in err
    assert (here / "runs/done/last.pt").read_bytes() == last
    assert not list((here / "runs/done").glob(".*.tmp"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_runs_folder_fails_before_any_work(world: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys) -> None:
    here = tmp_path / "w"
    shutil.copytree(world, here)
    monkeypatch.chdir(here)
    (here / "runs").chmod(0o555)
    try:
        code, err = _run([*T, "name=new"], capsys)
    finally:
        (here / "runs").chmod(0o755)
    assert code == 2 and "cannot create run directory" in err


def test_eval_test_split_with_fewer_classes_is_relabelled_by_name(tmp_path: Path) -> None:
    """An image folder whose test split lacks a training class still scores each image
    against its own class (labels follow the class names, not the per-split index)."""
    from sparsetrain.config import validate
    from sparsetrain.train.run import load_data

    _image_folder(tmp_path / "f", ["ant", "bee", "cat"], ["ant", "cat"])
    cfg = validate(tiny_config(tmp_path, data={"dataset": "imagefolder",
                                               "path": str(tmp_path / "f")}))
    data = load_data(cfg)
    assert data.test.classes == ("ant", "bee", "cat")
    assert data.test.labels.tolist() == [0, 0, 2, 2]
