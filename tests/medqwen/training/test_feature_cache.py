"""Frozen image features cached in memory and on disk."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from medqwen.data.schema import Sample
from medqwen.models import tiny_mini
from medqwen.training.batches import FeatureCache


def _files(tmp_path, n=3):
    paths = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        Image.fromarray((np.random.RandomState(i).rand(40, 40, 3) * 255).astype("uint8")).save(path)
        paths.append(str(path))
    return [Sample([p], "q", "a", "open", "t", "train") for p in paths]


class _Counting:
    """Counts encoder calls of a model (to see whether the disk cache was used)."""

    def __init__(self, model):
        self.model, self.calls = model, 0
        self.vision_tower, self.image_size = model.vision_tower, model.image_size

    def encode_images(self, images):
        self.calls += 1
        return self.model.encode_images(images)


def test_disk_cache_gives_the_same_bits_and_skips_the_encoder(tmp_path):
    samples = _files(tmp_path)
    model = tiny_mini(seed=0)
    first = _Counting(model)
    computed = FeatureCache(first, disk_dir=tmp_path / "cache").get(samples)
    assert first.calls == 3
    second = _Counting(model)
    again = FeatureCache(second, disk_dir=tmp_path / "cache").get(samples)
    assert second.calls == 0
    for a, b in zip(computed, again):
        assert torch.equal(a, b)
    other_tower = _Counting(tiny_mini(seed=1))  # different vision weights -> different key
    FeatureCache(other_tower, disk_dir=tmp_path / "cache").get(samples)
    assert other_tower.calls == 3


def test_changed_or_corrupt_entries_are_recomputed(tmp_path):
    samples = _files(tmp_path, 2)
    model = tiny_mini(seed=0)
    cache_dir = tmp_path / "cache"
    FeatureCache(model, disk_dir=cache_dir).get(samples)
    entries = sorted(cache_dir.rglob("*.safetensors"))
    assert len(entries) == 2
    entries[0].write_bytes(b"not a safetensors file")
    Image.new("RGB", (40, 40), (255, 0, 0)).save(samples[1].images[0])  # the image itself changed
    os.utime(samples[1].images[0], ns=(1, 1))
    counting = _Counting(model)
    fresh = FeatureCache(counting, disk_dir=cache_dir).get(samples)
    assert counting.calls == 2
    assert torch.equal(fresh[1], model.encode_images([Image.open(samples[1].images[0])]))


def test_disk_cache_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDQWEN_FEATURE_CACHE", "off")
    cache = FeatureCache(tiny_mini(seed=0))
    assert cache.disk_dir is None
    cache.get(_files(tmp_path, 1))
    assert not list(tmp_path.rglob("*.safetensors"))
