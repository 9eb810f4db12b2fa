"""Sparsity schedules as frozen dataclasses: the caller passes the optimizer step.

- :class:`CubicSchedule`: gradual magnitude pruning (Zhu & Gupta 2017), pruning every ΔT steps
  from t_0 to t_f with s_t = s_f + (s_i − s_f)(1 − (t − t_0)/(t_f − t_0))³.
- :class:`CosineDecay`: the update fraction of GraNet's regeneration and of SET/RigL's drop/grow,
  r_t = r_min + (r_0 − r_min)(1 + cos(π t / T))/2, constant r_min after T.
- :class:`Constant`.

Times in recipes may be given in steps (``1000``), epochs (``"80ep"``) or as a fraction of the
run (``"50%"``); :func:`to_steps` converts them once, from the real steps per epoch.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from sparsetrain.errors import UserError

Time = int | float | str


def to_steps(value: Time, *, steps_per_epoch: int, total_steps: int) -> int:
    """``1000`` -> 1000 steps; ``"80ep"`` -> 80 epochs; ``"50%"`` -> half of the run."""
    if isinstance(value, bool):
        raise UserError(f"bad time {value!r}")
    if isinstance(value, int | float):
        if value < 0 or value != int(value):
            raise UserError(f"a time in steps must be a whole number >= 0, got {value!r}")
        return int(value)
    text = str(value).strip()
    try:
        if text.endswith("ep"):
            return round(float(text[:-2]) * steps_per_epoch)
        if text.endswith("%"):
            return round(float(text[:-1]) / 100 * total_steps)
        return to_steps(int(text), steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    except ValueError:
        raise UserError(f"bad time {value!r}: use steps (1000), epochs ('80ep') or a "
                        "fraction of the run ('50%')") from None


@dataclass(frozen=True)
class CubicSchedule:
    """Sparsity s_t of gradual magnitude pruning; updates at t_0 + kΔT, k = 1..n, with
    t_f = t_0 + nΔT, so the last update reaches s_f exactly (DESIGN.md §3.3)."""

    s_i: float
    s_f: float
    t_0: int
    t_f: int
    delta_t: int

    def __post_init__(self) -> None:
        if not 0 <= self.s_i <= self.s_f < 1:
            raise UserError(f"need 0 <= s_i ({self.s_i}) <= s_f ({self.s_f}) < 1")
        if self.delta_t < 1 or self.t_0 < 0 or (self.t_f - self.t_0) % self.delta_t:
            raise UserError(f"need t_f - t_0 = n * delta_t, got t_0={self.t_0}, "
                            f"t_f={self.t_f}, delta_t={self.delta_t}")

    @classmethod
    def fit(cls, s_i: float, s_f: float, t_0: int, t_f: int, delta_t: int) -> CubicSchedule:
        """Round t_f down to t_0 + nΔT; if the window holds no update (a run too short for
        ΔT), shrink ΔT so that it holds up to 4 updates, with a warning."""
        window = t_f - t_0
        if window < 1:
            raise UserError(f"pruning window is empty: t_0={t_0}, t_f={t_f}")
        if window < delta_t:
            new = max(1, window // 4)
            warnings.warn(f"pruning window of {window} steps is shorter than delta_t="
                          f"{delta_t}; using delta_t={new} so the run reaches the target "
                          "sparsity", stacklevel=2)
            delta_t = new
        return cls(s_i, s_f, t_0, t_0 + (window // delta_t) * delta_t, delta_t)

    def sparsity(self, t: int) -> float:
        if t <= self.t_0:
            return self.s_i
        if t >= self.t_f:
            return self.s_f
        frac = (t - self.t_0) / (self.t_f - self.t_0)
        return self.s_f + (self.s_i - self.s_f) * (1 - frac) ** 3

    def is_update(self, t: int) -> bool:
        """Pruning steps: t_0 + kΔT for k = 1..n."""
        return self.t_0 < t <= self.t_f and (t - self.t_0) % self.delta_t == 0


@dataclass(frozen=True)
class CosineDecay:
    """r_t = r_min + (r_0 − r_min)(1 + cos(π t / horizon))/2 for t <= horizon, then r_min."""

    r_0: float
    r_min: float
    horizon: int

    def __post_init__(self) -> None:
        if not 0 <= self.r_min <= self.r_0 <= 1 or self.horizon < 1:
            raise UserError(f"need 0 <= r_min ({self.r_min}) <= r_0 ({self.r_0}) <= 1 and a "
                            f"positive horizon ({self.horizon})")

    def __call__(self, t: int) -> float:
        frac = min(1.0, t / self.horizon)
        return self.r_min + (self.r_0 - self.r_min) * 0.5 * (1 + math.cos(math.pi * frac))


@dataclass(frozen=True)
class Constant:
    value: float

    def __call__(self, t: int) -> float:
        return self.value
