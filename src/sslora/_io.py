"""Atomic file writes (a crash mid-save never leaves a truncated adapter or cache entry) and
verified safetensors reads (a damaged file is refused by name, never unpickled, never used)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

# safetensors metadata key holding {tensor name: sha256 of its bytes} as JSON
CHECKSUM_KEY = "sha256"


class WeightsFileError(ValueError):
    """A safetensors file that is empty, truncated, not safetensors (e.g. a pickle) or whose tensors
    fail their checksum or hold NaN/inf. ``path`` and ``tensor`` (or None) say where."""

    def __init__(self, path: str | os.PathLike, problem: str, tensor: str | None = None):
        self.path, self.problem, self.tensor = str(path), problem, tensor
        super().__init__(f"{path}: {f'tensor {tensor!r}: ' if tensor else ''}{problem}")


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; a written file gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, write)


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's bytes as safetensors stores them (contiguous, little-endian)."""
    data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(memoryview(data)).hexdigest()


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Save atomically, with a sha256 per tensor in the metadata so that reads can detect bit rot."""
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    checksums = {name: tensor_sha256(t) for name, t in contiguous.items()}
    metadata = {**(metadata or {}), CHECKSUM_KEY: json.dumps(checksums, sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def check_safetensors_layout(path: str | os.PathLike, raw: bytes) -> dict:
    """The parsed header of `raw`, the bytes of the safetensors file `path`, or WeightsFileError
    saying what is wrong with them.

    Done by hand before safetensors parses them, because its own errors name neither the file nor
    the likely cause (an interrupted copy, a torch.save pickle under the wrong name)."""
    size = len(raw)
    if size == 0:
        raise WeightsFileError(path, "the file is empty (0 bytes): an interrupted copy or save?")
    head = raw[:8]
    length = int.from_bytes(head, "little")
    # a pickle or zip is only diagnosed once the bytes fail to parse: a valid 8-byte header
    # length may itself begin with 0x80
    if size < 8 or length > size - 8:
        raise WeightsFileError(path, _not_safetensors(head, f"the header claims {length} bytes but {max(size - 8, 0)} follow"))
    try:
        header = json.loads(raw[8 : 8 + length].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        spans = {name: info["data_offsets"] for name, info in header.items() if name != "__metadata__"}
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise WeightsFileError(path, _not_safetensors(head, f"unreadable header ({err})")) from err
    available = size - 8 - length
    for name, span in spans.items():
        if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) for v in span)):
            raise WeightsFileError(path, f"corrupt header: data_offsets {span!r}", name)
        if span[1] > available:
            raise WeightsFileError(
                path, f"truncated: its data ends at byte {span[1]} of the data section, which holds only {available}", name
            )
    return header


def _not_safetensors(head: bytes, detail: str) -> str:
    if head.startswith(b"PK\x03\x04"):
        return "this is a zip archive (torch.save?), not safetensors; refusing to unpickle it"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "this is a Python pickle (torch.save?), not safetensors; refusing to unpickle it"
    return f"truncated or not safetensors: {detail}"


def read_safetensors(
    path: str | os.PathLike, *, require_finite: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, verified: layout, per-tensor sha256 when the file
    carries them (files written before checksums existed have none), and finite floats."""
    # one read into memory, not a memory map: the tensors verified are the tensors returned, and a
    # file rewritten in place afterwards cannot crash the process (SIGBUS) or change them
    with open(path, "rb") as handle:
        raw = handle.read()
    header = check_safetensors_layout(path, raw)
    try:
        tensors = load(raw)
    except SafetensorError as err:
        raise WeightsFileError(path, f"not a valid safetensors file ({err})") from err
    metadata = dict(header.get("__metadata__") or {})
    checksums = None
    if CHECKSUM_KEY in metadata:
        try:
            checksums = json.loads(metadata[CHECKSUM_KEY])
            if not isinstance(checksums, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            raise WeightsFileError(path, f"corrupt checksum metadata ({err})") from err
        lost = sorted(set(checksums) - set(tensors))
        if lost:
            raise WeightsFileError(path, "saved with this tensor, which the file no longer holds", lost[0])
    for key, value in tensors.items():
        if checksums is not None:
            if key not in checksums:
                raise WeightsFileError(path, "no checksum recorded for it (file edited after saving?)", key)
            if tensor_sha256(value) != checksums[key]:
                raise WeightsFileError(path, "sha256 mismatch: the stored bytes changed since saving (corrupted file?)", key)
        if require_finite and value.is_floating_point():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise WeightsFileError(path, f"{bad} of {value.numel()} values are NaN or infinite", key)
    return tensors, metadata
