"""Helpers of the speed benchmarks: per-op profiles, process memory, machine facts.

Kept apart from ``model_speed.py`` (which builds the variants and times them) so that each stays short.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch


# ---------------------------------------------------------------------------------------- profiles
def profile_steps(steps: dict[str, Callable[[], object]], rounds: int, top: int = 15) -> dict:
    """torch.profiler over `rounds` calls of each step (after one warm-up call): self CPU time per op,
    so that one variant's extra time can be attributed to ops (router products, softmax/top-k, ...)."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for key, step in steps.items():
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(rounds):
                step()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) / 1e6 / rounds
        out[key] = {
            "step_s_profiled": total,
            "ops": [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6 / rounds, "calls": e.count // rounds}
                    for e in events[:top]],
        }
        print(f"  profile {key}: {total:.3f} s of ops per step", flush=True)
    return out


def profile_markdown(profiles: dict, names: dict[str, str], reference: str) -> str:
    """Each variant's top ops beside the same ops' self time per step in the reference variant."""
    lines = []
    ref = {o["op"]: o for o in profiles.get(reference, {}).get("ops", [])}
    for key, prof in profiles.items():
        if key == reference:
            continue
        lines += [f"**{names[key]}** vs {names[reference]}: {prof['step_s_profiled']:.3f} s vs "
                  f"{profiles[reference]['step_s_profiled']:.3f} s of ops per step", "",
                  "| op | self s/step | calls/step | reference s/step | reference calls |", "|---|---:|---:|---:|---:|"]
        for op in prof["ops"]:
            r = ref.get(op["op"], {})
            lines.append(f"| {op['op']} | {op['self_s']:.3f} | {op['calls']} | "
                         f"{r.get('self_s', 0):.3f} | {r.get('calls', 0)} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- memory
def proc_status_kb(field_name: str) -> int | None:
    """A field of /proc/self/status in kB (VmRSS, VmHWM), or None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def release_free_heap() -> None:
    """Hand memory freed during construction (SVD init, loading) back to the OS, so that the RSS
    before the first step is the live memory and the step's increase is not hidden by heap reuse."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------- runs
def rotated(keys: list[str], shift: int) -> list[str]:
    """keys started at position `shift` (build orders that differ between processes)."""
    shift %= len(keys)
    return keys[shift:] + keys[:shift]


def machine_info() -> dict:
    from init_speed import cpu_name  # the sibling benchmark script (this folder is on sys.path when run)

    return {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
