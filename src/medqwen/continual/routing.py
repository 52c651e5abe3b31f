"""Routing analysis: per task, the share of tokens each expert (a spectral segment, under the spectral init) receives, per layer.

The runner resets :meth:`sslora.SSLoRAModel.routing_stats` before scoring each task and stores the
per-layer ``fraction`` lists it returns (padding excluded; every token of the ranking forwards counts:
image, question and candidate answer). From them:

- :func:`routing_summary`: mean share per expert per task, each task's most used expert, and the
  Jensen-Shannon divergence (base 2, in [0, 1]) between two tasks' routing distributions, averaged
  over layers: ~0 means the tasks use the experts alike; the paper's claim that different tasks
  prefer different segments needs clearly positive values (compare with the divergence between two
  halves of one task's data if in doubt).
- :func:`plot_routing`: one heatmap (layer x expert, share of tokens) per task plus the mean share per
  expert per task.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from sslora.config import SSLoRAConfig

from .io import pyplot, save_figure

Routing = Mapping[str, Mapping[str, Sequence[float]]]  # task -> layer -> share per expert


def routing_shares(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, list[float]]:
    """``SSLoRAModel.routing_stats()`` -> {layer: share of routed tokens per expert}."""
    return {layer: [float(x) for x in values["fraction"]] for layer, values in stats.items()}


def share_array(routing: Routing, tasks: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(T, L, N) array of shares for the given tasks (layers in the order of the first task)."""
    missing = [t for t in tasks if t not in routing]
    if missing:
        raise ValueError(f"no routing statistics for task(s) {missing}")
    layers = list(routing[tasks[0]])
    for task in tasks:
        if list(routing[task]) != layers:
            raise ValueError(f"task {task!r} has routing for different layers than {tasks[0]!r}")
    return np.array([[routing[t][layer] for layer in layers] for t in tasks], dtype=float), layers


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (base 2) along the last axis; p and q are distributions."""
    p = p / np.clip(p.sum(-1, keepdims=True), 1e-12, None)
    q = q / np.clip(q.sum(-1, keepdims=True), 1e-12, None)
    m = (p + q) / 2

    def kl(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * np.log2(a / np.where(b > 0, b, 1.0)), 0.0)
        return terms.sum(-1)

    return (kl(p, m) + kl(q, m)) / 2


def routing_summary(routing: Routing, tasks: Sequence[str]) -> dict[str, Any]:
    shares, layers = share_array(routing, tasks)
    mean = shares.mean(axis=1)  # (T, N)
    pairs = {f"{a}|{b}": float(js_divergence(shares[i], shares[j]).mean())
             for (i, a), (j, b) in combinations(enumerate(tasks), 2)}
    num_experts = shares.shape[-1]
    uniform = np.full(num_experts, 1.0 / num_experts)
    return {
        "layers": len(layers),
        "experts": num_experts,
        "mean_share": {t: mean[i].round(4).tolist() for i, t in enumerate(tasks)},
        "top_expert": {t: int(mean[i].argmax()) for i, t in enumerate(tasks)},
        "js_between_tasks": pairs,
        "js_between_tasks_mean": float(np.mean(list(pairs.values()))) if pairs else None,
        "js_from_uniform": {t: float(js_divergence(shares[i], uniform).mean()) for i, t in enumerate(tasks)},
    }


def expert_axis_label(adapter: dict | None) -> str:
    """What an expert index stands for (from a method's adapter spec): a spectral segment only under the
    spectral init, SSLoRA's default."""
    init = (adapter or {}).get("init", SSLoRAConfig.init)  # an unset init is SSLoRA's default
    if init == "spectral":
        return "expert (spectral segment)"
    return f"expert ({init} init)"


def plot_routing(
    routing: Routing, tasks: Sequence[str], path: str | Path, title: str = "", expert_label: str = "expert"
) -> Path:
    plt = pyplot()

    shares, layers = share_array(routing, tasks)
    T, L, N = shares.shape
    fig, axes = plt.subplots(1, T + 1, figsize=(3.2 * (T + 1), max(4.0, min(12.0, 0.05 * L + 3))),
                             gridspec_kw={"width_ratios": [1] * T + [1.3]}, layout="constrained")
    vmax = float(shares.max()) if shares.size else 1.0
    for i, task in enumerate(tasks):
        ax = axes[i]
        image = ax.imshow(shares[i], aspect="auto", cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel(expert_label)
        ax.set_xticks(range(N))
        if i == 0:
            ax.set_ylabel(f"adapted layer (model order, {L})")
        step = max(1, L // 12)
        ax.set_yticks(range(0, L, step))
        ax.set_yticklabels([str(k) for k in range(0, L, step)], fontsize=7)
    fig.colorbar(image, ax=axes[T - 1], shrink=0.8, label="share of tokens")
    ax = axes[T]
    width = 0.8 / T
    for i, task in enumerate(tasks):
        ax.bar(np.arange(N) + (i - (T - 1) / 2) * width, shares[i].mean(axis=0), width=width, label=task)
    ax.axhline(1.0 / N, color="grey", linestyle="--", linewidth=0.8, label="uniform")
    ax.set_xticks(range(N))
    ax.set_xlabel("expert")
    ax.set_ylabel("mean share over layers")
    ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)
