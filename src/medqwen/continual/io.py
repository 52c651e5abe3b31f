"""Atomic writes (temporary file in the same folder + os.replace): a reader never sees half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from sslora import atomic_write
from sslora._io import atomic_write_text


def _atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    atomic_write(path, write)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    atomic_write_text(path, text)
    return Path(path)


def write_json(path: str | Path, data: Any, indent: int = 1) -> Path:
    return write_text(path, json.dumps(data, indent=indent, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display on a server or in CI), imported when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path) -> Path:
    """matplotlib figure -> PNG, atomically."""
    return _atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def take_lock(run_dir: Path) -> int | None:
    """Create run_dir/grid.lock holding this process's pid; None when taken, else the pid of the live
    process that holds it. A lock left by a process that no longer exists is replaced."""
    lock = run_dir / "grid.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and pid_alive(holder):
                return holder
            lock.unlink(missing_ok=True)  # stale
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return None
    raise RuntimeError(f"could not take {lock}")
