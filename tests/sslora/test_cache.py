import warnings

import pytest
import torch

import sslora.cache
from sslora._io import atomic_save_safetensors
from sslora.cache import SpectralCache
from sslora.spectral import exact_svd

from .test_io import flip_bit

INDICES = torch.tensor([[0, 1], [4, 5], [9, 10]])


def _weight():
    return torch.randn(24, 16, generator=torch.Generator().manual_seed(0))


def _exact():
    return exact_svd(_weight(), INDICES)


def _get_quietly(cache):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid entry is used without a word
        return cache.get(_weight(), INDICES)


def _assert_exact(result):
    for got, want in zip(result, _exact()):
        assert torch.equal(got, want)


def test_second_get_reads_the_entry(tmp_path):
    cache = SpectralCache(tmp_path)
    _assert_exact(_get_quietly(cache))
    _assert_exact(_get_quietly(cache))
    assert (cache.hits, cache.misses) == (1, 1)


def _bad_entries():
    u, s, v = _exact()
    nan_u = u.clone()
    nan_u[3, 1] = float("nan")
    meta = {"library": "sslora", "version": sslora.__version__}
    return {
        "nan": ({"u": nan_u, "s": s, "v": v}, meta, "NaN"),
        "inf_s": ({"u": u, "s": s.clone().fill_(float("inf")), "v": v}, meta, "NaN or infinite"),
        "shape": ({"u": u[:, :4], "s": s[:4], "v": v[:, :4]}, meta, "expected torch.float32"),
        "transposed": ({"u": v, "s": s, "v": u}, meta, "expected torch.float32"),
        "dtype": ({"u": u.double(), "s": s.double(), "v": v.double()}, meta, "float64"),
        "keys": ({"u": u, "s": s}, meta, "expected u, s, v"),
        "negative_s": ({"u": u, "s": -s, "v": v}, meta, "negative singular values"),
        "version": ({"u": u, "s": s, "v": v}, {"library": "sslora", "version": "0.0.1"}, "0.0.1"),
        "no_metadata": ({"u": u, "s": s, "v": v}, {}, "not sslora"),
    }


@pytest.mark.parametrize("kind", list(_bad_entries()))
def test_invalid_entry_is_recomputed_with_a_warning(tmp_path, kind):
    tensors, metadata, reason = _bad_entries()[kind]
    cache = SpectralCache(tmp_path)
    path = cache.path_for(_weight(), INDICES)
    atomic_save_safetensors(tensors, path, metadata=metadata)
    with pytest.warns(UserWarning, match=reason) as record:
        result = cache.get(_weight(), INDICES)
    assert str(path) in str(record[0].message)
    _assert_exact(result)
    assert (cache.hits, cache.misses) == (0, 1)
    _assert_exact(_get_quietly(cache))  # rewritten: the next read is a clean hit
    assert cache.hits == 1


@pytest.mark.parametrize("damage", ["empty", "truncated", "bit_flip", "pickle"])
def test_damaged_file_is_recomputed_with_a_warning(tmp_path, damage):
    cache = SpectralCache(tmp_path)
    cache.get(_weight(), INDICES)
    path = cache.path_for(_weight(), INDICES)
    raw = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(raw[:-40])
    elif damage == "bit_flip":
        flip_bit(path, "v", byte=2, bit=1)
    else:
        torch.save(dict(zip("usv", _exact())), str(path))
    with pytest.warns(UserWarning, match="recomputing"):
        result = cache.get(_weight(), INDICES)
    _assert_exact(result)
    assert cache.misses == 2


def test_library_version_is_part_of_the_key(tmp_path, monkeypatch):
    cache = SpectralCache(tmp_path)
    before = cache.path_for(_weight(), INDICES)
    monkeypatch.setattr(sslora.cache, "__version__", "99.0")
    assert cache.path_for(_weight(), INDICES) != before
