"""Cost of a model: parameters, dense and effective FLOPs, measured latency and throughput."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from sparsetrain.models.flops import sparse_flops
from sparsetrain.precision import autocast
from sparsetrain.sparsity.masks import MaskSet


def param_counts(model: nn.Module) -> dict[str, int]:
    return {"total": sum(p.numel() for p in model.parameters()),
            "nonzero": sum(int(p.count_nonzero()) for p in model.parameters())}


def flop_counts(model: nn.Module) -> dict[str, int]:
    """Dense FLOPs and FLOPs with each masked layer scaled by its mask density."""
    masks = MaskSet.from_model(model)
    return sparse_flops(model, masks.layer_densities() if masks else {})


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    *,
    device: torch.device,
    batch_sizes: tuple[int, ...] = (1, 64),
    precisions: tuple[str, ...] = ("fp32", "bf16"),
    warmup: int = 5,
    repeats: int = 20,
    channels_last: bool = True,
) -> dict[str, dict[str, Any]]:
    """Median forward latency (ms) and throughput (images/s) per batch size and precision,
    in eval mode after ``warmup`` passes; CUDA timings are synchronized."""
    size = getattr(model, "input_size", (3, 32, 32))
    was_training = model.training
    model.eval()
    out: dict[str, dict[str, Any]] = {}
    for prec in precisions:
        for bs in batch_sizes:
            x = torch.randn(bs, *size, device=device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            med = time_forward(model, x, device, prec, warmup, repeats)
            out[f"{prec}_b{bs}"] = {"precision": prec, "batch": bs, "ms": 1000 * med,
                                    "images_per_s": bs / med, "repeats": repeats}
    model.train(was_training)
    return out


def time_forward(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str,
                 warmup: int, repeats: int) -> float:
    """Median seconds of one forward of ``model`` on ``x`` (CUDA timings synchronized)."""
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with autocast(device, precision):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)
