"""Exact spectral init on Qwen2.5-VL-7B language-model shapes: per matrix, per stage, whole model.

    python benchmarks/init_speed.py                   # per shape: ours vs torch.linalg.svd, 3 repeats
    python benchmarks/init_speed.py --repeats 1 --shapes 3584x3584
    python benchmarks/init_speed.py --stages          # where one init's time goes, per shape
    python benchmarks/init_speed.py --model           # the whole LM (196 layers), end to end

Per shape: ours and plain torch.linalg.svd in one process, interleaved, on the same random fp32
weights; medians over repeats; also the cache read time and the agreement of the selected factors.
--model: `get_sslora_model` on all 196 projections of the 7B LM (28 layers x q, k, v, o, gate, up,
down; shapes from configs/qwen2_5_vl_7b_config.json), reading the weights included: random bf16
weights (like the real checkpoint) in one safetensors file (13 GB, written once to --weights), read
into a model skeleton (--read mmap: on first use, overlapping the init; load: all of it first),
then initialised with a fresh SVD cache ("cold"); then the same again with that cache filled
("cached"). The file's pages are dropped from the page cache before each read (posix_fadvise;
--keep-page-cache to skip), so the reads come from disk.
Results are merged into benchmarks/results/init_speed.json (`rows`/`summary`, `stages`, `model_7b`).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn

from sslora import SSLoRAConfig, get_sslora_model
from sslora.cache import SpectralCache
from sslora.spectral import exact_svd, select_indices

ROOT = Path(__file__).resolve().parent.parent
MODEL_CONFIG = ROOT / "configs" / "qwen2_5_vl_7b_config.json"
CACHE_HOME = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
DEFAULT_WEIGHTS = CACHE_HOME / "sslora-bench" / "qwen2_5_vl_7b_lm_random_bf16.safetensors"


def lm_projections(config_path: Path = MODEL_CONFIG) -> dict[str, tuple[int, int]]:
    """{parameter name: (out, in)} of the seven projections of every decoder layer, from the HF config."""
    cfg = json.loads(config_path.read_text())
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = cfg["num_key_value_heads"] * (h // cfg["num_attention_heads"])
    per_layer = {
        "self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
        "self_attn.o_proj": (h, h), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
        "mlp.down_proj": (h, inter),
    }
    return {f"model.layers.{i}.{name}.weight": shape for i in range(layers) for name, shape in per_layer.items()}


def shape_counts() -> dict[str, tuple[tuple[int, int], int]]:
    """{"out x in": ((out, in), how many in the LM)}, e.g. "3584x3584": ((3584, 3584), 56)."""
    counts: dict[tuple[int, int], int] = {}
    for shape in lm_projections().values():
        counts[shape] = counts.get(shape, 0) + 1
    return {f"{m}x{n}": ((m, n), c) for (m, n), c in counts.items()}


QWEN_7B = shape_counts()


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "date": time.strftime("%Y-%m-%d %H:%M")}


# ----------------------------------------------------------------------------------- per shape
def _plain(weight, indices):
    u, s, vh = torch.linalg.svd(weight)  # the call people write; full_matrices=True is its default
    idx = indices.flatten()
    return u[:, idx], s[idx], vh[idx].T


def _segment_error(a, b, d):
    """Max |U_j S_j V_j^T - U'_j S'_j V'_j^T| over experts (sign-invariant), relative to sigma_max."""
    worst = 0.0
    for j in range(a[0].shape[1] // d):
        cols = slice(j * d, (j + 1) * d)
        pa = (a[0][:, cols].double() * a[1][cols].double()) @ a[2][:, cols].double().T
        pb = (b[0][:, cols].double() * b[1][cols].double()) @ b[2][:, cols].double().T
        worst = max(worst, (pa - pb).abs().max().item())
    return worst / max(float(a[1].max()), 1e-30)


def run(shapes: list[str], repeats: int, r: int = 32, num_experts: int = 8) -> list[dict]:
    rows = []
    for key in shapes:
        (m, n), count = QWEN_7B[key]
        torch.manual_seed(0)
        weight = torch.randn(m, n) / n**0.5
        indices = select_indices(min(m, n), r, num_experts, "spectral")
        ours_t, plain_t = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            ours = exact_svd(weight, indices)
            ours_t.append(time.perf_counter() - start)
            start = time.perf_counter()
            plain = _plain(weight, indices)
            plain_t.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as tmp:
            cache = SpectralCache(tmp)
            cache.get(weight, indices)
            start = time.perf_counter()
            cache.get(weight, indices)
            cached = time.perf_counter() - start
            assert cache.hits == 1
        row = {
            "shape": key, "per_model": count, "ours_s": statistics.median(ours_t), "torch_svd_s": statistics.median(plain_t),
            "cache_read_s": cached, "max_rel_segment_diff": _segment_error(ours, plain, r // num_experts),
        }
        row["speedup"] = row["torch_svd_s"] / row["ours_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def stages(shapes: list[str], repeats: int, r: int = 32, num_experts: int = 8) -> list[dict]:
    """Median seconds of each stage of exact_svd (bf16 weights, as a checkpoint holds them), per shape."""
    rows = []
    for key in shapes:
        (m, n), count = QWEN_7B[key]
        weight = (torch.randn(m, n, generator=torch.Generator().manual_seed(0)) / n**0.5).to(torch.bfloat16)
        indices = select_indices(min(m, n), r, num_experts, "spectral")
        runs = []
        for _ in range(repeats):
            timings: dict[str, float] = {}
            start, cpu = time.perf_counter(), time.process_time()
            exact_svd(weight, indices, timings=timings)
            timings["total"] = time.perf_counter() - start
            timings["total_cpu"] = time.process_time() - cpu  # all threads: cpu / wall = cores kept busy
            runs.append(timings)
        row = {"shape": key, "per_model": count, **{k: statistics.median(t[k] for t in runs) for k in runs[0]}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# ----------------------------------------------------------------------------------- whole model
def write_random_weights(path: Path, projections: dict[str, tuple[int, int]], seed: int = 0) -> None:
    """A safetensors file of N(0, 1/in) bf16 weights, written tensor by tensor (never all in memory),
    to a temporary name renamed at the end, so an interrupted run leaves no file that looks complete."""
    header, offset = {}, 0
    for name, (m, n) in projections.items():
        header[name] = {"dtype": "BF16", "shape": [m, n], "data_offsets": [offset, offset + 2 * m * n]}
        offset += 2 * m * n
    content = f"random N(0, 1/in) bf16, seed {seed}, Qwen2.5-VL-7B LM shapes"
    header["__metadata__"] = {"format": "pt", "content": content}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    generator = torch.Generator().manual_seed(seed)
    with open(partial, "wb") as handle:
        handle.write(len(blob).to_bytes(8, "little") + blob)
        for name, (m, n) in projections.items():
            weight = (torch.randn(m, n, generator=generator) / math.sqrt(n)).to(torch.bfloat16)
            handle.write(memoryview(weight.view(torch.uint8).numpy()))
        handle.flush()
        os.fsync(handle.fileno())  # written back, so that dropping its pages from the page cache works
    os.replace(partial, path)


class _Skeleton(nn.Module):
    """model.layers.{i}.{self_attn,mlp}.*_proj as bias-free nn.Linear, on the meta device (no memory)."""

    def __init__(self, projections: dict[str, tuple[int, int]]):
        super().__init__()
        with torch.device("meta"):
            for name, (m, n) in projections.items():
                parent = self
                *path, leaf, _ = name.split(".")
                for part in path:
                    if not hasattr(parent, part):
                        parent.add_module(part, nn.Module())
                    parent = getattr(parent, part)
                parent.add_module(leaf, nn.Linear(n, m, bias=False, dtype=torch.bfloat16))


def _drop_page_cache(path: Path) -> None:
    """Evict this one file's pages, so that the next read comes from disk (nothing else is touched)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _mmap_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as views of one private memory map: a page is read from disk
    when first used, and a background thread asks the kernel to read the whole file ahead
    (posix_fadvise WILLNEED), so the disk reads overlap the SVDs of the layers already in memory."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    data = torch.from_file(str(path), shared=False, size=path.stat().st_size, dtype=torch.uint8)
    dtypes = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    tensors = {}
    for name, info in header.items():
        if name != "__metadata__":
            start, end = (8 + length + offset for offset in info["data_offsets"])
            tensors[name] = data[start:end].view(dtypes[info["dtype"]]).view(info["shape"])

    def read_ahead():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    threading.Thread(target=read_ahead, daemon=True).start()
    return tensors


def _timed_init(
    weights: Path, projections, config: SSLoRAConfig, cache_dir: str, drop_cache: bool, read: str
) -> dict:
    """Seconds to read the weights into a model skeleton (`read`: "load" = safetensors.load_file, all
    before the init; "mmap" = on first use, overlapping the init) and to initialise every layer."""
    from safetensors.torch import load_file

    if drop_cache:
        _drop_page_cache(weights)
    start = time.perf_counter()
    model = _Skeleton(projections)
    tensors = _mmap_tensors(weights) if read == "mmap" else load_file(weights)
    model.load_state_dict(tensors, strict=True, assign=True)
    read = time.perf_counter()
    wrapped = get_sslora_model(model, config, cache_dir=cache_dir)
    done = time.perf_counter()
    result = {"read_s": read - start, "init_s": done - read, "total_s": done - start,
              "layers": len(wrapped.sslora_layers()), "cache_hits": wrapped.init_cache.hits,
              "cache_misses": wrapped.init_cache.misses}
    del wrapped, model
    gc.collect()
    return result


def model_run(weights: Path, drop_cache: bool = True, read: str = "mmap") -> dict:
    projections = lm_projections()
    if not weights.is_file():
        print(f"writing random weights to {weights} (once, ~13 GB) ...", flush=True)
        start = time.perf_counter()
        write_random_weights(weights, projections)
        print(f"  written in {time.perf_counter() - start:.0f} s", flush=True)
    config = SSLoRAConfig(target_modules="qwen2_5_vl")  # the defaults: r = 32, N = 8, spectral init
    with tempfile.TemporaryDirectory(prefix="sslora-cache-", dir=weights.parent) as cache_dir:
        cold = _timed_init(weights, projections, config, cache_dir, drop_cache, read)
        print(json.dumps({"cold": cold}), flush=True)
        cached = _timed_init(weights, projections, config, cache_dir, drop_cache, read)
        print(json.dumps({"cached": cached}), flush=True)
    assert cold["layers"] == len(projections) and cached["cache_hits"] == len(projections), (cold, cached)
    return {
        "weights": str(weights), "weights_gb": weights.stat().st_size / 1e9, "dtype": "bfloat16",
        "layers": len(projections), "config": "r=32, N=8, init=spectral", "page_cache_dropped": drop_cache,
        "read": read,
        "cold": cold, "cached": cached, **_machine(),
    }


# ----------------------------------------------------------------------------------- output
def _print_rows(rows: list[dict], shapes: list[str]) -> dict:
    ours_total = sum(r["ours_s"] * r["per_model"] for r in rows)
    plain_total = sum(r["torch_svd_s"] * r["per_model"] for r in rows)
    summary = {"ours_model_s": ours_total, "torch_svd_model_s": plain_total, "speedup_model": plain_total / ours_total}
    print("| shape (out x in) | per 7B LM | ours s | torch.linalg.svd s | speed-up | cache read s | max rel. diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['shape']} | {r['per_model']} | {r['ours_s']:.2f} | {r['torch_svd_s']:.2f} | {r['speedup']:.1f}x | {r['cache_read_s']:.3f} | {r['max_rel_segment_diff']:.1e} |")
    if set(shapes) == set(QWEN_7B):
        print(f"| whole Qwen2.5-VL-7B LM (196 layers) | | {ours_total / 60:.1f} min | {plain_total / 60:.1f} min | {summary['speedup_model']:.1f}x | | |")
    return summary


def _print_stages(rows: list[dict]) -> None:
    names = [k for k in rows[0] if k not in ("shape", "per_model", "total", "total_cpu")]
    print("| shape | per 7B LM | " + " | ".join(names) + " | total s | cores busy |")
    print("|---|---:|" + "---:|" * (len(names) + 2))
    for r in rows:
        shares = " | ".join(f"{r[k]:.2f} ({100 * r[k] / r['total']:.0f}%)" for k in names)
        print(f"| {r['shape']} | {r['per_model']} | {shares} | {r['total']:.2f} | {r['total_cpu'] / r['total']:.1f} |")
    model = sum(r["total"] * r["per_model"] for r in rows)
    layers = sum(r["per_model"] for r in rows)
    print(f"sum over the LM's {layers} layers of these shapes: {model:.0f} s ({model / 60:.1f} min)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", nargs="+", default=list(QWEN_7B), choices=list(QWEN_7B))
    parser.add_argument("--stages", action="store_true", help="time each stage of exact_svd per shape")
    parser.add_argument("--model", action="store_true", help="time the whole 7B LM init end to end, reading included")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="LM weights (written if missing)")
    parser.add_argument("--keep-page-cache", action="store_true", help="do not evict the weights file from the page cache")
    parser.add_argument("--read", choices=["mmap", "load"], default="mmap",
                        help="mmap: weights read on first use, overlapping the init; load: safetensors.load_file first")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "init_speed.json"))
    args = parser.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    if args.model:
        results["model_7b"] = model_run(args.weights, drop_cache=not args.keep_page_cache, read=args.read)
        m = results["model_7b"]
        print(f"whole 7B LM ({m['layers']} layers): cold {m['cold']['total_s']:.0f} s (read {m['cold']['read_s']:.0f} s + "
              f"init {m['cold']['init_s']:.0f} s), cached re-init {m['cached']['total_s']:.0f} s")
    elif args.stages:
        rows = stages(args.shapes, args.repeats)
        _print_stages(rows)
        results["stages"] = {"repeats": args.repeats, "rows": rows, **_machine()}
    else:
        rows = run(args.shapes, args.repeats)
        results.update({"repeats": args.repeats, "rows": rows, "summary": _print_rows(rows, args.shapes)})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
