"""FLOPs-constrained random pruning strategies (EagleEye, Li et al. ECCV 2020, Sec. 3.1).

A strategy is one ratio per channel group, ``r_g ~ U[r_min, r_max]`` i.i.d.; it is accepted when
its MACs ratio (pruned / dense, by the exact analytic :class:`MacsModel`) lies within
``target ± tolerance`` (DESIGN.md §3.6 step 2: plain rejection sampling). With a ``cost``
model (:class:`sparsetrain.structured.latency.LatencyModel`) the band constrains its ratio
instead, the predicted latency; the MACs are still recorded. With ``verify`` as well (a
callable that measures a strategy's real latency ratio on this device), the prediction only
pre-selects proposals within ``prefilter`` of ``target - offset``, where ``offset`` is the
median of (measured - predicted) over the strategies measured so far (0 before the first: the
pre-selection follows what the device shows); each of those is measured, in draw order, and
the first measured inside ``target ± tolerance`` is the candidate. Measurements are noisy,
so such a candidate depends on the clock, not on ``(seed, index)`` alone; a search keeps the
ones it recorded.

Determinism and resumability: candidate ``i`` is drawn from a generator seeded by
``(seed, i)`` alone, so candidate ``i`` is the same whether the search ran uninterrupted or was
resumed after ``i - 1`` candidates. Proposals are drawn in blocks of ``block`` strategies and the
first accepted one in draw order is returned: the same distribution and the same try count as
drawing them one by one, with one vectorized MACs evaluation per block.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sparsetrain.errors import UserError
from sparsetrain.structured.macs import MacsModel

__all__ = ["Strategy", "StrategySampler", "candidate_generator", "uniform_strategy"]


def candidate_generator(seed: int, index: int, salt: int = 0) -> torch.Generator:
    """A CPU generator whose state depends only on ``(seed, index, salt)``."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + index * 7_919 + salt * 104_729 + 12_345) % (2**63 - 1))
    return g


@dataclass(frozen=True)
class Strategy:
    """One accepted strategy: ``ratios`` per group, its exact MACs, and the proposals drawn."""

    index: int
    ratios: dict[str, float]
    macs: int
    macs_ratio: float
    tries: int
    latency_ratio: float | None = None  # when the band constrains latency: measured if
    latency_pred: float | None = None  # verified, else the table's prediction (also here)


class StrategySampler:
    """Rejection sampler of per-group ratios inside a MACs band.

    ``sample(i)`` returns candidate ``i``; ``acceptance_rate`` is accepted / proposals over the
    candidates sampled so far by this object. Raises :class:`UserError` when the band cannot be
    reached inside ``[r_min, r_max]`` or nothing is accepted in ``max_tries`` proposals.
    """

    def __init__(
        self,
        macs_model: MacsModel,
        r_min: float = 0.0,
        r_max: float = 0.7,
        target: float = 0.5,
        tolerance: float = 0.005,
        seed: int = 0,
        block: int = 256,
        max_tries: int = 2_000_000,
        cost: Any = None,
        verify: Callable[[Mapping[str, float]], float] | None = None,
        prefilter: float = 0.15,
        max_measured: int = 200,
    ) -> None:
        if not 0.0 <= r_min <= r_max < 1.0:
            raise UserError(f"need 0 <= r_min <= r_max < 1, got r_min={r_min}, r_max={r_max}")
        if not 0.0 < target <= 1.0 or tolerance < 0:
            raise UserError(f"need a FLOPs target in (0, 1] and tolerance >= 0, got {target}, "
                            f"{tolerance}")
        self.model = macs_model
        self.cost = cost  # None: the band is on MACs; else anything with ratio_of_ratios
        if cost is not None and (tuple(cost.names) != macs_model.names
                                 or cost.round_to != macs_model.round_to):
            raise UserError("the cost model's groups or channel steps differ from the MACs "
                            "model's")
        if verify is not None and (cost is None or not prefilter >= tolerance):
            raise UserError("verifying measured latency needs a latency model and a prefilter "
                            "band at least as wide as the tolerance")
        self.verify, self.prefilter, self.max_measured = verify, float(prefilter), max_measured
        self.measured = 0  # strategies timed by verify so far (max_measured per candidate)
        self.offsets: list[float] = []  # measured - predicted, per timed strategy
        self.r_min, self.r_max = float(r_min), float(r_max)
        self.target, self.tolerance = float(target), float(tolerance)
        self.seed, self.block, self.max_tries = int(seed), int(block), int(max_tries)
        self.proposals = 0
        self.accepted = 0
        g = len(macs_model.names)
        judge = cost or macs_model
        lo_r = float(judge.ratio_of_ratios(torch.full((1, g), self.r_max, dtype=torch.float64)))
        hi_r = float(judge.ratio_of_ratios(torch.full((1, g), self.r_min, dtype=torch.float64)))
        reach = self.prefilter if verify is not None else tolerance
        if lo_r > target + reach or hi_r < target - reach:
            what = "FLOPs" if cost is None else "latency"
            raise UserError(f"{what} target {target}±{tolerance} is unreachable with ratios in "
                            f"[{r_min}, {r_max}] (reachable: {lo_r:.4f}..{hi_r:.4f})")

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposals if self.proposals else float("nan")

    def in_band(self, ratio: torch.Tensor, width: float | None = None,
                center: float | None = None) -> torch.Tensor:
        """Which cost ratios (float64 ``[B]``) lie inside the band (``center ± width``,
        default ``target ± tolerance``)."""
        c = self.target if center is None else center
        return (ratio - c).abs() <= (self.tolerance if width is None else width)

    def prefilter_center(self) -> float:
        """Where the prediction pre-selects strategies to measure: the target corrected by the
        median error of the predictions measured so far."""
        return self.target - (statistics.median(self.offsets) if self.offsets else 0.0)

    def sample(self, index: int) -> Strategy:
        """Candidate ``index`` (deterministic for ``(seed, index)``)."""
        g = candidate_generator(self.seed, index)
        n_groups = len(self.model.names)
        tries = timed = 0
        lats: list[float] = []  # this candidate's measured ratios (for the error message)
        while tries < self.max_tries:
            u = torch.rand(self.block, n_groups, generator=g, dtype=torch.float64)
            ratios = self.r_min + (self.r_max - self.r_min) * u
            judged = (self.cost or self.model).ratio_of_ratios(ratios)
            width = center = None
            if self.verify is not None:
                width, center = self.prefilter, self.prefilter_center()
            for j in torch.nonzero(self.in_band(judged, width, center)).flatten().tolist():
                row = dict(zip(self.model.names, ratios[j].tolist(), strict=True))
                pred = None if self.cost is None else float(judged[j])
                lat = pred
                if self.verify is not None:
                    if timed >= self.max_measured:
                        finite = [v for v in lats if math.isfinite(v)]
                        seen = (f"measured {min(finite):.3f}-{max(finite):.3f}" if finite
                                else "no finite measurement")
                        raise UserError(
                            f"candidate {index}: {timed} strategies measured ({seen}), none "
                            f"within {self.target}±{self.tolerance} of the dense latency: the "
                            "target may be out of reach with ratios up to --r-max, or the table "
                            "predicts poorly on this device; widen --tolerance, "
                            "--latency-prefilter or --r-max")
                    self.measured += 1
                    timed += 1
                    lat = float(self.verify(row))
                    lats.append(lat)
                    if math.isfinite(lat):
                        self.offsets.append(lat - float(judged[j]))
                    if not abs(lat - self.target) <= self.tolerance:  # NaN is outside too
                        if abs(self.prefilter_center() - center) > self.tolerance:
                            break  # the center moved: draw a new block around it
                        continue
                tries += j + 1
                self.proposals += tries
                self.accepted += 1
                m = int(self.model.macs_of_ratios(ratios[j:j + 1])[0])
                return Strategy(index, row, m, m / self.model.dense_macs, tries, lat, pred)
            tries += self.block
        self.proposals += tries
        what = "MACs" if self.cost is None else "latency"
        raise UserError(f"no strategy within {self.target}±{self.tolerance} of the dense {what} "
                        f"in {tries} proposals; widen the tolerance or [r_min, r_max]")


def uniform_strategy(macs_model: Any, target: float, iters: int = 60) -> dict[str, float]:
    """One ratio for every group (uniform L1 pruning baseline), the one whose cost ratio
    (``macs_model.ratio_of_ratios``: MACs, or a latency model's prediction) is closest to
    ``target``, found by bisection (the cost does not increase with the ratio)."""
    n = len(macs_model.names)

    def ratio_of(r: float) -> float:
        return float(macs_model.ratio_of_ratios(torch.full((1, n), r, dtype=torch.float64))[0])

    lo, hi = 0.0, 1.0 - 1e-12  # ratio_of(lo) >= target side, ratio_of(hi) below it
    if ratio_of(lo) <= target:
        return dict.fromkeys(macs_model.names, 0.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        if ratio_of(mid) > target:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda r: (abs(ratio_of(r) - target), r))
    return dict.fromkeys(macs_model.names, best)
