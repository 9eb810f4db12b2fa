"""Shared benchmark plumbing: environment header and appending tables to BENCHMARKS.md."""

from __future__ import annotations

import datetime as _dt
import platform
import shlex
import sys
from pathlib import Path
from typing import NoReturn

import torch

from sparsetrain.utils import cpu_name, environment, git_commit

REPO = Path(__file__).resolve().parents[1]


def header(title: str) -> str:
    env = environment(torch.device("cuda") if torch.cuda.is_available() else None)
    hw = env.get("gpu") or f"{cpu_name()}, {torch.get_num_threads()} threads"
    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    return (
        f"### {title}\n\n"
        f"- command: `{cmd}`\n"
        f"- machine: {hw}; {platform.platform()}\n"
        f"- versions: python {env['python']}, torch {env['torch']}, numpy {env['numpy']}, "
        f"sparsetrain {env['sparsetrain']}\n"
        f"- git commit: {git_commit()}\n"
        f"- date: {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}\n\n"
    )


def append_markdown(text: str, path: Path = REPO / "BENCHMARKS.md") -> None:
    with path.open("a") as f:
        f.write(text.rstrip() + "\n\n")
    print(f"appended to {path}")


def fail(msg: str, prog: str = "") -> NoReturn:
    """Bad input: one line on stderr (``prog: error: msg``, or ``error: msg``), exit code 2."""
    print(f"{prog}: error: {msg}" if prog else f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)
