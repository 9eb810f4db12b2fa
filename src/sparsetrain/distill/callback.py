"""MEAL V2 distillation (Shen & Savvides, 2020) as an engine callback.

The student's loss becomes ``alpha · label_loss + (1 − alpha) · T² · CE(p_teachers, q_student)``
plus, with ``discriminator=True``, MEAL V2's discriminator loss on student vs teacher logits,
*added* as the official code does: one backward reaches the student and the discriminator, and
the discriminator's parameters take the same SGD step (momentum 0.9, no weight decay) at the
student's current learning rate (the official script sets every parameter group's LR each
epoch, its ``--d_lr`` included; ``disc_lr`` fixes it instead). Works for any student the engine
trains (dense, sparse, structurally pruned): only its logits are used.
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
    soft_target,
)
from sparsetrain.distill.teachers import EpochKey, SoftLabelCache, TeacherEnsemble
from sparsetrain.distributed import mean_across_ranks
from sparsetrain.errors import UserError

if TYPE_CHECKING:
    from sparsetrain.train.engine import Trainer


class Distillation(Callback):
    """Distil a :class:`TeacherEnsemble` into the student (MEAL V2 Eq. 2, optional §3.3
    discriminator).

    Metrics per epoch: ``kd_loss`` (mean soft cross-entropy, ×T²), with a discriminator
    ``kd_d_loss``, with a cache ``kd_cache_hits``/``kd_cache_misses`` (batches).
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
        disc_lr: float | None = None,
        disc_k: int = 8,
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
        self.disc_lr = disc_lr
        if discriminator:
            with torch.random.fork_rng(devices=[]):  # reproducible, global RNG untouched
                torch.manual_seed(seed)
                self.disc = Discriminator(num_classes, disc_k)
            self.disc.to(teachers.device)
            self.disc_opt = torch.optim.SGD(self.disc.parameters(), lr=0.0, momentum=0.9,
                                            weight_decay=0.0)
        self.last_kd_loss: torch.Tensor | None = None
        self.last_d_loss: torch.Tensor | None = None
        self._reset_epoch()

    # -- the step -------------------------------------------------------------------------
    def loss(
        self, trainer: Trainer, inputs: torch.Tensor, targets: torch.Tensor,
        outputs: torch.Tensor, loss: torch.Tensor,
    ) -> torch.Tensor:
        if trainer.batch_in_epoch == 0:
            self._reset_epoch()
        probs, logits = self.targets(trainer, inputs)  # fp32 [B, C], no grad
        kd = distill_loss(outputs, probs, self.temperature)
        total = combined_loss(loss, kd, self.alpha)
        n = len(inputs)
        self._add("kd", kd, n)
        self.last_kd_loss = kd.detach()
        if self.disc is not None and logits is not None:
            d_loss = discriminator_loss(self.disc, outputs, logits)
            self._add("d", d_loss, n)
            self.last_d_loss = d_loss.detach()
            total = total + d_loss  # official: the student's loss includes it
        self._n += n
        return total

    def soft_targets(self, trainer: Trainer, inputs: torch.Tensor) -> torch.Tensor:
        """The ensemble's soft targets of ``inputs``, from the cache when it holds them."""
        return self.targets(trainer, inputs)[0]

    def targets(
        self, trainer: Trainer, inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(soft targets, mean teacher logits or None without a discriminator)``; with a
        discriminator the cache stores both, side by side in one ``[B, 2C]`` entry."""
        if self.cache is None:
            return self._compute(inputs)
        key, batch = self._key(trainer, inputs), trainer.batch_in_epoch
        entry = self.cache.get(key, batch, inputs)
        if entry is None:
            self._misses += 1
            probs, logits = self._compute(inputs)
            entry = probs if logits is None else torch.cat([probs, logits], dim=1)
            self.cache.put(key, batch, inputs, entry)
        else:
            self._hits += 1
        if self.disc is None:
            return entry, None
        return entry[:, :self.num_classes], entry[:, self.num_classes:]

    def _compute(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        outs = self.teachers(inputs)
        probs = soft_target(outs, self.temperature)
        if self.disc is None:
            return probs, None
        with torch.autocast(inputs.device.type, enabled=False):
            return probs, torch.stack([z.float() for z in outs]).mean(0)

    def _key(self, trainer: Trainer, inputs: torch.Tensor) -> EpochKey:
        loader = trainer.train_loader
        seed = getattr(loader, "seed", None)
        if seed is None:
            raise UserError("the soft-label cache needs a seeded training loader (loader.seed)")
        rank, world = getattr(loader, "rank", 0), getattr(loader, "world_size", 1)
        t = self.teachers
        variant = f"{t.precision}-{t.device.type}-b{len(inputs)}-r{rank}of{world}"
        if self.disc is not None:  # entries also hold the mean teacher logits
            variant += "-logits"
        return EpochKey(t.fingerprint, float(self.temperature), int(seed), trainer.epoch, variant)

    def after_optimizer_step(self, trainer: Trainer) -> None:
        """The discriminator's SGD step on the gradients of the engine's one backward."""
        if self.disc is None or self.disc_opt is None:
            return
        grads = [p.grad for p in self.disc.parameters() if p.grad is not None]
        mean_across_ranks(grads)  # data parallel: one discriminator, identical on every rank
        lr = self.disc_lr if self.disc_lr is not None else trainer.optimizer.param_groups[0]["lr"]
        for group in self.disc_opt.param_groups:
            group["lr"] = lr
        self.disc_opt.step()
        self.disc_opt.zero_grad(set_to_none=True)

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
            metrics["kd_d_loss"] = self._mean("d")
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
            state["disc_form"] = "meal_v2"
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums = dict(state.get("sums", {}))
        self._n, self._hits, self._misses = state["n"], state["hits"], state["misses"]
        if self.disc is not None and self.disc_opt is not None and "disc" in state:
            if state.get("disc_form") != "meal_v2":
                raise UserError("this run's discriminator is the GAN form of earlier sparsetrain "
                                "(removed: the official MEAL V2 form replaced it); it cannot "
                                "be resumed, start a new run")
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
