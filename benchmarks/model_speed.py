"""Whole-model speed of SSLoRA vs PEFT LoRA: training steps, peak training memory and generation.

Two models, four variants each:

* models: MedQwen-mini (``load_model("medqwen-mini")``; adapters on the seven projections of its
  SmolLM2-135M language model, preset ``llama``), and a stack of 2 Qwen2 decoder blocks at
  Qwen2.5-VL-7B shapes (hidden 3584, MLP 18944, 28 heads, 4 KV heads; random fp32 weights, vocab
  1024), so that the 7B ratios are measured, not assumed;
* variants: no adapter / PEFT LoRA r=32 (alpha 64) / our LoRA (SSLoRA with N=1, k=1, init zero,
  s=2, no balance loss: the same maths as PEFT's) / SSLoRA 2-of-8 r=32 (spectral init, optimal
  scaling, balance loss 0.01). "No adapter" trains the projector (mini) or the token embeddings
  (stack), so its backward also crosses every layer; the adapter variants train the adapter only.

Measured:

(a) training step = zero_grad + forward + backward + AdamW step (mini: a batch of VQA-style samples
    with cached-size image features; stack: random tokens, labels = inputs), median over rounds;
    peak training memory = peak RSS of a subprocess per variant during 2 training steps, measured
    after the model is built (the kernel's high-water mark is reset through /proc/self/clear_refs;
    glibc returns large blocks to the OS at once, MALLOC_MMAP_THRESHOLD_=64 KiB, and the heap is
    trimmed before the first step, so RSS follows live tensors), reported as the peak and as the
    increase over the RSS before the first step (activations, gradients, optimizer state);
(b) generation, greedy, KV cache on, exactly 16 new tokens (``min_new_tokens``: EOS cannot end a
    variant early), batch 1 and 16, the same prompts for every variant: tokens/s over the whole call
    and time to first token (the same call with 1 new token). Mini prompts go through MedQwen-mini's
    own generate path (build_inputs -> embed_inputs -> lm.generate, as ``MedQwenMini.generate``)
    with image features in place of images (image encoding is adapter-independent).

Every variant of a model lives in one process; rounds are interleaved (round 1: variant 1, 2, 3, 4;
round 2: ...) and medians reported, with ratios against PEFT LoRA from the same run. The thread
count, CPU and load averages are printed and saved: figures taken while other jobs share the cores
are not worth comparing across runs.

    python benchmarks/model_speed.py                    # everything; writes benchmarks/results/model_speed.json
    python benchmarks/model_speed.py --quick            # smoke run: tiny batches, 1 round, a small stack
    python benchmarks/model_speed.py --models mini --parts train generate
    python benchmarks/model_speed.py --models mini --parts profile   # where a training step's time goes, per op
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling helpers when imported from elsewhere
from speed_models import VARIANTS, Variant, build_mini, build_stack, mini_generate, stack_generate, train_batch  # noqa: E402
from speed_tools import machine_info, proc_status_kb, profile_markdown, profile_steps, release_free_heap, rotated  # noqa: E402

CHILD_TAG = "MODEL_SPEED_CHILD "


# ---------------------------------------------------------------------------------------- timing
def train_step(variant: Variant, batch: dict) -> float:
    start = time.perf_counter()
    variant.optimizer.zero_grad(set_to_none=True)
    loss = variant.runner(**batch).loss
    loss.backward()
    variant.optimizer.step()
    return time.perf_counter() - start


def time_training(variants: dict[str, Variant], batch: dict, rounds: int) -> dict:
    for v in variants.values():
        v.runner.train()
        train_step(v, batch)  # warm-up: allocates the optimizer state
    times = {k: [] for k in variants}
    for _ in range(rounds):
        for k, v in variants.items():
            times[k].append(train_step(v, batch))
    return {k: {"step_s": statistics.median(t), "all_s": t} for k, t in times.items()}


def profile_training(variants: dict[str, Variant], batch: dict, rounds: int, top: int = 15) -> dict:
    """Self CPU time per op of each variant's training step (speed_tools.profile_steps)."""
    for variant in variants.values():
        variant.runner.train()
    return profile_steps({key: (lambda v=v: train_step(v, batch)) for key, v in variants.items()}, rounds, top)


def time_generation(variants: dict[str, Variant], generate, batches: list[int], new_tokens: int, rounds: int) -> dict:
    for v in variants.values():
        v.runner.eval()
        for b in batches:
            generate(v.model, b, 2)  # warm-up
    raw = {(k, b, part): [] for k in variants for b in batches for part in ("ttft", "total")}
    for _ in range(rounds):
        for k, v in variants.items():
            for b in batches:
                start = time.perf_counter()
                generate(v.model, b, 1)
                raw[(k, b, "ttft")].append(time.perf_counter() - start)
                start = time.perf_counter()
                produced = generate(v.model, b, new_tokens)
                raw[(k, b, "total")].append(time.perf_counter() - start)
                if produced != new_tokens:
                    raise RuntimeError(f"{k}: generated {produced} tokens, expected {new_tokens}")
    out = {}
    for k in variants:
        for b in batches:
            ttft, total = statistics.median(raw[(k, b, "ttft")]), statistics.median(raw[(k, b, "total")])
            out.setdefault(k, {})[f"batch{b}"] = {
                "tokens_per_s": b * new_tokens / total,
                "decode_tokens_per_s": b * (new_tokens - 1) / max(total - ttft, 1e-9),
                "ttft_s": ttft,
                "total_s": total,
                "ttft_all_s": raw[(k, b, "ttft")],
                "total_all_s": raw[(k, b, "total")],
            }
    return out


# ---------------------------------------------------------------------------------------- memory
def child_memory(model_name: str, key: str, args) -> dict:
    """In a fresh process: build the variant, then peak RSS over 2 training steps."""
    variant = build_mini(key) if model_name == "mini" else build_stack(key, args.quick)
    batch = train_batch(model_name, variant.model, args)
    variant.runner.train()
    with torch.no_grad():  # weights loaded from a file mapping become resident when first read: read
        for tensor in [*variant.runner.parameters(), *variant.runner.buffers()]:  # them all now, so the
            tensor.sum()  # step's increase holds no weight pages (SSLoRA's init hashes them anyway)
    gc.collect()
    release_free_heap()
    before = proc_status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        method = "VmHWM after clear_refs reset"
    except OSError:
        method = "VmHWM since process start (clear_refs unavailable: includes model construction)"
    for _ in range(2):
        train_step(variant, batch)
    peak = proc_status_kb("VmHWM")
    if before is None or peak is None:
        return {"method": "unavailable (no /proc)"}
    return {"peak_rss_mb": peak / 1024, "step_increase_mb": (peak - before) / 1024, "rss_before_mb": before / 1024, "method": method}


def measure_memory(model_name: str, keys: list[str], args) -> dict:
    results = {}
    for key in keys:
        cmd = [sys.executable, __file__, "--child-memory", f"{model_name}:{key}", "--batch", str(args.batch), "--seq-len", str(args.seq_len)]
        cmd += ["--quick"] if args.quick else []
        # allocations >= 64 KiB via mmap: freed tensors leave the RSS at once, so RSS follows live memory
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith(CHILD_TAG)]
        if proc.returncode or not lines:
            raise RuntimeError(f"memory child {model_name}:{key} failed:\n{proc.stderr[-3000:]}")
        results[key] = json.loads(lines[-1][len(CHILD_TAG):])
        print(f"  memory {model_name} {VARIANTS[key]}: {results[key]}", flush=True)
    return results


# ---------------------------------------------------------------------------------------- processes
def training_over_processes(model_name: str, keys: list[str], args) -> dict:
    """Training steps timed in `args.processes` fresh processes, each building every variant (in a
    rotated order) and running interleaved rounds. The same variant's median moved by ~10% from one
    process to the next here (allocation and memory placement), more than the ratios being compared:
    medians pooled over processes, with each process's ratio to PEFT LoRA kept to show the spread."""
    pooled = {k: [] for k in keys}
    per_process = []
    for index in range(args.processes):
        print(f"[{model_name}] training steps, process {index + 1} of {args.processes}", flush=True)
        cmd = [sys.executable, __file__, "--models", model_name, "--parts", "train", "--rounds", str(args.rounds),
               "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--child-rotation", str(index),
               "--out", os.devnull] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith(CHILD_TAG)]
        if proc.returncode or not lines:
            raise RuntimeError(f"training child {index} failed:\n{proc.stderr[-3000:]}")
        times = json.loads(lines[-1][len(CHILD_TAG):])
        per_process.append({k: times[k]["step_s"] / times["peft_lora"]["step_s"] for k in keys})
        for k in keys:
            pooled[k] += times[k]["all_s"]
    out = {k: {"step_s": statistics.median(t), "all_s": t,
               "ratio_to_peft_lora_per_process": [p[k] for p in per_process]} for k, t in pooled.items()}
    return out


# ---------------------------------------------------------------------------------------- report
def _ratio(value, reference) -> str:
    return f"{value / reference:.2f}x" if value is not None and reference else "—"


def markdown(name: str, result: dict, batches: list[int]) -> str:
    train, memory, gen = result.get("train", {}), result.get("memory", {}), result.get("generate", {})
    head = ["variant", "train step s", "vs LoRA", "peak MB", "step +MB", "+MB vs LoRA"]
    for b in batches:
        head += [f"gen b{b} tok/s", "vs LoRA", f"TTFT b{b} s"]
    lines = [f"**{name}**", "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    ref_train = train.get("peft_lora", {}).get("step_s")
    ref_mem = memory.get("peft_lora", {}).get("step_increase_mb")
    for key, label in VARIANTS.items():
        step = train.get(key, {}).get("step_s")
        mem = memory.get(key, {})
        cells = [
            label,
            f"{step:.3f}" if step else "—",
            _ratio(step, ref_train),
            f"{mem['peak_rss_mb']:.0f}" if "peak_rss_mb" in mem else "—",
            f"{mem['step_increase_mb']:.0f}" if "step_increase_mb" in mem else "—",
            _ratio(mem.get("step_increase_mb"), ref_mem),
        ]
        for b in batches:
            g = gen.get(key, {}).get(f"batch{b}", {})
            ref = gen.get("peft_lora", {}).get(f"batch{b}", {}).get("tokens_per_s")
            tps = g.get("tokens_per_s")
            cells += [f"{tps:.1f}" if tps else "—", _ratio(tps, ref), f"{g['ttft_s']:.3f}" if g else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_model(model_name: str, args) -> dict:
    keys = list(VARIANTS)
    result: dict = {}
    if "memory" in args.parts:
        print(f"[{model_name}] peak training memory, one subprocess per variant", flush=True)
        result["memory"] = measure_memory(model_name, keys, args)
    if not ({"train", "generate", "profile"} & set(args.parts)):
        return result
    if "train" in args.parts and args.processes > 1:
        result["train"] = training_over_processes(model_name, keys, args)
        if not ({"generate", "profile"} & set(args.parts)):
            return result
    print(f"[{model_name}] building {len(keys)} variants", flush=True)
    variants: dict[str, Variant] = {}
    # the stack's variants read the weights of "none" (never modified), so it is built first
    order = rotated(keys, args.child_rotation or 0) if model_name == "mini" else keys[:1] + rotated(keys[1:], args.child_rotation or 0)
    for key in order:
        if model_name == "mini":
            variants[key] = build_mini(key)
        else:
            # fold_residual writes its base weights: that variant gets its own copy
            shared = variants[keys[0]].model if variants and key != "sslora_folded" else None
            variants[key] = build_stack(key, args.quick, shared)
    if "train" in args.parts and args.processes <= 1:
        print(f"[{model_name}] training steps, {args.rounds} interleaved rounds", flush=True)
        batch = train_batch(model_name, variants["none"].model, args)
        result["train"] = time_training(variants, batch, args.rounds)
        result["train_inputs"] = {"shape": list(batch["input_ids"].shape)}
        if args.child_rotation is not None:
            print(CHILD_TAG + json.dumps(result["train"]), flush=True)
    if "generate" in args.parts:
        print(f"[{model_name}] generation, {args.rounds} interleaved rounds", flush=True)
        generate = mini_generate if model_name == "mini" else stack_generate
        result["generate"] = time_generation(variants, generate, args.gen_batches, args.new_tokens, args.rounds)
    if "profile" in args.parts:
        print(f"[{model_name}] profiling training steps", flush=True)
        batch = train_batch(model_name, variants["none"].model, args)
        result["profile"] = profile_training(variants, batch, min(args.rounds, 3))
        print(profile_markdown(result["profile"], VARIANTS, "peft_lora"), flush=True)
    del variants
    gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 2, 1 round, 4 new tokens, gen batches 1 and 2, a small stack")
    parser.add_argument("--models", nargs="+", default=["mini", "stack7b"], choices=["mini", "stack7b"])
    parser.add_argument("--parts", nargs="+", default=["train", "memory", "generate"], choices=["train", "memory", "generate", "profile"])
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per measurement (default 5; --quick 1)")
    parser.add_argument("--batch", type=int, default=None, help="MedQwen-mini training batch (default 8; --quick 2)")
    parser.add_argument("--seq-len", type=int, default=None, help="7B-stack training tokens (batch 1; default 256; --quick 32)")
    parser.add_argument("--gen-batches", type=int, nargs="+", default=None, help="default 1 16; --quick 1 2")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 16; --quick 4")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "model_speed.json"))
    parser.add_argument("--processes", type=int, default=1,
                        help="time training in this many fresh processes (variants built in rotated order) and pool the rounds")
    parser.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-rotation", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 5)
    args.batch = args.batch or (2 if quick else 8)
    args.seq_len = args.seq_len or (32 if quick else 256)
    args.gen_batches = args.gen_batches or ([1, 2] if quick else [1, 16])
    args.new_tokens = args.new_tokens or (4 if quick else 16)

    if args.child_memory:
        model_name, key = args.child_memory.split(":")
        print(CHILD_TAG + json.dumps(child_memory(model_name, key, args)), flush=True)
        return

    machine = machine_info()
    print(f"machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, torch {machine['torch']} "
          f"with {machine['torch_threads']} threads (OMP_NUM_THREADS={machine['OMP_NUM_THREADS']}), "
          f"load average {machine['loadavg_start']}", flush=True)
    settings = {k: getattr(args, k) for k in ("quick", "models", "parts", "rounds", "processes", "batch", "seq_len", "gen_batches", "new_tokens")}
    results = {"machine": machine, "settings": settings, "variants": VARIANTS}
    tables = []
    for model_name in args.models:
        results[model_name] = run_model(model_name, args)
        title = "MedQwen-mini" if model_name == "mini" else ("2-block stack at " + ("small (--quick)" if quick else "Qwen2.5-VL-7B") + " shapes")
        if {"train", "memory", "generate"} & set(results[model_name]):
            tables.append(markdown(title, results[model_name], args.gen_batches))
            print(tables[-1], flush=True)
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\n{torch.get_num_threads()} threads, {machine['cpu']}; load average start {machine['loadavg_start']}, "
          f"end {machine['loadavg_end']}; medians of {args.rounds} interleaved rounds; memory: "
          f"peak RSS of one subprocess per variant ({_memory_method(results)})\n")
    print("\n\n".join(tables))
    print(f"\nwrote {args.out}")


def _memory_method(results: dict) -> str:
    for model_name in ("mini", "stack7b"):
        for value in results.get(model_name, {}).get("memory", {}).values():
            return value.get("method", "?")
    return "not measured"


if __name__ == "__main__":
    main()
