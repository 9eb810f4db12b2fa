"""``sparsetrain report``: one self-contained HTML page (and a Markdown twin) for many runs.

The HTML embeds its figures as ``data:image/png;base64`` URIs and its CSS inline, and has no
scripts and no network references, so it can be mailed or archived as one file. The Markdown
twin ``<out>.md`` links the same figures, written as PNG files to ``<out stem>_files/``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from sparsetrain.errors import UserError
from sparsetrain.report.runs import Problem, Run, find_runs, num

MISSING = "—"
SECTIONS = (  # (plot section, heading)
    ("sparsity", "Accuracy vs sparsity"),
    ("cost", "Accuracy vs cost"),
    ("curves", "Training curves"),
    ("layers", "Layer densities"),
    ("dynamics", "Mask dynamics"),
    ("reliability", "Reliability diagrams"),
    ("candidates", "EagleEye candidates"),
)
NOTES = ("Top-1: final-epoch test accuracy. Density: fraction of masked weights that are "
         "nonzero. OOD AUROC: mean over the OOD sets evaluated. FGSM: accuracy at ε = 8/255, "
         "or at the largest ε evaluated (given in brackets). MACs = FLOPs / 2; effective MACs "
         "scale each layer by its density. ≥: unfinished run, time logged so far.")
CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafafa}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figcaption{font-size:12px;color:#555}img{max-width:100%;height:auto}
.note,.meta{color:#666;font-size:12px}.problems li{margin:.2em 0}code{font-size:12px}
"""


@dataclass
class ReportResult:
    """What :func:`build_report` wrote, and what it could not read."""

    html: Path
    markdown: Path
    figures: list[Path] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _pct(x: float | None, digits: int = 2) -> str:
    return MISSING if x is None else f"{100 * x:.{digits}f}%"


def _fixed(x: float | None, digits: int) -> str:
    return MISSING if x is None else f"{x:.{digits}f}"


def _count(x: float | None) -> str:
    if x is None:
        return MISSING
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def _duration(s: float | None) -> str:
    if s is None:
        return MISSING
    s = round(s)
    h, m = divmod(s // 60, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s % 60:02d}s" if m else f"{s}s"


def results_table(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells (``—`` for missing values) of the results table."""
    headers = ["Run", "Method", "Model", "Epochs", "Density", "Top-1", "ECE", "OOD AUROC",
               "FGSM", "MACs", "MACs (eff.)", "Params", "Nonzero", "Wall time"]
    rows = []
    for r in runs:
        done, total = r.epochs
        epochs = MISSING if done is None else f"{done}/{total}" if total else str(done)
        fgsm = r.attack("fgsm")
        fgsm_cell = MISSING if fgsm is None else _pct(fgsm[1]) + (
            "" if fgsm[0] == "8/255" else f" [{fgsm[0]}]")
        dense, sparse = r.flops
        wall = r.wall_s
        wall_cell = _duration(wall) if wall is not None else (
            MISSING if r.elapsed_s is None else f"≥ {_duration(r.elapsed_s)}")
        rows.append([
            r.name, r.method or MISSING, r.model or MISSING, epochs, _fixed(r.density, 3),
            _pct(r.top1), _fixed(r.ece, 4), _fixed(r.ood_auroc, 3), fgsm_cell,
            _count(None if dense is None else dense / 2),
            _count(None if sparse is None else sparse / 2), *map(_count, r.params), wall_cell,
        ])
    return headers, rows


def details_table(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """Where and how each run was made: data, seed, device, precision, versions, commit."""
    headers = ["Run", "Dataset", "Seed", "Device", "Precision", "torch", "Git commit", "Path"]
    rows = []
    for r in runs:
        s, c = r.summary or {}, r.config or {}
        seed = s.get("seed", c.get("seed"))
        prec = s.get("precision") or (c.get("train") or {}).get("precision")
        versions = s.get("versions") if isinstance(s.get("versions"), dict) else {}
        commit = s.get("git_commit")
        cells = [r.name, r.dataset, seed, s.get("device"), prec, versions.get("torch"),
                 commit[:12] + ("-dirty" if str(commit).endswith("-dirty") else "")
                 if isinstance(commit, str) else None, str(r.path)]
        rows.append([MISSING if v is None else str(v) for v in cells])
    return headers, rows


def correlation_table(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """Rank/linear correlations between EagleEye's adaptive-BN and fine-tuned accuracy."""
    corr = [r for r in runs if r.correlation]
    first = ["pearson", "spearman", "kendall"]
    keys = first + sorted({k for r in corr for k, v in r.correlation.items()
                           if num(v) is not None and k not in first})
    rows = [[r.name, *(_fixed(num(r.correlation.get(k)), 4) for k in keys)] for r in corr]
    return ["Run", *keys], rows


def _html_table(headers: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    right = [i > 0 and all(_numeric(r[i]) for r in rows) for i in range(len(headers))]
    body = "".join(
        "<tr>" + "".join(f'<td{" class=n" if right[i] else ""}>{escape(c)}</td>'
                         for i, c in enumerate(row)) + "</tr>\n" for row in rows)
    return (f'<table id="{table_id}"><thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}</tbody></table>")


def _numeric(cell: str) -> bool:
    return cell[:1].isdigit() or cell.startswith(("≥", MISSING))


def _md_cell(text: str) -> str:
    """One line of Markdown that shows ``text`` literally (no raw HTML, no cell breaks)."""
    text = escape(" ".join(text.split()), quote=False)
    return text.replace("\\", "\\\\").replace("|", "\\|")


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(map(_md_cell, headers)) + " |",
             "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def _render(runs: Sequence[Run], plots: Sequence, files: Sequence[str],
            problems: Sequence[Problem], fmt: str) -> str:
    """The page as HTML (``fmt="html"``) or Markdown; ``files`` are the PNG paths of
    ``plots`` that the Markdown links."""
    md = fmt == "md"
    table: Callable[[list[str], list[list[str]], str], str] = (
        (lambda h, r, _id: _md_table(h, r)) if md else _html_table)

    def heading(text: str, anchor: str, level: int = 2) -> str:
        if md:
            return f"{'#' * level} {text}"
        return f'<h{level} id="{anchor}">{escape(text)}</h{level}>'

    def para(text: str, cls: str = "note") -> str:
        return _md_cell(text) if md else f'<p class="{cls}">{escape(text)}</p>'

    from sparsetrain import __version__

    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [heading("sparsetrain report", "top", 1),
             para(f"{len(runs)} run(s), {len(problems)} problem(s); generated {now} by "
                  f"sparsetrain {__version__}.", "meta"),
             heading("Results", "results"), table(*results_table(runs), "results"), para(NOTES)]
    for section, title in SECTIONS:
        figs = [(p, f) for p, f in zip(plots, files, strict=True) if p.section == section]
        corr = correlation_table(runs) if section == "candidates" else ([], [])
        if not figs and not corr[1]:
            continue
        parts.append(heading(title, section))
        for p, file in figs:
            if md:
                parts.append(f"![{_md_cell(p.title)}]({file})")
            else:
                data = base64.b64encode(p.png).decode("ascii")
                parts.append(f'<figure><img src="data:image/png;base64,{data}" '
                             f'alt="{escape(p.title)}"><figcaption>{escape(p.title)}'
                             "</figcaption></figure>")
        if corr[1]:
            parts += [para("Correlation of adaptive-BN scores with fine-tuned accuracy:"),
                      table(*corr, "correlation")]
    parts += [heading("Runs", "runs"), table(*details_table(runs), "details"),
              heading("Problems", "problems")]
    if not problems:
        parts.append(para("None: every file of every run was read."))
    elif md:
        parts.append("\n".join(f"- `{_md_cell(p.run)}` {_md_cell(p.file)}: {_md_cell(p.reason)}"
                               for p in problems))
    else:
        items = "".join(f"<li><code>{escape(p.run)}</code> <b>{escape(p.file)}</b>: "
                        f"{escape(p.reason)}</li>\n" for p in problems)
        parts.append(f'<ul class="problems">\n{items}</ul>')
    if md:
        return "\n\n".join(parts) + "\n"
    body = "\n".join(parts)
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>sparsetrain report</title><style>{CSS}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


def _is_report(path: Path) -> bool:
    """A file this command wrote (HTML page or Markdown twin), by its first bytes."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"# sparsetrain report") or b"<title>sparsetrain report</title>" in head


def check_report_out(out: Path) -> None:
    """A report never lands in a run folder, and replaces only an earlier report: the page,
    its Markdown twin and its figure folder must be absent or written by this command."""
    from sparsetrain.rundir import inside_run

    run = inside_run(out.parent) if out.parent.exists() else None
    if run is not None:
        raise UserError(f"report: --out {out} is inside the run folder {run}; write the report "
                        "outside it (e.g. --out report.html)")
    for path in (out, out.with_suffix(".md")):
        if path.exists() and (path.is_dir() or not _is_report(path)):
            raise UserError(f"report: {path} exists and is not a sparsetrain report; choose "
                            "another --out")
    figs = out.with_name(f"{out.stem}_files")
    if figs.exists() and (not figs.is_dir() or any(
            not (p.is_file() and p.suffix in (".png", ".svg")) for p in figs.iterdir())):
        raise UserError(f"report: {figs} exists and holds more than report figures; choose "
                        "another --out")


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def select_runs(runs: Sequence[Run], filters: Sequence[str] = (),
                group_by: Sequence[str] = ()) -> list[Run]:
    """``filters`` (``key=pattern``, fnmatch, all must match; see :meth:`Run.field_text`) keep
    runs; ``group_by`` keys make the runs that share them one mark in the comparison figures
    (default: runs that differ only in seed)."""
    import fnmatch

    parsed = []
    for f in filters:
        key, sep, pattern = f.partition("=")
        if not sep or not key.strip():
            raise UserError(f"report: --filter takes key=pattern, got {f!r}")
        parsed.append((key.strip(), pattern))
    kept = [r for r in runs if all(
        (v := r.field_text(k)) is not None and fnmatch.fnmatchcase(v, p) for k, p in parsed)]
    for r in kept:
        r.group = "|".join(f"{k}={r.field_text(k)}" for k in group_by) if group_by else None
    return kept


def build_report(run_dirs: Sequence[Path], out: Path, *, filters: Sequence[str] = (),
                 group_by: Sequence[str] = ()) -> ReportResult:
    """Write the report of ``run_dirs`` to ``out`` (HTML) and ``out.with_suffix(".md")``.

    A directory that holds run directories stands for them. Unreadable parts of runs, and
    paths that are not runs, become warnings and the report's problems section; they never
    stop the report. Raises :class:`UserError` for no input, a bad ``out`` or no matplotlib.
    """
    from sparsetrain.report.plots import make_plots, require_matplotlib, slug

    require_matplotlib()
    out = Path(out)
    if not run_dirs:
        raise UserError("report: give at least one run directory")
    if out.suffix.lower() == ".md" or out.is_dir():
        raise UserError(f"report: --out must be an HTML file path, got {out}")
    check_report_out(out)
    absent = [str(p) for p in run_dirs if not Path(p).exists()]
    if absent:
        raise UserError(f"report: no such run directory: {', '.join(absent[:3])}")
    runs, problems = find_runs(run_dirs)
    if not runs:
        raise UserError(f"report: no runs found in {', '.join(map(str, run_dirs[:3]))} (a run "
                        "folder holds config.yaml, metrics.jsonl or summary.json)")
    runs = select_runs(runs, filters, group_by)
    if not runs:
        raise UserError(f"report: no run matches --filter {' '.join(filters)}")
    problems += [p for r in runs for p in r.problems]
    plots, errors = make_plots(runs)
    problems += [Problem("(report)", "figure", e) for e in errors]

    out.parent.mkdir(parents=True, exist_ok=True)
    md_path = out.with_suffix(".md")
    fig_dir = out.with_name(f"{out.stem}_files")
    files: list[str] = []
    written: list[Path] = []
    if plots:
        fig_dir.mkdir(exist_ok=True)
    for p in plots:
        name = slug(p.slug)
        while f"{fig_dir.name}/{name}.png" in files:  # two run names with one slug
            name += "_"
        files.append(f"{fig_dir.name}/{name}.png")
        written.append(fig_dir / f"{name}.png")
        _write(written[-1], p.png)
        if p.svg:  # the same figure as a vector file, for papers and slides
            _write(fig_dir / f"{name}.svg", p.svg)
    _write(out, _render(runs, plots, files, problems, "html").encode("utf-8"))
    _write(md_path, _render(runs, plots, files, problems, "md").encode("utf-8"))
    return ReportResult(html=out, markdown=md_path, figures=written,
                        runs=[r.name for r in runs], warnings=[str(p) for p in problems])
