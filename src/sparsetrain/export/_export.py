"""``sparsetrain export``: a checkpoint to a checked, self-contained artifact and its card.

Order of work: every user error (format, checkpoint, output path) is found before anything is
written; the artifact is written to a temporary name beside its destination, loaded back from
disk with the format's own runtime and compared with the checkpoint's model on one fixed-seed
batch; only when the difference is within the tolerance is it renamed into place, followed by
the cards. A failed check removes the temporary file and leaves existing outputs untouched.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsetrain.checkpoint import (
    atomic_write_bytes,
    checkpoint_config,
    load_checkpoint,
    write_json,
)
from sparsetrain.errors import UserError
from sparsetrain.export.card import accuracy_of, card_markdown, cost_of, layer_density
from sparsetrain.export.formats import Format, get_format
from sparsetrain.export.plain import fold_batchnorm, plain_model
from sparsetrain.loading import load_model
from sparsetrain.rundir import inside_run

__all__ = ["CHECK_BATCH", "CHECK_SEED", "FOLD_BN_TOLERANCE", "TOLERANCE", "ExportCheckError",
           "ExportResult", "export_checkpoint"]

CHECK_BATCH, CHECK_SEED = 4, 0
# Default --tolerance (max abs difference of the logits). Without --fold-bn the artifact runs
# the checkpoint's own ops (measured difference 0 to 1e-8). Folding BN changes fp32 rounding in
# every folded layer: over every registered model with random BN statistics the difference
# stayed below 1e-6 of the largest logit (resnet56: 3.7e-4 at logits of 7e2), so 1e-3 admits
# logits up to ~1e3 and still catches a wrong fold (errors of the size of the logits).
TOLERANCE, FOLD_BN_TOLERANCE = 1e-4, 1e-3


class ExportCheckError(Exception):
    """The written artifact does not reproduce the checkpoint's model (CLI exit code 1)."""


@dataclass
class ExportResult:
    path: Path
    card_json: Path
    card_md: Path
    card: dict[str, Any]


def card_paths(out: Path) -> tuple[Path, Path]:
    return out.with_name(out.name + ".card.json"), out.with_name(out.name + ".card.md")


def default_out(checkpoint: Path, fmt: Format) -> Path:
    """``exports/<run name>-<ckpt stem><suffix>`` under the current directory; nested runs (a
    lottery round) name every level, a checkpoint outside any run only its stem."""
    names: list[str] = []
    run = inside_run(checkpoint.parent)
    while run is not None and len(names) < 4:
        names.insert(0, run.name)
        run = inside_run(run.parent) if run.parent != run else None
    return Path("exports") / ("-".join([*names, checkpoint.stem]) + fmt.suffix)


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse a folder, a path inside any run folder, or existing files without --overwrite."""
    if out.is_dir():
        raise UserError(f"export: --out {out} is a folder; give a file path")
    existing = out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    run = inside_run(existing)
    if run is not None:
        raise UserError(f"export: {out} is inside the run folder {run}; write the export "
                        "outside it (the default is exports/<run>-<checkpoint>.<ext>)")
    for p in (out, *card_paths(out)):
        if p.is_dir():
            raise UserError(f"export: {p} exists and is a folder; choose another --out")
        if p.exists() and not overwrite:
            raise UserError(f"export: {p} exists; pass --overwrite to replace it")


def _config(ckpt: dict[str, Any], path: Path) -> Any | None:
    """The checkpoint's validated run config; None for a bare pruned checkpoint without one."""
    if "structure" in ckpt and not isinstance(ckpt.get("config"), dict):
        return None
    try:
        return checkpoint_config(ckpt, path)
    except UserError:
        if "structure" in ckpt:
            return None
        raise


def data_facts(cfg: Any | None, model: nn.Module) -> dict[str, Any]:
    """Input shape (C, H, W) from the config's data section (streamed folders: its image_size;
    registered data sets: theirs), else the model's ``input_size``; normalization if known."""
    from sparsetrain.data import get_dataset_info

    size = tuple(getattr(model, "input_size", (3, 32, 32)))
    out: dict[str, Any] = {"input_shape": list(size), "normalization": None}
    if cfg is None:
        return out
    try:
        info = get_dataset_info(cfg.data.dataset)
    except UserError:
        return out
    side = cfg.data.image_size if cfg.data.loader == "stream" else info.image_size
    if side:
        out["input_shape"] = [size[0], side, side]
    out["normalization"] = {"mean": list(info.mean), "std": list(info.std)}
    return out


def check_batch(shape: list[int]) -> torch.Tensor:
    """The fixed-seed check batch: ``[CHECK_BATCH, *shape]`` standard normal (seed 0)."""
    g = torch.Generator().manual_seed(CHECK_SEED)
    return torch.randn(CHECK_BATCH, *shape, generator=g)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _temp_beside(out: Path) -> tuple[Path, list[Path]]:
    """An empty temp file next to ``out`` and the folders made for it (deepest first)."""
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp" + out.suffix,
                                   dir=out.parent)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    os.close(fd)
    return Path(tmp), made


def _run_artifact(fmt: Format, tmp: Path, x: torch.Tensor) -> torch.Tensor:
    try:
        return fmt.load(tmp)(x)
    except Exception as e:  # the artifact itself is broken: a failed check, not bad input
        raise ExportCheckError(f"export check failed: the written {fmt.name} artifact cannot "
                               f"be run ({_first_line(e)}); nothing written") from None


@torch.no_grad()
def write_checked(plain: nn.Module, reference: nn.Module, fmt: Format, x: torch.Tensor,
                  out: Path, tolerance: float) -> float:
    """Write ``plain`` in ``fmt`` to a temp file, run it from disk against ``reference`` on
    ``x``, move it onto ``out`` if the max abs difference is within ``tolerance``; on any
    failure the temp file and the folders made for it are removed."""
    tmp, made = _temp_beside(out)
    done = False
    try:
        try:
            fmt.save(plain, x, tmp)
        except Exception as e:
            raise UserError(f"export: the {fmt.name} exporter failed: {_first_line(e)}")\
                from None
        diff = float((_run_artifact(fmt, tmp, x).float() - reference(x).float()).abs().max())
        if not diff <= tolerance:  # NaN fails too
            raise ExportCheckError(
                f"export check failed: the {fmt.name} artifact differs from the checkpoint's "
                f"model by {diff:.3g} (max abs) > --tolerance {tolerance:g}; nothing written")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
        done = True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        for d in made if not done else ():
            with contextlib.suppress(OSError):
                d.rmdir()
    return diff


def export_checkpoint(checkpoint: str | Path, fmt: str, *, out: str | Path | None = None,
                      fold_bn: bool = False, tolerance: float | None = None,
                      overwrite: bool = False) -> ExportResult:
    """Export a sparsetrain checkpoint as a plain network (masks folded in, optionally BN
    folded into convs) in ``fmt`` (``pt``, ``pt2``, ``onnx``), checked against the checkpoint,
    with a model card beside it. Raises :class:`UserError` for bad input and
    :class:`ExportCheckError` when the artifact misses the tolerance (default
    :data:`TOLERANCE`, with ``fold_bn`` :data:`FOLD_BN_TOLERANCE`)."""
    f = get_format(fmt)
    if tolerance is None:
        tolerance = FOLD_BN_TOLERANCE if fold_bn else TOLERANCE
    if not tolerance >= 0:
        raise UserError(f"--tolerance must be >= 0, got {tolerance}")
    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    target = Path(out) if out is not None else default_out(path, f)
    if target.resolve() == path.resolve():
        raise UserError(f"export: --out {target} is the checkpoint itself; choose another file")
    check_out(target, overwrite)
    reference = load_model(ckpt, path).eval()
    cfg = _config(ckpt, path)
    facts = data_facts(cfg, reference)
    exported = plain_model(copy.deepcopy(reference))
    folded = 0
    if fold_bn:
        exported, folded = fold_batchnorm(exported)
    x = check_batch(facts["input_shape"])
    diff = write_checked(exported, reference, f, x, target, tolerance)
    card = build_card(ckpt, path, reference, exported, facts,
                      fmt=f, artifact=target, fold_bn=fold_bn, folded=folded,
                      diff=diff, tolerance=tolerance)
    card_json, card_md = card_paths(target)
    write_json(card, card_json)
    text = card_markdown(card).encode()
    atomic_write_bytes(card_md, lambda fh: fh.write(text))
    return ExportResult(target, card_json, card_md, card)


def _versions(fmt: Format) -> dict[str, Any]:
    from sparsetrain import __version__
    from sparsetrain.utils import git_commit

    out: dict[str, Any] = {"sparsetrain": __version__, "git_commit": git_commit(),
                           "torch": torch.__version__}
    extra = (*fmt.requires, "onnxruntime") if fmt.requires else ()
    for pkg in extra:
        with contextlib.suppress(ImportError, AttributeError):
            out[pkg] = __import__(pkg).__version__
    return out


def build_card(ckpt: dict[str, Any], path: Path, reference: nn.Module, exported: nn.Module,
               facts: dict[str, Any], *, fmt: Format,
               artifact: Path, fold_bn: bool, folded: int, diff: float,
               tolerance: float) -> dict[str, Any]:
    """The card's JSON object (see :mod:`sparsetrain.export.card`)."""
    layers = layer_density(exported)
    total = sum(v["total"] for v in layers.values())
    classes = ckpt.get("classes") if isinstance(ckpt.get("classes"), list) else None
    return {
        "artifact": str(artifact), "format": fmt.name, "checkpoint": str(path),
        "architecture": getattr(reference, "arch_name", type(reference).__name__),
        "channel_pruned": "structure" in ckpt,
        **facts,
        "num_classes": len(classes) if classes else None, "classes": classes,
        "fold_bn": fold_bn, "batchnorm_folded": folded,
        "density": sum(v["nonzero"] for v in layers.values()) / total if total else 1.0,
        **cost_of(exported, layers, tuple(facts["input_shape"])),
        "layers": layers,
        "accuracy": accuracy_of(path),
        "recipe": ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None,
        "versions": _versions(fmt),
        "check": {"runtime": fmt.runtime(), "batch": CHECK_BATCH, "seed": CHECK_SEED,
                  "max_abs_diff": diff, "tolerance": tolerance},
    }
