"""Figures of the report, rendered to PNG bytes with matplotlib's Agg canvas.

Every builder has the signature ``(runs: Sequence[Run]) -> list[Plot]`` and returns nothing
when no run has the data it needs. Figures are built with :class:`matplotlib.figure.Figure`
and drawn by ``FigureCanvasAgg`` directly: no pyplot, no global figure registry, and the
caller's interactive backend is left alone. matplotlib is imported only when a figure is drawn
(it is the optional ``[plots]`` extra).
"""

from __future__ import annotations

import io
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sparsetrain.errors import UserError
from sparsetrain.report.runs import Run, num

WIDTH, HEIGHT, DPI = 6.0, 3.5, 90


@dataclass(frozen=True)
class Plot:
    """One rendered figure: ``section`` groups it in the report, ``slug`` names its file."""

    section: str
    slug: str
    title: str
    png: bytes


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


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    # no "Software" text chunk: it holds a URL, and the report must reference no network
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _styles(n: int) -> list[dict[str, Any]]:
    """Distinct line styles for ``n`` overlaid lines: ten colours, then new dash patterns."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [{"color": cmap(i % 10), "ls": ("-", "--", ":", "-.")[i // 10 % 4]} for i in range(n)]


def _legend(ax: Any, n: int) -> None:
    if n:
        ax.legend(fontsize=6 if n > 8 else 7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  frameon=False)


def slug(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def accuracy_vs_sparsity(runs: Sequence[Run]) -> list[Plot]:
    """Final top-1 against sparsity (1 - density), one line per method through the mean of
    the runs (seeds) at each sparsity; dense runs as a dashed reference line."""
    done = [r for r in runs if r.density is not None and r.top1 is not None]
    pts = [(r.method or "?", round(1 - r.density, 4), r.top1) for r in done if r.finished]
    if len(pts) < 2:
        return []
    dense = [a for m, s, a in pts if m.startswith("dense") and s <= 1e-9]
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for m, s, a in pts:
        if not (m.startswith("dense") and s <= 1e-9):
            groups[m].append((s, a))
    if not groups:
        return []
    fig, axes = _figure()
    ax = axes[0, 0]
    for (method, xy), style in zip(sorted(groups.items()), _styles(len(groups)), strict=True):
        by_x: dict[float, list[float]] = defaultdict(list)
        for s, a in xy:
            by_x[s].append(a)
        xs = sorted(by_x)
        ax.plot([100 * x for x in xs], [100 * sum(by_x[x]) / len(by_x[x]) for x in xs],
                marker="o", label=method, markersize=4, **style)
        ax.scatter([100 * s for s, _ in xy], [100 * a for _, a in xy], color=style["color"], s=10,
                   alpha=0.5)
    if dense:
        ax.axhline(100 * sum(dense) / len(dense), color="k", ls="--", lw=1,
                   label=f"dense (n={len(dense)})")
    xs = [100 * s for xy in groups.values() for s, _ in xy]
    pad = max(2.0, 0.08 * (max(xs) - min(xs)))  # measured densities differ in the 5th digit
    ax.set_xlim(max(-1.0, min(xs) - pad), min(101.0, max(xs) + pad))
    ax.ticklabel_format(useOffset=False)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("final test top-1 (%)")
    ax.grid(alpha=0.3)
    _legend(ax, len(groups) + bool(dense))
    skipped = len(done) - len(pts)
    title = "Accuracy vs sparsity" + (f" ({skipped} unfinished run(s) left out)"
                                      if skipped else "")
    return [Plot("sparsity", "accuracy_vs_sparsity", title, _png(fig))]


def training_curves(runs: Sequence[Run]) -> list[Plot]:
    """Test accuracy and training loss per epoch, all runs overlaid."""
    out = []
    for key, label, scale, stem in (("test_acc", "test top-1 (%)", 100.0, "test_accuracy"),
                                    ("train_loss", "training loss", 1.0, "train_loss")):
        curves = [(r.name, r.curve(key)) for r in runs]
        curves = [(n, c) for n, c in curves if c]
        if not curves:
            continue
        from matplotlib.ticker import MaxNLocator

        fig, axes = _figure()
        ax = axes[0, 0]
        for (name, c), style in zip(curves, _styles(len(curves)), strict=True):
            ax.plot([e for e, _ in c], [scale * v for _, v in c], marker=".", markersize=3,
                    label=name, **style)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        _legend(ax, len(curves))
        out.append(Plot("curves", stem, f"{label[0].upper()}{label[1:]} per epoch", _png(fig)))
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
                        _png(fig)))
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
    return [Plot("dynamics", "mask_dynamics", "Mask dynamics", _png(fig))]


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
                        f"Reliability: {r.name}", _png(fig)))
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
                        f"EagleEye candidates: {r.name}", _png(fig)))
    return out


BUILDERS: tuple[Callable[[Sequence[Run]], list[Plot]], ...] = (
    accuracy_vs_sparsity, training_curves, layer_densities, mask_dynamics, reliability,
    candidates,
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
