"""The model card written beside an export: ``<artifact>.card.json`` and ``<artifact>.card.md``.

It states what the artifact is (architecture, input shape and normalization, classes), what it
costs (per-layer density of every conv/linear weight as nonzeros / total, parameters, dense
and effective FLOPs as in DESIGN.md §3.8), how well it did (the run's ``summary.json``), how it
was made (the recipe, versions, git commit) and how exactly it matches its checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsetrain.models.flops import sparse_flops
from sparsetrain.rundir import read_summary

__all__ = ["accuracy_of", "card_markdown", "layer_density"]

_LAYERS = nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear


def layer_density(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{"<layer>.weight": {shape, nonzero, total, density}}`` for every conv/linear weight."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _LAYERS):
            w = m.weight
            nz, total = int(torch.count_nonzero(w)), w.numel()
            out[f"{name}.weight"] = {"shape": list(w.shape), "nonzero": nz, "total": total,
                                     "density": nz / total}
    return out


def cost_of(model: nn.Module, layers: Mapping[str, Mapping[str, Any]],
            input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Parameters (total / nonzero) and dense / effective FLOPs of one image (the project's
    flop counter, each layer scaled by its weight density); MACs = FLOPs / 2."""
    flops = sparse_flops(model, {n: v["density"] for n, v in layers.items()}, input_shape)
    params = list(model.parameters())
    return {"parameters": {"total": sum(p.numel() for p in params),
                           "nonzero": sum(int(p.count_nonzero()) for p in params)},
            "flops": {"dense": flops["dense"], "effective": flops["sparse"]},
            "macs": {"dense": flops["dense"] // 2, "effective": flops["sparse"] // 2}}


def accuracy_of(checkpoint: Path) -> dict[str, Any] | None:
    """Accuracy of the checkpoint as its run recorded it: ``best`` metrics for ``best.pt``,
    ``final`` ones otherwise, plus a ``sparsetrain eval`` record of this file; None outside a
    run folder (no ``summary.json`` beside the checkpoint)."""
    path = checkpoint.parent / "summary.json"
    summary = read_summary(path)
    if summary is None:
        return None
    section = "best" if checkpoint.stem == "best" and summary.get("best") else "final"
    metrics = summary.get(section) or {}
    out: dict[str, Any] = {"summary": str(path), "section": section}
    out.update({k: v for k, v in metrics.items()
                if isinstance(v, int | float) and k.endswith(("acc", "top1", "top5"))})
    record = (summary.get("eval") or {}).get(checkpoint.name)
    if isinstance(record, dict):
        out["eval"] = {k: record[k] for k in ("top1", "top5", "nll", "ece") if k in record}
    return out


def _fmt_count(n: int) -> str:
    return f"{n:,}"


def card_markdown(card: Mapping[str, Any]) -> str:
    """The Markdown twin of the JSON card."""
    p, f, chk = card["parameters"], card["flops"], card["check"]
    acc = card.get("accuracy") or {}
    acc_text = ", ".join(f"{k} {v:.4f}" for k, v in acc.items() if isinstance(v, float)) or "n/a"
    rows = [
        ("artifact", f"`{card['artifact']}` ({card['format']}, load with {chk['runtime']})"),
        ("checkpoint", f"`{card['checkpoint']}`"),
        ("architecture", card["architecture"] + (" (channel-pruned)" if card["channel_pruned"]
                                                 else "")),
        ("input", f"float32 NCHW [N, {', '.join(map(str, card['input_shape']))}]"
                  + (f", normalized with mean {card['normalization']['mean']} and std "
                     f"{card['normalization']['std']}" if card.get("normalization") else "")),
        ("classes", f"{card['num_classes']}: {', '.join(map(str, card['classes'] or []))}"),
        ("parameters", f"{_fmt_count(p['total'])} total, {_fmt_count(p['nonzero'])} nonzero"),
        ("density", f"{card['density']:.4f} over conv/linear weights"),
        ("FLOPs / image", f"{_fmt_count(f['dense'])} dense, {_fmt_count(f['effective'])} "
                          "effective (sparse)"),
        ("accuracy", acc_text),
        ("BatchNorm folded", f"{card['fold_bn']} ({card['batchnorm_folded']} folded)"),
        ("check", f"max abs diff {chk['max_abs_diff']:.3g} (tolerance {chk['tolerance']:g}) "
                  f"on a batch of {chk['batch']} (seed {chk['seed']})"),
        ("versions", ", ".join(f"{k} {v}" for k, v in card["versions"].items() if v)),
    ]
    lines = [f"# Model card: {card['architecture']}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "## Per-layer density", "", "| layer | shape | nonzero / total | density |",
              "|---|---|---|---|"]
    lines += [f"| {n} | {'x'.join(map(str, v['shape']))} | {_fmt_count(v['nonzero'])} / "
              f"{_fmt_count(v['total'])} | {v['density']:.4f} |" for n, v in card["layers"].items()]
    lines += ["", "## Recipe", "", "```json", json.dumps(card.get("recipe"), indent=2), "```", ""]
    return "\n".join(lines)
