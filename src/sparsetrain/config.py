"""Typed run configuration: YAML recipe + ``key=value`` overrides, validated before any work.

A recipe is a YAML mapping with the sections below; every key is typed and range-checked, and an
unknown key, a wrong type or an out-of-range value raises :class:`UserError` with one line that
names the key. The resolved config is saved as ``config.yaml`` in the run directory and inside
every checkpoint, so a checkpoint can be rebuilt without the recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sparsetrain.errors import UserError


class _Section(BaseModel):
    # inf/nan are rejected in every numeric field (train.lr=.inf would train a NaN run)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    dataset: str = "cifar10"
    path: str | None = None  # default: the dataset's default path (shared CIFAR-10 archive)
    val_size: int = Field(0, ge=0)  # images held out of train for validation/selection
    train_subset: int | None = Field(None, ge=1)  # first N (shuffled, seeded) train images
    test_subset: int | None = Field(None, ge=1)  # stratified N test images, same for all seeds
    loader: Literal["device", "stream"] = "device"  # stream: image folders too big for memory
    # stream loader input: folder = path/<split>/<class>/*.jpg; shards = tar shards written by
    # `python -m sparsetrain.data.shards write` (path/<split>/shard-*.tar + index.json)
    format: Literal["folder", "shards"] = "folder"
    batch_size: int = Field(128, ge=1)  # global: all data-parallel ranks together
    eval_batch_size: int = Field(512, ge=1)
    pad: int = Field(4, ge=0, le=16)
    padding_mode: Literal["reflect", "zeros"] = "reflect"
    flip: bool = True
    image_size: int = Field(224, ge=8)  # streaming loader: crop size (random-resized / center)
    workers: int = Field(2, ge=0)
    cache_dir: str | None = None

    @model_validator(mode="after")
    def _check_format(self) -> DataConfig:
        if self.format == "shards" and self.loader != "stream":
            raise ValueError("data.format 'shards' needs data.loader 'stream'")
        return self


class ModelConfig(_Section):
    name: str = "resnet20"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # start from these weights (a plain state_dict, a {"state_dict": ...} / {"model": ...}
    # checkpoint of torchvision, timm, Lightning or sparsetrain; "module." prefixes handled)
    init_from: str | None = None


class TrainConfig(_Section):
    epochs: int = Field(15, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(5e-4, ge=0)
    wd_exclude_norm_bias: bool = False
    schedule: Literal["cosine", "multistep", "constant", "onecycle"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    milestones: list[float] = Field(default_factory=list)  # epochs (fractions of an epoch ok)
    gamma: float = Field(0.1, gt=0, le=1)
    final_lr_frac: float = Field(0.0, ge=0, le=1)  # cosine ends at lr * final_lr_frac
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # fp64: float64 weights and batches, for numerical checks (e.g. data-parallel equivalence)
    precision: Literal["auto", "bf16", "fp32", "fp64"] = "auto"
    channels_last: bool = True
    compile: bool = False
    eval_every: int = Field(1, ge=1)  # epochs
    checkpoint_every: int = Field(0, ge=0)  # steps; 0 = only at the end of each epoch
    max_steps: int | None = Field(None, ge=1)  # stop early (smoke runs, tests)
    grad_clip: float | None = Field(None, gt=0)
    device: str = "auto"
    threads: int | None = Field(None, ge=1)
    progress: bool = True
    log: list[Literal["tensorboard"]] = Field(default_factory=list)  # extra loggers
    # data parallel (torchrun): BN statistics of the global batch (SyncBatchNorm on GPU, our
    # all-reduce BN on CPU); compare a hash of the masks across ranks after every update
    sync_bn: bool = False
    check_consistency: bool = False

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be < epochs")
        if any(not 0 < m <= self.epochs for m in self.milestones):
            raise ValueError(f"milestones {self.milestones} must lie in (0, epochs]")
        if sorted(self.milestones) != list(self.milestones):
            raise ValueError(f"milestones {self.milestones} must be increasing")
        if self.schedule == "multistep" and not self.milestones:
            raise ValueError("schedule 'multistep' needs milestones")
        return self


class SparsityConfig(_Section):
    """Unstructured sparsity (``sparsetrain list methods``); keys a method does not use must
    stay at their defaults."""

    method: str = "dense"
    density: float = Field(1.0, gt=0, le=1)  # global density over masked weights, 1 - sparsity
    budget: str = "erk"  # uniform, uniform_plus, er, erk, erk_plus, global, snip_ratio, ...
    score: str = "random"  # random, magnitude, snip, grasp, synflow
    bernoulli: bool = False  # i.i.d. draws at the layer densities instead of exact top-k
    dense_first: bool = False
    dense_classifier: bool = False
    include: list[str] | None = None  # fnmatch patterns of parameter names to mask
    exclude: list[str] | None = None
    seed: int | None = Field(None, ge=0)  # default: the run seed
    score_batches: int = Field(1, ge=1)  # training batches seen by data-dependent scores
    budget_options: dict[str, Any] = Field(default_factory=dict)
    # "N:M" (e.g. "2:4"): at most N active weights in every M consecutive input channels, for
    # every method; layers whose input dim is not a multiple of M stay dense (README, N:M)
    structure: str = "unstructured"
    # methods that change masks during training (None: the method's own default).
    # Times: steps (1000), epochs ("80ep") or a fraction of the run ("50%").
    initial_density: float | None = Field(None, gt=0, le=1)  # GMP/GraNet start (GraNet-ST 0.5)
    t_start: int | str | None = None  # GMP/GraNet t_0 (default 0)
    t_end: int | str | None = None  # GMP/GraNet t_f (default "50%"), SET/RigL T_end ("75%")
    delta_t: int | None = Field(None, ge=1)  # steps between mask updates (default 100)
    update_fraction: float | None = Field(None, ge=0, le=1)  # GraNet r_0 (0.5), SET/RigL α_0 (0.3)
    update_fraction_min: float | None = Field(None, ge=0, le=1)  # GraNet r_min (0.005)
    pruning: Literal["global", "layerwise"] | None = None  # GMP/GraNet threshold (global)
    regrow_after_prune_end: bool | None = None  # GraNet keeps regenerating after t_f (true)
    # GraNet: a weight pruned and regrown in one update restarts at zero ("zero", official) or
    # keeps its value and momentum ("keep", an ablation)
    revive: Literal["zero", "keep"] | None = None

    @field_validator("structure", mode="before")
    @classmethod
    def _sexagesimal(cls, v: Any) -> Any:
        # YAML 1.1 reads an unquoted 2:4 as the base-60 integer 124: read it back as "2:4"
        if isinstance(v, int) and not isinstance(v, bool) and v >= 60:
            return f"{v // 60}:{v % 60}"
        return v

    @model_validator(mode="after")
    def _density_given(self) -> SparsityConfig:
        # a sparse method with the default density 1 would train dense under a sparse label
        if self.method != "dense" and "density" not in self.model_fields_set:
            raise ValueError(f"method {self.method!r} needs sparsity.density, the fraction of "
                             "weights kept (e.g. 0.1 for 90% sparsity; 1 keeps all)")
        return self


class DistillConfig(_Section):
    """Knowledge distillation from teacher checkpoints (MEAL V2 style); off without teachers."""

    teachers: list[str] = Field(default_factory=list)  # checkpoint paths (last.pt / best.pt)
    temperature: float = Field(1.0, gt=0)
    alpha: float = Field(0.0, ge=0, le=1)  # weight of the label loss; 0 = pure distillation
    # MEAL V2's discriminator (official form): its loss on student vs teacher logits is added to
    # the student's; it takes SGD steps at the student's LR
    discriminator: bool = False
    cache: str | None = None  # directory of cached soft labels (shared by students, same seed)


class RunConfig(_Section):
    name: str = "run"
    out_dir: str = "runs"
    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sparsity: SparsityConfig = Field(default_factory=SparsityConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        from sparsetrain.rundir import check_run_name

        try:
            return check_run_name(v, "run name")
        except UserError as e:
            raise ValueError(str(e)) from None

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.epochs=30"`` -> (["train", "epochs"], 30); the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {item!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise UserError(f"override {item!r}: value is not valid YAML ({e.problem})") from None
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (copying), creating sections as needed."""
    out = _deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise UserError(f"override {item!r}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """Configs saved in checkpoints by earlier versions, rewritten to the current schema."""
    out = _deepcopy(raw)
    data = out.get("data", {})
    if data.get("loader") == "auto":  # 0.1.0 before the loader choice became explicit
        data["loader"] = "device"
    if "image_size" in data and data["image_size"] is None:
        del data["image_size"]
    return out


def validate(raw: dict[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig`, turning the first validation problem into one line."""
    if not isinstance(raw, dict):
        raise UserError("config must be a YAML mapping of sections")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = err.get("input")
        hide = err["type"] in ("extra_forbidden", "value_error") or isinstance(got, dict)
        text = repr(got)
        shown = "" if hide else f" (got {text if len(text) <= 60 else text[:57] + '...'})"
        raise UserError(f"config error at {loc}: {msg}{shown}") from None


def read_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe's raw mapping; ``base: other.yaml`` (relative to the recipe) is read first and
    the recipe's sections are merged over it key by key."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    if p.resolve() in _seen:
        raise UserError(f"config {p} includes itself through 'base'")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {p} is not valid YAML: {e}".splitlines()[0]) from None
    except UnicodeDecodeError as e:
        raise UserError(f"config file {p} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"cannot read config file {p}: {e.strerror}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {p} must be a YAML mapping of sections")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base.strip():
        raise UserError(f"config file {p}: 'base' must be one recipe file name, got {base!r}")
    return _merge(read_recipe(p.parent / base, (*_seen, p.resolve())), raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = _deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML recipe (or defaults when ``path`` is None) and apply overrides; a relative
    data path is located (current directory, ``$SPARSETRAIN_DATA``, the recipe's folder and
    those above it: :mod:`sparsetrain.data.locate`) and stored absolute."""
    from sparsetrain.data.locate import locate_data_path

    raw = read_recipe(path) if path is not None else {}
    cfg = validate(apply_overrides(raw, overrides or []))
    found = locate_data_path(cfg.data.path, cfg.data.dataset,
                             Path(path).parent if path is not None else None)
    if found is not None and found != cfg.data.path:
        cfg.data.path = found
    return cfg


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
