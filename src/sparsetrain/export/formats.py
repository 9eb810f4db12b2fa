"""Export formats: how an eval-mode model is written, and how the written file is run again.

Every format is a :class:`Format` in the registry; they share two signatures::

    save(model: nn.Module, example: Tensor, path: Path) -> None   # example: [B, C, H, W]
    load(path: Path) -> Runner                                    # Runner(x) -> logits tensor

``load`` uses only the format's own runtime (never sparsetrain), so the check after writing
runs the artifact the way a user will. The batch dimension stays dynamic in every format.

- ``pt``: TorchScript (``torch.jit.trace``), run by ``torch.jit.load``. TorchScript is deprecated
  in recent PyTorch; prefer ``pt2`` where the consumer has PyTorch >= 2.
- ``pt2``: ``torch.export.export`` + ``torch.export.save``, run by
  ``torch.export.load(path).module()``.
- ``onnx``: ``torch.onnx.export(dynamo=True)`` (needs ``onnx`` and ``onnxscript``: the
  ``sparsetrain[export]`` extra), checked with ``onnx.checker`` and run by onnxruntime when it
  is installed, else by ``onnx.reference.ReferenceEvaluator``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sparsetrain.errors import UserError

__all__ = ["FORMATS", "Format", "Runner", "get_format", "list_formats"]

Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Format:
    """One export format: file suffix, required packages, writer and runner."""

    name: str
    suffix: str
    save: Callable[[nn.Module, torch.Tensor, Path], None]
    load: Callable[[Path], Runner]
    runtime: Callable[[], str]
    requires: tuple[str, ...] = ()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' deprecation notes, progress prints and info logging."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def _batch_dynamic() -> tuple[dict[int, object]]:
    return ({0: torch.export.Dim.AUTO},)


# -- TorchScript ----------------------------------------------------------------------------
def _save_pt(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))


def _load_pt(path: Path) -> Runner:
    with _quiet():
        module = torch.jit.load(str(path), map_location="cpu").eval()
    return lambda x: module(x)


# -- torch.export ---------------------------------------------------------------------------
def _save_pt2(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with _quiet():
        program = torch.export.export(model, (example,), dynamic_shapes=_batch_dynamic())
        torch.export.save(program, str(path))


def _load_pt2(path: Path) -> Runner:
    with _quiet():
        module = torch.export.load(str(path)).module()
    return lambda x: module(x)


# -- ONNX -----------------------------------------------------------------------------------
def _save_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with _quiet():
        torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_shapes=_batch_dynamic())


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _onnx_runtime() -> str:
    return "onnxruntime" if _has("onnxruntime") else "onnx.reference.ReferenceEvaluator"


def _load_onnx(path: Path) -> Runner:
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    if _has("onnxruntime"):
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        run = session.run
    else:
        from onnx.reference import ReferenceEvaluator

        run = ReferenceEvaluator(str(path)).run
    return lambda x: torch.from_numpy(run(None, {"input": x.detach().cpu().numpy()})[0])


FORMATS: dict[str, Format] = {
    "pt": Format("pt", ".pt", _save_pt, _load_pt, lambda: "torch.jit.load"),
    "pt2": Format("pt2", ".pt2", _save_pt2, _load_pt2, lambda: "torch.export.load"),
    "onnx": Format("onnx", ".onnx", _save_onnx, _load_onnx, _onnx_runtime,
                   requires=("onnx", "onnxscript")),
}


def list_formats() -> list[str]:
    return list(FORMATS)


def get_format(name: str) -> Format:
    """The registered format ``name``; unknown, or its packages missing: :class:`UserError`."""
    if name not in FORMATS:
        raise UserError(f"unknown export format {name!r} (known: {', '.join(FORMATS)})")
    fmt = FORMATS[name]
    missing = [m for m in fmt.requires if not _has(m)]
    if missing:
        raise UserError(f"--format {name} needs {' and '.join(missing)}: "
                        "pip install 'sparsetrain[export]'")
    return fmt
