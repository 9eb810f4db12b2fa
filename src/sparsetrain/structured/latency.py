"""Latency of a pruning strategy on *this* device, from a per-layer lookup table (issue 19.2).

EagleEye constrains MACs, but halving MACs does not halve time on CPU kernels that process
channels in blocks (oneDNN: 8 on AVX2, 16 on AVX-512): odd channel counts are padded, reordered
or sent to slower paths. A :class:`LatencyModel` predicts a pruned model's forward latency at a
fixed batch size and precision, so the search can constrain *that* instead (``prune eagleeye
--latency 0.5``), in the way of NetAdapt (Yang et al., ECCV 2018) and AMC's latency tables:

* every Conv2d / Linear is one *unit*: the layer followed by BatchNorm and ReLU (convolutions;
  what every zoo CNN does after a conv) or alone (linear), timed in eval mode on random inputs of
  the layer's real spatial size, channels_last, under the search's precision;
* a unit's latency is a table over (kept input channels, kept output channels). With channel
  counts snapped to steps (``round_to``), the table holds every count the search can produce,
  measured; otherwise a grid of at most :data:`GRID` counts per axis, interpolated bilinearly;
* ``round_to="auto"`` measures the step per channel group: its first layer is timed over
  output counts, and the step ``s`` in 1, 2, 4, ... whose padded model
  ``a + b * ceil(k / s) * s`` fits that curve best is the kernel's block size (counts 9..16
  cost what 16 costs; :func:`measure_steps`);
* the model's latency = the sum of its units + a constant rest (residual adds, pooling...),
  the measured dense model minus its units' sum (at least 0);
* layers timed alone can run differently inside the network (oneDNN picks kernels and layouts
  per shape), so :meth:`LatencyModel.calibrate` fits ``measured = a * table + b`` on whole
  pruned models timed against the dense one (:class:`MeasuredLatency`), and the search by
  default times every candidate that way before accepting it (``sampler.py``).

Units with the same shape share measurements, and measurements are cached per device key
(device name, torch version, threads, precision, batch, memory format) in
``$SPARSETRAIN_CACHE/latency/`` (default ``~/.cache/sparsetrain``): the table of a model is
measured once per device. The cache holds only timings of single layers; a corrupt cache file
is measured again. A search stores the resolved model (:meth:`LatencyModel.to_json`) in its run
folder, and a resumed search uses that copy, never a new measurement.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import statistics
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsetrain.checkpoint import write_json
from sparsetrain.errors import UserError
from sparsetrain.evaluate.cost import time_forward
from sparsetrain.structured.groups import ChannelGroup
from sparsetrain.structured.macs import RoundTo, kept_counts, layer_columns, round_steps
from sparsetrain.utils import cpu_name, cpu_signature

__all__ = [
    "GRID",
    "STEP_SLACK",
    "LatencyModel",
    "MeasuredLatency",
    "device_key",
    "interleaved_medians",
    "measure_steps",
]

GRID = 16  # counts per table axis when every count is possible (interpolated in between)
STEP_SLACK = 0.05  # a step whose fit is this close to the best one ties with it
STEPS = (1, 2, 4, 8, 16, 32, 64)
CURVE_COUNTS = 64  # counts timed per group to find its step (a window of this many)

# (unit spec, kept in, kept out) -> milliseconds; tests pass a deterministic one
Timer = Callable[[dict[str, Any], int, int], float]


def device_key(device: torch.device, precision: str, batch: int) -> dict[str, Any]:
    """What a latency measurement depends on besides the layer: the processor (for a CPU its
    name *and* signature, since VMs of different generations share names), torch, threads,
    precision, batch size and memory format."""
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{cpu_name()} ({cpu_signature()})")
    return {"device": f"{device.type}:{name}", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "precision": precision, "batch": int(batch),
            "memory_format": "channels_last"}


def _cache_file(key: dict[str, Any]) -> Path:
    root = Path(os.environ.get("SPARSETRAIN_CACHE") or Path.home() / ".cache" / "sparsetrain")
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / "latency" / f"{digest}.json"


class _Cache:
    """Timings of single units for one device key, loaded once and saved after measuring."""

    def __init__(self, key: dict[str, Any], use: bool) -> None:
        self.key, self.path, self.use = key, _cache_file(key), use
        self.times: dict[str, float] = {}
        self.new = 0
        if use and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("key") == key:
                    self.times = {str(k): float(v) for k, v in data["times"].items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                self.times = {}  # a corrupt cache is only timings: measure them again

    def get(self, spec: dict[str, Any], kin: int, kout: int, timer: Timer) -> float:
        k = f"{_spec_id(spec)}|{kin}|{kout}"
        if k not in self.times:
            self.times[k] = float(timer(spec, kin, kout))
            self.new += 1
        return self.times[k]

    def save(self) -> None:
        if self.use and self.new:
            try:
                write_json({"key": self.key, "times": self.times}, self.path)
            except (OSError, UserError) as e:  # an unwritable cache only costs time later
                warnings.warn(f"latency cache not saved ({e}); set SPARSETRAIN_CACHE to a "
                              "writable folder", stacklevel=2)
            self.new = 0


def _spec_id(spec: dict[str, Any]) -> str:
    return ",".join(f"{k}={spec[k]}" for k in sorted(spec))


def _unit_spec(m: nn.Module, shape: Sequence[int]) -> dict[str, Any]:
    if isinstance(m, nn.Linear):
        return {"kind": "linear", "in": m.in_features, "out": m.out_features}
    return {"kind": "dwconv" if m.groups > 1 else "conv", "in": m.in_channels,
            "out": m.out_channels, "k": "x".join(map(str, m.kernel_size)),
            "s": "x".join(map(str, m.stride)), "p": "x".join(map(str, m.padding)),
            "d": "x".join(map(str, m.dilation)), "h": int(shape[-2]), "w": int(shape[-1])}


def _pair(text: str) -> tuple[int, int]:
    a, b = text.split("x")
    return int(a), int(b)


def make_timer(device: torch.device, precision: str, batch: int, warmup: int = 3,
               repeats: int = 9) -> Timer:
    """A timer of real units: median milliseconds of ``repeats`` forwards after ``warmup``."""

    @torch.no_grad()
    def timer(spec: dict[str, Any], kin: int, kout: int) -> float:
        if spec["kind"] == "linear":
            unit: nn.Module = nn.Linear(kin, kout)
            x = torch.randn(batch, kin)
        else:
            groups = kout if spec["kind"] == "dwconv" else 1
            kin = kout if spec["kind"] == "dwconv" else kin
            conv = nn.Conv2d(kin, kout, _pair(spec["k"]), _pair(spec["s"]), _pair(spec["p"]),
                             _pair(spec["d"]), groups=groups, bias=False)
            unit = nn.Sequential(conv, nn.BatchNorm2d(kout), nn.ReLU(inplace=True))
            x = torch.randn(batch, kin, spec["h"], spec["w"]).contiguous(
                memory_format=torch.channels_last)
            unit = unit.to(memory_format=torch.channels_last)
        unit = unit.to(device).eval()
        x = x.to(device)
        return 1000 * time_forward(unit, x, device, precision, warmup, repeats)

    return timer


def _window(channels: int) -> list[int]:
    """The counts timed to find a group's step: all when few, else a window around C/2."""
    if channels <= CURVE_COUNTS:
        return list(range(1, channels + 1))
    lo = max(1, channels // 2 - CURVE_COUNTS // 2)
    return list(range(lo, lo + CURVE_COUNTS))


def measure_steps(curve: Mapping[int, float], channels: int) -> int:
    """The step of one group from its latency ``curve`` (count -> ms): the ``s`` whose padded
    model ``t(k) = a + b * ceil(k / s) * s`` fits the curve best (least squares, judged by the
    median absolute residual, which one noisy timing cannot move); a step within
    :data:`STEP_SLACK` of the best fit counts as a tie, and ties go to the larger step (more
    channels at the same time). A kernel that pads to blocks of 8 shows plateaus of 8."""
    counts = sorted(curve)
    y = [curve[k] for k in counts]
    fits: dict[int, float] = {}
    for s in STEPS:
        if s >= channels and s > 1:
            break
        x = [min(channels, -(-k // s) * s) for k in counts]
        slope, icept = _line(x, y, 0.0)
        fits[s] = statistics.median(abs(v - icept - slope * u) for u, v in zip(x, y, strict=True))
    best = min(fits.values())
    return max(s for s, r in fits.items() if r <= best * (1 + STEP_SLACK) + 1e-12)


def _line(x: Sequence[float], y: Sequence[float], flat: float) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``y`` on ``x``; slope ``flat`` when every ``x``
    is equal (through the mean of ``y``)."""
    try:
        return tuple(statistics.linear_regression(x, y))  # type: ignore[return-value]
    except statistics.StatisticsError:
        return flat, statistics.fmean(y) - flat * statistics.fmean(x)


def _axis(channels: int, step: int) -> list[int]:
    """Counts a table axis holds: every count ``kept_counts`` can produce with ``step``, or at
    most :data:`GRID` of them spread over ``1..channels`` (interpolated in between)."""
    if step > 1 and channels > step:
        counts = sorted({*range(step, channels + 1, step), channels})
    else:
        counts = list(range(1, channels + 1))
    if len(counts) <= GRID:
        return counts
    idx = {round(i * (len(counts) - 1) / (GRID - 1)) for i in range(GRID)}
    return [counts[i] for i in sorted(idx)]


@dataclass
class _Unit:
    name: str
    spec: dict[str, Any]
    a: int  # column of the group controlling its inputs (G: none / depthwise)
    b: int  # column controlling its outputs (G: none)
    grid_in: list[int]
    grid_out: list[int]
    table: list[list[float]]  # ms, [len(grid_in)][len(grid_out)]


class LatencyModel:
    """Predicted forward latency of a strategy (see the module doc); the same interface as
    :class:`~sparsetrain.structured.macs.MacsModel` where a sampler needs it."""

    def __init__(self, names: Sequence[str], channels: Sequence[int],
                 round_to: tuple[int, ...] | None, units: Sequence[_Unit], dense_ms: float,
                 rest_ms: float, key: dict[str, Any],
                 calibration: Mapping[str, Any] | None = None) -> None:
        self.names = tuple(names)
        # measured = a * table + b, fitted on whole pruned models (see :meth:`calibrate`)
        self.calibration = None if calibration is None else dict(calibration)
        self.channels = torch.tensor(list(channels), dtype=torch.int64)
        self.round_to = round_to
        self.units = list(units)
        self.dense_ms, self.rest_ms, self.key = float(dense_ms), float(rest_ms), dict(key)
        self._tensors = [(torch.tensor(u.grid_in, dtype=torch.float64),
                          torch.tensor(u.grid_out, dtype=torch.float64),
                          torch.tensor(u.table, dtype=torch.float64)) for u in self.units]
        ones = torch.ones(1, len(self.names), dtype=torch.int64)
        self.dense_pred = float(self.ms_of_kept(ones * self.channels)[0])

    # -- prediction ---------------------------------------------------------------------------
    def ms_of_kept(self, kept: torch.Tensor) -> torch.Tensor:
        """Predicted milliseconds (float64 ``[B]``) of kept-channel counts int64 ``[B, G]``."""
        total = torch.full((len(kept),), self.rest_ms, dtype=torch.float64)
        for col in self.unit_ms(kept).unbind(dim=1):  # the order of the sum before unit_ms
            total += col
        return total

    def unit_ms(self, kept: torch.Tensor) -> torch.Tensor:
        """Each unit's predicted milliseconds (float64 ``[B, units]``, in ``self.units``' order)
        for kept-channel counts int64 ``[B, G]``; the model's latency adds ``rest_ms``."""
        k = torch.cat([kept, torch.zeros(len(kept), 1, dtype=torch.int64)], dim=1)
        k = k.to(torch.float64)
        out = torch.zeros(len(kept), len(self.units), dtype=torch.float64)
        for j, (u, (gi, go, t)) in enumerate(zip(self.units, self._tensors, strict=True)):
            kin = k[:, u.a] if u.a < len(self.names) else torch.full_like(out[:, j], gi[-1])
            kout = k[:, u.b] if u.b < len(self.names) else torch.full_like(out[:, j], go[-1])
            out[:, j] = _bilinear(gi, go, t, kin, kout)
        return out

    def ratio_of_ratios(self, ratios: torch.Tensor) -> torch.Tensor:
        """Predicted latency as a fraction of the dense model's (float64 ``[B]``): the table's
        sum over the dense model's sum, mapped through the calibration when there is one."""
        raw = self.table_ratio(ratios)
        if self.calibration is None:
            return raw
        return self.calibration["a"] * raw + self.calibration["b"]

    def table_ratio(self, ratios: torch.Tensor) -> torch.Tensor:
        """The uncalibrated ratio: the units' sum (plus the rest) over the dense model's."""
        kept = kept_counts(ratios, self.channels, self.round_to)
        return self.ms_of_kept(kept) / self.dense_pred

    def calibrate(self, measure: Callable[[Mapping[str, float]], float], n: int = 8,
                  seed: int = 0, r_max: float = 0.7) -> LatencyModel:
        """A copy whose predictions are fitted to whole-model measurements: ``measure`` (e.g.
        :class:`MeasuredLatency`) times ``n`` strategies, uniform ratios spread over
        ``[0.1, r_max]`` and random ones (``seed``), and ``measured = a * table + b`` is fitted
        by least squares. Isolated layers can time differently from the same layers inside the
        network (oneDNN picks kernels and layouts per shape), which the fit absorbs on
        average; the points are kept in the table for the record."""
        g = torch.Generator().manual_seed(seed)
        n_uniform = max(2, n // 2)
        rows = [torch.full((len(self.names),), 0.1 + (r_max - 0.1) * k / (n_uniform - 1),
                           dtype=torch.float64) for k in range(n_uniform)]
        rows += [r_max * torch.rand(len(self.names), generator=g, dtype=torch.float64)
                 for _ in range(n - n_uniform)]
        x = self.table_ratio(torch.stack(rows)).tolist()
        y = [float(measure(dict(zip(self.names, r.tolist(), strict=True)))) for r in rows]
        a, b = _line(x, y, 1.0)
        resid = [v - (a * u + b) for u, v in zip(x, y, strict=True)]
        cal = {"a": a, "b": b, "points": [[u, v] for u, v in zip(x, y, strict=True)],
               "rms": (statistics.fmean(r * r for r in resid)) ** 0.5}
        return LatencyModel(self.names, self.channels.tolist(), self.round_to, self.units,
                            self.dense_ms, self.rest_ms, self.key, cal)

    def step_of(self) -> dict[str, int]:
        """The per-group steps as ``prune_model``'s ``round_to`` (groups with step 1 omitted)."""
        if self.round_to is None:
            return {}
        return {n: s for n, s in zip(self.names, self.round_to, strict=True) if s > 1}

    # -- persistence --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "names": list(self.names), "channels": self.channels.tolist(),
                "round_to": None if self.round_to is None else list(self.round_to),
                "dense_ms": self.dense_ms, "rest_ms": self.rest_ms,
                "units": [u.__dict__ for u in self.units], "calibration": self.calibration}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "latency table") -> LatencyModel:
        try:
            units = [_Unit(**u) for u in data["units"]]
            rt = data["round_to"]
            cal = data.get("calibration")
            if cal is not None:
                cal = {"a": float(cal["a"]), "b": float(cal["b"]),
                       "points": cal.get("points", []), "rms": cal.get("rms")}
            return cls(data["names"], data["channels"], None if rt is None else tuple(rt),
                       units, data["dense_ms"], data["rest_ms"], data["key"], cal)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{source} is not a latency table ({type(e).__name__}: {e})") from None

    def digest(self) -> str:
        """A short hash of the table (a search's settings name the table it sampled with)."""
        return hashlib.sha1(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    # -- measurement --------------------------------------------------------------------------
    @classmethod
    def measure(
        cls, model: nn.Module, groups: Sequence[ChannelGroup], *, batch: int = 64,
        precision: str = "fp32", round_to: RoundTo | str = "auto", cache: bool = True,
        timer: Timer | None = None, dense_ms: float | None = None, progress: bool = False,
    ) -> LatencyModel:
        """Measure the table of ``model`` pruned by ``groups`` on the model's device.
        ``round_to="auto"`` measures a step per group; ``timer``/``dense_ms`` replace the
        real measurements (tests)."""
        p = next(model.parameters())
        device = p.device
        key = device_key(device, precision, batch)
        store = _Cache(key, cache)
        timer = timer or make_timer(device, precision, batch)
        shapes = _input_shapes(model)
        cols = layer_columns(model, groups)
        names = [g.name for g in groups]
        channels = [g.channels for g in groups]
        specs = {name: _unit_spec(m, shapes[name]) for name, m, _, _ in cols if name in shapes}
        if isinstance(round_to, str):
            if round_to != "auto":
                raise UserError(f"round_to must be a number or 'auto', got {round_to!r}")
            steps = _measure_steps(groups, specs, store, timer)
        else:
            steps = round_steps(round_to, names)
        ones = len(groups)
        units = []
        todo = [(n, m, a, b) for n, m, a, b in cols if n in specs]
        bar = _bar(len(todo), progress)
        for name, _, a, b in todo:
            spec = specs[name]
            gi = [spec["in"]] if a == ones else _axis(channels[a], steps[a] if steps else 1)
            go = [spec["out"]] if b == ones else _axis(channels[b], steps[b] if steps else 1)
            if spec["kind"] == "dwconv":  # inputs follow outputs: one row, over outputs
                gi = [spec["in"]]
                table = [[store.get(spec, ko, ko, timer) for ko in go]]
            else:
                table = [[store.get(spec, ki, ko, timer) for ko in go] for ki in gi]
            units.append(_Unit(name, spec, a, b, gi, go, table))
            bar.update(1)
        bar.close()
        store.save()
        if dense_ms is None:
            x = torch.randn(batch, *getattr(model, "input_size", (3, 32, 32)), device=device)
            x = x.contiguous(memory_format=torch.channels_last)
            was = model.training
            model.eval()
            with torch.no_grad():
                dense_ms = 1000 * time_forward(model, x, device, precision, 3, 9)
            model.train(was)
        lm = cls(names, channels, steps, units, dense_ms, 0.0, key)
        rest = max(0.0, dense_ms - lm.dense_pred)
        return cls(names, channels, steps, units, dense_ms, rest, key)


class MeasuredLatency:
    """The real latency ratio of a strategy on this device: the dense model pruned (channel
    counts only matter, so L1 importance), timed at ``batch`` in ``precision`` interleaved with
    the dense model (``repeats`` pairs after one warm-up pair), ratio of the medians. Timing
    both side by side keeps the ratio right when the machine's speed drifts (shared VMs)."""

    def __init__(self, dense: nn.Module, groups: Sequence[ChannelGroup], round_to: RoundTo,
                 batch: int, precision: str, repeats: int = 5) -> None:
        self.dense, self.groups, self.round_to = dense, groups, round_to
        self.precision, self.repeats = precision, int(repeats)
        p = next(dense.parameters())
        self.device = p.device
        self.x = torch.randn(batch, *getattr(dense, "input_size", (3, 32, 32)),
                             device=p.device).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def __call__(self, ratios: Mapping[str, float]) -> float:
        from sparsetrain.structured.groups import prune_model

        pruned = prune_model(self.dense, ratios, "l1", self.round_to, groups=self.groups)
        pruned = pruned.to(memory_format=torch.channels_last).eval()
        dense = copy.deepcopy(self.dense).to(memory_format=torch.channels_last).eval()
        t_dense, t_pruned = interleaved_medians(dense, pruned, self.x, self.precision,
                                                self.repeats)
        return t_pruned / t_dense


def interleaved_medians(a: nn.Module, b: nn.Module, x: torch.Tensor, precision: str,
                        repeats: int) -> tuple[float, float]:
    """Median seconds of one forward of ``a`` and of ``b`` on ``x``, timed in alternating
    pairs (one warm-up pair, then ``repeats``), so a drift of the machine's speed hits both."""
    t_a, t_b = [], []
    for i in range(1 + repeats):
        ta = time_forward(a, x, x.device, precision, 0, 1)
        tb = time_forward(b, x, x.device, precision, 0, 1)
        if i:
            t_a.append(ta)
            t_b.append(tb)
    return statistics.median(t_a), statistics.median(t_b)


def _bar(total: int, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="layer", desc="latency table", disable=not progress,
                dynamic_ncols=True)


def _measure_steps(groups: Sequence[ChannelGroup], specs: Mapping[str, dict[str, Any]],
                   store: _Cache, timer: Timer) -> tuple[int, ...]:
    """A step per group, from the latency curve of its first output layer over output counts
    (its dense input count fixed)."""
    steps = []
    for g in groups:
        layer = next((n for n in g.out_layers if n in specs), None)
        if layer is None:
            steps.append(1)
            continue
        spec = specs[layer]
        kin = spec["in"]
        curve = {k: store.get(spec, k if spec["kind"] == "dwconv" else kin, k, timer)
                 for k in _window(g.channels)}
        steps.append(measure_steps(curve, g.channels))
    return tuple(steps)


def _input_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Input shape of every Conv2d/Linear in one forward of one zero image."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []

    def hook(name: str) -> Callable[..., None]:
        def record(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            shapes.setdefault(name, tuple(inp[0].shape))
        return record

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            handles.append(m.register_forward_hook(hook(name)))
    p = next(model.parameters())
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *getattr(model, "input_size", (3, 32, 32)), dtype=p.dtype,
                              device=p.device))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return shapes


def _bilinear(gx: torch.Tensor, gy: torch.Tensor, t: torch.Tensor, x: torch.Tensor,
              y: torch.Tensor) -> torch.Tensor:
    """Bilinear interpolation of table ``t`` on grids ``gx``, ``gy`` at points ``(x, y)``
    (clamped to the grid; exact on grid points)."""

    def coords(g: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(g) == 1:
            z = torch.zeros_like(v, dtype=torch.int64)
            return z, torch.zeros_like(v)
        v = v.clamp(g[0], g[-1])
        hi = torch.searchsorted(g, v).clamp(1, len(g) - 1)
        lo = hi - 1
        w = (v - g[lo]) / (g[hi] - g[lo])
        return lo, w

    xi, wx = coords(gx, x)
    yi, wy = coords(gy, y)
    xj = (xi + (wx > 0).to(torch.int64)).clamp_max(len(gx) - 1)
    yj = (yi + (wy > 0).to(torch.int64)).clamp_max(len(gy) - 1)
    return ((1 - wx) * (1 - wy) * t[xi, yi] + wx * (1 - wy) * t[xj, yi]
            + (1 - wx) * wy * t[xi, yj] + wx * wy * t[xj, yj])
