"""EagleEye's correlation study (Li et al., ECCV 2020, Sec. 3.2 and Fig. 3).

The paper's central claim: the accuracy of a pruned candidate *after fine-tuning* is correlated
with its adaptive-BN score, but hardly with its vanilla score (dense BN statistics). We
fine-tune ``k`` candidates briefly and report Pearson, Spearman and Kendall (tau-b) correlation
of both scores with the fine-tuned accuracy, plus a scatter plot.

``correlation.json`` holds flat numbers (the report reads ``pearson``/``spearman``/``kendall``,
the adaptive-BN correlations) plus ``vanilla_*`` and the per-candidate points. Fine-tuned
accuracies are appended to ``finetuned.jsonl`` as they finish, so a stopped study resumes.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sparsetrain.checkpoint import atomic_write_bytes, write_json
from sparsetrain.errors import UserError

__all__ = ["correlation_study", "kendall_tau_b", "pearson", "ranks", "scatter_png", "spearman"]


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; ``nan`` when either variable is constant or fewer than 2 points."""
    n = len(x)
    if n != len(y):
        raise ValueError("x and y must have the same length")
    if n < 2:
        return math.nan
    mx, my = math.fsum(x) / n, math.fsum(y) / n
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


def ranks(x: Sequence[float]) -> list[float]:
    """1-based ranks, ties get the average of the ranks they span."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    out = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's r of the (tie-averaged) ranks."""
    return pearson(ranks(x), ranks(y))


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b = (C - D) / sqrt((n0 - n1)(n0 - n2)), with ``n0 = n(n-1)/2`` pairs,
    ``n1``/``n2`` the pairs tied in x/y; O(n^2), fine for the tens of points of a study."""
    n = len(x)
    if n != len(y):
        raise ValueError("x and y must have the same length")
    conc = disc = tie_x = tie_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0:
                tie_x += 1
            if dy == 0:
                tie_y += 1
            if dx and dy:
                if (dx > 0) == (dy > 0):
                    conc += 1
                else:
                    disc += 1
    n0 = n * (n - 1) // 2
    denom = math.sqrt((n0 - tie_x) * (n0 - tie_y))
    return (conc - disc) / denom if denom else math.nan


def _coefficients(score: Sequence[float], acc: Sequence[float]) -> dict[str, float]:
    return {"pearson": pearson(score, acc), "spearman": spearman(score, acc),
            "kendall": kendall_tau_b(score, acc)}


def scatter_png(points: Sequence[dict[str, Any]], coeffs: dict[str, Any]) -> bytes:
    """Two panels, vanilla and adaptive-BN score against fine-tuned accuracy (PNG bytes);
    matplotlib's Agg canvas, no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.4), dpi=110)
    FigureCanvasAgg(fig)
    acc = [p["finetuned_acc"] for p in points]
    for k, (key, label) in enumerate((("vanilla_score", "vanilla"), ("abn_score", "adaptive BN"))):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.scatter([p[key] for p in points], acc, s=14, alpha=0.8)
        prefix = "vanilla_" if key == "vanilla_score" else ""
        ax.set_title(f"{label}: Pearson {coeffs[prefix + 'pearson']:.3f}, Spearman "
                     f"{coeffs[prefix + 'spearman']:.3f}, Kendall {coeffs[prefix + 'kendall']:.3f}",
                     fontsize=7)
        ax.set_xlabel(f"{label} score (held-out top-1)")
        ax.set_ylabel("fine-tuned accuracy")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _read_done(path: Path) -> dict[int, float]:
    done: dict[int, float] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                done[int(rec["index"])] = float(rec["finetuned_acc"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a kill: that candidate is fine-tuned again
    return done


def correlation_study(
    candidates: Sequence[dict[str, Any]],
    fine_tune_fn: Callable[[dict[str, Any]], float],
    k: int,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Fine-tune the first ``k`` candidates (i.i.d. draws of the sampler) with
    ``fine_tune_fn(candidate) -> accuracy`` and correlate; writes ``correlation.json``,
    ``correlation.png`` and ``finetuned.jsonl`` in ``out_dir``; returns the json's content."""
    if k < 3 or k > len(candidates):
        raise UserError(f"the correlation study needs 3 <= k <= {len(candidates)} candidates, "
                        f"got {k}")
    if any("vanilla_score" not in c for c in candidates[:k]):
        raise UserError("the correlation study needs the candidates' vanilla scores; search "
                        "with vanilla=True (--vanilla-score, implied by --correlate)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "finetuned.jsonl"
    done = _read_done(log)
    points = []
    for c in candidates[:k]:
        i = int(c["index"])
        if i not in done:
            done[i] = float(fine_tune_fn(c))
            with log.open("a") as f:
                f.write(json.dumps({"index": i, "finetuned_acc": done[i]}) + "\n")
        points.append({"index": i, "vanilla_score": c["vanilla_score"],
                       "abn_score": c["abn_score"], "finetuned_acc": done[i],
                       "macs": c.get("macs")})
    acc = [p["finetuned_acc"] for p in points]
    abn = _coefficients([p["abn_score"] for p in points], acc)
    van = _coefficients([p["vanilla_score"] for p in points], acc)
    result: dict[str, Any] = {**abn, **{f"vanilla_{n}": v for n, v in van.items()}, "k": k,
                              "points": points}
    png = scatter_png(points, result)
    atomic_write_bytes(out / "correlation.png", lambda f: f.write(png))
    json_safe = {n: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for n, v in result.items()}
    write_json(json_safe, out / "correlation.json")
    return result
