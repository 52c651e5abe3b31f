"""Every seed-1 baseline, ablation and point-7 variant minus the SSLoRA seed-1 run of its own recipe build: one
table, one chart.

    python benchmarks/continual/paired.py        # -> benchmarks/results/continual_paired.{json,md,png}, continual_pairs.png

Reads the grid's aggregates, benchmarks/results/continual.json and one continual_build<sha8>.json per later
recipe build (grid.py writes them, and calls this after each finished run), and the variants' records,
benchmarks/results/continual_variants/<name>/ (variants.py). See medqwen/continual/paired.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from medqwen.continual.io import write_json, write_text
from medqwen.continual.paired import markdown, paired_deltas, plot, plot_pairs
from medqwen.continual.summary import method_entries

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[1] / "benchmarks" / "results"
_spec = importlib.util.spec_from_file_location("continual_answers", HERE / "answers.py")
answers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(answers)


def aggregate_files(results_dir: Path) -> list[Path]:
    """The first build's aggregate, then the later builds' (the order decides which build a rebuild is measured from)."""
    first = results_dir / "continual.json"
    return ([first] if first.exists() else []) + sorted(results_dir.glob("continual_build*.json"))


def variant_runs(results_dir: Path, seed: int) -> dict[str, dict]:
    """name -> the variant's record of `seed`, shaped like an aggregate's run (its start model under
    start_model_sha256, as the grid stores it)."""
    runs = {}
    for path in sorted((results_dir / "continual_variants").glob(f"*/*_seed{seed}.json")):
        record = json.loads(path.read_text())
        runs[path.parent.name] = {**record, "start_model_sha256": record.get("model_sha256")}
    return runs


def fill_calibrated(aggregates: list[dict], rebuilt: list[dict]) -> int:
    """Runs recorded before their batch-calibrated metrics were: take them from answers.py's rebuilds
    (benchmarks/results/continual_answers/), matched by run folder. Returns how many runs were filled.
    A folder is compared by its last three parts (<work>/<method>/seed<k>): records keep the absolute path of
    the machine that ran them, the rebuilds a relative one."""
    by_folder = {Path(entry["run"]).parts[-3:]: entry["batch"] for entry in rebuilt if entry.get("run")}
    filled = 0
    for results in aggregates:
        for _, entry in method_entries(results):
            for run in entry["runs"].values():
                folder = Path(run.get("dir") or "").parts[-3:]
                if not run.get("metrics_batch_calibrated") and folder in by_folder:
                    batch = by_folder[folder]
                    run["metrics_batch_calibrated"] = {"forgetting": batch["forgetting_mean"], "final_avg": batch["final_avg"],
                                                       "source": "benchmarks/continual/answers.py rebuild"}
                    filled += 1
    return filled


def write_paired(results_dir: Path = RESULTS, *, reference: str = "sslora", seed: int = 1) -> dict:
    sources = aggregate_files(results_dir)
    aggregates = [json.loads(path.read_text()) for path in sources]
    fill_calibrated(aggregates, answers.summarize(results_dir / "continual_answers"))
    paired = paired_deltas(aggregates, reference=reference, seed=seed, variants=variant_runs(results_dir, seed))
    paired["sources"] = [path.name for path in sources]
    stem = results_dir / "continual_paired"
    write_json(stem.with_suffix(".json"), paired)
    write_text(stem.with_suffix(".md"), markdown(paired))
    if paired["rows"]:
        plot(paired, stem.with_suffix(".png"))
    if paired["seed_pairs"]:
        plot_pairs(paired["seed_pairs"], results_dir / "continual_pairs.png", reference=reference)
    return paired


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the aggregates are, and the output goes")
    parser.add_argument("--reference", default="sslora")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    paired = write_paired(args.results_dir, reference=args.reference, seed=args.seed)
    print(markdown(paired))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
