"""Run folders: the one owner that names, claims, checks and locks them.

Every command that writes a run (``train``, ``oneshot``, ``lottery``, ``prune eagleeye``, and
``eval`` when it records into a run's ``summary.json``) goes through :class:`RunDir`:

- a run name is one plain folder name: no ``/``, no ``..``, not absolute, at most 200
  characters, no control characters, not starting with ``.``;
- a new run is claimed before any slow work: ``mkdir`` of the folder, then an exclusive
  ``flock`` on ``<run>/.lock`` (the kernel drops it when the process dies, so a killed run never
  leaves a stale lock); of two starts with the same name exactly one gets the lock and finds the
  folder empty, the other stops with a one-line error;
- ``<run>/.sparsetrain-run.json`` records which command made the run; an existing run is written
  only with ``resume=True`` and only by that command (folders of earlier versions, which have no
  record, are recognised by their files);
- temporary files of interrupted atomic writes (``.<name>.*.tmp``) are removed when a run is
  claimed, since only the lock holder writes there.

Sub-runs (a lottery round, an EagleEye baseline) are folders inside the run, made by the same
command through :meth:`RunDir.child`, each with its own lock.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
from pathlib import Path
from typing import Any

from sparsetrain.errors import UserError

try:  # POSIX advisory locks; elsewhere runs are claimed by mkdir alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

MARKER = ".sparsetrain-run.json"
LOCK = ".lock"
MAX_NAME = 200
COMMANDS = ("train", "oneshot", "lottery", "prune eagleeye")


def check_run_name(name: Any, what: str = "name") -> str:
    """``name`` if it is one plain folder name, else a :class:`UserError` naming the rule."""
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{what} must be a non-empty folder name, got {name!r}")
    if len(name) > MAX_NAME:
        raise UserError(f"{what} is {len(name)} characters long; at most {MAX_NAME} allowed")
    if any(c in name for c in "/\\") or name in (".", "..") or os.path.isabs(name):
        raise UserError(f"{what} {name!r} must be a single folder name inside the runs folder "
                        "(no '/', '\\', '..' or absolute path); set out_dir= for another folder")
    if name.startswith(".") or any(ord(c) < 32 for c in name):
        raise UserError(f"{what} {name!r} must not start with '.' or contain control characters")
    return name


def made_by(path: Path) -> tuple[str, ...]:
    """The commands that may resume the run at ``path``: the recorded one, or for folders of
    earlier versions the ones their files point to; () for a folder that is not a run."""
    marker = path / MARKER
    if marker.is_file():
        try:
            cmd = json.loads(marker.read_text()).get("command")
        except (OSError, ValueError, AttributeError):
            cmd = None
        if cmd not in COMMANDS:
            raise UserError(f"{marker} is corrupt; it records which command made the run")
        return (cmd,)
    if (path / "search.json").is_file() or (path / "candidates.jsonl").is_file():
        return ("prune eagleeye",)
    if (path / "rewind.pt").is_file() or (path / "round_0").is_dir():
        return ("lottery",)
    if any((path / f).exists() for f in ("last.pt", "config.yaml", "metrics.jsonl",
                                         "summary.json")):
        return ("train", "oneshot")
    return ()


def inside_run(path: Path) -> Path | None:
    """The run folder that ``path`` is in (or is), if any."""
    p = path.resolve()
    for q in (p, *p.parents):
        if q.is_dir() and ((q / MARKER).is_file() or (q / "last.pt").is_file()
                           or (q / "summary.json").is_file() or (q / "metrics.jsonl").is_file()):
            return q
    return None


def _os_reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


class RunDir:
    """A claimed run folder; use as a context manager or call :meth:`release`."""

    def __init__(self, path: Path, command: str) -> None:
        self.path = path
        self.command = command
        self.created = False  # this claim made the folder (abandon() may remove it)
        self.created_parent: Path | None = None  # ... and the runs folder above it
        self._fd: int | None = None

    # -- claiming ---------------------------------------------------------------------
    @classmethod
    def claim(cls, out_dir: str | Path, name: str, *, command: str, resume: bool = False,
              lock: bool = True) -> RunDir:
        """Create and lock ``out_dir/name`` for ``command`` (``resume=False``), or lock the
        existing run that ``command`` made (``resume=True``). ``lock=False`` only checks (for a
        reader of a finished stage that writes nothing there)."""
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command!r}")
        check_run_name(name)
        run = cls(Path(out_dir) / name, command)
        if resume:
            run._check_resumable()
        else:
            run._create(Path(out_dir))
        if not lock:
            return run
        run.acquire()
        try:
            if resume:
                run.remove_stale_tmp()
            else:
                extra = sorted(p.name for p in run.path.iterdir() if p.name != LOCK)
                if extra:
                    raise UserError(f"run directory {run.path} already exists; resume it with "
                                    "--resume or choose another name (name=...)")
                run._write_marker()
        except BaseException:
            run.release()
            raise
        return run

    def child(self, name: str) -> RunDir:
        """A sub-run folder of this run (made by the same command), created if needed, locked."""
        check_run_name(name)
        sub = RunDir(self.path / name, self.command)
        try:
            sub.path.mkdir(exist_ok=True)
        except FileExistsError:
            raise UserError(f"{sub.path} exists and is not a folder") from None
        except OSError as e:
            raise UserError(f"cannot create {sub.path}: {_os_reason(e)}") from None
        cmds = made_by(sub.path)
        if cmds and self.command not in cmds:
            raise UserError(f"{sub.path} was made by `sparsetrain {cmds[0]}`, not "
                            f"`sparsetrain {self.command}`")
        sub.acquire()
        try:
            if not (sub.path / MARKER).is_file():
                sub._write_marker()
            sub.remove_stale_tmp()
        except BaseException:
            sub.release()
            raise
        return sub

    def _create(self, out_dir: Path) -> None:
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"out_dir {out_dir} exists and is not a folder")
        try:
            if not out_dir.exists():
                out_dir.mkdir(parents=True)
                self.created_parent = out_dir
            self.path.mkdir()
            self.created = True
        except FileExistsError:
            if not self.path.is_dir():
                raise UserError(f"run name {self.path.name!r}: {self.path} exists and is not "
                                "a folder; choose another name (name=...)") from None
            if any(p.name != LOCK for p in self.path.iterdir()):
                raise UserError(f"run directory {self.path} already exists; resume it with "
                                "--resume or choose another name (name=...)") from None
        except OSError as e:
            raise UserError(f"cannot create run directory {self.path}: {_os_reason(e)}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise UserError(f"cannot write to run directory {self.path}: permission denied")

    def _check_resumable(self) -> None:
        if not self.path.is_dir():
            raise UserError(f"cannot resume: no run at {self.path} (no folder, no checkpoint)")
        cmds = made_by(self.path)
        if not cmds:
            raise UserError(f"cannot resume: {self.path} is not a sparsetrain run")
        if self.command not in cmds:
            raise UserError(f"cannot resume {self.path} with `sparsetrain {self.command}`: it "
                            f"was made by `sparsetrain {cmds[0]}`")
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise UserError(f"cannot write to run directory {self.path}: permission denied")

    def _write_marker(self) -> None:
        from sparsetrain.checkpoint import write_json

        write_json({"command": self.command,
                    "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds")},
                   self.path / MARKER)

    # -- locking ----------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the folder's exclusive lock, or stop with a one-line error naming the owner."""
        if self._fd is not None or fcntl is None:
            return
        lock = self.path / LOCK
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot lock run directory {self.path}: {_os_reason(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise UserError(f"run directory {self.path} is in use by {owner}; wait for it to "
                            "finish or choose another name (name=...)") from None
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "command": self.command,
                           "since": _dt.datetime.now().astimezone().isoformat(
                               timespec="seconds")}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a dropped RunDir must not keep its folder locked
        with contextlib.suppress(Exception):
            self.release()

    # -- housekeeping -----------------------------------------------------------------
    def abandon(self) -> None:
        """After a failure before any result was saved: remove the folder this claim made, so
        the same command can simply be run again. A folder holding anything beyond the claim's
        own files (a checkpoint, a search log) is kept, to be resumed."""
        own = {MARKER, LOCK, "config.yaml"}
        if self.created and self.path.is_dir() and all(
                p.name in own or p.name.endswith(".tmp") for p in self.path.iterdir()):
            for p in self.path.iterdir():
                with contextlib.suppress(OSError):
                    p.unlink()
            self.release()
            with contextlib.suppress(OSError):
                self.path.rmdir()
                if self.created_parent is not None:
                    self.created_parent.rmdir()  # only if empty
        self.release()

    def remove_stale_tmp(self) -> list[str]:
        """Delete temporary files of atomic writes that were killed (lock holder only)."""
        removed = []
        for p in self.path.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p.name)
        return removed


def _read_owner(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return (f"process {info['pid']} on {info['host']} (`sparsetrain {info['command']}` "
                f"since {info['since']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def record_lock(run: Path):
    """Lock an existing run for a short update by another command (``eval`` recording its
    result); yields False when the run is in use or not writable (the caller skips)."""
    r = RunDir(run, "eval")
    try:
        r.acquire()
    except UserError:
        yield False
        return
    try:
        yield True
    finally:
        r.release()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl``; a torn last line (a run killed while appending) is
    dropped, a corrupt line elsewhere is a :class:`UserError`."""
    if not path.is_file():
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    out = []
    for i, ln in enumerate(lines):
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                raise ValueError("no step")
        except ValueError:
            if i == len(lines) - 1:
                break
            raise UserError(f"{path} line {i + 1} is corrupt; repair or delete the line to "
                            "resume") from None
        out.append(rec)
    return out


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only the metric lines logged up to ``step`` (the checkpoint a run resumes from)."""
    if not path.is_file():
        return
    from sparsetrain.checkpoint import atomic_write_bytes

    keep = "".join(json.dumps(m) + "\n" for m in read_metrics(path) if m["step"] <= step)
    atomic_write_bytes(path, lambda f: f.write(keep.encode()))


def read_summary(path: Path) -> dict[str, Any] | None:
    """A run's ``summary.json`` (None if absent); unreadable or not JSON: :class:`UserError`."""
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path} is corrupt ({str(e).splitlines()[0]}); repair or delete it")\
            from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is corrupt (not a JSON object); repair or delete it")
    return obj
