"""Shared fixtures: a private data cache per test session and a tiny synthetic recipe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
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
