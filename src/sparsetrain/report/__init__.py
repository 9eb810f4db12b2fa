"""Reports of one or many runs: a results table, figures and a problems list, as one
self-contained HTML page plus a Markdown twin (``sparsetrain report RUN_DIR ... --out``).

matplotlib (the ``[plots]`` extra) is imported only when a report is built.
"""

from __future__ import annotations

from sparsetrain.report.html import ReportResult, build_report, results_table
from sparsetrain.report.runs import Problem, Run, find_runs, load_run

__all__ = ["Problem", "ReportResult", "Run", "build_report", "find_runs", "load_run",
           "results_table"]
