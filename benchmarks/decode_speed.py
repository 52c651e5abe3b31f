"""Decoding-size calls of one adapted layer (eval, no grad, 1 or 16 tokens): which SSLoRA path is fastest.

Variants, all in one process, interleaved repeat by repeat, medians, ratios against PEFT LoRA r=32
measured in the same run: the frozen base; PEFT LoRA; SSLoRA 2-of-8 r=32 on its dense path (all N
experts as one rank-r matmul, gates zero off the top-k: the default); the same with the k chosen
experts' rows gathered per token (`layer.gather_max_tokens`, issue 8's alternative); with
`fold_residual`; and, if this machine can compile, `torch.compile` of the dense path. Each sample
times `--calls` calls in a row (one call is tens of microseconds).

    python benchmarks/decode_speed.py                 # results/decode_speed.json + a table
    python benchmarks/decode_speed.py --quick         # smoke run: small shapes, few repeats
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

from sslora import SSLoRAConfig, get_sslora_model

SHAPES = [(576, 576), (576, 1536), (3584, 3584), (3584, 18944)]  # (in, out): MedQwen-mini and 7B projections
QUICK_SHAPES = [(64, 96)]
TOKENS = [1, 16]


def _linear(n_in: int, n_out: int) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(n_in, n_out, bias=False)
    layer.requires_grad_(False)
    return layer


def _peft_lora(n_in: int, n_out: int, r: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(nn.Sequential(_linear(n_in, n_out)), LoraConfig(r=r, lora_alpha=2 * r, target_modules=["0"]))
    with torch.no_grad():  # a trained adapter's B is not zero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    return model.eval()


def _sslora(n_in: int, n_out: int, r: int, cache_dir: str | None, **config) -> nn.Module:
    config = SSLoRAConfig(r=r, num_experts=8, top_k=2, target_modules=["0"], **config)
    return get_sslora_model(nn.Sequential(_linear(n_in, n_out)), config, cache_dir=cache_dir).eval()


def build_variants(n_in: int, n_out: int, r: int, cache_dir: str | None, compile_: bool) -> dict:
    gather = _sslora(n_in, n_out, r, cache_dir)
    for layer in gather.sslora_layers().values():
        layer.gather_max_tokens = 10**9
    variants = {
        "frozen base": _linear(n_in, n_out),
        "PEFT LoRA r=32": _peft_lora(n_in, n_out, r),
        "SSLoRA dense (default)": _sslora(n_in, n_out, r, cache_dir),
        "SSLoRA gather k": gather,
        "SSLoRA fold_residual": _sslora(n_in, n_out, r, cache_dir, fold_residual=True),
    }
    if compile_:
        variants["SSLoRA dense, torch.compile"] = torch.compile(_sslora(n_in, n_out, r, cache_dir), dynamic=False)
    return variants


def _sample(fn, x: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn(x)
    return (time.perf_counter() - start) / calls


@torch.no_grad()
def bench(n_in: int, n_out: int, tokens: int, variants: dict, repeats: int, calls: int) -> list[dict]:
    x = torch.randn(tokens, n_in, generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(repeats + 1):  # repeat 0 warms up (and compiles)
        for name, fn in variants.items():
            elapsed = _sample(fn, x, calls)
            if rep:
                times[name].append(elapsed)
    lora = statistics.median(times["PEFT LoRA r=32"])
    return [{"shape": f"{n_in}->{n_out}", "tokens": tokens, "variant": name, "us": 1e6 * statistics.median(t),
             "vs_lora": statistics.median(t) / lora} for name, t in times.items()]


def markdown(rows: list[dict]) -> str:
    lines = ["| shape | tokens | variant | us per call | vs PEFT LoRA |", "|---|---:|---|---:|---:|"]
    lines += [f"| {r['shape']} | {r['tokens']} | {r['variant']} | {r['us']:.0f} | {r['vs_lora']:.2f}x |" for r in rows]
    return "\n".join(lines)


def _can_compile() -> str | None:
    """None if torch.compile works here, else why not (it needs a C++ compiler on CPU)."""
    try:
        torch.compile(nn.Linear(4, 4))(torch.randn(2, 4))
        return None
    except Exception as err:  # noqa: BLE001 - any backend failure means: measure without it
        return f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one small shape, 2 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="samples per variant (default 15; --quick 2)")
    parser.add_argument("--calls", type=int, default=None, help="calls per sample (default 50; --quick 3)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--r", type=int, default=32)
    parser.add_argument("--cache-dir", default=None, help="SVD cache (default $SSLORA_CACHE or ~/.cache/sslora)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "decode_speed.json"))
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 15)
    calls = args.calls or (3 if args.quick else 50)
    compile_error = "--no-compile" if args.no_compile else _can_compile()
    rows = []
    for n_in, n_out in QUICK_SHAPES if args.quick else SHAPES:
        variants = build_variants(n_in, n_out, args.r, args.cache_dir, compile_error is None)
        for tokens in TOKENS:
            rows += bench(n_in, n_out, tokens, variants, repeats, calls)
            print(markdown([r for r in rows if r["shape"] == f"{n_in}->{n_out}" and r["tokens"] == tokens]), flush=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "repeats": repeats, "calls_per_sample": calls, "quick": args.quick,
            "torch_compile": "measured" if compile_error is None else f"not measured ({compile_error})"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(markdown(rows))
    print(f"torch.compile: {meta['torch_compile']}")


if __name__ == "__main__":
    main()
