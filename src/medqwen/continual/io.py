"""Atomic writes (temporary file in the same folder + os.replace): a reader never sees half a file."""

from __future__ import annotations

import json
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
