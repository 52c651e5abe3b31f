"""Several continual runs summarised: per method mean ± std over seeds, one row per run, the ablation table,
a bar chart. The input is the aggregate a grid builds from runs' results.json (see
benchmarks/continual/grid.py): {sequence, scorers, <method>: summarize_method(...), ablations: {...}}.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

from .io import pyplot, save_figure, write_json, write_text
from .metrics import mean_std
from .report import pct

SEED_MARKERS = ("o", "^", "s", "D", "v")
# An ablation layout: sections of (title, column headings, rows of (label, one method name per column)).
AblationLayout = Sequence[tuple[str, Sequence[str], Sequence[tuple[str, Sequence[str]]]]]


def summarize_method(runs: dict[int, dict], planned: list[int]) -> dict:
    """runs: seed -> that run's results.json; planned: the seeds the grid plans. Mean and sample std over the
    seeds of each metric, the per-task means, and each run's R and metrics (the figures the tables need)."""
    seeds = sorted(runs)

    def metric(key: str) -> list:
        return [runs[s]["metrics"][key] for s in seeds]

    out = {"description": runs[seeds[0]]["method"].get("description", ""), "seeds": seeds, "seeds_planned": planned,
           "complete": set(planned) <= set(seeds)}
    for key in ("forgetting", "final_avg", "bwt", "fwt", "learning_acc", "absolute_forgetting"):
        out[f"{key}_mean"], out[f"{key}_std"] = mean_std(metric(key))
    out["trainable_params"] = runs[seeds[0]]["trainable_params"]
    out["s_per_step"] = mean_std([runs[s]["s_per_step"] for s in seeds])[0]
    tasks = [t["name"] for t in runs[seeds[0]]["tasks"]]
    out["per_task"] = {
        task: {f"{key}_mean": mean_std([runs[s]["metrics"]["per_task"][task][key] for s in seeds])[0]
               for key in ("before", "after_own_training", "blank_after_own_training", "best_earlier", "final", "relative_forgetting")}
        for task in tasks
    }
    out["runs"] = {str(s): {"R": runs[s]["R"], "blank_own": runs[s]["blank_own"], "R_gold_logprob": runs[s].get("R_gold_logprob"),
                            "metrics": {k: runs[s]["metrics"][k] for k in ("forgetting", "final_avg", "bwt", "fwt", "learning_acc")},
                            "metrics_batch_calibrated": runs[s].get("metrics_batch_calibrated"),
                            "s_per_step": runs[s]["s_per_step"], "dir": runs[s].get("output_dir"),
                            "start_model": runs[s]["model"], "start_model_sha256": runs[s].get("model_sha256")} for s in seeds}
    return out


def build_of(run: dict) -> str:
    """A run's recipe build: the first 8 hex digits of its start model's sha256; "first" for runs from before
    fingerprints were kept."""
    return (run.get("start_model_sha256") or "first")[:8]


def pm(entry: dict, key: str) -> str:
    """mean ± std in % points."""
    std = entry.get(f"{key}_std")
    return pct(entry.get(f"{key}_mean")) + ("" if std is None else f" ± {100 * std:.1f}")


def _is_method(value) -> bool:
    """A method's summary (the aggregate also holds the sequence, notes, ...)."""
    return isinstance(value, dict) and "seeds" in value


def _methods(mapping: dict) -> list[tuple[str, dict]]:
    return [(k, v) for k, v in mapping.items() if _is_method(v)]


def method_entries(results: dict) -> list[tuple[str, dict]]:
    """The methods, then the ablations."""
    return _methods(results) + _methods(results.get("ablations", {}))


def markdown(results: dict) -> str:
    tasks = [t["name"] for t in results["sequence"]["tasks"]]
    lines = [f"Sequence {results['sequence']['name']}: " + " -> ".join(f"{t} ({results['scorers'][t]})" for t in tasks),
             "", "| method | seeds | rel. forgetting % | final avg % | BWT (points) | FWT | " +
             " | ".join(f"{t}: own / blank / final" for t in tasks) + " | trainable params | s/step |",
             "|---|---|---:|---:|---:|---:|" + "---:|" * len(tasks) + "---:|---:|"]
    for name, m in method_entries(results):
        per = " | ".join(f"{pct(m['per_task'][t]['after_own_training_mean'])} / {pct(m['per_task'][t]['blank_after_own_training_mean'])}"
                         f" / {pct(m['per_task'][t]['final_mean'])}" for t in tasks)
        params = f"{m['trainable_params']:,}" if m.get("trainable_params") is not None else "—"
        sps = f"{m['s_per_step']:.2f}" if m.get("s_per_step") is not None else "—"
        lines.append(f"| {name} | {','.join(map(str, m['seeds']))} | {pm(m, 'forgetting')} | {pm(m, 'final_avg')} | "
                     f"{pm(m, 'bwt')} | {pct(m.get('fwt_mean'))} | {per} | {params} | {sps} |")
    lines += ["", "Each run (build: the first 8 hex digits of the start model's sha256; runs without one started from "
              "the recipe's first build, lost before fingerprints were kept):", ""]
    return "\n".join(lines + run_rows(results, tasks)) + "\n"


def run_rows(results: dict, tasks: list[str]) -> list[str]:
    """One Markdown row per (method, seed): own / final score per task, the last task's blank control, the metrics."""
    header = " | ".join(f"{t}: own / final" for t in tasks[:-1]) + f" | {tasks[-1]}: own (blank)"
    lines = [f"| method | seed | build | {header} | rel. forgetting % | final avg % | BWT (points) | batch-calibrated: forgetting % / final avg % |",
             "|---|---:|---|" + "---:|" * (len(tasks) + 4)]
    for name, m in method_entries(results):
        for seed, run in sorted(m["runs"].items(), key=lambda item: int(item[0])):
            R, own = run["R"], [run["R"][i + 1][i] for i in range(len(tasks))]
            cells = [f"{pct(own[j])} / {pct(R[-1][j])}" for j in range(len(tasks) - 1)]
            cells.append(f"{pct(own[-1])} ({pct(run['blank_own'][tasks[-1]])})")
            build = build_of(run)
            metrics, calibrated = run["metrics"], run.get("metrics_batch_calibrated") or {}
            lines.append(f"| {name} | {seed} | {build} | " + " | ".join(cells) + f" | {pct(metrics['forgetting'])} | "
                         f"{pct(metrics['final_avg'])} | {100 * metrics['bwt']:.1f} | "
                         f"{pct(calibrated.get('forgetting'))} / {pct(calibrated.get('final_avg'))} |")
    return lines


def plot(results: dict, path: Path) -> Path:
    """Bars per method (not the ablations): mean relative forgetting and final average accuracy, ± std over seeds, and each seed's
    run as a marker (seeds differ by more than methods do here, so a bar alone would mislead)."""
    plt = pyplot()

    entries = _methods(results)  # the ablations have their own chart: ablation_plot
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.1 * len(entries) + 3), 3.6), layout="constrained")
    for ax, key, title in ((axes[0], "forgetting", "mean relative forgetting %"), (axes[1], "final_avg", "final average accuracy %")):
        means = [100 * (m.get(f"{key}_mean") or 0.0) for _, m in entries]
        stds = [100 * (m.get(f"{key}_std") or 0.0) for _, m in entries]
        ax.bar(range(len(entries)), means, yerr=stds, capsize=3, color="tab:blue", alpha=0.55, error_kw={"alpha": 0.6})
        for x, (_, m) in enumerate(entries):
            for seed, run in sorted(m["runs"].items(), key=lambda item: int(item[0])):
                ax.scatter(x + 0.1 + 0.1 * int(seed), 100 * run["metrics"][key], color="black", zorder=3, s=16,
                           marker=SEED_MARKERS[int(seed) % len(SEED_MARKERS)], label=f"seed {seed}")
        handles = dict(zip(*reversed(ax.get_legend_handles_labels())))  # one entry per seed
        ax.legend([handles[k] for k in sorted(handles)], sorted(handles), fontsize=7, loc="best")
        ax.set_xticks(range(len(entries)), [f"{name}\n(n={len(m['seeds'])})" for name, m in entries], rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def write(results: dict, path: Path, ablation_layout: AblationLayout | None = None, ablation_seed: int = 1) -> None:
    """JSON at path, the Markdown tables and the bar chart beside it (+ the ablation table and its chart,
    <stem>_ablations.png, when a layout is given and ablations ran)."""
    text = markdown(results)
    plot(results, path.with_suffix(".png"))
    if ablation_layout and results.get("ablations"):
        text += "\n" + ablation_markdown(results, ablation_layout, ablation_seed)
        ablation_plot(results, ablation_layout, ablation_seed, path.with_name(f"{path.stem}_ablations.png"))
    write_text(path.with_suffix(".md"), text)
    write_json(path, results)


def find_entry(results: dict, name: str) -> dict | None:
    """A method's summary, whether a headline method or an ablation."""
    for entry in (results.get(name), results.get("ablations", {}).get(name)):
        if _is_method(entry):
            return entry
    return None


def _seed_run(results: dict, name: str, seed: int) -> dict | None:
    """The run of `seed` of a method or ablation, None if it has not finished."""
    return ((find_entry(results, name) or {}).get("runs") or {}).get(str(seed))


def ablation_cell(results: dict, name: str, seed: int) -> str:
    """'forgetting / final avg / learned' in % for one run (learned = mean own-task score right after training)."""
    run = _seed_run(results, name, seed)
    if run is None:
        return f"pending ({name})"
    m = run["metrics"]
    return f"{pct(m['forgetting'])} / {pct(m['final_avg'])} / {pct(m.get('learning_acc'))} ({name})"


def _final_avg(results: dict, name: str, seed: int) -> float | None:
    run = _seed_run(results, name, seed)
    return None if run is None else run["metrics"]["final_avg"]


def two_column_comparison(results: dict, title: str, columns: Sequence[str], rows, seed: int) -> str:
    """For a section of two columns (the paper's init x scaling-rule table): the rows ordered by final average in
    the first column, and the first column minus the second per row, in points; only finished runs, "" if none.
    The paper's ablation table reports spectral > random ~ minor ~ principal (MoE + O 68.2 vs 67.3-67.6), and +0.5-1.0 points
    from the scaling rule."""
    cells = [(label, _final_avg(results, names[0], seed), _final_avg(results, names[1], seed)) for label, names in rows]
    ranked = sorted(((a, label) for label, a, _ in cells if a is not None), reverse=True)
    diffs = [f"{label} {100 * (a - b):+.1f}" for label, a, b in cells if a is not None and b is not None]
    lines = []
    if len(ranked) > 1:
        lines.append(f"- {title}, {columns[0]}, by final avg: " + " > ".join(f"{label} {pct(v)}" for v, label in ranked))
    if diffs:
        lines.append(f"- {columns[0]} minus {columns[1]}, final avg points: " + ", ".join(diffs))
    return "\n".join(lines)


def ablation_markdown(results: dict, layout: AblationLayout, seed: int) -> str:
    """The ablation table, one Markdown table per section, every cell the run of `seed` (single-seed ablations
    are compared with the reference methods' run of the same seed, not with their mean)."""
    lines = [f"Ablations, seed {seed}; each cell: rel. forgetting % / final avg % / learned % (mean own-task score "
             "right after its training), as scored; the method file in brackets."]
    for title, columns, rows in layout:
        lines += ["", f"| {title} | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
        for label, names in rows:
            if len(names) != len(columns):
                raise ValueError(f"ablation layout {title!r}, row {label!r}: {len(names)} methods for {len(columns)} columns")
            lines.append(f"| {label} | " + " | ".join(ablation_cell(results, n, seed) for n in names) + " |")
        comparison = two_column_comparison(results, title, columns, rows, seed) if len(columns) == 2 else ""
        lines += ["", comparison] if comparison else []
    return "\n".join(lines) + "\n"


def ablation_values(results: dict, layout: AblationLayout, seed: int) -> list:
    """The layout with each method name replaced by its run's metrics of `seed` (None while it has not finished):
    [(title, columns, [(label, [metrics | None per column])])]."""
    return [(title, columns, [(label, [(_seed_run(results, n, seed) or {}).get("metrics") for n in names])
                              for label, names in rows]) for title, columns, rows in layout]


def ablation_builds(results: dict, layout: AblationLayout, seed: int) -> list[str]:
    """The recipe builds (build_of) that the finished runs of the table started from: single-seed cells compare
    only within a build."""
    names = {n for _, _, rows in layout for _, row_names in rows for n in row_names}
    runs = [_seed_run(results, n, seed) for n in sorted(names)]
    return sorted({build_of(run) for run in runs if run is not None})


def ablation_plot(results: dict, layout: AblationLayout, seed: int, path: Path) -> Path:
    """The ablation table as bars: one panel per section, relative forgetting above and final average below,
    one bar per cell (columns side by side, e.g. scaling rule / fixed scale), "pending" where a run is missing."""
    plt = pyplot()

    sections = ablation_values(results, layout, seed)
    widths = [len(rows) * len(columns) + 1 for _, columns, rows in sections]
    fig, axes = plt.subplots(2, len(sections), figsize=(0.42 * sum(widths) + 2, 5.6), squeeze=False,
                             gridspec_kw={"width_ratios": widths}, layout="constrained")
    for k, (title, columns, rows) in enumerate(sections):
        bar = 0.8 / len(columns)
        for ax, key, ylabel in ((axes[0][k], "forgetting", "rel. forgetting %"), (axes[1][k], "final_avg", "final avg %")):
            for c, column in enumerate(columns):
                xs = [i + (c - (len(columns) - 1) / 2) * bar for i in range(len(rows))]
                values = [None if cells[c] is None else 100 * cells[c][key] for _, cells in rows]
                ax.bar([x for x, v in zip(xs, values) if v is not None], [v for v in values if v is not None],
                       width=bar, color=f"C{c}", alpha=0.7, label=column)
                for x, v in zip(xs, values):
                    ax.text(x, 0 if v is None else v, "pending" if v is None else f"{v:.1f}", ha="center",
                            va="bottom", fontsize=6, rotation=90 if v is None else 0, color="grey" if v is None else "black")
            ax.set_xticks(range(len(rows)), [label for label, _ in rows], rotation=30, ha="right", fontsize=8)
            ax.set_xlim(-0.6, len(rows) - 0.4)
            ax.set_ylim(0, 1.3 * max([100 * cell[key] for _, cells in rows for cell in cells if cell] or [1.0]))
            ax.grid(axis="y", alpha=0.3)
            if k == 0:
                ax.set_ylabel(ylabel)
        axes[0][k].set_title(textwrap.fill(title, 6 * widths[k]), fontsize=9)
        if len(columns) > 1:
            axes[0][k].legend(fontsize=7, loc="upper center", ncol=len(columns))
    builds = ablation_builds(results, layout, seed)
    fig.suptitle(f"Ablations, seed {seed} (as scored; recipe build {', '.join(builds)})", fontsize=10)
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)
