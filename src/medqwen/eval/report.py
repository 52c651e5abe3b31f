"""Writing evaluation results: atomic JSON + a Markdown table per run.

Rates (accuracies, recalls, precision, F1, exact match, yes ratio) are shown as
percentages; counts as integers; other scores (BLEU, ROUGE-L, METEOR, CIDEr-D)
with four decimals, as coco-caption prints them.  Nested result dicts are
flattened with ``/`` for the Markdown view; the JSON keeps the structure, and
non-finite floats (NaN for "no samples") become ``null``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

_RATE_NAMES = {"acc", "accuracy", "closed_acc", "open_recall", "exact_match",
               "precision", "recall", "f1", "yes_ratio"}
_COUNT_NAMES = {"n", "tp", "fp", "tn", "fn", "unparsed", "count"}


def _leaf(name: str) -> str:
    """Metric part of a key: ``'vqa/closed_acc/by_qtype/x'`` -> ``'closed_acc'``."""
    parts = name.split("/")
    for i, p in enumerate(parts):
        if p.startswith("by_") and i > 0:
            return parts[i - 1]
    return parts[-1]


def is_rate(name: str) -> bool:
    """True for metrics that are proportions in [0, 1] (shown as percentages)."""
    leaf = _leaf(name).lower()
    return leaf in _RATE_NAMES or leaf.endswith(("_acc", "_ratio", "_rate", "_recall"))


def is_count(name: str) -> bool:
    """True for integer counts (``n``, ``n_closed``, ``tp``, ``unparsed`` ...)."""
    leaf = _leaf(name).lower()
    return leaf in _COUNT_NAMES or leaf.startswith("n_")


def format_value(name: str, value: Any) -> str:
    """Formats one metric value for Markdown (see module docstring)."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    value = _jsonable(value)  # numpy scalar -> Python
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a" if value is None else str(value)
    if not math.isfinite(value):
        return "n/a"
    if is_count(name) and float(value).is_integer():
        return str(int(value))
    if is_rate(name):
        return f"{100.0 * value:.2f}%"
    return f"{value:.4f}"


def flatten(results: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens nested dicts with ``/``-joined keys (insertion order kept)."""
    out: dict[str, Any] = {}
    for k, v in results.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy scalar
        try:
            x = x.item()
        except (TypeError, ValueError):
            pass
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Markdown table with one row per run and one column per metric.

    Each row is a (possibly nested) results dict; missing values print as
    ``n/a``.  Example: ``markdown_table([{"run": "a", "f1": .5}], ["run", "f1"])``.
    """
    flat = [flatten(r) for r in rows]
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for r in flat:
        lines.append("| " + " | ".join(esc(format_value(c, r.get(c))) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_results(results: Mapping[str, Any], out_dir: str | os.PathLike,
                  name: str) -> tuple[Path, Path]:
    """Writes ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md`` atomically.

    The JSON is the results (NaN/inf -> null, numpy scalars -> Python); the
    Markdown is a ``| metric | value |`` table of the flattened results.
    Returns ``(json_path, md_path)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    _atomic_write(json_path, json.dumps(_jsonable(results), indent=2, allow_nan=False) + "\n")
    flat = flatten(results)
    rows = [{"metric": k, "value": format_value(k, v)} for k, v in flat.items()]
    md = f"# {name}\n\n" + markdown_table(rows, ["metric", "value"])
    _atomic_write(md_path, md)
    return json_path, md_path
