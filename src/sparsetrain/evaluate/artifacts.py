"""Models to time with ``sparsetrain bench latency``: sparsetrain checkpoints and the artifacts
``sparsetrain export`` writes (TorchScript ``.pt``, ``torch.export`` ``.pt2``, ``.onnx``), so a
user measures exactly what they ship. The input shape and MACs of an artifact come from its
model card (``<artifact>.card.json``) when it is there; otherwise CIFAR's 3x32x32 is assumed
and MACs are not reported. Artifacts are timed on the CPU (as exported).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sparsetrain.errors import UserError

__all__ = ["Timed", "load_timed"]


@dataclass
class Timed:
    """A model to time: the module, its kind, MACs per image (None: unknown), precisions."""

    module: nn.Module
    kind: str
    macs: int | None
    params: int | None
    precisions: tuple[str, ...] = ("fp32", "bf16")


class _Runner(nn.Module):
    """An artifact's forward as a module with ``input_size`` (what measure_latency reads)."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor],
                 input_size: tuple[int, ...]) -> None:
        super().__init__()
        # not registered as a submodule: torch.export's modules refuse train()/eval()
        object.__setattr__(self, "_run", run)
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.endswith("constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _card(path: Path) -> dict:
    card = path.with_name(path.name + ".card.json")
    if not card.is_file():
        return {}
    try:
        return json.loads(card.read_text())
    except (OSError, ValueError):
        raise UserError(f"{card} is not a readable model card (JSON)") from None


def load_timed(path: str | Path) -> Timed:
    """A checkpoint or an exported artifact, ready for :func:`measure_latency`."""
    from sparsetrain.checkpoint import load_checkpoint
    from sparsetrain.evaluate.cost import param_counts
    from sparsetrain.loading import load_model
    from sparsetrain.structured.macs import macs_params

    path = Path(path)
    if not path.is_file():
        raise UserError(f"not found: {path}")
    if path.suffix not in (".pt2", ".onnx") and not _is_torchscript(path):
        model = load_model(load_checkpoint(path), path)
        return Timed(model, "checkpoint", macs_params(model)[0], param_counts(model)["total"])
    card = _card(path)
    size = tuple(card.get("input_shape") or (3, 32, 32))
    macs = (card.get("macs") or {}).get("effective")
    params = (card.get("parameters") or {}).get("total")
    if path.suffix == ".onnx":
        from sparsetrain.export.formats import get_format

        run = get_format("onnx").load(path)  # missing extra: the format's one-line error
        return Timed(_Runner(run, size), "onnx", macs, params, precisions=("fp32",))
    try:
        if path.suffix == ".pt2":
            module = torch.export.load(str(path)).module()
            kind = "torch.export"
        else:
            module = torch.jit.load(str(path), map_location="cpu").eval()
            kind = "torchscript"
    except Exception as e:  # a corrupt archive fails deep inside torch with many types
        raise UserError(f"{path} is not a loadable {path.suffix} artifact "
                        f"({str(e).splitlines()[0][:120]})") from None
    return Timed(_Runner(module, size), kind, macs, params)
