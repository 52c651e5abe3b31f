"""Routing analysis of finished continual runs (issue 7, point 6): per task, the share of tokens each
expert (= spectral segment, under the spectral init) receives, per layer, as PNG + a JSON summary.

    python benchmarks/continual/routing.py runs/continual/sslora/seed0                # final model
    python benchmarks/continual/routing.py runs/continual/sslora/seed0 --row diagonal # each task right after its training
    python benchmarks/continual/routing.py runs/continual/sslora/seed0 --row 1        # the model after task 1

The statistics are recorded by `medqwen continual` while it scores each task (eval/row_XX_routing.json,
adapters with more than one expert). Summary: mean share per expert per task, each task's most used
expert, and the Jensen-Shannon divergence between tasks averaged over layers (0 = the tasks route
alike; see medqwen/continual/routing.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load_routing(run_dir: Path, row: str) -> tuple[dict, list[str], str, dict | None]:
    """(task -> layer -> shares, task names, label, the method's adapter spec) for a row number, 'final' or
    'diagonal'."""
    from medqwen.continual.io import read_json

    run = read_json(run_dir / "run.json")
    tasks, adapter = [t["name"] for t in run["tasks"]], run["method"].get("adapter")

    def row_file(index: int) -> dict:
        path = run_dir / "eval" / f"row_{index:02d}_routing.json"
        if not path.is_file():
            raise SystemExit(f"{path} not found: routing is recorded for adapters with more than one expert, "
                             "once that row has been evaluated")
        return read_json(path)

    if row == "diagonal":
        return {t: row_file(i + 1)[t] for i, t in enumerate(tasks)}, tasks, "each task right after its own training", adapter
    index = len(tasks) if row == "final" else int(row)
    label = "start" if index == 0 else f"after {tasks[index - 1]}"
    return row_file(index), tasks, label, adapter


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, nargs="+", help="continual run folder(s) (with run.json and eval/)")
    parser.add_argument("--row", default="final", help="a row number (0 = start), 'final' or 'diagonal' (default: final)")
    parser.add_argument("--out", type=Path, help="PNG path (one run only; default: <run>/routing_<row>.png)")
    args = parser.parse_args(argv)
    from medqwen.continual.io import write_json
    from medqwen.continual.routing import expert_axis_label, plot_routing, routing_summary

    for run_dir in args.run_dir:
        routing, tasks, label, adapter = load_routing(run_dir, args.row)
        summary = {"run": str(run_dir), "row": args.row, "model": label, **routing_summary(routing, tasks)}
        png = args.out if args.out and len(args.run_dir) == 1 else run_dir / f"routing_{args.row}.png"
        plot_routing(routing, tasks, png, title=f"{run_dir.parent.name} {run_dir.name}: token share per expert, {label}",
                     expert_label=expert_axis_label(adapter))
        write_json(png.with_suffix(".json"), summary)
        print(json.dumps(summary, indent=1))
        print(f"-> {png}")


if __name__ == "__main__":
    main()
