"""Learning-rate schedules as pure functions of the optimizer-step counter.

A schedule holds no hidden state: ``schedule(step)`` returns the multiplier of the peak LR for
the optimizer step about to be taken, so resume needs nothing but the step counter. Epoch-valued
settings (warm-up, milestones) are converted once from the real number of steps per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sparsetrain.errors import UserError

KINDS = ("cosine", "multistep", "constant", "onecycle")


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up, then ``kind``: cosine (Loshchilov & Hutter 2017) to ``final_frac``,
    step decay by ``gamma`` at ``milestones`` (He et al. 2016), constant, or one-cycle
    (Smith 2018: warm-up from 1/25 of the peak, then linear decay to ``final_frac``)."""

    kind: str
    total_steps: int
    warmup_steps: int = 0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    final_frac: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown LR schedule {self.kind!r}; choose from {KINDS}")
        if self.total_steps < 1 or not 0 <= self.warmup_steps < max(self.total_steps, 1):
            raise UserError(
                f"LR schedule needs 0 <= warmup_steps ({self.warmup_steps}) "
                f"< total_steps ({self.total_steps})"
            )

    def __call__(self, step: int) -> float:
        w, t_total = self.warmup_steps, self.total_steps
        if self.kind == "onecycle":
            w = w or max(1, round(0.3 * t_total))
            if step < w:
                return 1 / 25 + (1 - 1 / 25) * step / w
            frac = min(1.0, (step - w) / max(1, t_total - w))
            return 1 - (1 - self.final_frac) * frac
        if step < w:
            return (step + 1) / w
        if self.kind == "constant":
            return 1.0
        if self.kind == "multistep":
            return self.gamma ** sum(step >= m for m in self.milestones)
        frac = min(1.0, (step - w) / max(1, t_total - w))
        return self.final_frac + (1 - self.final_frac) * 0.5 * (1 + math.cos(math.pi * frac))


def build_schedule(
    kind: str,
    *,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    milestones: list[float] | tuple[float, ...] = (),
    gamma: float = 0.1,
    final_frac: float = 0.0,
) -> LRSchedule:
    """Convert epoch-valued settings to steps using the real steps per epoch."""
    to_steps = lambda e: round(e * steps_per_epoch)  # noqa: E731
    return LRSchedule(
        kind=kind,
        total_steps=epochs * steps_per_epoch,
        warmup_steps=to_steps(warmup_epochs),
        milestones=tuple(to_steps(m) for m in milestones),
        gamma=gamma,
        final_frac=final_frac,
    )
