import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from sslora._io import CHECKSUM_KEY, WeightsFileError, atomic_save_safetensors, read_safetensors


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(4, 6, generator=g), "b": torch.randn(3, generator=g).to(torch.bfloat16), "i": torch.arange(5)}


def flip_bit(path, tensor: str, byte: int = 0, bit: int = 3) -> None:
    """Flip one bit of `tensor`'s stored data in a safetensors file (bit rot on disk)."""
    raw = bytearray(path.read_bytes())
    length = int.from_bytes(raw[:8], "little")
    start = json.loads(raw[8 : 8 + length])[tensor]["data_offsets"][0]
    raw[8 + length + start + byte] ^= 1 << bit
    path.write_bytes(bytes(raw))


@pytest.fixture
def never_unpickle(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, forbidden)


def test_round_trip_is_exact_and_carries_checksums(tmp_path):
    path = tmp_path / "w.safetensors"
    atomic_save_safetensors(_tensors(), path, metadata={"x": "1"})
    tensors, metadata = read_safetensors(path)
    assert set(json.loads(metadata[CHECKSUM_KEY])) == {"a", "b", "i"} and metadata["x"] == "1"
    for name, value in _tensors().items():
        assert torch.equal(tensors[name], value) and tensors[name].dtype == value.dtype


def test_header_length_starting_with_0x80_is_not_mistaken_for_a_pickle(tmp_path):
    # a valid file whose 8-byte header length has low byte 0x80, the pickle protocol opcode
    for pad in range(300):
        path = tmp_path / f"w{pad}.safetensors"
        atomic_save_safetensors(_tensors(), path, metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.skip("no padding gave a header length ending in 0x80")
    assert torch.equal(read_safetensors(path)[0]["a"], _tensors()["a"])


@pytest.mark.parametrize("cut", [0, 5, 20, -1, -30])
def test_empty_or_truncated_file_is_named(tmp_path, cut, never_unpickle):
    path = tmp_path / "w.safetensors"
    atomic_save_safetensors(_tensors(), path)
    raw = path.read_bytes()
    path.write_bytes(raw[:cut] if cut >= 0 else raw[:cut])
    with pytest.raises(WeightsFileError, match="empty|truncated") as info:
        read_safetensors(path)
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("zipped", [True, False])
def test_pickle_is_refused_never_unpickled(tmp_path, zipped, never_unpickle):
    path = tmp_path / "w.safetensors"
    with open(path, "wb") as handle:
        torch.save(_tensors(), handle, _use_new_zipfile_serialization=zipped)
    with pytest.raises(WeightsFileError, match="zip archive" if zipped else "pickle") as info:
        read_safetensors(path)
    assert str(path) in str(info.value) and "refusing to unpickle" in str(info.value)


def test_garbage_file_is_named(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(WeightsFileError, match="not safetensors"):
        read_safetensors(path)


@pytest.mark.parametrize("tensor", ["a", "b", "i"])
def test_bit_flip_fails_the_checksum_naming_the_tensor(tmp_path, tensor):
    path = tmp_path / "w.safetensors"
    atomic_save_safetensors(_tensors(), path)
    flip_bit(path, tensor, byte=1, bit=0)
    with pytest.raises(WeightsFileError, match="sha256 mismatch") as info:
        read_safetensors(path)
    assert info.value.tensor == tensor and str(path) in str(info.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_values_are_refused_with_or_without_checksums(tmp_path, value):
    tensors = _tensors()
    tensors["a"][1, 2] = value
    with_sums, legacy = tmp_path / "new.safetensors", tmp_path / "old.safetensors"
    atomic_save_safetensors(tensors, with_sums)
    save_file(tensors, str(legacy))  # as written before checksums existed
    for path in (with_sums, legacy):
        with pytest.raises(WeightsFileError, match="1 of 24 values are NaN or infinite") as info:
            read_safetensors(path)
        assert info.value.tensor == "a"


def test_files_without_checksums_still_load(tmp_path):
    path = tmp_path / "old.safetensors"
    save_file(_tensors(), str(path), metadata={"format": "pt"})
    tensors, metadata = read_safetensors(path)
    assert CHECKSUM_KEY not in metadata and torch.equal(tensors["a"], _tensors()["a"])


def test_a_tensor_dropped_after_saving_is_named(tmp_path):
    path = tmp_path / "w.safetensors"
    atomic_save_safetensors(_tensors(), path)
    tensors, metadata = read_safetensors(path)
    del tensors["b"]
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(WeightsFileError, match="no longer holds") as info:
        read_safetensors(path)
    assert info.value.tensor == "b"


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    import os

    from sslora._io import _UMASK, atomic_write_text

    atomic_write_text(tmp_path / "a.json", "{}")
    assert (os.stat(tmp_path / "a.json").st_mode & 0o777) == 0o666 & ~_UMASK
