"""Reading run directories for the report; every part may be missing, partial or corrupt.

A run directory (DESIGN §5) holds ``config.yaml``, ``metrics.jsonl`` (one JSON object per
epoch), ``summary.json``, checkpoints, and after an EagleEye search ``candidates.jsonl`` and
``correlation.json``. :func:`find_runs` reads what it can and records a :class:`Problem` for
every part it could not read, so a report shows partial runs instead of failing. The
:class:`Run` properties return ``None`` for anything that is absent or not a finite number.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "last.pt", "best.pt",
             "candidates.jsonl", "correlation.json")
EVAL_PREFERENCE = ("last.pt", "best.pt")  # the test set never selects a checkpoint (§8)
MISSING_REASON = {"summary.json": "missing (run unfinished or interrupted); values shown come "
                  "from metrics.jsonl and config.yaml"}


@dataclass(frozen=True)
class Problem:
    """One part of one run that could not be read, and why."""

    run: str
    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.run}: {self.file}: {self.reason}"


def num(x: Any) -> float | None:
    """``x`` as a float when it is a finite JSON number (not a bool), else ``None``."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def dig(d: Any, *keys: str) -> Any:
    """``d[k0][k1]...`` through nested dicts, ``None`` as soon as a level is missing."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def eps_value(label: str) -> float | None:
    """The radius of an attack key such as ``"8/255"`` or ``"0.03"``."""
    try:
        return float(Fraction(label.strip()))
    except (ValueError, ZeroDivisionError):
        return None


_NAMES = {"dense": "dense", "static": "static", "gmp": "GMP", "granet": "GraNet",
          "rigl": "RigL", "set": "SET", "structured": "EagleEye"}
_BUDGETS = {"er": "ER", "erk": "ERK", "erk_plus": "ERK+", "uniform": "uniform",
            "uniform_plus": "uniform+", "snip_ratio": "SNIP-ratio", "grasp_ratio": "GraSP-ratio",
            "global": "global"}
_SCORES = {"snip": "SNIP", "grasp": "GraSP", "synflow": "SynFlow", "magnitude": "magnitude",
           "gradient": "gradient"}
_NOT_RECIPE = ("name", "out_dir", "seed")  # a recipe run with several seeds is one recipe
_NOT_RECIPE_KEYS = {"sparsity": ("seed",), "train": ("device", "threads", "progress"),
                    "data": ("cache_dir", "path")}


def display_name(method: str, sparsity: dict[str, Any]) -> str:
    """``static`` with a random score is named by its budget (``static ERK``), with a saliency
    by the score (``SNIP``); SET/RigL add a budget only when it is not their ERK default;
    GMP/GraNet use none (GraNet started sparse is ``GraNet-ST``)."""
    name = _NAMES.get(method, method)
    budget, score = sparsity.get("budget") or "erk", sparsity.get("score") or "random"
    if method == "static":
        if score != "random":
            shown = _SCORES.get(score, score)
            return shown if budget == "global" else f"{shown} ({_BUDGETS.get(budget, budget)})"
        return f"static {_BUDGETS.get(budget, budget)}"
    if method in ("set", "rigl") and budget != "erk":
        return f"{name} ({_BUDGETS.get(budget, budget)})"
    init = sparsity.get("initial_density")
    if method == "granet" and isinstance(init, int | float) and init < 1:
        return "GraNet-ST"
    return name


@dataclass
class Run:
    """What could be read of one run directory."""

    path: Path
    name: str
    config: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    correlation: dict[str, Any] | None = None
    problems: list[Problem] = field(default_factory=list)
    group: str | None = None  # set by `report --group-by`: overrides :attr:`recipe` for marks

    def _last(self, key: str) -> float | None:
        """The latest value of ``key`` in the per-epoch metrics."""
        return _first(*(num(m.get(key)) for m in reversed(self.metrics)))

    def curve(self, key: str) -> list[tuple[float, float]]:
        """``(epoch, value)`` pairs of one per-epoch metric, in file order."""
        pts = [(num(m.get("epoch")), num(m.get(key))) for m in self.metrics]
        return [(e, v) for e, v in pts if e is not None and v is not None]

    def _text(self, *paths: tuple[str, ...]) -> str | None:
        """The first string found at ``paths`` in the summary, then in the config."""
        vals = [dig(src, *p) for src in (self.summary, self.config) for p in paths]
        return _first(*(v if isinstance(v, str) and v else None for v in vals))

    @property
    def method(self) -> str | None:
        """The method's proper name (``GraNet``, ``RigL``, ``static ERK``, ``SNIP``), with the
        layer budget only where the method uses one, and ``+ KD`` when distilled."""
        method = self._text(("method",), ("sparsity", "method"))
        if method is None and self.config is not None and "sparsity" not in self.config:
            method = "dense"
        if method is None:
            return None
        sp = dig(self.config, "sparsity")
        label = display_name(method, sp if isinstance(sp, dict) else {})
        if dig(self.config, "distill", "teachers"):
            label += " + KD"
        return label

    def field_text(self, key: str) -> str | None:
        """A value by name for ``report --filter``/``--group-by``: ``name``, ``method`` (the
        proper name), ``model``, ``dataset``, ``density`` (3 decimals), ``seed``, ``budget``,
        ``score``, or any dotted config key (``train.epochs``, ``sparsity.delta_t``)."""
        if key in ("name", "method", "model", "dataset"):
            return getattr(self, key)
        if key == "density":
            return None if self.density is None else f"{self.density:.3f}"
        if key in ("budget", "score"):
            key = f"sparsity.{key}"
        value = dig(self.config, *key.split("."))
        return None if value is None or isinstance(value, dict | list) else str(value)

    @property
    def mark(self) -> str:
        """The key that puts runs into one mark of a comparison figure."""
        return self.group if self.group is not None else self.recipe

    @property
    def recipe(self) -> str:
        """What identifies the recipe apart from its seed: runs that differ only in seed (and
        name or folder) share it, so a report groups them into one mark."""
        if not isinstance(self.config, dict):
            return f"run:{self.path}"
        cfg = {k: v for k, v in self.config.items() if k not in _NOT_RECIPE}
        for section, keys in _NOT_RECIPE_KEYS.items():
            if isinstance(cfg.get(section), dict):
                cfg[section] = {k: v for k, v in cfg[section].items() if k not in keys}
        return json.dumps(cfg, sort_keys=True, default=str)

    @property
    def model(self) -> str | None:
        return self._text(("model",), ("model", "name"))

    @property
    def dataset(self) -> str | None:
        return self._text(("dataset",), ("data", "dataset"))

    @property
    def finished(self) -> bool:
        """Whether training ran to the end (a summary exists or all epochs were logged)."""
        done, total = self.epochs
        return self.summary is not None or (done is not None and total is not None
                                            and done >= total)

    @property
    def density(self) -> float | None:
        """Global density: measured (summary, else metrics), else the configured target."""
        return _first(num(dig(self.summary, "density", "global")), self._last("density"),
                      num(dig(self.config, "sparsity", "density")),
                      1.0 if self.method == "dense" else None)

    @property
    def is_sparse(self) -> bool:
        d = self.density
        return (d is not None and d < 1.0 - 1e-9) or any(
            v < 1.0 - 1e-9 for v in self.layer_densities.values())

    @property
    def top1(self) -> float | None:
        """Final-epoch test accuracy (summary, else the latest epoch, else the evaluation)."""
        return _first(num(dig(self.summary, "final", "test_acc")), self._last("test_acc"),
                      num(dig(self.eval, "top1")))

    @property
    def eval(self) -> dict[str, Any] | None:
        """The ``summary["eval"]`` entry of ``last.pt``, else ``best.pt``, else the first."""
        evals = dig(self.summary, "eval")
        entries = {k: v for k, v in evals.items() if isinstance(v, dict)} if isinstance(
            evals, dict) else {}
        return _first(*(entries.get(k) for k in (*EVAL_PREFERENCE, *entries)))

    @property
    def ece(self) -> float | None:
        return num(dig(self.eval, "ece"))

    @property
    def reliability(self) -> dict[str, list] | None:
        rel = dig(self.eval, "reliability")
        keys = ("edges", "confidence", "accuracy")
        ok = isinstance(rel, dict) and all(isinstance(rel.get(k), list) for k in keys)
        return rel if ok else None

    @property
    def ood_auroc(self) -> float | None:
        """Mean AUROC over the OOD sets that were evaluated."""
        ood = dig(self.eval, "ood")
        vals = [num(dig(v, "auroc")) for v in ood.values()] if isinstance(ood, dict) else []
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else None

    def attack(self, name: str = "fgsm", eps: float = 8 / 255) -> tuple[str, float] | None:
        """``(eps label, accuracy)`` at ``eps`` if evaluated, else at the largest eps."""
        accs = dig(self.eval, "robustness", name)
        pts = [(eps_value(str(k)), str(k), num(v)) for k, v in accs.items()] if isinstance(
            accs, dict) else []
        pts = [(e, k, v) for e, k, v in pts if e is not None and v is not None]
        if not pts:
            return None
        exact = [p for p in pts if abs(p[0] - eps) < 1e-9]
        _, label, acc = exact[0] if exact else max(pts)
        return label, acc

    @property
    def flops(self) -> tuple[float | None, float | None]:
        """(dense, effective sparse) FLOPs from the summary, else from the evaluation."""
        for src in (dig(self.summary, "flops"), dig(self.eval, "flops")):
            if num(dig(src, "dense")) is not None:
                return num(dig(src, "dense")), num(dig(src, "sparse"))
        return None, None

    @property
    def params(self) -> tuple[float | None, float | None]:
        """(total, nonzero) parameters; older summaries store only the total as an int."""
        p = dig(self.summary, "params")
        if num(p) is not None:
            return num(p), num(dig(self.eval, "params", "nonzero"))
        for src in (p, dig(self.eval, "params")):
            if num(dig(src, "total")) is not None:
                return num(dig(src, "total")), num(dig(src, "nonzero"))
        return None, None

    @property
    def wall_s(self) -> float | None:
        return num(dig(self.summary, "wall_s"))

    @property
    def elapsed_s(self) -> float | None:
        """Training time logged so far (for runs without a summary)."""
        return self._last("time_s")

    @property
    def epochs(self) -> tuple[int | None, int | None]:
        """(epochs done, epochs configured)."""
        done = _first(num(dig(self.summary, "epochs")), self._last("epoch"))
        total = num(dig(self.config, "train", "epochs"))
        return (None if done is None else int(done)), (None if total is None else int(total))

    @property
    def mask_updates(self) -> list[dict[str, Any]]:
        """All mask events logged in ``metrics.jsonl`` that carry a step, in order."""
        ups = [m.get("mask_updates") for m in self.metrics]
        return [u for lst in ups if isinstance(lst, list) for u in lst
                if isinstance(u, dict) and num(u.get("step")) is not None]

    @property
    def layer_densities(self) -> dict[str, float]:
        """Final density per masked weight (summary, else the last mask event)."""
        layers = dig(self.summary, "density", "layers")
        if not isinstance(layers, dict) or not layers:
            ups = self.mask_updates
            layers = ups[-1].get("layers") if ups else None
        if not isinstance(layers, dict):
            return {}
        return {str(k): v for k, v in ((k, num(v)) for k, v in layers.items()) if v is not None}


def _first(*vals: Any) -> Any:
    """The first of ``vals`` that is not ``None``."""
    return next((v for v in vals if v is not None), None)


def _read_text(path: Path) -> tuple[str | None, str | None]:
    try:
        return path.read_text(encoding="utf-8"), None
    except (OSError, UnicodeDecodeError) as e:
        return None, f"unreadable ({type(e).__name__}: {e})"


def _read_mapping(path: Path, parse: Any) -> tuple[dict | None, str | None]:
    text, err = _read_text(path)
    if text is None:
        return None, err
    try:
        data = parse(text)
    except (ValueError, yaml.YAMLError) as e:
        return None, f"not valid {path.suffix.lstrip('.').upper()} ({_one_line(e)})"
    if data is None:
        return None, "empty"
    if not isinstance(data, dict):
        return None, f"expected a mapping, got {type(data).__name__}"
    return data, None


def _read_jsonl(path: Path) -> tuple[list[dict], str | None]:
    text, err = _read_text(path)
    if text is None:
        return [], err
    rows, bad = [], []
    lines = [(i, s) for i, s in enumerate(text.splitlines(), 1) if s.strip()]
    for i, line in lines:
        try:
            row = json.loads(line)
        except ValueError as e:
            bad.append(f"line {i}: {_one_line(e)}")
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(f"line {i}: expected an object, got {type(row).__name__}")
    if not bad:
        return rows, None
    return rows, f"skipped {len(bad)} of {len(lines)} lines ({bad[0]})"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:160]


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a directory holding at least one run file."""
    return path.is_dir() and any((path / f).exists() for f in RUN_FILES)


def load_run(path: Path, name: str | None = None) -> Run:
    """Read every part of the run directory ``path`` that can be read."""
    run = Run(path=path, name=name or path.name)
    for fname, attr, required in (("config.yaml", "config", True),
                                  ("metrics.jsonl", "metrics", True),
                                  ("summary.json", "summary", True),
                                  ("candidates.jsonl", "candidates", False),
                                  ("correlation.json", "correlation", False)):
        p = path / fname
        if not p.exists():
            if required:
                run.problems.append(Problem(run.name, fname, MISSING_REASON.get(fname, "missing")))
            continue
        data, err = _read_jsonl(p) if p.suffix == ".jsonl" else _read_mapping(
            p, yaml.safe_load if p.suffix == ".yaml" else json.loads)
        setattr(run, attr, data)
        if err:
            run.problems.append(Problem(run.name, fname, err))
    return run


def find_runs(paths: Iterable[Path]) -> tuple[list[Run], list[Problem]]:
    """Load each run directory in ``paths``; a directory that is not a run but holds runs
    (e.g. ``runs/sweep``) stands for those runs. Anything else is a :class:`Problem`."""
    found: list[Path] = []
    problems: list[Problem] = []
    for p in map(Path, paths):
        if is_run_dir(p):
            found.append(p)
        elif not p.exists():
            problems.append(Problem(str(p), "-", "does not exist"))
        elif not p.is_dir():
            problems.append(Problem(str(p), "-", "not a directory"))
        else:
            children = sorted(c for c in p.iterdir() if is_run_dir(c))
            found += children
            if not children:
                problems.append(Problem(str(p), "-", "not a run directory (no config.yaml, "
                                        "metrics.jsonl or summary.json)"))
    given: dict[Path, Path] = {}
    for p in found:
        given.setdefault(p.resolve(), p)
    unique = list(given.values())
    names = [p.name for p in unique]
    runs = [load_run(p, p.name if names.count(p.name) == 1
                     else f"{p.resolve().parent.name}/{p.name}") for p in unique]
    return runs, problems
