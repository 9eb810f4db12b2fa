"""Shared fixtures: a private data cache per test session and a tiny synthetic recipe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="session", autouse=True)
def _data_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never write to the user's cache; CI may point SPARSETRAIN_CACHE at a shared one."""
    if "SPARSETRAIN_CACHE" not in os.environ:
        os.environ["SPARSETRAIN_CACHE"] = str(tmp_path_factory.mktemp("cache"))


def tiny_config(tmp_path: Path, **sections: dict) -> dict:
    """A recipe on synthetic data that trains a ResNet-20 for a few dozen steps in fp32."""
    cfg = {
        "name": "tiny",
        "out_dir": str(tmp_path / "runs"),
        "seed": 0,
        "data": {"dataset": "synthetic", "path": "synthetic:512:256", "batch_size": 64,
                 "eval_batch_size": 128},
        "model": {"name": "resnet20"},
        "train": {"epochs": 2, "lr": 0.05, "warmup_epochs": 0.5, "precision": "fp32",
                  "progress": False, "threads": 1},
    }
    for key, val in sections.items():
        cfg[key] = {**cfg.get(key, {}), **val} if isinstance(val, dict) else val
    return cfg


def write_config(tmp_path: Path, cfg: dict) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (exact, reproducible CPU results); restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# Prepended to a child process's script: importing sparsetrain fails there, so an artifact that
# loads and runs needs nothing but torch (what a user ships).
BLOCK_SPARSETRAIN = """
import sys

class _NoSparsetrain:
    def find_spec(self, name, path=None, target=None):
        if name == "sparsetrain" or name.startswith("sparsetrain."):
            raise ImportError("sparsetrain is blocked in this process")
        return None

sys.meta_path.insert(0, _NoSparsetrain())
try:
    import sparsetrain  # noqa: F401
    raise SystemExit("sparsetrain is importable")
except ImportError:
    pass
"""
