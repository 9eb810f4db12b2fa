"""``sparsetrain eval``: every evaluation axis for a saved checkpoint, recorded with its run.

Results are returned, printed as a table by the CLI, and added to the run's ``summary.json``
under ``"eval"`` (keyed by checkpoint file name) when the checkpoint sits in a run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sparsetrain.checkpoint import checkpoint_config, load_checkpoint, write_json
from sparsetrain.data import ImageArrays, get_dataset_info
from sparsetrain.errors import UserError
from sparsetrain.evaluate.cost import flop_counts, measure_latency, param_counts
from sparsetrain.evaluate.suite import evaluate_model
from sparsetrain.loading import load_model
from sparsetrain.precision import resolve_device
from sparsetrain.train.engine import evaluate
from sparsetrain.train.run import (
    check_data_path,
    data_path,
    load_test_split,
    make_loader,
    match_classes,
)


def evaluate_checkpoint(
    path: str | Path,
    *,
    data_path_override: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 512,
    ood: list[str] | None = None,
    attacks: list[str] | None = None,
    eps: list[float] | None = None,
    attack_images: int = 1000,
    latency: bool = False,
    record: bool = True,
) -> dict[str, Any]:
    """Accuracy, NLL, ECE (+ reliability bins), optional OOD / attacks / latency, cost."""
    ckpt = load_checkpoint(path)
    cfg = checkpoint_config(ckpt, path)
    model = load_model(ckpt, path)  # a malformed checkpoint stops before the data is read
    dev = resolve_device(device)
    dpath = data_path_override or data_path(cfg)
    check_data_path(dpath)
    test = load_test_split(cfg, dpath)
    if isinstance(test, ImageArrays):  # relabelled by class name; unknown classes: an error
        test = match_classes(test, ckpt["classes"], dpath)
    elif list(test.classes) != list(ckpt["classes"]):
        raise UserError(f"classes of {dpath} do not match the checkpoint's classes")
    model = model.to(dev)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    info = get_dataset_info(cfg.data.dataset)
    res: dict[str, Any] = {"checkpoint": str(path), "model": cfg.model.name,
                           "dataset": cfg.data.dataset, "precision": precision}
    if isinstance(test, ImageArrays):
        suite = evaluate_model(model, test.images, test.labels, info.mean, info.std, device=dev,
                               precision=precision, ood=ood or [], attacks=attacks or [],
                               eps=eps, attack_images=attack_images if attacks else 0,
                               batch_size=batch_size)
        res.update(suite)
        res["acc"], res["loss"] = suite["top1"], suite["nll"]
    else:  # streamed image folders: accuracy and loss only
        if ood or attacks:
            raise UserError("OOD and attacks need a data set decoded into memory")
        cfg.data.eval_batch_size = batch_size
        loader = make_loader(cfg, test, info, train=False, device=dev)
        basic = evaluate(model, loader, dev, precision)
        res.update(basic)
        res["top1"], res["nll"] = basic["acc"], basic["loss"]
    res["params"] = param_counts(model)
    res["flops"] = flop_counts(model)
    if latency:
        res["latency"] = measure_latency(model, device=dev,
                                         channels_last=cfg.train.channels_last)
    if record:
        note = _record(Path(path), res)
        if note:
            res["note"] = note
    return res


def _record(path: Path, res: dict[str, Any]) -> str | None:
    """Add ``res`` to the ``summary.json`` of the run the checkpoint is in, under the run's
    lock; returns why it was not recorded (no run, run in use, corrupt summary), else None."""
    from sparsetrain.rundir import read_summary, record_lock

    run = path.parent
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        return None
    with record_lock(run) as locked:
        if not locked:
            return f"not recorded in {summary_path}: the run is in use or not writable"
        try:
            summary = read_summary(summary_path)
        except UserError as e:
            return f"not recorded: {e}"
        summary.setdefault("eval", {})[path.name] = res
        write_json(summary, summary_path)
    return None


def format_result(res: dict[str, Any]) -> str:
    """A short human-readable table of an evaluation result."""
    lines = [f"{res['checkpoint']}: {res['model']} on {res['dataset']} ({res['n']} test images, "
             f"{res['precision']})",
             f"  top-1 {100 * res['top1']:.2f}%" + (f", top-5 {100 * res['top5']:.2f}%"
                                                   if "top5" in res else "")
             + f", NLL {res['nll']:.4f}" + (f", ECE {res['ece']:.4f}" if "ece" in res else ""),
             f"  params {res['params']['total']:,} ({res['params']['nonzero']:,} nonzero), "
             f"FLOPs {res['flops']['dense'] / 1e6:.2f}M dense / "
             f"{res['flops']['sparse'] / 1e6:.2f}M effective"]
    for name, r in res.get("ood", {}).items():
        lines.append(f"  OOD {name:<8} AUROC {r['auroc']:.4f}  AUPR {r['aupr']:.4f}")
    rob = res.get("robustness", {})
    for attack in ("fgsm", "pgd"):
        if attack in rob:
            accs = ", ".join(f"{k}: {100 * v:.2f}%" for k, v in rob[attack].items())
            lines.append(f"  {attack.upper():<4} accuracy {accs}")
    for r in res.get("latency", {}).values():
        lines.append(f"  latency {r['precision']} batch {r['batch']}: {r['ms']:.2f} ms, "
                     f"{r['images_per_s']:.0f} img/s")
    return "\n".join(lines)
