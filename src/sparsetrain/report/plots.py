"""Figures of the report, rendered to PNG bytes with matplotlib's Agg canvas.

Every builder has the signature ``(runs: Sequence[Run]) -> list[Plot]`` and returns nothing
when no run has the data it needs. Figures are built with :class:`matplotlib.figure.Figure`
and drawn by ``FigureCanvasAgg`` directly: no pyplot, no global figure registry, and the
caller's interactive backend is left alone. matplotlib is imported only when a figure is drawn
(it is the optional ``[plots]`` extra).
"""

from __future__ import annotations

import functools
import io
import json
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sparsetrain.errors import UserError
from sparsetrain.report.runs import Run, dig, num

WIDTH, HEIGHT, DPI = 6.0, 3.5, 90


@dataclass(frozen=True)
class Plot:
    """One rendered figure: ``section`` groups it in the report, ``slug`` names its file."""

    section: str
    slug: str
    title: str
    png: bytes
    svg: bytes = b""


def require_matplotlib() -> None:
    """Raise a :class:`UserError` naming the extra to install when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise UserError("sparsetrain report needs matplotlib: pip install -e '.[plots]'") from e


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (WIDTH, HEIGHT),
            **kw: Any) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def _images(fig: Any) -> tuple[bytes, bytes]:
    """The figure as PNG (embedded in the page) and SVG (saved beside the PNG)."""
    png, svg = io.BytesIO(), io.BytesIO()
    # no "Software"/"Creator" entries: they hold a URL, and the report references no network
    fig.savefig(png, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    # a fixed salt makes the SVG's element ids, and so the file, the same on every rebuild
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "sparsetrain"}):
        fig.savefig(svg, format="svg", bbox_inches="tight",
                    metadata={"Creator": None, "Date": None})
    return png.getvalue(), svg.getvalue()


# Okabe & Ito's colour-blind-safe palette (black is kept for dense reference lines)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442")


def _styles(n: int) -> list[dict[str, Any]]:
    """Distinct line styles for ``n`` overlaid lines: seven colour-blind-safe colours, then
    new dash patterns."""
    k = len(PALETTE)
    return [{"color": PALETTE[i % k], "ls": ("-", "--", ":", "-.")[i // k % 4]}
            for i in range(n)]


def _legend(ax: Any, n: int) -> None:
    if n:
        ax.legend(fontsize=6 if n > 8 else 7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  frameon=False)


def slug(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


@dataclass(frozen=True)
class SeedGroup:
    """Finished runs of one recipe that differ only in seed: one mark in a comparison."""

    label: str
    density: float  # mean measured global density
    accs: tuple[float, ...]  # final test top-1 of each seed
    names: tuple[str, ...]
    flops: float | None = None  # mean effective inference FLOPs (dense FLOPs for dense runs)
    wall_s: float | None = None  # mean wall time
    train_flops: float | None = None  # mean training FLOPs (:func:`training_flops`)

    @property
    def mean(self) -> float:
        return sum(self.accs) / len(self.accs)

    @property
    def n(self) -> int:
        return len(self.accs)


def seed_groups(runs: Sequence[Run]) -> list[SeedGroup]:
    """Finished runs with a density and a final top-1, grouped by :attr:`Run.mark` (the
    recipe apart from its seed, or what ``report --group-by`` names)."""
    by: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        if r.finished and r.density is not None and r.top1 is not None:
            by[r.mark].append(r)
    out = [SeedGroup(rs[0].method or "?", sum(r.density for r in rs) / len(rs),
                     tuple(r.top1 for r in rs), tuple(r.name for r in rs),
                     _mean([_effective_flops(r) for r in rs]), _mean([r.wall_s for r in rs]),
                     _mean([training_flops(r) for r in rs]))
           for rs in by.values()]
    return sorted(out, key=lambda g: (g.label, g.density, g.names))


def _mean(xs: Sequence[float | None]) -> float | None:
    return sum(xs) / len(xs) if xs and all(x is not None for x in xs) else None  # type: ignore


@functools.lru_cache(maxsize=32)
def _layer_flops(model: str, kwargs_json: str, num_classes: int) -> dict[str, int]:
    """Forward FLOPs per layer of a registered model for one image (built on the meta
    device: no memory, no weights)."""
    import torch

    from sparsetrain.models import create_model
    from sparsetrain.models.flops import layer_flops

    with torch.device("meta"):
        net = create_model(model, num_classes=num_classes, **json.loads(kwargs_json))
    return layer_flops(net)


def training_flops(r: Run) -> float | None:
    """Training FLOPs as the RigL/GraNet papers count them: 3 × the forward FLOPs per image
    (backward ≈ 2 × forward) at the masks in force, summed over every image trained. Masks
    change at the logged mask updates (per-layer densities); a run that logged none trains at
    its final effective FLOPs throughout. None when the model, batch size or steps are unknown."""
    from sparsetrain.data import get_dataset_info
    from sparsetrain.errors import UserError

    steps = num(dig(r.summary, "steps")) or num(dig(r.metrics[-1] if r.metrics else None, "step"))
    batch = num(dig(r.config, "data", "batch_size"))
    model, dataset = dig(r.config, "model", "name"), dig(r.config, "data", "dataset")
    if not steps or not batch or not isinstance(model, str) or not isinstance(dataset, str):
        return None
    try:
        classes = get_dataset_info(dataset).num_classes
        if classes is None:
            return None
        per_layer = _layer_flops(model, json.dumps(dig(r.config, "model", "kwargs") or {},
                                                   sort_keys=True), classes)
    except (UserError, TypeError, ValueError, RuntimeError):
        return None
    total = per_layer["total"]

    def forward(layers: dict[str, float]) -> float:
        return total - sum(per_layer.get(n.rpartition(".")[0], 0) * (1 - d)
                           for n, d in layers.items() if isinstance(d, int | float))

    updates = sorted((u["step"], u["layers"]) for m in r.metrics
                     for u in (m.get("mask_updates") or []) if isinstance(u, dict)
                     and isinstance(u.get("step"), int) and isinstance(u.get("layers"), dict))
    if not updates:
        per_image = _effective_flops(r) or total
        return 3.0 * per_image * batch * steps
    flops, (at, layers) = 0.0, (0, {})
    for step, new in updates:
        flops += (min(step, steps) - at) * forward(layers)
        at, layers = min(step, steps), new
    flops += (steps - at) * forward(layers)
    return 3.0 * batch * flops


def _effective_flops(r: Run) -> float | None:
    dense, sparse = r.flops
    return sparse if sparse is not None else dense


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, accuracy) points no other point beats with less or equal cost."""
    front: list[tuple[float, float]] = []
    for c, a in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or a > front[-1][1]:
            front.append((c, a))
    return front


def accuracy_vs_cost(runs: Sequence[Run]) -> list[Plot]:
    """Final top-1 against effective inference FLOPs, training FLOPs and wall time, one mark
    per recipe (seeds grouped: mean, min-max bar), the Pareto front drawn as a step line."""
    groups = seed_groups(runs)
    panels = [(attr, xlabel, scale) for attr, xlabel, scale in (
        ("flops", "effective inference FLOPs (M)", 1e-6),
        ("train_flops", "training FLOPs (×10¹⁵)", 1e-15), ("wall_s", "wall time (min)", 1 / 60))
        if sum(getattr(g, attr) is not None for g in groups) >= 2]
    if not panels:
        return []
    labels = sorted({g.label for g in groups if g.density < 1 - 1e-9})
    colors = {lab: st["color"] for lab, st in zip(labels, _styles(len(labels)), strict=True)}
    levels = sorted({round(1 - g.density, 2) for g in groups})
    markers = {lv: "osD^v<>pP*"[i % 10] for i, lv in enumerate(levels)}  # one per sparsity
    fig, axes = _figure(1, len(panels), size=(WIDTH * (1 + 0.55 * (len(panels) - 1)), HEIGHT))
    for ax, (attr, xlabel, scale) in zip(axes[0], panels, strict=True):
        pts = [(g, scale * getattr(g, attr)) for g in groups if getattr(g, attr) is not None]
        for g, x in pts:
            accs = [100 * a for a in g.accs]
            m = 100 * g.mean
            ax.errorbar([x], [m], yerr=[[m - min(accs)], [max(accs) - m]],
                        fmt=markers[round(1 - g.density, 2)], color=colors.get(g.label, "k"),
                        capsize=2, markersize=4,
                        label=f"{g.label}, {100 * (1 - g.density):.0f}% sparse{_seeds(g)}")
        front = pareto_front([(x, 100 * g.mean) for g, x in pts])
        ax.step([c for c, _ in front], [a for _, a in front], where="post", color="0.4", lw=1,
                ls=":", label="Pareto front")
        cost_axis(ax, [x for _, x in pts])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("final test top-1 (%)")
        ax.grid(alpha=0.3)
    _legend(axes[0][-1], len(groups) + 1)
    return [Plot("cost", "accuracy_vs_cost", "Accuracy vs cost (inference FLOPs, training "
                 "FLOPs, wall time)",
                 *_images(fig))]


def cost_axis(ax: Any, xs: Sequence[float]) -> None:
    """A log x axis where the costs span a factor of 3 or more, else a linear one: a log axis
    over a narrow range (e.g. runs of 27-29 min) holds no major tick and shows no number.
    Under two decades the log axis is labelled at 1, 2 and 5 times each power of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if min(xs) > 0 and max(xs) / min(xs) >= 3:
        ax.set_xscale("log")
        if max(xs) / min(xs) < 100:
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def accuracy_vs_sparsity(runs: Sequence[Run]) -> list[Plot]:
    """Final top-1 per method: at one sparsity a labelled dot chart (sorted, value beside each
    mark, dense as a reference line); at several, accuracy against sparsity on a log-density
    axis (80/90/95/98% evenly spread, as the papers draw it). Seeds of one recipe are one mark:
    their mean, with a min-max bar or band and n in the label."""
    groups = seed_groups(runs)
    dense = [g for g in groups if g.density >= 1 - 1e-9]
    sparse = [g for g in groups if g.density < 1 - 1e-9]
    if not sparse or len(groups) < 2:
        return []
    levels = sorted({round(1 - g.density, 2) for g in sparse})
    finished = {n for g in groups for n in g.names}
    skipped = sum(1 for r in runs if r.density is not None and r.top1 is not None
                  and r.name not in finished)
    note = f" ({skipped} unfinished run(s) left out)" if skipped else ""
    if len(levels) == 1:
        fig = _dot_chart(sparse, dense, levels[0])
        return [Plot("sparsity", "accuracy_vs_sparsity",
                     f"Accuracy at {100 * levels[0]:g}% sparsity{note}", *_images(fig))]
    plots = [Plot("sparsity", "accuracy_vs_sparsity", "Accuracy vs sparsity" + note,
                  *_images(_sparsity_lines(sparse, dense, levels)))]
    # lines overlap where methods are close: every level with two or more methods also gets
    # the labelled dot chart, so each method can be read off at that sparsity
    for level in levels:
        at = [g for g in sparse if round(1 - g.density, 2) == level]
        if len(at) >= 2:
            plots.append(Plot("sparsity", f"accuracy_at_{100 * level:g}",
                              f"Accuracy at {100 * level:g}% sparsity",
                              *_images(_dot_chart(at, dense, level))))
    return plots


def _seeds(g: SeedGroup) -> str:
    return f" (n={g.n})" if g.n > 1 else ""


def _dense_line(ax: Any, dense: Sequence[SeedGroup], vertical: bool) -> None:
    for g in dense[:1]:  # one reference: the first dense recipe
        accs = [100 * a for a in g.accs]
        line, span = (ax.axvline, ax.axvspan) if vertical else (ax.axhline, ax.axhspan)
        line(100 * g.mean, color="k", ls="--", lw=1,
             label=f"{g.label} {100 * g.mean:.2f}%{_seeds(g)}")
        if g.n > 1:
            span(min(accs), max(accs), color="k", alpha=0.08, lw=0)


def _dot_chart(sparse: Sequence[SeedGroup], dense: Sequence[SeedGroup], level: float) -> Any:
    rows = sorted(sparse, key=lambda g: g.mean)
    labels = [g.label for g in rows]
    labels = [f"{lab} [{g.names[0]}]" if labels.count(lab) > 1 else lab
              for lab, g in zip(labels, rows, strict=True)]
    fig, axes = _figure(size=(WIDTH, max(2.0, 0.32 * len(rows) + 1.1)))
    ax = axes[0, 0]
    color = _styles(1)[0]["color"]
    for y, g in enumerate(rows):
        accs = [100 * a for a in g.accs]
        m = 100 * g.mean
        ax.errorbar([m], [y], xerr=[[m - min(accs)], [max(accs) - m]], fmt="o", color=color,
                    capsize=3, markersize=5)
        ax.annotate(f"{m:.2f}%{_seeds(g)}", (max(accs), y), xytext=(6, 0),
                    textcoords="offset points", va="center", fontsize=7)
    _dense_line(ax, dense, vertical=True)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    lo = min([100 * min(g.accs) for g in rows] + [100 * min(g.accs) for g in dense[:1]])
    hi = max([100 * max(g.accs) for g in rows] + [100 * max(g.accs) for g in dense[:1]])
    ax.set_xlim(lo - 0.05 * (hi - lo + 1), hi + 0.25 * (hi - lo + 1))  # room for the values
    ax.set_xlabel(f"final test top-1 (%) at {100 * level:g}% sparsity")
    ax.grid(axis="x", alpha=0.3)
    if dense:
        ax.legend(fontsize=7, loc="upper left", frameon=False)  # free: rows rise left to right
    return fig


def _sparsity_lines(sparse: Sequence[SeedGroup], dense: Sequence[SeedGroup],
                    levels: Sequence[float]) -> Any:
    by: dict[str, list[SeedGroup]] = defaultdict(list)
    for g in sparse:
        by[g.label].append(g)
    fig, axes = _figure()
    ax = axes[0, 0]
    for (label, gs), style in zip(sorted(by.items()), _styles(len(by)), strict=True):
        gs = sorted(gs, key=lambda g: -g.density)
        xs = [g.density for g in gs]
        ax.plot(xs, [100 * g.mean for g in gs], marker="o", markersize=4,
                label=label + (f" (n={max(g.n for g in gs)})" if max(g.n for g in gs) > 1
                               else ""), **style)
        if any(g.n > 1 for g in gs):
            ax.fill_between(xs, [100 * min(g.accs) for g in gs],
                            [100 * max(g.accs) for g in gs], color=style["color"], alpha=0.2,
                            lw=0)
    _dense_line(ax, dense, vertical=False)
    ax.set_xscale("log")
    ticks = [1 - s for s in levels]
    ax.set_xticks(ticks, [f"{100 * s:g}%" for s in levels])
    ax.minorticks_off()
    ax.set_xlim(max(ticks) * 1.3, min(ticks) / 1.3)  # sparser to the right
    ax.set_xlabel("sparsity (log density axis)")
    ax.set_ylabel("final test top-1 (%)")
    ax.grid(alpha=0.3)
    _legend(ax, len(by) + bool(dense))
    return fig


def _curve_groups(runs: Sequence[Run], key: str
                  ) -> list[tuple[str, list[tuple[float, float, float, float]]]]:
    """Per-epoch curves of ``key``, one per mark (seeds of a recipe together): ``(label,
    [(epoch, mean, min, max)])`` over the epochs every run of the group logged."""
    by: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        if r.curve(key):
            by[r.mark].append(r)
    out = []
    for rs in by.values():
        curves = [dict(r.curve(key)) for r in rs]
        epochs = sorted(set.intersection(*(set(c) for c in curves)))
        pts = [(e, sum(c[e] for c in curves) / len(curves), min(c[e] for c in curves),
                max(c[e] for c in curves)) for e in epochs]
        label = rs[0].name if len(rs) == 1 else f"{rs[0].method or rs[0].name} (n={len(rs)})"
        if pts:
            out.append((label, pts))
    return out


def training_curves(runs: Sequence[Run]) -> list[Plot]:
    """Test accuracy and training loss per epoch, overlaid: one line per run, or per group of
    seeds of one recipe (their mean, with a min-max band)."""
    out = []
    for key, label, scale, stem in (("test_acc", "test top-1 (%)", 100.0, "test_accuracy"),
                                    ("train_loss", "training loss", 1.0, "train_loss")):
        curves = _curve_groups(runs, key)
        if not curves:
            continue
        from matplotlib.ticker import MaxNLocator

        fig, axes = _figure()
        ax = axes[0, 0]
        for (name, c), style in zip(curves, _styles(len(curves)), strict=True):
            ax.plot([e for e, *_ in c], [scale * v for _, v, _, _ in c], marker=".",
                    markersize=3, label=name, **style)
            if any(lo != hi for _, _, lo, hi in c):
                ax.fill_between([e for e, *_ in c], [scale * lo for *_, lo, _ in c],
                                [scale * hi for *_, hi in c], color=style["color"], alpha=0.2,
                                lw=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        _legend(ax, len(curves))
        out.append(Plot("curves", stem, f"{label[0].upper()}{label[1:]} per epoch", *_images(fig)))
    return out


def layer_densities(runs: Sequence[Run]) -> list[Plot]:
    """Final density of every masked layer, one bar chart per sparse run."""
    out = []
    for r in runs:
        layers = r.layer_densities
        if not layers or not r.is_sparse:
            continue
        names = [n.removesuffix(".weight") for n in layers]
        fig, axes = _figure()
        ax = axes[0, 0]
        ax.bar(range(len(names)), list(layers.values()), color="tab:blue")
        if r.density is not None:
            ax.axhline(r.density, color="k", ls="--", lw=1, label=f"global {r.density:.3f}")
            ax.legend(fontsize=7, frameon=False)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=90, fontsize=max(4, min(7, 400 // len(names))))
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("density")
        ax.set_title(r.name, fontsize=9)
        out.append(Plot("layers", f"layers_{slug(r.name)}", f"Layer densities: {r.name}",
                        *_images(fig)))
    return out


def mask_dynamics(runs: Sequence[Run]) -> list[Plot]:
    """Density, ITOP rate (Liu et al. 2021) and churn (grown / active) over training steps
    for runs with at least two mask events."""
    dyn = [r for r in runs if len(r.mask_updates) >= 2]
    if not dyn:
        return []
    fig, axes = _figure(3, 1, size=(WIDTH, 5.5), sharex=True)
    for r, style in zip(dyn, _styles(len(dyn)), strict=True):
        ups = r.mask_updates
        for ax, key, only_updates in ((axes[0, 0], "density", False), (axes[1, 0], "itop", False),
                                      (axes[2, 0], "churn", True)):
            pts = [(num(u["step"]), num(u.get(key))) for u in ups
                   if not only_updates or u.get("event") == "update"]
            pts = [(s, v) for s, v in pts if v is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=".", markersize=3,
                        label=r.name if key == "density" else None, **style)
    for ax, label in zip(axes[:, 0], ("density", "ITOP rate", "churn"), strict=True):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[2, 0].set_xlabel("step")
    _legend(axes[0, 0], len(dyn))
    return [Plot("dynamics", "mask_dynamics", "Mask dynamics", *_images(fig))]


def reliability(runs: Sequence[Run]) -> list[Plot]:
    """Reliability diagram (Guo et al. 2017): accuracy per confidence bin vs the diagonal."""
    out = []
    for r in runs:
        rel = r.reliability
        if rel is None:
            continue
        edges = [num(e) for e in rel["edges"]]
        rows = [(lo, hi, num(a), num(c)) for lo, hi, a, c
                in zip(edges[:-1], edges[1:], rel["accuracy"], rel["confidence"], strict=False)]
        rows = [x for x in rows if None not in x]
        if not rows:
            continue
        fig, axes = _figure(size=(4.0, 3.5))
        ax = axes[0, 0]
        ax.bar([lo for lo, *_ in rows], [a for *_, a, _ in rows],
               width=[hi - lo for lo, hi, *_ in rows], align="edge", color="tab:blue",
               edgecolor="k", lw=0.5, label="accuracy")
        ax.scatter([c for *_, c in rows], [a for *_, a, _ in rows], color="tab:red", s=8,
                   zorder=3, label="mean confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ece = f", ECE {r.ece:.4f}" if r.ece is not None else ""
        ax.set_title(f"{r.name}{ece}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", frameon=False)
        out.append(Plot("reliability", f"reliability_{slug(r.name)}",
                        f"Reliability: {r.name}", *_images(fig)))
    return out


def candidates(runs: Sequence[Run]) -> list[Plot]:
    """EagleEye (Li et al. 2020) candidates: adaptive-BN score against MACs, and against the
    vanilla (no BN recalibration) score when it was recorded."""
    out = []
    for r in runs:
        pts = [(num(c.get("macs")), num(c.get("abn_score")), num(c.get("vanilla_score")))
               for c in r.candidates]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        if not pts:
            continue
        vanilla = [(v, a) for _, a, v in pts if v is not None]
        fig, axes = _figure(1, 2 if vanilla else 1, size=(WIDTH if vanilla else 4.0, 3.0))
        ax = axes[0, 0]
        ax.scatter([m / 1e6 for m, *_ in pts], [a for _, a, _ in pts], s=8, alpha=0.7)
        ax.set_xlabel("MACs (M)")
        ax.set_ylabel("adaptive-BN score")
        if vanilla:
            ax2 = axes[0, 1]
            ax2.scatter([v for v, _ in vanilla], [a for _, a in vanilla], s=8, alpha=0.7,
                        color="tab:orange")
            ax2.set_xlabel("vanilla score")
            ax2.set_ylabel("adaptive-BN score")
        fig.suptitle(f"{r.name}: {len(pts)} candidates", fontsize=9)
        out.append(Plot("candidates", f"candidates_{slug(r.name)}",
                        f"EagleEye candidates: {r.name}", *_images(fig)))
    return out


BUILDERS: tuple[Callable[[Sequence[Run]], list[Plot]], ...] = (
    accuracy_vs_sparsity, accuracy_vs_cost, training_curves, layer_densities, mask_dynamics,
    reliability, candidates,
)


def make_plots(runs: Sequence[Run]) -> tuple[list[Plot], list[str]]:
    """Every figure the runs have data for, plus one message per builder that failed (odd
    data must not cost the whole report)."""
    require_matplotlib()
    plots: list[Plot] = []
    errors: list[str] = []
    for build in BUILDERS:
        try:
            plots += build(runs)
        except Exception as e:  # a figure is optional; the table and the rest still matter
            errors.append(f"{build.__name__}: {type(e).__name__}: {e}")
    return plots, errors
