"""Data-parallel training under ``torchrun``: process group, reductions, mask consistency.

``sparsetrain train`` started by ``torchrun --nproc_per_node N`` (or with the multi-node flags)
finds ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment and runs one process per device:
NCCL on GPUs (``cuda:LOCAL_RANK``), gloo on CPU. What sparsity adds to plain DDP:

- masks are buffers registered before wrapping and are left out of DDP's buffer broadcast (they
  are decided identically on every rank, not copied from rank 0, so a bug cannot hide);
- every mask decision is identical on all ranks by construction: random draws come from the
  method's CPU generator seeded from the config (same stream on every rank and device type),
  data-dependent scores (SNIP, GraSP, SynFlow) average their gradients across ranks
  (:func:`mean_across_ranks`), magnitudes and regrowth gradients are read from weights and
  DDP-averaged gradients that are bitwise equal on all ranks;
- :class:`MaskConsistency` (``train.check_consistency``) verifies that: it compares a SHA-256 of
  every mask across ranks after initialization and after every mask update and stops the run
  with an error naming the step on a mismatch;
- :class:`GlobalBatchNorm2d` (``train.sync_bn`` on CPU; ``nn.SyncBatchNorm`` on GPU) normalizes
  with the statistics of the global batch, which makes an N-process run compute what one
  process computes with the same global batch.

The batch size in a config is the global batch (all ranks together); each rank loads
``batch_size / world_size`` and the learning rate applies to the global batch unchanged, so a
recipe means the same thing on 1 or 8 processes (no implicit linear LR scaling: change
``train.lr`` yourself if you change the global batch).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sparsetrain.callbacks import Callback
from sparsetrain.errors import UserError

__all__ = [
    "DistContext", "GlobalBatchNorm2d", "MaskConsistency", "convert_sync_batchnorm",
    "init_from_env", "mask_digest", "mean_across_ranks", "wrap_ddp",
]


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce ``t`` in place (sum over ranks); a no-op on one process."""
        if self.enabled:
            dist.all_reduce(t)
        return t

    def totals(self, *values: torch.Tensor | float, device: torch.device) -> list[float]:
        """``values`` (device scalars or numbers) summed over ranks, read with one sync."""
        t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(())
                         for v in values])
        return self.sum_(t).tolist()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. builds a cache), then the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer") from None


def init_from_env(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment.

    Returns the context and the device this rank trains on (``cuda:LOCAL_RANK`` on GPUs). With
    ``WORLD_SIZE`` unset or 1 nothing is initialized. Reuses a group that already exists (the
    caller's, or one an earlier run in this process made); a group made here is destroyed when
    the process exits.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext(), device
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank} is outside WORLD_SIZE={world}")
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPU(s)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=_env_int("SPARSETRAIN_DIST_TIMEOUT", 1800))
        dist.init_process_group(backend, timeout=timeout,
                                **({"device_id": device} if device.type == "cuda" else {}))
        # one group per process, reused by later runs in it (lottery rounds, fine-tunes)
        atexit.register(shutdown)
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise UserError("an existing process group disagrees with RANK/WORLD_SIZE")
    return DistContext(rank, world, local), device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def mean_across_ranks(tensors: Sequence[torch.Tensor]) -> None:
    """Average ``tensors`` in place over all ranks (one flat all-reduce); no-op on one process.

    Score functions call this on their accumulated gradients, so a data-dependent mask is
    computed from the gradient of the global batch and is bitwise identical on every rank.
    """
    world = _world()
    if world <= 1 or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def mask_digest(masks: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names and the kept positions of every mask (as packed booleans)."""
    h = hashlib.sha256()
    for name in sorted(masks):
        h.update(name.encode())
        bits = masks[name].detach().reshape(-1).to("cpu", torch.bool).numpy()
        h.update(bits.tobytes())
    return h.hexdigest()


class MaskConsistency(Callback):
    """Compare a digest of all masks across ranks after init and after every mask update."""

    name = "mask_consistency"

    def __init__(self, method: Any) -> None:
        self.method = method
        self._seen = -1
        self.checks = 0

    def check(self, step: int) -> None:
        masks = self.method.masks.masks
        if not masks:
            return
        digest = mask_digest(masks)
        digests = [digest]
        if _world() > 1:
            digests = [None] * dist.get_world_size()
            dist.all_gather_object(digests, digest)
        self.checks += 1
        if len(set(digests)) > 1:
            by_rank = ", ".join(f"rank {r}: {d[:12]}" for r, d in enumerate(digests))
            raise RuntimeError(f"masks differ across ranks at step {step} ({by_rank})")

    def _maybe_check(self, trainer: Any) -> None:
        if len(self.method.log) != self._seen:
            self._seen = len(self.method.log)
            self.check(trainer.step)

    def on_train_start(self, trainer: Any) -> None:
        self._maybe_check(trainer)

    def after_optimizer_step(self, trainer: Any) -> None:
        self._maybe_check(trainer)


class _SumOverRanks(torch.autograd.Function):
    """Differentiable all-reduce (sum): the gradient of each rank's input is the sum over ranks
    of the output gradients (every rank's loss depends on every rank's contribution)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        out = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _SumOverRanks.apply(grad)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all ranks.

    Works with any backend (gloo on CPU, where ``nn.SyncBatchNorm`` is unsupported). Two
    differentiable all-reduces per layer: the per-channel sums (mean), then the centred squared
    sums (biased variance for normalization, unbiased for the running estimate), as the
    single-process layer computes them. Identical to ``BatchNorm2d`` on one process, in eval
    mode, and when the group is not initialized.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _world() > 1):
            return super().forward(x)
        all_reduce = _SumOverRanks.apply
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        count = torch.tensor([x.numel() // x.shape[1]], dtype=xf.dtype, device=x.device)
        sums = all_reduce(torch.cat([xf.sum(dim=(0, 2, 3)), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = xf - mean.view(1, -1, 1, 1)
        var = all_reduce((centred * centred).sum(dim=(0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                unbiased = var * (n / (n - 1)).clamp(min=0)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), m)
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Global-batch BN: ``nn.SyncBatchNorm`` on GPU, :class:`GlobalBatchNorm2d` elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats,
                                    device=child.weight.device if child.affine else None)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(model, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return model


def wrap_ddp(model: nn.Module, device: torch.device, mask_suffix: str = "_mask") -> nn.Module:
    """DistributedDataParallel over ``model`` (masks already registered as buffers).

    The mask buffers are excluded from DDP's broadcast from rank 0, so each rank keeps the masks
    it decided (and :class:`MaskConsistency` can catch a divergence); BN running statistics are
    still broadcast from rank 0 every forward, as plain DDP does.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    ignore = [n for n, _ in model.named_buffers() if n.endswith(mask_suffix)]
    if ignore:
        DDP._set_params_and_buffers_to_ignore_for_model(model, ignore)
    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, output_device=device.index if ids else None)
