"""MEAL V2 distillation (Shen & Savvides, 2020) as an engine callback.

The student's loss becomes ``alpha · label_loss + (1 − alpha) · T² · CE(p_teachers, q_student)``
plus, with ``discriminator=True``, the adversarial term ``BCE(D(q_student), 1)``. The
discriminator is trained in the same step, inside :meth:`Distillation.loss`, on detached
student outputs with its own Adam optimizer. Works for any student the engine trains (dense,
sparse, structurally pruned): only its logits are used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sparsetrain.callbacks import Callback
from sparsetrain.distill.losses import (
    Discriminator,
    combined_loss,
    discriminator_loss,
    distill_loss,
    generator_loss,
    soft_target,
)
from sparsetrain.distill.teachers import EpochKey, SoftLabelCache, TeacherEnsemble
from sparsetrain.distributed import mean_across_ranks
from sparsetrain.errors import UserError

if TYPE_CHECKING:
    from sparsetrain.train.engine import Trainer


class Distillation(Callback):
    """Distil a :class:`TeacherEnsemble` into the student (MEAL V2 Eq. 2, optional §3.3 GAN).

    Metrics per epoch: ``kd_loss`` (mean soft cross-entropy, ×T²), with a discriminator
    ``kd_d_loss``/``kd_g_loss``, with a cache ``kd_cache_hits``/``kd_cache_misses`` (batches).
    """

    name = "distill"

    def __init__(
        self,
        teachers: TeacherEnsemble,
        *,
        temperature: float = 1.0,
        alpha: float = 0.0,
        discriminator: bool = False,
        cache: SoftLabelCache | None = None,
        num_classes: int | None = None,
        disc_lr: float = 1e-4,
        disc_hidden: int = 256,
        seed: int = 0,
    ) -> None:
        if temperature <= 0:
            raise UserError(f"distill temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"distill alpha must be in [0, 1], got {alpha}")
        num_classes = num_classes or teachers.num_classes
        if num_classes != teachers.num_classes:
            raise UserError(f"student has {num_classes} classes, teachers have "
                            f"{teachers.num_classes}")
        self.teachers, self.temperature, self.alpha = teachers, temperature, alpha
        self.cache, self.num_classes = cache, num_classes
        self.disc: Discriminator | None = None
        self.disc_opt: torch.optim.Optimizer | None = None
        if discriminator:
            with torch.random.fork_rng(devices=[]):  # reproducible, global RNG untouched
                torch.manual_seed(seed)
                self.disc = Discriminator(num_classes, disc_hidden)
            self.disc.to(teachers.device)
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=disc_lr)
        self.last_kd_loss: torch.Tensor | None = None
        self.last_g_loss: torch.Tensor | None = None
        self._reset_epoch()

    # -- the step -------------------------------------------------------------------------
    def loss(
        self, trainer: Trainer, inputs: torch.Tensor, targets: torch.Tensor,
        outputs: torch.Tensor, loss: torch.Tensor,
    ) -> torch.Tensor:
        if trainer.batch_in_epoch == 0:
            self._reset_epoch()
        probs = self.soft_targets(trainer, inputs)  # fp32 [B, C], no grad
        kd = distill_loss(outputs, probs, self.temperature)
        total = combined_loss(loss, kd, self.alpha)
        n = len(inputs)
        self._add("kd", kd, n)
        self.last_kd_loss = kd.detach()
        if self.disc is not None:
            d_loss, g_loss = self._adversarial(outputs, probs)
            self._add("d", d_loss, n)
            self._add("g", g_loss, n)
            self.last_g_loss = g_loss.detach()
            total = total + g_loss
        self._n += n
        return total

    def soft_targets(self, trainer: Trainer, inputs: torch.Tensor) -> torch.Tensor:
        """The ensemble's soft targets of ``inputs``, from the cache when it holds them."""
        if self.cache is None:
            return soft_target(self.teachers(inputs), self.temperature)
        key, batch = self._key(trainer, inputs), trainer.batch_in_epoch
        probs = self.cache.get(key, batch, inputs)
        if probs is not None:
            self._hits += 1
            return probs
        self._misses += 1
        probs = soft_target(self.teachers(inputs), self.temperature)
        self.cache.put(key, batch, inputs, probs)
        return probs

    def _key(self, trainer: Trainer, inputs: torch.Tensor) -> EpochKey:
        loader = trainer.train_loader
        seed = getattr(loader, "seed", None)
        if seed is None:
            raise UserError("the soft-label cache needs a seeded training loader (loader.seed)")
        rank, world = getattr(loader, "rank", 0), getattr(loader, "world_size", 1)
        t = self.teachers
        variant = f"{t.precision}-{t.device.type}-b{len(inputs)}-r{rank}of{world}"
        return EpochKey(t.fingerprint, float(self.temperature), int(seed), trainer.epoch, variant)

    def _adversarial(
        self, outputs: torch.Tensor, probs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One discriminator step on detached outputs, then the student's term ``g_loss``."""
        assert self.disc is not None and self.disc_opt is not None
        d_loss = discriminator_loss(self.disc, outputs, probs, self.temperature)
        self.disc_opt.zero_grad(set_to_none=True)
        d_loss.backward(inputs=list(self.disc.parameters()))
        # data parallel: the critic sees the global batch and stays identical on every rank
        mean_across_ranks([p.grad for p in self.disc.parameters() if p.grad is not None])
        self.disc_opt.step()
        # Frozen while g_loss is built, so the student's backward neither reaches nor
        # accumulates into the critic's gradients.
        self.disc.requires_grad_(False)
        try:
            g_loss = generator_loss(self.disc, outputs, self.temperature)
        finally:
            self.disc.requires_grad_(True)
        return d_loss.detach(), g_loss

    # -- bookkeeping ----------------------------------------------------------------------
    def _reset_epoch(self) -> None:
        self._sums: dict[str, torch.Tensor | float] = {}
        self._n = self._hits = self._misses = 0

    def _add(self, name: str, value: torch.Tensor, n: int) -> None:
        self._sums[name] = self._sums.get(name, 0.0) + value.detach().float() * n

    def _mean(self, name: str) -> float:
        return float(self._sums.get(name, 0.0)) / max(1, self._n)

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.device.type != self.teachers.device.type:
            raise UserError(f"teachers are on {self.teachers.device}, training on "
                            f"{trainer.device}")

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        metrics["kd_loss"] = self._mean("kd")
        if self.disc is not None:
            metrics["kd_d_loss"], metrics["kd_g_loss"] = self._mean("d"), self._mean("g")
        if self.cache is not None:
            metrics["kd_cache_hits"], metrics["kd_cache_misses"] = self._hits, self._misses
            self.cache.flush()

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        if self.cache is not None:
            self.cache.flush()
        summary["distill"] = {
            "teachers": len(self.teachers), "fingerprint": self.teachers.fingerprint,
            "temperature": self.temperature, "alpha": self.alpha,
            "discriminator": self.disc is not None,
        }

    def progress(self) -> dict[str, str]:
        return {} if self.last_kd_loss is None else {"kd": f"{self.last_kd_loss.item():.3f}"}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "sums": {k: float(v) for k, v in self._sums.items()},
            "n": self._n, "hits": self._hits, "misses": self._misses,
        }
        if self.disc is not None and self.disc_opt is not None:
            state["disc"] = self.disc.state_dict()
            state["disc_opt"] = self.disc_opt.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums = dict(state.get("sums", {}))
        self._n, self._hits, self._misses = state["n"], state["hits"], state["misses"]
        if self.disc is not None and self.disc_opt is not None and "disc" in state:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_opt"])


def build_distillation(
    teachers: Sequence[str | Path],
    *,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    temperature: float = 1.0,
    alpha: float = 0.0,
    discriminator: bool = False,
    cache: str | Path | None = None,
    seed: int = 0,
) -> Distillation:
    """The callback from a config section ``{teachers: [paths], temperature, alpha,
    discriminator, cache: dir | null}`` plus the run's device, precision and memory format.
    ``cache`` is a directory for the persistent soft-label cache, or None for none (each epoch
    of one run has new augmentations, so within one run a cache never hits)."""
    ensemble = TeacherEnsemble.from_checkpoints(teachers, device, precision, channels_last)
    soft_cache = None if cache is None else SoftLabelCache(cache)
    return Distillation(ensemble, temperature=temperature, alpha=alpha,
                        discriminator=discriminator, cache=soft_cache, seed=seed)
