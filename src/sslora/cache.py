"""On-disk cache of selected singular triplets, keyed by a hash of the weight and the selection."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from ._io import atomic_save_safetensors
from .spectral import exact_svd


def default_cache_dir() -> Path:
    """$SSLORA_CACHE, else $XDG_CACHE_HOME/sslora, else ~/.cache/sslora."""
    if os.environ.get("SSLORA_CACHE"):
        return Path(os.environ["SSLORA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sslora"


def tensor_digest(tensor: torch.Tensor) -> str:
    """blake2b of a tensor's bytes, shape and dtype (any dtype, any device)."""
    data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{tuple(tensor.shape)}|{tensor.dtype}|".encode())
    h.update(memoryview(data))
    return h.hexdigest()


class SpectralCache:
    """get(weight, indices) -> (U, S, V) of the selected components, computed once per weight.

    The key covers the weight's bytes and the selected indices, so every config that selects the
    same components (init, N, r, segment_slice, seed of random segments) shares an entry.
    `directory=None` uses default_cache_dir(); `enabled=False` always recomputes.
    """

    def __init__(self, directory: str | os.PathLike | None = None, enabled: bool = True):
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def path_for(self, weight: torch.Tensor, indices: torch.Tensor) -> Path:
        key = hashlib.blake2b(
            (tensor_digest(weight) + tensor_digest(indices.to(torch.int64))).encode(), digest_size=20
        ).hexdigest()
        return self.directory / f"{key}.safetensors"

    def get(self, weight: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.enabled:
            self.misses += 1
            return exact_svd(weight, indices)
        path = self.path_for(weight, indices)
        if path.is_file():
            try:
                entry = load_file(str(path))
                self.hits += 1
                return entry["u"], entry["s"], entry["v"]
            except Exception:  # a corrupt entry (disk full, foreign file) is recomputed, not fatal
                pass
        self.misses += 1
        u, s, v = exact_svd(weight, indices)
        atomic_save_safetensors({"u": u, "s": s, "v": v}, path)
        return u, s, v
