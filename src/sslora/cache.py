"""On-disk cache of selected singular triplets, keyed by a hash of the weight and the selection."""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path

import torch

from . import __version__
from ._io import atomic_save_safetensors, read_safetensors
from .spectral import exact_svd


def default_cache_dir() -> Path:
    """$SSLORA_CACHE, else $XDG_CACHE_HOME/sslora, else ~/.cache/sslora."""
    if os.environ.get("SSLORA_CACHE"):
        return Path(os.environ["SSLORA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sslora"


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's bytes, shape and dtype (any dtype, any device).

    sha256, not blake2b: CPUs with SHA instructions hash ~1.9 GB/s against blake2b's ~0.9 GB/s, and a
    cached re-init of a 7B model hashes all 13 GB of its weights."""
    data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    h = hashlib.sha256()
    h.update(f"{tuple(tensor.shape)}|{tensor.dtype}|".encode())
    h.update(memoryview(data))
    return h.hexdigest()


class SpectralCache:
    """get(weight, indices) -> (U, S, V) of the selected components, computed once per weight.

    The key covers the weight's bytes and the selected indices, so every config that selects the
    same components (init, N, r, segment_slice, seed of random segments) shares an entry.
    Entries are verified on read (checksum, shapes, dtype, finite, library version); an unusable
    one is recomputed and rewritten, with a warning.
    `directory=None` uses default_cache_dir(); `enabled=False` always recomputes.
    """

    def __init__(self, directory: str | os.PathLike | None = None, enabled: bool = True):
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def path_for(self, weight: torch.Tensor, indices: torch.Tensor) -> Path:
        # the library version is part of the key: another version may compute (or store) differently
        key = hashlib.blake2b(
            (f"sslora-{__version__}|" + tensor_digest(weight) + tensor_digest(indices.to(torch.int64))).encode(),
            digest_size=20,
        ).hexdigest()
        return self.directory / f"{key}.safetensors"

    def get(self, weight: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.enabled:
            self.misses += 1
            return exact_svd(weight, indices)
        path = self.path_for(weight, indices)
        if path.is_file():
            try:
                entry = _read_entry(path, weight, indices)
                self.hits += 1
                return entry
            except Exception as err:  # noqa: BLE001
                # an entry from a full disk, another version or a foreign file costs a recompute, not a wrong init
                warnings.warn(f"SSLoRA SVD cache entry unusable, recomputing it: {err}", stacklevel=2)
        self.misses += 1
        u, s, v = exact_svd(weight, indices)
        atomic_save_safetensors({"u": u, "s": s, "v": v}, path, metadata={"library": "sslora", "version": __version__})
        return u, s, v


def _read_entry(path: Path, weight: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, V) of a cache entry, or ValueError saying why it cannot be what exact_svd returns here."""
    tensors, metadata = read_safetensors(path)  # layout, sha256, finite
    if metadata.get("library") != "sslora" or metadata.get("version") != __version__:
        raise ValueError(f"{path}: written by {metadata.get('library')} {metadata.get('version')}, not sslora {__version__}")
    if set(tensors) != {"u", "s", "v"}:
        raise ValueError(f"{path}: holds {sorted(tensors)}, expected u, s, v")
    m, n, k = weight.shape[0], math.prod(weight.shape[1:]), indices.numel()
    wanted = {"u": (m, k), "s": (k,), "v": (n, k)}
    for name, shape in wanted.items():
        value = tensors[name]
        if tuple(value.shape) != shape or value.dtype != torch.float32:
            raise ValueError(f"{path}: {name} is {value.dtype} {tuple(value.shape)}, expected torch.float32 {shape}")
    if bool((tensors["s"] < 0).any()):
        raise ValueError(f"{path}: negative singular values")
    return tensors["u"], tensors["s"], tensors["v"]
