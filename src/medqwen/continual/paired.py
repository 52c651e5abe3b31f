"""Single-seed runs as differences from the reference run (SSLoRA) of the same seed and recipe build.

A rebuilt recipe model moves a run by more than a seed does (issue 7), so a baseline or an ablation is
compared only with the reference that started from the same weights. The aggregates of several builds
(benchmarks/results/continual.json, continual_build<sha8>.json: see benchmarks/continual/grid.py) become
one table and one chart of paired differences; the reference's own shift between builds and its spread
over seeds are shown beside them as the scale of what chance moves.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

from .io import pyplot, save_figure
from .significance import confidence_interval, pairs_needed, paired_t_test, power
from .summary import build_of, method_entries

# (key, label): metrics of a run's record; "calibrated_*" come from metrics_batch_calibrated.
DELTA_KEYS = (("forgetting", "rel. forgetting"), ("final_avg", "final avg"), ("learning_acc", "learned"),
              ("calibrated_forgetting", "batch-calibrated forgetting"), ("calibrated_final_avg", "batch-calibrated final avg"))
# Row order of the table and the chart: the grid's methods, its ablations, then single-run variants (point 7).
KINDS = ("method", "ablation", "variant")
# The paper's headline as a gap in relative forgetting: SSLoRA about 5% where LoRA r=32 forgets 20% or more.
PAPER_FORGETTING_GAP = 0.15


def run_metrics(run: dict) -> dict[str, float | None]:
    calibrated = run.get("metrics_batch_calibrated") or {}
    return {**{k: run["metrics"].get(k) for k in ("forgetting", "final_avg", "learning_acc")},
            "calibrated_forgetting": calibrated.get("forgetting"), "calibrated_final_avg": calibrated.get("final_avg")}


def _difference(a: dict, b: dict) -> dict[str, float | None]:
    """a - b per metric, None where either is missing."""
    return {k: None if a[k] is None or b[k] is None else a[k] - b[k] for k, _ in DELTA_KEYS}


def paired_deltas(aggregates: Sequence[dict], *, reference: str = "sslora", seed: int = 1,
                  variants: Mapping[str, dict] | None = None) -> dict:
    """Every method and ablation with a run of `seed`, and every variant (name -> its run of `seed`, outside the
    grid: benchmarks/continual/variants.py), minus the `reference` run of that seed from the same build.

    Returns {reference, seed, rows: [{name, kind (one of KINDS), build, delta: {metric: a - b}}],
    unpaired: [(name, build)] (no reference run of that build), rebuild: [{build, from_build, delta}] (the
    reference on each later build minus its first build), seed_std: {metric: sample std over the reference's
    seeds} from the aggregate holding most of them, seed_pairs: seed_pairs(aggregates)}. Values are fractions
    (0.05 = 5 points)."""
    references: dict[str, dict] = {}
    for results in aggregates:
        run = ((results.get(reference) or {}).get("runs") or {}).get(str(seed))
        if run is not None:
            references.setdefault(build_of(run), run_metrics(run))
    candidates = [(name, "ablation" if name in results.get("ablations", {}) else "method", entry["runs"].get(str(seed)))
                  for results in aggregates for name, entry in method_entries(results) if name != reference]
    candidates += [(name, "variant", run) for name, run in (variants or {}).items()]
    rows, unpaired = [], []
    for name, kind, run in candidates:
        if run is None:
            continue
        build = build_of(run)
        if build not in references:
            unpaired.append((name, build))
            continue
        rows.append({"name": name, "kind": kind, "build": build, "delta": _difference(run_metrics(run), references[build])})
    builds = list(references)
    rebuild = [{"build": b, "from_build": builds[0], "delta": _difference(references[b], references[builds[0]])}
               for b in builds[1:]]
    most = max((r[reference] for r in aggregates if reference in r), key=lambda e: len(e["seeds"]), default=None)
    seed_std = {}
    if most is not None and len(most["seeds"]) > 1:
        seed_std = {"seeds": most["seeds"], "forgetting": most.get("forgetting_std"), "final_avg": most.get("final_avg_std"),
                    "learning_acc": most.get("learning_acc_std")}
    return {"reference": reference, "seed": seed, "rows": rows, "unpaired": unpaired, "rebuild": rebuild, "seed_std": seed_std,
            "seed_pairs": seed_pairs(aggregates, reference=reference)}


def seed_pairs(aggregates: Sequence[dict], *, reference: str = "sslora") -> dict[str, dict]:
    """Each method (not ablation) with at least two runs sharing seed and recipe build with a `reference` run:
    method -> {pairs: [{build, seed, delta}], tests: {metric: paired_t_test of the deltas}}, deltas method -
    reference. Several pairs give the only comparison with a spread of its own (see significance.py)."""
    out = {}
    for name in dict.fromkeys(name for results in aggregates for name, _ in method_entries(results)):
        pairs = []
        for results in aggregates:
            if name in results.get("ablations", {}) or name == reference:
                continue
            runs, references = ((results.get(key) or {}).get("runs") or {} for key in (name, reference))
            for seed in sorted(set(runs) & set(references), key=int):
                if build_of(runs[seed]) == build_of(references[seed]):
                    pairs.append({"build": build_of(runs[seed]), "seed": int(seed),
                                  "delta": _difference(run_metrics(runs[seed]), run_metrics(references[seed]))})
        if len(pairs) >= 2:  # one pair has no spread to test against
            tests = {k: paired_t_test([p["delta"][k] for p in pairs]) for k, _ in DELTA_KEYS
                     if all(p["delta"][k] is not None for p in pairs)}
            out[name] = {"pairs": pairs, "tests": tests}
            if tests.get("forgetting", {}).get("p") is not None:
                out[name]["forgetting_power"] = power_note(tests["forgetting"])
    return out


def power_note(test: dict, gap: float = PAPER_FORGETTING_GAP) -> dict:
    """For a forgetting test: the chance that its n pairs detect the paper's gap at the pairs' own spread, and
    the pairs 80% power needs at that gap and at the observed mean difference."""
    return {"gap": gap, "power_at_gap": power(test["n"], gap, test["std"]),
            "pairs_for_gap": pairs_needed(gap, test["std"]), "pairs_for_observed": pairs_needed(test["mean"], test["std"])}


def _pairs(count: int | None) -> str:
    return f"{count} pairs" if count else "more pairs than pairs_needed searches (no difference, or a tiny one)"


def _build_label(build: str) -> str:
    return "from before fingerprints," if build == "first" else f"build {build}"


def pairs_markdown(name: str, reference: str, entry: dict) -> list[str]:
    keys = [(k, label) for k, label in DELTA_KEYS if k in entry["tests"]]
    lines = [f"Same-seed pairs, {name} minus {reference} (each pair: one seed, one recipe build), in points:", "",
             "| pair | " + " | ".join(label for _, label in keys) + " |", "|---|" + "---:|" * len(keys)]
    lines += [f"| {_build_label(p['build'])} seed {p['seed']} | " + " | ".join(_points(p["delta"][k]) for k, _ in keys) + " |"
              for p in entry["pairs"]]
    tests = entry["tests"]
    lines.append(f"| mean ± std over {len(entry['pairs'])} pairs | " +
                 " | ".join(f"{_points(tests[k]['mean'])} ± {100 * tests[k]['std']:.1f}" for k, _ in keys) + " |")
    lines.append("| paired t-test p | " + " | ".join("—" if tests[k]["p"] is None else f"{tests[k]['p']:.2f}" for k, _ in keys) + " |")
    if "forgetting_power" in entry:
        forgetting, note = tests["forgetting"], entry["forgetting_power"]
        lines += ["", f"Power (two-sided paired t-test, alpha 0.05, taking the pairs' spread of {100 * forgetting['std']:.1f} "
                  f"points as the true one): if {reference} forgot {100 * note['gap']:.0f} points less than {name} (the "
                  f"paper's gap), {len(entry['pairs'])} pairs would show it with probability {note['power_at_gap']:.2f}; "
                  f"80% power needs {_pairs(note['pairs_for_gap'])}. At the observed mean difference "
                  f"({_points(forgetting['mean'])}), 80% power needs {_pairs(note['pairs_for_observed'])}."]
    return lines


def _points(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:+.1f}"


def markdown(paired: dict) -> str:
    ref, seed = paired["reference"], paired["seed"]
    lines = [f"Seed-{seed} runs minus the {ref} run of seed {seed} from the same recipe build, in points (negative "
             "forgetting = forgets less; positive final avg = ends higher):", "",
             "| run | kind | build | " + " | ".join(label for _, label in DELTA_KEYS) + " |",
             "|---|---|---|" + "---:|" * len(DELTA_KEYS)]
    for row in paired["rows"]:
        lines.append(f"| {row['name']} | {row['kind']} | {row['build']} | " +
                     " | ".join(_points(row["delta"][k]) for k, _ in DELTA_KEYS) + " |")
    for shift in paired["rebuild"]:
        lines.append(f"| {ref} itself, build {shift['build']} minus {shift['from_build']} | rebuilt recipe | {shift['build']} | " +
                     " | ".join(_points(shift["delta"][k]) for k, _ in DELTA_KEYS) + " |")
    std = paired["seed_std"]
    if std:
        lines += ["", f"For scale: {ref}'s sample std over seeds {', '.join(map(str, std['seeds']))} is "
                  f"{100 * std['forgetting']:.1f} points of forgetting and {100 * std['final_avg']:.1f} of final avg; the "
                  f"difference of two single runs varies about sqrt(2) times that ({100 * math.sqrt(2) * std['forgetting']:.1f} "
                  f"and {100 * math.sqrt(2) * std['final_avg']:.1f})."]
    for name, entry in paired.get("seed_pairs", {}).items():
        lines += [""] + pairs_markdown(name, ref, entry)
    if paired["unpaired"]:
        lines += ["", "Left out (no reference run of their build yet): " +
                  ", ".join(f"{name} ({build})" for name, build in paired["unpaired"])]
    return "\n".join(lines) + "\n"


def plot(paired: dict, path: Path) -> Path:
    """Horizontal bars per run: the differences in forgetting, final average and batch-calibrated forgetting,
    coloured by build, with the reference's rebuild shift as a hatched bar and a grey band of
    +-sqrt(2) x its seed std (how much two single runs differ by chance alone)."""
    plt = pyplot()

    ordered = sorted(paired["rows"], key=lambda r: KINDS.index(r["kind"]))
    rows = [(r["name"], r["build"], r["delta"], False) for r in ordered]
    # dashed lines between methods | ablations | variants | the rebuild shift
    separators = {y - 0.5 for y in range(1, len(ordered)) if ordered[y]["kind"] != ordered[y - 1]["kind"]}
    separators |= {len(ordered) - 0.5} if ordered and paired["rebuild"] else set()
    rows += [(f"{paired['reference']} rebuilt ({s['build']} - {s['from_build']})", s["build"], s["delta"], True)
             for s in paired["rebuild"]]
    builds = list(dict.fromkeys(build for _, build, _, _ in rows))
    panels = (("forgetting", "rel. forgetting, points\n(< 0: forgets less)"), ("final_avg", "final avg, points\n(> 0: ends higher)"),
              ("calibrated_forgetting", "batch-calibrated forgetting,\npoints (< 0: forgets less)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 0.32 * len(rows) + 2.2), sharey=True, layout="constrained")
    std = paired["seed_std"]
    for ax, (key, title) in zip(axes, panels):
        if std.get(key) is not None:
            band = 100 * math.sqrt(2) * std[key]
            ax.axvspan(-band, band, color="grey", alpha=0.15, lw=0, label=f"±√2·σ over {len(std['seeds'])} seeds")
        for y, (_, build, delta, shift) in enumerate(rows):
            value = delta[key]
            if value is None:
                ax.text(0, y, "n/a", va="center", fontsize=7, color="grey")
                continue
            ax.barh(y, 100 * value, color=f"C{builds.index(build)}", alpha=0.75, hatch="//" if shift else None,
                    edgecolor="black" if shift else None, label=f"build {build}")
            ax.text(100 * value, y, f" {100 * value:+.1f} ", va="center", ha="left" if value >= 0 else "right", fontsize=7)
        ax.axvline(0, color="black", lw=0.8)
        for y in separators:
            ax.axhline(y, color="grey", lw=0.6, ls="--")
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        lo, hi = ax.get_xlim()
        ax.set_xlim(lo - 0.15 * (hi - lo), hi + 0.15 * (hi - lo))  # room for the labels
    handles = {}
    for handle, label in zip(*axes[0].get_legend_handles_labels()):
        handles.setdefault(label, handle)  # the first bar of a build: plain, not the hatched rebuild shift
    fig.legend(handles.values(), handles.keys(), fontsize=8, loc="outside lower center", ncol=len(handles))
    axes[0].set_yticks(range(len(rows)), [name for name, *_ in rows], fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"Seed-{paired['seed']} runs minus {paired['reference']} seed {paired['seed']} of the same recipe build", fontsize=10)
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def plot_pairs(pairs: dict[str, dict], path: Path, *, reference: str = "sslora") -> Path:
    """One row per method of seed_pairs: each pair's difference from the reference as a dot (coloured by build),
    the mean with its 95% interval, and in the forgetting panel the paper's gap as a dashed line."""
    plt = pyplot()
    panels = (("forgetting", f"rel. forgetting, method - {reference}, points\n(> 0: {reference} forgets less)"),
              ("final_avg", f"final avg, method - {reference}, points\n(< 0: {reference} ends higher)"))
    builds = list(dict.fromkeys(p["build"] for entry in pairs.values() for p in entry["pairs"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(10, 0.9 * len(pairs) + 1.8), sharey=True, layout="constrained")
    for ax, (key, title) in zip(axes, panels):
        for y, entry in enumerate(pairs.values()):
            for p in entry["pairs"]:
                ax.plot(100 * p["delta"][key], y, "o", color=f"C{builds.index(p['build'])}", alpha=0.8,
                        label=_build_label(p["build"]).rstrip(","))
            test = entry["tests"].get(key)
            interval = test and confidence_interval(test)
            if interval:
                ax.plot([100 * v for v in interval], [y - 0.2] * 2, color="black", lw=1.5, label="mean, 95% interval")
                ax.plot(100 * test["mean"], y - 0.2, "D", color="black", ms=5)
                ax.text(100 * test["mean"], y - 0.3, f"p = {test['p']:.2f}", ha="center", va="bottom", fontsize=7)
        ax.axvline(0, color="black", lw=0.8)
        if key == "forgetting":
            ax.axvline(100 * PAPER_FORGETTING_GAP, color="grey", ls="--", lw=1, label="the paper's gap (15 points)")
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(pairs)), [f"{name}\n({len(e['pairs'])} pairs)" for name, e in pairs.items()], fontsize=8)
    axes[0].set_ylim(len(pairs) - 0.5, -0.7)
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), fontsize=8, loc="outside lower center", ncol=min(len(handles), 4))
    fig.suptitle(f"Same-seed pairs against {reference}: each dot one seed from one recipe build", fontsize=10)
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)
