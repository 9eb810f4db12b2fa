"""Device and precision selection: bf16 autocast where the hardware has bf16 units."""

from __future__ import annotations

import contextlib
import warnings

import torch

from sparsetrain.errors import UserError


class SlowPrecisionWarning(UserWarning):
    """bf16 was asked for on a device without bf16 units: it runs, emulated, and slowly."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available")
    return dev


def has_fast_bf16(device: torch.device) -> bool:
    """True where bf16 matmul/conv runs on dedicated units (AMX/AVX512-BF16, tensor cores)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if has_fast_bf16(device) else "fp32"
    if precision not in ("bf16", "fp32", "fp64"):
        raise UserError(f"unknown precision {precision!r}; "
                        "choose from ('auto', 'bf16', 'fp32', 'fp64')")
    if precision == "bf16" and not has_fast_bf16(device):
        # Shown once per process (one warning site). Measured on an AVX2-only EPYC (no
        # AVX512-BF16/AMX): ResNet-20 trained at 21 img/s in bf16 vs 263 img/s in fp32.
        warnings.warn(f"precision bf16 on a {device.type} without bf16 units: autocast is "
                      "emulated there and can be >10x slower than fp32; use precision auto "
                      "(fp32 on this device) or fp32", SlowPrecisionWarning, stacklevel=1)
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast (fp32 master weights) or a no-op for fp32 / fp64."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
