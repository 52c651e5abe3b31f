"""Exact spectral init: our selected-triplet solver vs plain torch.linalg.svd, on Qwen2.5-VL-7B shapes.

Both run in one process, interleaved, on the same random fp32 weights; medians over repeats. Also
reports the cache read time and the agreement of the selected factors with torch.linalg.svd.

    python benchmarks/init_speed.py                   # 3 repeats
    python benchmarks/init_speed.py --repeats 1 --shapes 3584x3584
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sslora.cache import SpectralCache
from sslora.spectral import exact_svd, select_indices

# (out, in) of the seven language-model projections of Qwen2.5-VL-7B, and how many per model.
QWEN_7B = {"3584x3584": ((3584, 3584), 56), "512x3584": ((512, 3584), 56), "18944x3584": ((18944, 3584), 56), "3584x18944": ((3584, 18944), 28)}


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", nargs="+", default=list(QWEN_7B), choices=list(QWEN_7B))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "init_speed.json"))
    args = parser.parse_args()
    rows = run(args.shapes, args.repeats)
    ours_total = sum(r["ours_s"] * r["per_model"] for r in rows)
    plain_total = sum(r["torch_svd_s"] * r["per_model"] for r in rows)
    summary = {"ours_model_s": ours_total, "torch_svd_model_s": plain_total, "speedup_model": plain_total / ours_total}
    print("| shape (out x in) | per 7B LM | ours s | torch.linalg.svd s | speed-up | cache read s | max rel. diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['shape']} | {r['per_model']} | {r['ours_s']:.2f} | {r['torch_svd_s']:.2f} | {r['speedup']:.1f}x | {r['cache_read_s']:.3f} | {r['max_rel_segment_diff']:.1e} |")
    if set(args.shapes) == set(QWEN_7B):
        print(f"| whole Qwen2.5-VL-7B LM (196 layers) | | {ours_total / 60:.1f} min | {plain_total / 60:.1f} min | {summary['speedup_model']:.1f}x | | |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"repeats": args.repeats, "rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
