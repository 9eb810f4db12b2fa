"""Recipes inside the package, data found from anywhere, and a wheel that works outside the
checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from sparsetrain.cli import list_recipes, recipes_dir, resolve_recipe
from sparsetrain.config import load_config
from sparsetrain.data.locate import locate_data_path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def test_recipes_ship_inside_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    import sparsetrain

    monkeypatch.delenv("SPARSETRAIN_RECIPES", raising=False)
    monkeypatch.chdir(tmp_path)  # names resolve from anywhere
    assert recipes_dir() == Path(sparsetrain.__file__).parent / "configs"
    assert resolve_recipe("quickstart") == recipes_dir() / "quickstart.yaml"
    assert {"quickstart", "smoke", "cpu/dense_resnet20_cifar10"} <= set(list_recipes())
    assert (REPO / "configs").resolve() == recipes_dir().resolve()  # the checkout's link


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """repo/recipes/r.yaml beside shared/data/d.tar.gz; cwd elsewhere; no SPARSETRAIN_DATA."""
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "d.tar.gz").write_bytes(b"")
    (tmp_path / "repo" / "recipes").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.delenv("SPARSETRAIN_DATA", raising=False)
    return tmp_path


def test_locate_relative_to_the_recipe_and_its_ancestors(tree: Path) -> None:
    found = locate_data_path("../shared/data/d.tar.gz", "cifar10", tree / "repo" / "recipes")
    assert found == str(tree / "shared" / "data" / "d.tar.gz")


def test_locate_relative_to_the_current_directory_first(tree: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree / "repo")
    (tree / "repo" / "d.tar.gz").write_bytes(b"")
    assert locate_data_path("d.tar.gz", "cifar10", None) == str(tree / "repo" / "d.tar.gz")


def test_locate_in_the_environment_folders(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tree / "other"
    other.mkdir()
    (other / "d.tar.gz").write_bytes(b"")
    monkeypatch.setenv("SPARSETRAIN_DATA", os.pathsep.join([str(tree / "none"), str(other)]))
    assert locate_data_path("data/d.tar.gz", "cifar10", None) == str(other / "d.tar.gz")
    monkeypatch.setenv("SPARSETRAIN_DATA", str(other / "d.tar.gz"))  # the file itself
    assert locate_data_path("x/d.tar.gz", "cifar10", None) == str(other / "d.tar.gz")


def test_locate_leaves_absolute_synthetic_and_unknown_alone(tree: Path) -> None:
    assert locate_data_path("/no/such/file", "cifar10", tree) == "/no/such/file"
    assert locate_data_path("synthetic:64:32", "synthetic", tree) == "synthetic:64:32"
    assert locate_data_path("missing.tar.gz", "cifar10", tree / "repo") is None
    assert locate_data_path(None, "no_such_dataset", tree) is None


def test_load_config_stores_the_located_path(tree: Path) -> None:
    recipe = tree / "repo" / "recipes" / "r.yaml"
    recipe.write_text("data:\n  path: ../shared/data/d.tar.gz\n")
    assert load_config(recipe).data.path == str(tree / "shared" / "data" / "d.tar.gz")


def test_missing_data_says_how_to_point_at_it(tree: Path, capsys) -> None:
    from sparsetrain.cli import main

    recipe = tree / "repo" / "recipes" / "r.yaml"
    recipe.write_text("data:\n  path: ../nowhere/d.tar.gz\nout_dir: runs\n")
    assert main(["train", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "data path not found: ../nowhere/d.tar.gz" in err and "SPARSETRAIN_DATA" in err


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-jpeg.tar.gz").is_file(),
                    reason="the shared CIFAR-10 archive is not beside the checkout")
def test_wheel_installed_outside_the_checkout_runs_quickstart(tmp_path: Path) -> None:
    """Build a wheel, install it into a fresh venv (the current environment's packages, not
    its editable sparsetrain, made visible to it), and train the packaged quickstart recipe
    from a folder outside the checkout with only SPARSETRAIN_DATA pointing at the data."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", str(REPO), "-w", str(wheels)], check=True, capture_output=True,
                   timeout=300)
    (wheel,) = wheels.glob("sparsetrain-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True,
                   timeout=300)
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    # a .pth line only appends the folder: the editable install's own .pth there is not run
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_outer_env.pth").write_text("\n".join(sorted(deps)) + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "SPARSETRAIN_DATA": str(SHARED_DATA), "PYTHONPATH": ""}
    env.pop("SPARSETRAIN_RECIPES", None)
    where = subprocess.run([str(py), "-c", "import sparsetrain; print(sparsetrain.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(site)), where.stdout
    exe = str(venv / "bin" / "sparsetrain")
    listed = subprocess.run([exe, "list", "recipes"], cwd=work, env=env, capture_output=True,
                            text=True, timeout=120)
    assert "  quickstart\n" in listed.stdout and "  cpu/dense_resnet20_cifar10\n" in listed.stdout
    run = subprocess.run([exe, "train", "--config", "quickstart", "train.max_steps=5",
                          "train.progress=false", "data.test_subset=500", "name=wheel"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    summary = json.loads((work / "runs" / "wheel" / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["final"]["test_acc"] > 0
    saved = (work / "runs" / "wheel" / "config.yaml").read_text()
    assert str(SHARED_DATA / "cifar10-jpeg.tar.gz") in saved
