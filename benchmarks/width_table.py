"""Width study table and plot: dense vs sparse ResNet-20 at widths x1, x2, x4 (sweep CSVs).

    python benchmarks/width_table.py benchmarks/results/static_cpu_resnet20.csv \\
        benchmarks/results/width_cpu_resnet20_e5_*.csv --sparse erk \\
        --png benchmarks/results/width_cpu_resnet20.png

Rows of the CSVs (written by ``benchmarks/sweep.py``) are paired by (epochs, seed, width): each
sparse row and the dense row of the same training budget give one line of the table with the
gap to dense (several sparse rows, e.g. the static sweep's budgets, share one dense row and stay
separate lines, labelled by budget or score and density; ``--sparse erk`` keeps only some).
Width comes from the model name (``resnet20`` = x1, ``resnet20_w4`` = x4). The random-pruning
paper's finding to check: the gap to dense shrinks as width grows. Prints a markdown table per
seed and one of the means over seeds (appended to BENCHMARKS.md unless ``--no-append``);
``--png`` draws accuracy and gap against width, one line per training budget and sparse kind
(the seed mean, with each seed's value as a dot).
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

from _common import append_markdown, header

from sparsetrain.checkpoint import atomic_write_bytes


def width(model: str) -> int:
    m = re.search(r"_w(\d+)$", model)
    return int(m.group(1)) if m else 1


def _label(r: dict) -> str:
    """What a sparse row is: its budget (random masks), its score (global top-k) or both."""
    name = r.get("budget") or r["method"]
    if r.get("score") not in ("", None, "random"):
        name = r["score"] if name == "global" else f"{name}/{r['score']}"
    return name


def pairs(rows: list[dict]) -> list[dict]:
    """One entry per sparse row whose (epochs, seed, width) also has a dense row.

    Several sparse rows may share one dense baseline (e.g. the static sweep's nine budgets and
    scores at x1); each becomes its own entry, labelled by what it is, never merged.
    """
    dense: dict[tuple, dict] = {}
    sparse: dict[tuple, dict] = {}
    for r in rows:
        key = (int(r["epochs"]), int(r["seed"]), width(r["model"]))
        if r["method"] == "dense":
            dense[key] = r
        else:
            sparse[(*key, f"{_label(r)} {float(r['density']):.3f}")] = r
    out = []
    for (epochs, seed, w, series), s in sorted(sparse.items()):
        d = dense.get((epochs, seed, w))
        if d is None:
            continue
        out.append({"epochs": epochs, "seed": seed, "width": w, "dense": float(d["test_acc"]),
                    "sparse": float(s["test_acc"]), "density": float(s["density"]),
                    "label": _label(s), "series": series,
                    "params_dense": d.get("params_nonzero") or "",
                    "params_sparse": s.get("params_nonzero") or ""})
    return out


def table(entries: list[dict]) -> str:
    lines = ["| epochs | seed | width | dense top-1 | sparse | density | sparse top-1 "
             "| gap to dense | sparse nonzero params |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        params = f"{int(e['params_sparse']):,}" if e["params_sparse"] != "" else "—"
        lines.append(
            f"| {e['epochs']} | {e['seed']} | x{e['width']} | {100 * e['dense']:.2f}% "
            f"| {e['label']} | {e['density']:.3f} | {100 * e['sparse']:.2f}% "
            f"| {100 * (e['sparse'] - e['dense']):+.2f} | {params} |")
    return "\n".join(lines)


def summary(entries: list[dict]) -> list[dict]:
    """Means over seeds per (epochs, sparse series, width): dense, sparse, gap, its min..max."""
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        groups.setdefault((e["epochs"], e["series"], e["width"]), []).append(e)
    out = []
    for (epochs, series, w), es in sorted(groups.items()):
        gaps = [e["sparse"] - e["dense"] for e in es]
        out.append({"epochs": epochs, "series": series, "width": w, "n": len(es),
                    "dense": sum(e["dense"] for e in es) / len(es),
                    "sparse": sum(e["sparse"] for e in es) / len(es),
                    "gap": sum(gaps) / len(gaps), "gap_min": min(gaps), "gap_max": max(gaps)})
    return out


def summary_table(means: list[dict]) -> str:
    lines = ["| epochs | sparse | width | seeds | mean dense top-1 | mean sparse top-1 | mean gap "
             "| gap range |",
             "|---|---|---|---|---|---|---|---|"]
    for m in means:
        spread = (f"{100 * m['gap_min']:+.2f} .. {100 * m['gap_max']:+.2f}" if m["n"] > 1
                  else "—")
        lines.append(f"| {m['epochs']} | {m['series']} | x{m['width']} | {m['n']} "
                     f"| {100 * m['dense']:.2f}% "
                     f"| {100 * m['sparse']:.2f}% | {100 * m['gap']:+.2f} | {spread} |")
    return "\n".join(lines)


def plot_png(entries: list[dict]) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.2), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    acc_ax, gap_ax = fig.subplots(1, 2)
    means = summary(entries)
    dense_drawn: set[int] = set()
    for i, (epochs, series) in enumerate(sorted({(m["epochs"], m["series"]) for m in means})):
        ms = [m for m in means if (m["epochs"], m["series"]) == (epochs, series)]
        es = [e for e in entries if (e["epochs"], e["series"]) == (epochs, series)]
        ws = [m["width"] for m in ms]
        colour = f"C{i}"
        seeds = max(m["n"] for m in ms)
        label = f"{epochs} epochs" + (f", mean of {seeds} seeds" if seeds > 1 else "")
        if epochs not in dense_drawn:  # one dense line per training budget, at every width
            dense_drawn.add(epochs)
            dense = {m["width"]: m["dense"] for m in means if m["epochs"] == epochs}
            acc_ax.plot(sorted(dense), [100 * dense[w] for w in sorted(dense)], "o-",
                        color=colour, label=f"dense, {label}")
        acc_ax.plot(ws, [100 * m["sparse"] for m in ms], "s--", color=colour,
                    label=f"{series}, {label}")
        gap_ax.plot(ws, [100 * m["gap"] for m in ms], "o-", color=colour,
                    label=f"{series}, {label}")
        if seeds > 1:  # every seed's own value, so the spread is visible
            acc_ax.scatter([e["width"] for e in es], [100 * e["dense"] for e in es], s=8,
                           color=colour, alpha=0.5)
            acc_ax.scatter([e["width"] for e in es], [100 * e["sparse"] for e in es], s=8,
                           marker="s", color=colour, alpha=0.5)
            gap_ax.scatter([e["width"] for e in es], [100 * (e["sparse"] - e["dense"]) for e in es],
                           s=8, color=colour, alpha=0.5)
    for ax in (acc_ax, gap_ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4], ["x1", "x2", "x4"])
        ax.set_xlabel("width")
        ax.grid(alpha=0.3)
    acc_ax.set_ylabel("test top-1 (%)")
    gap_ax.set_ylabel("sparse − dense (points)")
    gap_ax.axhline(0, color="black", lw=0.8)
    acc_ax.legend(fontsize=6)
    gap_ax.legend(fontsize=6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csvs", nargs="+")
    p.add_argument("--png", help="write the accuracy and gap against width here")
    p.add_argument("--sparse", metavar="NAMES",
                   help="comma-separated sparse rows to keep, by budget or score (e.g. erk); "
                        "default: all")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()
    rows = []
    for path in args.csvs:
        if not Path(path).is_file():
            p.error(f"no such CSV: {path}")
        with open(path, newline="") as f:
            rows += list(csv.DictReader(f))
    entries = pairs(rows)
    if args.sparse:
        keep = {n.strip() for n in args.sparse.split(",") if n.strip()}
        known = {e["label"] for e in entries}
        if unknown := sorted(keep - known):
            p.error(f"--sparse {', '.join(unknown)}: not among the paired sparse rows "
                    f"({', '.join(sorted(known)) or 'none'})")
        entries = [e for e in entries if e["label"] in keep]
    if not entries:
        p.error("no (epochs, seed, width) has both a dense and a sparse row in "
                + ", ".join(args.csvs))
    text = table(entries) + "\n\nMeans over seeds:\n\n" + summary_table(summary(entries))
    print(text)
    if args.png:
        png = plot_png(entries)
        atomic_write_bytes(args.png, lambda f: f.write(png))
        print(f"wrote {args.png}")
    if not args.no_append:
        srcs = ", ".join(f"`{Path(p)}`" for p in args.csvs)
        append_markdown(header("Width study (benchmarks/width_table.py)")
                        + f"Results CSVs: {srcs}.\n\n" + text)


if __name__ == "__main__":
    main()
