"""A run's results from its per-row files: JSON, a Markdown table and PNG plots (heatmap of R, lines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .io import pyplot, save_figure, write_json, write_text
from .metrics import summarize


def row_labels(tasks: Sequence[str]) -> list[str]:
    return ["start"] + [f"after {t}" for t in tasks]


def build_results(run: dict[str, Any], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """run: {sequence, method, seed, tasks: [{name, scorer, ...}], ...}; rows: the T + 1 row files in order."""
    names = [t["name"] for t in run["tasks"]]
    R = [[row["scores"][name]["score"] for name in names] for row in rows]
    trained = [row["train"] for row in rows[1:]]
    s_per_step = [t["s_per_step"] for t in trained if t.get("s_per_step") is not None]
    blank_own = {name: rows[j + 1].get("blank", {}).get(name, {}).get("score") for j, name in enumerate(names)}
    blank_start = {name: rows[0].get("blank", {}).get(name, {}).get("score") for name in names}
    metrics = summarize(R, names)
    # the same matrix with each task's answer prior divided out (closed_rank rows written since 2026-12-06 20:00)
    R_batch = [[row["scores"][name].get("batch_calibrated") for name in names] for row in rows]
    if any(v is None for r in R_batch for v in r):
        R_batch = None
    for j, name in enumerate(names):
        metrics["per_task"][name]["blank_after_own_training"] = blank_own[name]
        metrics["per_task"][name]["blank_start"] = blank_start[name]
    return {
        **run,
        "R": R,
        "R_rows": row_labels(names),
        "blank_own": blank_own,
        "R_gold_logprob": [[row["scores"][name].get("gold_logprob") for name in names] for row in rows],  # closed_rank tasks
        # per cell, whether a lost score is a moved answer prior (one answer given to most questions) or lost image
        # evidence (the candidates' likelihoods no longer rank the images: rank AUC towards 0.5); closed_rank tasks
        "R_rank_auc": [[row["scores"][name].get("rank_auc") for name in names] for row in rows],
        "R_pred_share": [[row["scores"][name].get("pred_share") for name in names] for row in rows],
        "metrics": metrics,
        **({"R_batch_calibrated": R_batch, "metrics_batch_calibrated": {
            k: v for k, v in summarize(R_batch, names).items() if k in ("forgetting", "final_avg", "bwt")}} if R_batch else {}),
        "trainable_params": trained[0].get("trainable_params") if trained else None,
        "s_per_step": sorted(s_per_step)[len(s_per_step) // 2] if s_per_step else None,  # median over tasks
        "train": {name: t for name, t in zip(names, trained)},
        "eval_seconds": sum(sum(s["seconds"] for s in row["scores"].values()) for row in rows),
    }


def pct(value: float | None) -> str:
    """A share as a percentage with one decimal; None as a dash."""
    return "—" if value is None else f"{100 * value:.1f}"


def markdown(results: dict[str, Any]) -> str:
    names = [t["name"] for t in results["tasks"]]
    m = results["metrics"]
    lines = [
        f"# Continual run: {results['sequence']} — method {results['method']['name']}, seed {results['seed']}",
        "",
        "Scores in % (" + "; ".join(f"{t['name']}: {t['scorer']}, n={t['n_eval']}" for t in results["tasks"]) + ").",
        "closed_rank = the most likely candidate answer (likelihood ranking); vqa:* = greedy generation.",
        "",
        "| model \\ task | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for label, row in zip(results["R_rows"], results["R"]):
        lines.append(f"| {label} | " + " | ".join(pct(v) for v in row) + " |")
    lines.append("| blank image, after own training | " + " | ".join(pct(results["blank_own"].get(n)) for n in names) + " |")
    lines += [
        "",
        "| task | start | after own training | blank image | best earlier | final | relative forgetting |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        p = m["per_task"][name]
        lines.append(f"| {name} | {pct(p['before'])} | {pct(p['after_own_training'])} | {pct(p['blank_after_own_training'])} | "
                     f"{pct(p['best_earlier'])} | {pct(p['final'])} | {pct(p['relative_forgetting'])} |")
    params = results.get("trainable_params")
    sps = results.get("s_per_step")
    lines += [
        "",
        f"- mean relative forgetting (tasks 1..T-1): {pct(m['forgetting'])}%",
        f"- final average accuracy: {pct(m['final_avg'])}%; learning accuracy: {pct(m['learning_acc'])}%",
        f"- BWT: {pct(m['bwt'])} points; FWT (vs the starting model): {pct(m['fwt'])} points",
        f"- trainable parameters: {params:,}" if params is not None else "- trainable parameters: —",
        f"- s/step (median over tasks): {sps:.2f}" if sps is not None else "- s/step: —",
        "",
    ]
    return "\n".join(lines)


def plot_matrix(results: dict[str, Any], path: str | Path) -> Path:
    plt = pyplot()

    names = [t["name"] for t in results["tasks"]]
    R = [[100 * v for v in row] for row in results["R"]]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2.5, 0.6 * len(R) + 1.5))
    image = ax.imshow(R, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i, row in enumerate(R):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", color="white" if value < 60 else "black", fontsize=9)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_yticks(range(len(R)), results["R_rows"])
    ax.set_xlabel("evaluated task")
    ax.set_title(f"R (%): {results['method']['name']}, seed {results['seed']}", fontsize=10)
    fig.colorbar(image, ax=ax, label="score %")
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def plot_lines(results: dict[str, Any], path: str | Path) -> Path:
    plt = pyplot()

    names = [t["name"] for t in results["tasks"]]
    fig, ax = plt.subplots(figsize=(1.5 * len(names) + 3.5, 3.8))
    xs = list(range(len(results["R"])))
    for j, name in enumerate(names):
        line, = ax.plot(xs, [100 * row[j] for row in results["R"]], marker="o", label=name)
        blank = results["blank_own"].get(name)
        if blank is not None:
            ax.plot([j + 1], [100 * blank], marker="x", markersize=9, color=line.get_color(), linestyle="none")
    ax.plot([], [], marker="x", color="grey", linestyle="none", label="blank image (after own training)")
    ax.set_xticks(xs, results["R_rows"], rotation=15)
    ax.set_ylabel("score %")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"each task across the sequence: {results['method']['name']}, seed {results['seed']}", fontsize=10)
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def write_report(results: dict[str, Any], out: str | Path) -> dict[str, Path]:
    out = Path(out)
    written = {  # results.json last: its presence means the run is complete
        "heatmap": plot_matrix(results, out / "R_heatmap.png"),
        "lines": plot_lines(results, out / "R_lines.png"),
        "markdown": write_text(out / "results.md", markdown(results)),
    }
    written["json"] = write_json(out / "results.json", results)
    return written
