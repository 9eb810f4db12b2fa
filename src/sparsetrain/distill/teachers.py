"""Teachers for MEAL V2 distillation (Shen & Savvides, 2020) and a cache of their soft targets.

A :class:`TeacherEnsemble` holds frozen, eval-mode models rebuilt from sparsetrain checkpoints
(dense or sparse, any registered model). :class:`SoftLabelCache` stores the ensemble's soft
targets per training batch, so several students, or repeated runs with the same data seed, pay
for the teachers once.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sparsetrain.checkpoint import atomic_write_bytes, load_checkpoint
from sparsetrain.errors import UserError
from sparsetrain.precision import autocast

_SIGNATURE_PIXELS = 4096


class TeacherEnsemble:
    """Frozen teachers; ``ensemble(x)`` returns each teacher's logits (no grad, same autocast
    as training). ``fingerprint`` identifies the teachers in soft-label cache keys."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        *,
        fingerprint: str,
        num_classes: int,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        channels_last: bool = False,
    ) -> None:
        if not models:
            raise UserError("distillation needs at least one teacher")
        self.device = torch.device(device)
        self.precision = precision
        self.fingerprint = fingerprint
        self.num_classes = num_classes
        fmt = torch.channels_last if channels_last else torch.preserve_format
        self.models = [m.to(self.device, memory_format=fmt).eval().requires_grad_(False)
                       for m in models]

    @classmethod
    def from_checkpoints(
        cls,
        paths: Sequence[str | Path],
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        channels_last: bool = False,
    ) -> TeacherEnsemble:
        """Load every checkpoint (missing or corrupt files are a :class:`UserError`); all
        teachers must share one class list."""
        from sparsetrain.loading import load_model

        if isinstance(paths, str | Path):
            paths = [paths]
        if not paths:
            raise UserError("distillation needs at least one teacher checkpoint")
        models, classes = [], None
        for path in paths:
            ckpt = load_checkpoint(path)
            if classes is not None and list(ckpt["classes"]) != classes:
                raise UserError(f"teacher {path} was trained on other classes than {paths[0]}")
            classes = list(ckpt["classes"])
            models.append(load_model(ckpt, path))
        return cls(models, fingerprint=files_fingerprint(paths), num_classes=len(classes),
                   device=device, precision=precision, channels_last=channels_last)

    def __len__(self) -> int:
        return len(self.models)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        dtype = next(self.models[0].parameters()).dtype
        with autocast(self.device, self.precision):  # fp64 students feed fp32 teachers
            return [m(x.to(dtype)) for m in self.models]


def files_fingerprint(paths: Sequence[str | Path]) -> str:
    """sha256 over the sha256 of each file's bytes, in order (order-sensitive)."""
    outer = hashlib.sha256()
    for path in paths:
        inner = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                inner.update(chunk)
        outer.update(inner.digest())
    return outer.hexdigest()


@dataclass(frozen=True)
class EpochKey:
    """What determines one epoch's soft targets. ``variant`` names anything else that changes
    the teachers' numbers or the batching (precision, device type, batch size, data shard)."""

    fingerprint: str
    temperature: float
    seed: int
    epoch: int
    variant: str = ""

    def filename(self) -> str:
        digest = hashlib.sha256(repr(self).encode()).hexdigest()[:24]
        return f"soft-{self.fingerprint[:12]}-e{self.epoch}-{digest}.pt"


@dataclass
class _Epoch:
    probs: dict[int, torch.Tensor] = field(default_factory=dict)
    sigs: dict[int, torch.Tensor] = field(default_factory=dict)
    dirty: bool = False
    verified: bool = False


class SoftLabelCache:
    """Soft targets keyed by (teacher fingerprint, temperature, data seed, epoch, batch index).

    The key is valid because sparsetrain's loaders draw every random decision of an epoch
    (order, crops, flips) from ``(seed, epoch)`` and batch ``i`` is a pure function of
    ``(seed, epoch, i)``. As a guard against the same seed on other data or another batch size,
    each entry keeps a per-sample signature of its inputs (a fixed random projection of a few
    thousand pixels, in float64), checked on the first hit of every epoch.

    Targets are stored in fp32, exactly the tensors the uncached path computes, so cached and
    uncached training are bitwise identical (fp16 would halve the size but round the targets).
    Memory holds one epoch of ``N x C`` floats per epoch kept (CIFAR-10: 2 MB). With
    ``directory`` each epoch is written to one file (atomically, at :meth:`flush`) and then
    dropped from memory; files are read with ``weights_only=True``. Without it, every epoch
    stays in memory for the life of the object (e.g. several students in one process).
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._epochs: dict[EpochKey, _Epoch] = {}
        self._proj: dict[tuple, tuple[tuple[torch.Tensor, ...], torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: EpochKey, batch: int, inputs: torch.Tensor) -> torch.Tensor | None:
        """The cached targets of batch ``batch`` of ``key``'s epoch, or None."""
        entry = self._epoch(key)
        probs = entry.probs.get(batch)
        if probs is None:
            self.misses += 1
            return None
        if probs.device != inputs.device:  # loaded from disk: move once, not every hit
            probs = entry.probs[batch] = probs.to(inputs.device)
        if not entry.verified:
            if not torch.allclose(self.signature(inputs), entry.sigs[batch].to(inputs.device),
                                  rtol=1e-9, atol=1e-9):
                where = self.directory or "memory"
                raise UserError(
                    f"soft-label cache ({where}) does not match batch {batch} of epoch "
                    f"{key.epoch}: other data or batch size with the same seed; use a new "
                    "cache directory"
                )
            entry.verified = True
        self.hits += 1
        return probs

    def put(self, key: EpochKey, batch: int, inputs: torch.Tensor, probs: torch.Tensor) -> None:
        entry = self._epoch(key)
        entry.probs[batch] = probs.detach()
        entry.sigs[batch] = self.signature(inputs)
        entry.dirty = True

    def flush(self) -> None:
        """Write changed epochs to ``directory`` and release them from memory."""
        if self.directory is None:
            return
        for key, entry in list(self._epochs.items()):
            if entry.dirty:
                batches = sorted(entry.probs)
                obj = {"key": [key.fingerprint, key.temperature, key.seed, key.epoch,
                               key.variant],
                       "batches": batches,
                       "probs": [entry.probs[b].cpu() for b in batches],
                       "sigs": [entry.sigs[b].cpu() for b in batches]}
                atomic_write_bytes(self.directory / key.filename(),
                                   lambda f, obj=obj: torch.save(obj, f))
            del self._epochs[key]

    def signature(self, x: torch.Tensor) -> torch.Tensor:
        """float64 ``[B]``: each sample's projection on fixed random weights at fixed pixels."""
        shape = tuple(x.shape[1:])
        if (shape, x.device) not in self._proj:
            g = torch.Generator().manual_seed(0)
            d = math.prod(shape)
            idx = torch.randperm(d, generator=g)[:_SIGNATURE_PIXELS]
            coords = tuple(c.to(x.device) for c in torch.unravel_index(idx, shape))
            w = torch.randn(len(idx), generator=g, dtype=torch.float64).to(x.device)
            self._proj[(shape, x.device)] = coords, w
        coords, w = self._proj[(shape, x.device)]
        return x.detach()[(slice(None), *coords)].double() @ w

    def _epoch(self, key: EpochKey) -> _Epoch:
        if key not in self._epochs:
            self._epochs[key] = self._load(key) or _Epoch()
        return self._epochs[key]

    def _load(self, key: EpochKey) -> _Epoch | None:
        if self.directory is None or not (path := self.directory / key.filename()).is_file():
            return None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            stored = obj["key"]
            entry = _Epoch(dict(zip(obj["batches"], obj["probs"], strict=True)),
                           dict(zip(obj["batches"], obj["sigs"], strict=True)))
        except Exception as e:
            raise UserError(f"soft-label cache file {path} is corrupt ({type(e).__name__}); "
                            "delete it") from None
        if stored != [key.fingerprint, key.temperature, key.seed, key.epoch, key.variant]:
            raise UserError(f"soft-label cache file {path} holds another key: {stored}")
        return entry
