"""benchmarks/init_speed.py --model at toy sizes: the streamed safetensors file, the memory-mapped
reader, the model skeleton, and a cold then a cached init (every layer from the cache)."""

import importlib.util
from pathlib import Path

import torch
from safetensors.torch import load_file

from sslora import SSLoRAConfig

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("init_speed", REPO / "benchmarks" / "init_speed.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_lm_projection_shapes_come_from_the_7b_config():
    assert bench.QWEN_7B == {
        "3584x3584": ((3584, 3584), 56), "512x3584": ((512, 3584), 56),
        "18944x3584": ((18944, 3584), 56), "3584x18944": ((3584, 18944), 28),
    }


def test_random_weights_file_mmap_reader_and_cold_then_cached_init(tmp_path):
    projections = {name: (m // 64, n // 64) for name, (m, n) in list(bench.lm_projections().items())[:7]}
    path = tmp_path / "w.safetensors"
    bench.write_random_weights(path, projections)
    loaded, mapped = load_file(path), bench._mmap_tensors(path)
    assert set(loaded) == set(mapped) == set(projections)
    for name, (m, n) in projections.items():
        assert mapped[name].dtype == torch.bfloat16 and tuple(mapped[name].shape) == (m, n)
        assert torch.equal(loaded[name], mapped[name])
    config = SSLoRAConfig(target_modules="qwen2_5_vl", r=8, num_experts=4)
    cache = str(tmp_path / "cache")
    cold = bench._timed_init(path, projections, config, cache, drop_cache=True, read="mmap")
    cached = bench._timed_init(path, projections, config, cache, drop_cache=True, read="load")
    assert (cold["layers"], cold["cache_misses"], cached["cache_hits"]) == (7, 7, 7)
