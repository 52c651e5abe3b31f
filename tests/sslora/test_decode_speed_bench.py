"""benchmarks/decode_speed.py at a toy shape: every path it times computes the same layer output."""

import importlib.util
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("decode_speed", REPO / "benchmarks" / "decode_speed.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_timed_sslora_paths_agree_and_rows_have_ratios(tmp_path):
    variants = bench.build_variants(64, 96, r=8, cache_dir=str(tmp_path), compile_=False)
    x = torch.randn(3, 64)
    with torch.no_grad():
        dense = variants["SSLoRA dense (default)"](x)
        for name in ("SSLoRA gather k", "SSLoRA fold_residual"):
            torch.testing.assert_close(variants[name](x), dense, atol=1e-5, rtol=1e-5)
    rows = bench.bench(64, 96, 3, variants, repeats=1, calls=1)
    assert {r["variant"] for r in rows} == set(variants)
    assert next(r for r in rows if r["variant"] == "PEFT LoRA r=32")["vs_lora"] == 1.0
    assert "| 64->96 | 3 | SSLoRA gather k |" in bench.markdown(rows)
