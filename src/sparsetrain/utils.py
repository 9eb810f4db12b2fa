"""Run metadata: library versions, hardware and the git commit of the code that ran."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

import numpy
import torch


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip() and fields:
                break
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``; else what ``platform`` knows)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_signature() -> str:
    """What tells two processors with the same model name apart (cloud VMs often report just
    "AMD EPYC"): family/model/stepping from ``/proc/cpuinfo`` and the vector ISA torch
    dispatches to (AVX2, AVX512, ...)."""
    fields = _cpuinfo()
    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        isa = "unknown"
    ids = "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping"))
    return f"family/model/stepping {ids}, {isa}"


def environment(device: torch.device | None = None) -> dict[str, str]:
    from sparsetrain import __version__

    env = {
        "sparsetrain": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_name": cpu_name(),
        "cpu_signature": cpu_signature(),
        "threads": str(torch.get_num_threads()),
    }
    if device is not None and device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = str(torch.version.cuda)
    return env


@functools.cache
def git_commit() -> str | None:
    """HEAD of the repository holding this package (editable installs) or of the cwd, as it was
    at the first call in this process: runs call it when they start, so a commit made (or a
    branch checked out) while they train does not relabel the code that is running."""
    return _head()


def _head() -> str | None:
    for where in (Path(__file__).resolve().parent, Path.cwd()):
        try:
            out = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                timeout=5, check=True,
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                capture_output=True, text=True, timeout=5,
            ).stdout.strip()
            return out + ("-dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            continue
    return None
