"""Config: YAML + overrides, typed and validated with one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsetrain.config import apply_overrides, load_config, to_yaml, validate
from sparsetrain.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_recipes_validate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every shipped recipe parses, names a registered model, and its sparsity section builds
    the method (options a method does not use are errors)."""
    from sparsetrain.train.run import check_config

    monkeypatch.chdir(REPO)  # recipes point at ../shared/data relative to the checkout
    recipes = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(recipes) >= 40
    teacher_run = load_config(REPO / "configs/cpu/dense_resnet56_cifar10.yaml").run_dir
    stand_in = tmp_path / "teacher.pt"
    stand_in.write_bytes(b"")  # existence is all check_config looks at
    for p in recipes:
        cfg = load_config(p, ["data.path=synthetic"])
        if cfg.distill.teachers:  # shipped distillation recipes name the recipe-trained teacher
            assert cfg.distill.teachers == [str(teacher_run / "last.pt")], p
            cfg = load_config(p, ["data.path=synthetic", f"distill.teachers=[{stand_in}]"])
        check_config(cfg)


def test_cpu_protocol_recipe_values() -> None:
    cfg = load_config(REPO / "configs/cpu/dense_resnet20_cifar10.yaml")
    t = cfg.train
    assert (t.epochs, cfg.data.batch_size, t.lr, t.momentum, t.nesterov) == (15, 128, 0.1, 0.9,
                                                                             True)
    assert (t.schedule, t.warmup_epochs, t.weight_decay, t.precision) == ("cosine", 1, 5e-4,
                                                                          "bf16")
    paper = load_config(REPO / "configs/dense_resnet20_cifar10.yaml")
    assert paper.train.epochs == 160 and paper.train.milestones == [80, 120]


def test_overrides_are_parsed_as_yaml() -> None:
    cfg = load_config(None, ["train.epochs=30", "train.lr=0.2", "data.flip=false",
                             "train.milestones=[10, 20]", "model.kwargs={width: 2}"])
    assert cfg.train.epochs == 30 and cfg.train.lr == 0.2 and cfg.data.flip is False
    assert cfg.train.milestones == [10.0, 20.0] and cfg.model.kwargs == {"width": 2}
    raw = {"train": {"epochs": 1}}
    out = apply_overrides(raw, ["train.epochs=2"])
    assert raw["train"]["epochs"] == 1 and out["train"]["epochs"] == 2  # no mutation


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.epohcs=3", "train.epohcs: unknown key"),
        ("train.epochs=zero", "train.epochs"),
        ("train.epochs=0", "train.epochs: Input should be greater than or equal to 1"),
        ("train.lr=-1", "train.lr"),
        ("train.precision=fp8", "train.precision"),
        ("data.padding_mode=edge", "data.padding_mode"),
        ("train.warmup_epochs=20", "warmup_epochs (20.0) must be < epochs"),
        ("train.momentum=1.5", "train.momentum"),
        ("nonsense", "not of the form key=value"),
    ],
)
def test_bad_values_give_one_line_errors(override: str, fragment: str) -> None:
    with pytest.raises(UserError) as exc:
        load_config(None, [override])
    msg = str(exc.value)
    assert fragment in msg and "\n" not in msg


def test_missing_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_yaml_round_trip() -> None:
    import yaml

    cfg = load_config(None, ["train.epochs=7", "name=x"])
    again = validate(yaml.safe_load(to_yaml(cfg)))
    assert again == cfg


def test_old_checkpoint_configs_are_upgraded() -> None:
    from sparsetrain.config import upgrade

    old = {"data": {"loader": "auto", "image_size": None}, "train": {"epochs": 3}}
    with pytest.raises(UserError, match=r"data\.loader"):
        validate(old)
    cfg = validate(upgrade(old))
    assert cfg.data.loader == "device" and cfg.data.image_size == 224
    assert old["data"]["loader"] == "auto"  # the input is not modified
