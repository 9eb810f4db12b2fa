"""A training run from a validated config: data, model, optimizer, engine, run directory.

``train(cfg)`` is what ``sparsetrain train`` calls. Everything that can be checked before
training (names, paths, the run directory) is checked first; failures are :class:`UserError`
and leave existing files untouched.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsetrain.callbacks import Callback
from sparsetrain.checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_write_bytes,
    init_from,
    load_checkpoint,
    load_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json,
)
from sparsetrain.config import RunConfig, SparsityConfig, to_yaml
from sparsetrain.data import (
    DatasetInfo,
    DeviceLoader,
    ImageArrays,
    StreamLoader,
    get_dataset_info,
    is_synthetic_spec,
    load_split,
    train_val_split,
)
from sparsetrain.data.shards import open_stream
from sparsetrain.data.stream import (
    CenterCrop,
    Compose,
    ImageFolderStream,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
)
from sparsetrain.distributed import (
    DistContext,
    MaskConsistency,
    convert_sync_batchnorm,
    init_from_env,
    wrap_ddp,
)
from sparsetrain.errors import UserError
from sparsetrain.models import create_model, model_info
from sparsetrain.models.flops import sparse_flops
from sparsetrain.precision import resolve_device, resolve_precision
from sparsetrain.rundir import RunDir, read_metrics, read_summary, truncate_metrics
from sparsetrain.sparsity.methods import SparsityMethod, method_from_config
from sparsetrain.train.engine import Trainer
from sparsetrain.train.optim import build_optimizer
from sparsetrain.train.schedules import build_schedule
from sparsetrain.train.tensorboard import TensorBoardLogger, require_tensorboard
from sparsetrain.utils import environment, git_commit


@dataclass
class DataBundle:
    """Splits as in-memory arrays (device loader) or lazy image folders (stream loader)."""

    info: DatasetInfo
    train: ImageArrays | ImageFolderStream
    val: ImageArrays | None
    test: ImageArrays | ImageFolderStream

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)


def data_path(cfg: RunConfig) -> str:
    path = cfg.data.path or get_dataset_info(cfg.data.dataset).default_path
    if path is None:
        raise UserError(f"dataset {cfg.data.dataset!r} needs data.path")
    return path


def load_test_split(cfg: RunConfig, path: str) -> ImageArrays | ImageFolderStream:
    d = cfg.data
    if d.loader == "stream":
        size = d.image_size
        tf = Compose([Resize(round(size * 256 / 224)), CenterCrop(size)])
        split = "val" if Path(path, "val").is_dir() else "test"
        return open_stream(path, split, tf, fmt=d.format)
    test = load_split(d.dataset, path, "test", cache_dir=d.cache_dir)
    if d.test_subset is not None and d.test_subset < len(test):
        # stratified and the same for every run seed (archives are often stored class by
        # class, so the first N images can be a single class)
        test = test.subset(train_val_split(test.labels, d.test_subset, seed=0)[1])
    return test


def load_data(cfg: RunConfig) -> DataBundle:
    """Decode (once, cached) and split the configured data set, or index its image folders."""
    d = cfg.data
    info, path = get_dataset_info(d.dataset), data_path(cfg)
    if d.loader == "stream":
        if d.val_size or d.train_subset:
            raise UserError("data.val_size and data.train_subset need the device loader")
        tf = Compose([RandomResizedCrop(d.image_size, draft=True), RandomHorizontalFlip()])
        train = open_stream(path, "train", tf, seed=cfg.seed, fmt=d.format)
        test = load_test_split(cfg, path)
        if list(test.classes) != list(train.classes):
            raise UserError(_class_mismatch(path, train.classes, test.classes))
        return DataBundle(info, train, None, test)
    train = load_split(d.dataset, path, "train", cache_dir=d.cache_dir)
    val = None
    if d.train_subset is not None and d.train_subset < len(train):
        g = torch.Generator().manual_seed(cfg.seed)
        train = train.subset(torch.randperm(len(train), generator=g)[: d.train_subset].sort()[0])
    if d.val_size:
        tr_idx, val_idx = train_val_split(train.labels, d.val_size, seed=cfg.seed)
        train, val = train.subset(tr_idx), train.subset(val_idx)
    test = match_classes(load_test_split(cfg, path), train.classes, path)
    return DataBundle(info, train, val, test)


def _class_mismatch(path: str, train: tuple[str, ...], test: tuple[str, ...]) -> str:
    unknown = sorted(set(test) - set(train))
    missing = sorted(set(train) - set(test))
    what = (f"test classes not in train: {', '.join(unknown[:5])}" if unknown else
            f"train classes missing from test: {', '.join(missing[:5])}")
    return f"{path}: the train and test splits have different classes ({what})"


def match_classes(test: ImageArrays, classes: tuple[str, ...] | list[str], path: str
                  ) -> ImageArrays:
    """``test`` labelled with the training split's class indices: labels are indices into each
    split's own sorted class list, so a test split with fewer classes is relabelled by name; a
    test class the training split lacks is an error (it would be scored as another class)."""
    classes = tuple(classes)
    if test.classes == classes:
        return test
    if set(test.classes) - set(classes):
        raise UserError(_class_mismatch(path, classes, test.classes))
    index = torch.tensor([classes.index(c) for c in test.classes], dtype=torch.int64)
    return ImageArrays(test.images, index[test.labels], classes, test.checksum)


def make_loader(
    cfg: RunConfig, data: ImageArrays | ImageFolderStream, info: DatasetInfo, *, train: bool,
    device: torch.device, rank: int = 0, world_size: int = 1, dtype: torch.dtype = torch.float32,
) -> DeviceLoader | StreamLoader:
    """The device-resident loader for arrays, the streaming loader for image folders.

    Batch sizes in the config are global: each of ``world_size`` ranks loads its share."""
    d = cfg.data
    bs = d.batch_size if train else d.eval_batch_size
    if world_size > 1:  # divisibility of the training batch: check_config
        bs = max(1, bs // world_size)
    common = dict(mean=info.mean, std=info.std, train=train, seed=cfg.seed, device=device,
                  channels_last=cfg.train.channels_last, rank=rank, world_size=world_size)
    if isinstance(data, ImageArrays):
        return DeviceLoader(data, bs, pad=d.pad, padding_mode=d.padding_mode, flip=d.flip,
                            dtype=dtype, **common)
    return StreamLoader(data, bs, workers=d.workers, dtype=dtype, **common)


def build_model(cfg: RunConfig, num_classes: int) -> nn.Module:
    return create_model(cfg.model.name, num_classes=num_classes, **cfg.model.kwargs)


def check_config(cfg: RunConfig) -> None:
    """Cheap checks of names and paths, before any data is decoded."""
    info = model_info(cfg.model.name)
    classes = get_dataset_info(cfg.data.dataset).num_classes or info.default_num_classes
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and cfg.data.batch_size % world:
        raise UserError(f"data.batch_size {cfg.data.batch_size} is the global batch and must be "
                        f"divisible by the {world} processes")
    check_data_path(data_path(cfg))
    for teacher in cfg.distill.teachers:
        if not Path(teacher).is_file():
            raise UserError(f"teacher checkpoint not found: {teacher}")
    resolve_device(cfg.train.device)
    if "tensorboard" in cfg.train.log:
        require_tensorboard()
    with torch.device("meta"):  # validates model kwargs and sparsity options, allocates nothing
        model = create_model(cfg.model.name, num_classes=classes, **cfg.model.kwargs)
        if cfg.model.init_from:  # the weights fit the model (shapes only: nothing is copied)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "copying into a meta parameter is a no-op"
                init_from(model, cfg.model.init_from)
        build_method(cfg, model, None)


def check_data_path(path: str) -> None:
    if not is_synthetic_spec(path) and not Path(path).exists():
        raise UserError(f"data path not found: {path}; set data.path=FILE, or "
                        "SPARSETRAIN_DATA=FOLDER (the folder that holds it)")


def make_loaders(
    cfg: RunConfig, data: DataBundle, device: torch.device, rank: int = 0, world_size: int = 1,
    dtype: torch.dtype = torch.float32,
) -> tuple[DeviceLoader | StreamLoader, dict[str, DeviceLoader | StreamLoader]]:
    kw = dict(device=device, rank=rank, world_size=world_size, dtype=dtype)
    train = make_loader(cfg, data.train, data.info, train=True, **kw)
    evals = {}
    if data.val is not None:
        evals["val"] = make_loader(cfg, data.val, data.info, train=False, **kw)
    evals["test"] = make_loader(cfg, data.test, data.info, train=False, **kw)
    return train, evals


def build_method(
    cfg: RunConfig, model: nn.Module, optimizer: torch.optim.Optimizer | None, **run: Any
) -> SparsityMethod:
    """The configured sparsity method (``dense`` adds no masks and no per-step work)."""
    return method_from_config(cfg.sparsity.model_dump(), SparsityConfig().model_dump(), model,
                              optimizer, seed=cfg.seed, **run)


def score_batches(loader: DeviceLoader | StreamLoader, n: int) -> list:
    """The first ``n`` training batches of a dedicated epoch plan (-1), for data-dependent
    scores at initialization; training's own batch order is unaffected."""
    plan = loader.plan(-1)
    return [loader.batch(plan, i) for i in range(min(n, len(loader)))]


def distillation(cfg: RunConfig, device: torch.device, precision: str) -> list[Callback]:
    """The distillation callback of a ``distill:`` section with teachers (else nothing)."""
    d = cfg.distill
    if not d.teachers:
        return []
    from sparsetrain.distill import build_distillation

    return [build_distillation(d.teachers, device=device, precision=precision,
                               channels_last=cfg.train.channels_last, temperature=d.temperature,
                               alpha=d.alpha, discriminator=d.discriminator, cache=d.cache,
                               seed=cfg.seed)]


def cost_report(model: nn.Module, method: SparsityMethod) -> dict[str, Any]:
    """Density per layer, dense/effective FLOPs and total/nonzero parameters."""
    density = method.report()
    return {
        "density": density,
        "flops": sparse_flops(model, density["layers"]),
        "params": {"total": sum(p.numel() for p in model.parameters()),
                   "nonzero": sum(int(p.count_nonzero()) for p in model.parameters())},
    }


# keys a resumed run must share with the run it continues (the rest, e.g. train.epochs, may
# change); a difference is reported by name instead of as a state-dict dump
_RESUME_FIXED = ("model", "sparsity", "seed", "data.dataset", "data.batch_size",
                 "data.val_size", "data.train_subset", "data.loader", "data.image_size")


def _dotted(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k != "kwargs":
            out.update(_dotted(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any],
                       keys: tuple[str, ...] = _RESUME_FIXED) -> list[str]:
    """``"key: here X, in the run Y"`` for each of ``keys`` (or keys below them) that differ."""
    a, b = _dotted(old), _dotted(new)
    diffs = []
    for k in sorted(set(a) | set(b)):
        if any(k == f or k.startswith(f + ".") for f in keys) and a.get(k) != b.get(k):
            diffs.append(f"{k} is {b.get(k)!r} here but {a.get(k)!r} in the run")
    return diffs


def check_resume(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Everything ``--resume`` reads, checked before any slow work: the checkpoint holds a
    training state of the same model and method, metrics.jsonl and summary.json parse."""
    from sparsetrain.config import upgrade, validate

    path = run_dir / "last.pt"
    if not path.is_file():
        raise UserError(f"cannot resume: no checkpoint at {path}")
    ckpt = load_checkpoint(path)
    missing = [k for k in ("config", "classes", "trainer", "best", "rng") if k not in ckpt]
    if missing:
        raise UserError(f"cannot resume from {path}: it holds no training state ({missing[0]} "
                        "missing; a copy of best.pt?)")
    old = validate(upgrade(ckpt["config"])).model_dump(mode="json")
    diffs = config_differences(old, cfg.model_dump(mode="json"))
    if diffs:
        raise UserError(f"cannot resume {run_dir}: " + "; ".join(diffs[:3])
                        + (f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""))
    read_metrics(run_dir / "metrics.jsonl")
    read_summary(run_dir / "summary.json")
    return ckpt


@dataclass
class Built:
    """Everything a run trains with, before any state is loaded."""

    data: DataBundle
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    train_loader: DeviceLoader | StreamLoader
    eval_loaders: dict[str, DeviceLoader | StreamLoader]
    method: SparsityMethod


def build(cfg: RunConfig, device: torch.device, ctx: DistContext | None = None) -> Built:
    """Data, model (with mask buffers), optimizer, LR schedule, loaders and sparsity method;
    with ``ctx``, this rank's share of a data-parallel job."""
    ctx = ctx or DistContext()
    with ctx.main_first():  # rank 0 decodes and caches the data set, then the others read it
        data = load_data(cfg)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg, data.num_classes)
    if cfg.model.init_from:  # pretrained weights (a resumed run loads its own afterwards)
        init_from(model, cfg.model.init_from)
    if ctx.enabled and cfg.train.sync_bn:
        model = convert_sync_batchnorm(model, device)
    fp64 = resolve_precision(cfg.train.precision, device) == "fp64"
    dtype = torch.float64 if fp64 else torch.float32
    model = model.to(device=device, dtype=dtype)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_loader, eval_loaders = make_loaders(cfg, data, device, ctx.rank, ctx.world_size,
                                              dtype)
    t = cfg.train
    optimizer = build_optimizer(
        model, t.optimizer, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum,
        nesterov=t.nesterov, betas=t.betas, exclude_norm_bias=t.wd_exclude_norm_bias,
    )
    spe = len(train_loader)
    schedule = build_schedule(
        t.schedule, epochs=t.epochs, steps_per_epoch=spe, warmup_epochs=t.warmup_epochs,
        milestones=t.milestones, gamma=t.gamma, final_frac=t.final_lr_frac,
    )
    method = build_method(cfg, model, optimizer, steps_per_epoch=spe, total_steps=t.epochs * spe)
    return Built(data, model, optimizer, schedule, train_loader, eval_loaders, method)


def train(
    cfg: RunConfig,
    *,
    resume: bool = False,
    callbacks: list[Callback] | None = None,
    run: RunDir | None = None,
) -> dict[str, Any]:
    """Train as configured; write the run directory; return the summary.

    The run folder is claimed (created and locked, or with ``resume`` locked for
    continuing) before any data is read; ``run`` is a folder already claimed by a caller that
    trains several runs (lottery rounds). Under ``torchrun`` every rank calls this: ranks
    share the work of each global batch, rank 0 alone claims and writes the run directory, logs
    and shows progress (see :mod:`sparsetrain.distributed`).
    """
    check_config(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    ctx, device = init_from_env(resolve_device(cfg.train.device))
    ckpt = check_resume(cfg, cfg.run_dir) if resume else None  # read-only, before the lock
    owned = run is None and ctx.is_main
    if owned:
        run = RunDir.claim(cfg.out_dir, cfg.name, command="train", resume=resume)
    try:
        return _train(cfg, ctx, device, ckpt, callbacks or [])
    except BaseException:
        if owned:
            run.abandon()  # a new run that failed before its first checkpoint leaves nothing
        raise
    finally:
        if owned:
            run.release()


def _train(cfg: RunConfig, ctx: DistContext, device: torch.device, ckpt: dict[str, Any] | None,
           extra_callbacks: list[Callback]) -> dict[str, Any]:
    run_dir = cfg.run_dir
    ctx.barrier()  # every rank has checked the run directory before rank 0 writes to it
    t_start = time.perf_counter()
    git_commit()  # the commit of the code that runs, before anyone commits during the run
    precision = resolve_precision(cfg.train.precision, device)
    b = build(cfg, device, ctx)
    callbacks = [b.method, *distillation(cfg, device, precision), *extra_callbacks]
    if "tensorboard" in cfg.train.log and ctx.is_main:  # last: sees every callback's metrics
        callbacks.append(TensorBoardLogger(run_dir / "tensorboard"))
    if cfg.train.check_consistency and b.method.masks.masks:
        callbacks.insert(1, MaskConsistency(b.method))
    if ckpt is None:
        b.method.prepare(score_batches(b.train_loader, cfg.sparsity.score_batches))
    else:
        load_state(b.model, ckpt["model"], run_dir / "last.pt")
    main = ctx.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    best: dict[str, Any] = {}
    classes = list(b.data.train.classes)

    def save(tr: Trainer) -> None:
        save_checkpoint({"format": CHECKPOINT_FORMAT, "config": cfg.model_dump(mode="json"),
                         "model": b.model.state_dict(), "classes": classes,
                         "trainer": tr.state_dict(), "best": dict(best), "rng": rng_state()},
                        run_dir / "last.pt")

    def log(metrics: dict[str, Any]) -> None:
        _update_best(best, metrics, has_val=b.data.val is not None, model=b.model, cfg=cfg,
                     classes=classes, run_dir=run_dir)
        with metrics_path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")

    t = cfg.train
    forward: nn.Module = wrap_ddp(b.model, device) if ctx.enabled else b.model
    trainer = Trainer(
        b.model, b.optimizer, b.schedule, b.train_loader, b.eval_loaders, epochs=t.epochs,
        device=device, precision=precision, label_smoothing=t.label_smoothing,
        callbacks=callbacks, eval_every=t.eval_every,
        grad_clip=t.grad_clip, max_steps=t.max_steps, checkpoint_every=t.checkpoint_every,
        save_fn=save if main else None, log_fn=log if main else None,
        progress=t.progress and main,
        forward_model=torch.compile(forward) if t.compile else forward, dist=ctx, echo=main,
    )
    if ckpt is not None:
        try:
            trainer.load_state_dict(ckpt["trainer"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise UserError(f"cannot resume from {run_dir / 'last.pt'}: its training state does "
                            f"not fit this run ({str(e).strip().splitlines()[0]})") from None
        best.update(ckpt["best"])
        set_rng_state(ckpt["rng"])
        if main:
            truncate_metrics(metrics_path, trainer.step)
            print(f"resuming {run_dir} at epoch {trainer.epoch + 1}, step {trainer.step}")
    if main:
        atomic_write_bytes(run_dir / "config.yaml", lambda f: f.write(to_yaml(cfg).encode()))
        procs = f" x {ctx.world_size} processes" if ctx.enabled else ""
        print(f"training {cfg.model.name} on {cfg.data.dataset} ({len(b.data.train)} train "
              f"images) for {t.epochs} epochs on {device}{procs} in {precision}; "
              f"run dir {run_dir}")
    trainer.fit()
    summary = _summarize(cfg, trainer, b, best, device, precision)
    summary["world_size"] = ctx.world_size
    summary["wall_s"] = time.perf_counter() - t_start
    previous = read_summary(run_dir / "summary.json") if ckpt is not None else None
    if previous is not None:
        summary["wall_s"] += previous.get("wall_s", 0)
    for cb in trainer.callbacks:
        cb.on_train_end(trainer, summary)
    if main:
        write_json(summary, run_dir / "summary.json")
    ctx.barrier()  # no rank leaves (and tears the group down) while another still works
    return summary


def _summarize(cfg: RunConfig, trainer: Trainer, b: Built, best: dict[str, Any],
               device: torch.device, precision: str) -> dict[str, Any]:
    last = trainer.history[-1]
    return {
        "name": cfg.name,
        "model": cfg.model.name,
        "dataset": cfg.data.dataset,
        "method": b.method.method_name,
        "final": {k: last[k] for k in last if k.startswith(("test_", "val_"))},
        "best": best.get("metrics", {}),
        "epochs": trainer.epoch if trainer.batch_in_epoch == 0 else trainer.epoch + 1,
        "steps": trainer.step,
        "train_s": trainer.train_time,
        "images_per_s": trainer.images_seen / max(trainer.train_time, 1e-9),
        **cost_report(b.model, b.method),
        "device": str(device),
        "precision": precision,
        "seed": cfg.seed,
        "versions": environment(device),
        "git_commit": git_commit(),
    }


def _update_best(best: dict[str, Any], metrics: dict[str, Any], *, has_val: bool,
                 model: nn.Module, cfg: RunConfig, classes: tuple[str, ...],
                 run_dir: Path) -> None:
    """best.pt: the highest validation accuracy when a validation split exists, else the
    latest evaluated epoch (the test set never selects a checkpoint)."""
    key = "val_acc" if has_val else "test_acc"
    if key not in metrics:
        return
    if has_val and best and metrics[key] <= best["metrics"].get(key, -1.0):
        return
    best["metrics"] = {**metrics, "selected_on": "val_acc" if has_val else "last"}
    state = {"format": CHECKPOINT_FORMAT, "config": cfg.model_dump(mode="json"),
             "model": model.state_dict(), "classes": list(classes),
             "metrics": best["metrics"]}
    save_checkpoint(state, run_dir / "best.pt")
