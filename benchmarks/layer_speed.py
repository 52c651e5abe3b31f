"""Forward and forward+backward time of one adapted linear layer: SSLoRA vs PEFT LoRA vs the frozen base.

All variants run in one process, interleaved repeat by repeat, on the same input; we report medians
and ratios against PEFT LoRA r=32 measured in the same run.

    python benchmarks/layer_speed.py                       # fp32, all shapes; bf16 on the small shape
    python benchmarks/layer_speed.py --repeats 15 --dtypes fp32
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from sslora import SSLoRAConfig, get_sslora_model, reference_forward

SHAPES = [(576, 1536, 512), (3584, 3584, 2048), (18944, 3584, 1024)]  # (in, out, tokens)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _peft_lora(base: nn.Linear, r: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    holder = nn.Sequential(base)
    model = get_peft_model(holder, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["0"], init_lora_weights=True))
    with torch.no_grad():  # non-zero B so the timing is that of a trained adapter
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    return model


def build_variants(n_in: int, n_out: int, dtype: torch.dtype, r: int, cache_dir: str | None) -> dict:
    torch.manual_seed(0)
    weight = nn.Linear(n_in, n_out, bias=False).to(dtype)
    weight.requires_grad_(False)
    lora = _peft_lora(_clone_linear(weight), r)
    config = SSLoRAConfig(r=r, num_experts=8, top_k=2, target_modules=["0"], scaling=4.0, aux_loss_coef=0.01)
    ours = get_sslora_model(nn.Sequential(_clone_linear(weight)), config, cache_dir=cache_dir)
    layer = ours.sslora_layers()["0"]
    merged = get_sslora_model(nn.Sequential(_clone_linear(weight)), config, cache_dir=cache_dir)
    merged.merge_residual()
    for model in (lora, ours, merged):
        model.train()
    return {
        "frozen base": weight,
        "PEFT LoRA r=32": lora,
        "SSLoRA reference loop": lambda x: reference_forward(layer, x),
        "SSLoRA fast path": ours,
        "SSLoRA fast, residual merged": merged,
    }


def _clone_linear(linear: nn.Linear) -> nn.Linear:
    copy = nn.Linear(linear.in_features, linear.out_features, bias=False, dtype=linear.weight.dtype)
    copy.weight.data.copy_(linear.weight.data)
    copy.requires_grad_(False)
    return copy


def _time(fn, x: torch.Tensor, upstream: torch.Tensor, backward: bool) -> float:
    start = time.perf_counter()
    if backward:
        x.grad = None
        (fn(x) * upstream).sum().backward()
    else:
        with torch.no_grad():
            fn(x)
    return time.perf_counter() - start


def bench_shape(n_in, n_out, tokens, dtype_name, repeats, r, cache_dir) -> list[dict]:
    dtype = DTYPES[dtype_name]
    variants = build_variants(n_in, n_out, dtype, r, cache_dir)
    x = torch.randn(tokens, n_in, dtype=dtype, requires_grad=True)  # grad w.r.t. x: layers below need it
    upstream = torch.randn(tokens, n_out, dtype=dtype)
    times = {(name, mode): [] for name in variants for mode in ("fwd", "fwd+bwd")}
    for rep in range(repeats + 1):  # repeat 0 is warm-up
        for name, fn in variants.items():
            for mode in ("fwd", "fwd+bwd"):
                elapsed = _time(fn, x, upstream, backward=mode == "fwd+bwd")
                if rep:
                    times[(name, mode)].append(elapsed)
    rows = []
    for name in variants:
        row = {"shape": f"{n_in}->{n_out}, T={tokens}", "dtype": dtype_name, "variant": name}
        for mode in ("fwd", "fwd+bwd"):
            row[f"{mode}_ms"] = 1000 * statistics.median(times[(name, mode)])
            row[f"{mode}_vs_lora"] = row[f"{mode}_ms"] / (1000 * statistics.median(times[("PEFT LoRA r=32", mode)]))
            row[f"{mode}_vs_base"] = row[f"{mode}_ms"] / (1000 * statistics.median(times[("frozen base", mode)]))
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| shape | dtype | variant | fwd ms | fwd+bwd ms | fwd+bwd vs LoRA | fwd+bwd vs base |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['shape']} | {row['dtype']} | {row['variant']} | {row['fwd_ms']:.1f} | {row['fwd+bwd_ms']:.1f} "
            f"| {row['fwd+bwd_vs_lora']:.2f}x | {row['fwd+bwd_vs_base']:.2f}x |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--bf16-shapes", type=int, default=1, help="bf16 is emulated on CPUs without bf16 units: only the first K shapes")
    parser.add_argument("--r", type=int, default=32)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "layer_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    for dtype_name in args.dtypes:
        shapes = SHAPES if dtype_name == "fp32" else SHAPES[: args.bf16_shapes]
        for n_in, n_out, tokens in shapes:
            rows += bench_shape(n_in, n_out, tokens, dtype_name, args.repeats, args.r, args.cache_dir)
            print(markdown([r for r in rows if r["shape"] == rows[-1]["shape"] and r["dtype"] == dtype_name]), flush=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(), "repeats": args.repeats}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(markdown(rows))


if __name__ == "__main__":
    main()
