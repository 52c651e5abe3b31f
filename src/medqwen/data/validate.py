"""Row validation shared by all readers.

Every reader walks its rows through :func:`collect`, which turns a
:class:`DataError` into either an exception (default) or a skip count
(``skip_invalid=True``). The reason strings below are the keys of
``SampleList.skipped``.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .schema import ANSWER_TYPES, DataError, Sample, SampleList, open_image

log = logging.getLogger("medqwen.data")

MISSING_IMAGE = "missing image"
UNREADABLE_IMAGE = "unreadable image"
PATH_ESCAPE = "path escapes dataset root"
EMPTY_QUESTION = "empty question"
EMPTY_ANSWER = "empty answer"
UNKNOWN_ANSWER_TYPE = "unknown answer type"
ANSWER_NOT_IN_OPTIONS = "answer not in options"
UNKNOWN_LABEL = "unknown label"
MISSING_FIELD = "missing field"
MALFORMED_ROW = "malformed row"
MALFORMED_FILE = "malformed file"

_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validate": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
    "all": "all",
}


def canonical_split(split: str, allowed: Iterable[str] = ("train", "val", "test")) -> str:
    """Map split aliases ("validate", "valid", ...) to train/val/test/all."""
    canon = _SPLIT_ALIASES.get(str(split).strip().lower())
    allowed = tuple(allowed)
    if canon not in allowed:
        raise ValueError(f"unknown split {split!r}; expected one of {allowed} (or an alias)")
    return canon


@dataclass
class RowContext:
    """Where a row came from, so errors can point at it."""

    file: Path | str
    index: int | None
    row_id: Any = None

    def error(self, field: str | None, reason: str, detail: str = "") -> DataError:
        return DataError(reason, file=self.file, row=self.index, row_id=self.row_id,
                         field=field, detail=detail)


def text_field(ctx: RowContext, row: dict, key: str, reason: str) -> str:
    """Return ``row[key]`` as a non-empty string or raise ``reason``.

    Numbers are accepted because some datasets store answers like ``4`` as
    JSON integers.
    """
    if key not in row:
        raise ctx.error(key, reason, "field is absent")
    value = row[key]
    if value is None:
        raise ctx.error(key, reason, "value is null")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ctx.error(key, MALFORMED_ROW, f"expected text, got {type(value).__name__}")
    if not value.strip():
        raise ctx.error(key, reason, "blank")
    return value


def parse_answer_type(ctx: RowContext, row: dict, key: str = "answer_type") -> str:
    """'CLOSED ' / 'Open' / ... -> 'closed' / 'open'; anything else is an error."""
    value = row.get(key)
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in ANSWER_TYPES:
        raise ctx.error(key, UNKNOWN_ANSWER_TYPE, f"got {value!r}")
    return text


class ImageResolver:
    """Turns a row's relative image path into a checked absolute path.

    The root check is lexical (normpath, no symlink resolution) on purpose:
    it rejects ``../`` tricks and foreign absolute paths while still allowing
    image folders that are symlinks to a big disk. Results are cached per path
    because many questions share one image.
    """

    def __init__(self, root: str | Path, *, check_images: bool = True,
                 verify_images: bool = False) -> None:
        self.root = os.path.normpath(os.path.abspath(root))
        self.check_images = check_images
        self.verify_images = verify_images
        self._failures: dict[str, tuple[str, str] | None] = {}

    def __call__(self, ctx: RowContext, rel: Any, field: str = "image") -> str:
        if not isinstance(rel, str) or not rel.strip():
            raise ctx.error(field, MISSING_IMAGE, f"no image path given ({rel!r})")
        path = os.path.normpath(os.path.join(self.root, rel.strip()))
        if os.path.commonpath([path, self.root]) != self.root:
            raise ctx.error(field, PATH_ESCAPE, f"{rel!r} resolves to {path}, outside {self.root}")
        if path not in self._failures:
            self._failures[path] = self._check(path)
        failure = self._failures[path]
        if failure is not None:
            raise ctx.error(field, failure[0], failure[1])
        return path

    def _check(self, path: str) -> tuple[str, str] | None:
        if self.check_images and not os.path.isfile(path):
            return MISSING_IMAGE, f"no file at {path}"
        if self.verify_images:
            try:
                open_image(path)  # a full decode: verify() alone misses truncated JPEGs; DICOM too
            except Exception as exc:  # PIL raises many types for bad files
                return UNREADABLE_IMAGE, f"{path}: {type(exc).__name__}: {exc}"
        return None


Built = Sample | list[Sample] | None


def collect(
    file: Path | str,
    rows: Iterable[tuple[int, Any]],
    build: Callable[[RowContext, Any], Built],
    *,
    skip_invalid: bool,
    id_key: str | None = None,
    log_report: bool = True,
) -> SampleList:
    """Build samples from ``(index, row)`` pairs, enforcing the error policy.

    ``build`` returns a Sample, a list of Samples, or None (row filtered out,
    e.g. another language). A row given as a DataError (unparsable JSONL line)
    counts as bad. With ``skip_invalid`` bad rows are counted, not raised.
    """
    out = SampleList()
    skipped: Counter[str] = Counter()
    rows_of_id: dict[Any, list[Any]] = {}
    for index, row in rows:
        row_id = row.get(id_key) if id_key and isinstance(row, dict) else None
        ctx = RowContext(file, index, row_id)
        try:
            if isinstance(row, DataError):
                raise row
            built = build(ctx, row)
        except DataError as err:
            if not skip_invalid:
                raise
            skipped[err.reason] += 1
            continue
        if isinstance(built, Sample):
            out.append(built)
        elif built:
            out.extend(built)
        if built and row_id is not None:
            rows_of_id.setdefault(_hashable(row_id), []).append(index)
    out.skipped = dict(skipped)
    if log_report:
        report(file, out)
    warn_duplicate_ids(file, id_key, rows_of_id)
    return out


def warn_duplicate_ids(file: Path | str, id_key: str | None, rows_of_id: dict[Any, list[Any]]) -> None:
    """One warning naming a few ids used by several rows: often a file concatenated twice, or a
    train/test mix-up. The rows are kept (a repeated id may be deliberate)."""
    repeated = {k: v for k, v in rows_of_id.items() if len(v) > 1}
    if repeated:
        shown = "; ".join(f"{k!r} at rows {v[:4]}" for k, v in list(repeated.items())[:5])
        log.warning("%s: %d ids in field %r occur in more than one row (%s%s); all rows are kept", file, len(repeated),
                    id_key, shown, "; ..." if len(repeated) > 5 else "")


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) else repr(value)


def report(where: Path | str, samples: SampleList) -> None:
    """Log one line with the skip counts (nothing if no row was skipped)."""
    if samples.skipped:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(samples.skipped.items()))
        log.warning("%s: kept %d samples, skipped %d rows (%s)", where, len(samples),
                    sum(samples.skipped.values()), counts)


def iter_json_records(file: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, record)`` from a JSON list or a JSONL file.

    JSONL is detected by the ``.jsonl`` suffix or by content not starting with
    ``[``. For JSONL the index is the 0-based line number (blank lines are
    ignored); an unparsable line is yielded as a DataError so ``collect`` can
    skip it like any other bad row. Non-object records become DataErrors too.
    """
    file = Path(file)
    text = read_text(file)
    if file.suffix.lower() != ".jsonl" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(MALFORMED_FILE, file=file, detail=str(exc)) from exc
        pairs: Iterable[tuple[int, Any]] = enumerate(records)
    else:
        pairs = _jsonl_pairs(file, text)
    for index, record in pairs:
        if not isinstance(record, (dict, DataError)):
            record = DataError(MALFORMED_ROW, file=file, row=index,
                               detail=f"expected an object, got {type(record).__name__}")
        yield index, record


def read_text(file: Path) -> str:
    """A UTF-8 annotation file's text (a BOM is dropped); a DataError naming the file and the first bad
    byte if it is in another encoding."""
    data = Path(file).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(MALFORMED_FILE, file=file, detail=(
            f"not UTF-8 text: byte 0x{data[err.start]:02x} at line {line} (byte offset {err.start}); "
            f"expected UTF-8, e.g. re-save it with: iconv -f latin1 -t utf-8")) from None


def _jsonl_pairs(file: Path, text: str) -> Iterator[tuple[int, Any]]:
    for index, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            yield index, json.loads(line)
        except json.JSONDecodeError as exc:
            yield index, DataError(MALFORMED_ROW, file=file, row=index, detail=f"bad JSON: {exc}")


def find_split_file(root: Path, names: Iterable[str]) -> Path:
    """Return the first of ``names`` that exists under ``root``."""
    names = list(names)
    for name in names:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"none of {names} found in {root}")
