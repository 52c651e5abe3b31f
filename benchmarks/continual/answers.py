"""Which answers a continual run's model gives, after a given task (issue 7: is a forgotten yes/no task
forgotten as a shifted answer prior, or as lost image use?).

Rebuilds the model of row N of a finished (or partly finished) run — the start model, the method's adapter,
task N's final weights — and scores tasks with the answer breakdown the runner now records
(`pred_share`, `acc_by_answer`, and `rank_auc`, the ROC-AUC of the candidates' likelihoods: whether the
scores still separate the answers when the decisions all fall on one side; rows of runs started before
2026-12-06 17:00 lack them), with the image and blank.

    python benchmarks/continual/answers.py runs/continual/lora/seed1 --method lora --seed 1 \\
        --data-root ../shared/data --base-model-dir runs/bench_vqa_rad/recipe/stage1_alignment/final \\
        --row 1 2 3
    # -> benchmarks/results/continual_answers/<method>_seed<k>_row<N>.json
    python benchmarks/continual/answers.py --summary   # -> benchmarks/results/continual_calibration.md

Each file also holds the tasks' scores under two calibrations of the answer prior
(:mod:`medqwen.eval.calibration`, no labels needed): "contextual" divides out the prior the model shows with
a blank image, "batch" the mean answer probability over the task's evaluated images; and every question's
candidate log-likelihoods. With rows 1..T of a run, ``--summary`` tabulates its forgetting each way. The
run's fingerprint must match the arguments (the same check as resuming it). A few minutes per task and row
(image and blank scoring).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KINDS = ("image", "contextual", "batch")  # as scored; calibrated with the blank-image prior; with the batch prior


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, nargs="?")
    parser.add_argument("--method")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--base-model-dir", type=Path, help="the run's --start-from")
    parser.add_argument("--sequence", type=Path, default=Path(__file__).resolve().parent / "sequence.yaml")
    parser.add_argument("--row", type=int, nargs="+", help="1..T: the model after task ROW (several: one file each)")
    parser.add_argument("--tasks", nargs="+", help="task names (default: every task)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "continual_answers")
    parser.add_argument("--summary", action="store_true",
                        help="only tabulate the row files in --out: forgetting as scored and calibrated")
    args = parser.parse_args(argv)
    if args.summary:
        table = summarize(args.out)
        write_md(args.out.parent / "continual_calibration.md", table)
        print((args.out.parent / "continual_calibration.md").read_text())
        return 0
    missing = [f"--{n.replace('_', '-')}" for n in ("method", "seed", "data_root", "row") if getattr(args, n) is None]
    if args.run_dir is None or missing:
        parser.error(f"RUN_DIR and {', '.join(missing) or 'the run arguments'} are needed (or --summary)")

    from medqwen.continual import load_sequence
    from medqwen.continual.io import write_json

    config = load_sequence(args.sequence.resolve(), data_root=str(args.data_root.resolve()), method=args.method)
    changes = {"seed": args.seed, **({"start_from": str(args.base_model_dir.resolve())} if args.base_model_dir else {})}
    config = dataclasses.replace(config, **changes)
    saved = json.loads((args.run_dir / "run.json").read_text())["fingerprint"]
    if saved != config.fingerprint():  # run_info's fingerprint, without hashing the start model's weights
        raise SystemExit(f"{args.run_dir} is a run of another configuration than these arguments give")
    for row in args.row:
        if not 1 <= row <= len(config.tasks):
            raise SystemExit(f"--row must be 1..{len(config.tasks)}")
    for row in args.row:
        out = score_row(config, args.run_dir, row, args.tasks)
        out = {"run": str(args.run_dir), "method": args.method, "seed": args.seed, **out}
        name = f"{Path(args.method).stem}_seed{args.seed}_row{row}.json"
        write_json(args.out / name, out)
        print(f"-> {args.out / name}", flush=True)
    return 0


def score_row(config, run_dir: Path, row: int, task_names: list[str] | None) -> dict:
    """The model after task ``row`` on the tasks trained so far: scored with the image, blank, and calibrated."""
    from medqwen.continual.runner import ContinualRunner, make_stage
    from medqwen.continual.tasks import answer_breakdown, records_accuracy, score_task
    from medqwen.eval.calibration import batch_calibration, contextual_calibration
    from medqwen.training.batches import supports_feature_cache

    stage = make_stage(config, row, config.tasks[row - 1])
    if not (run_dir / "train" / stage.name / "final" / "stage_done.json").is_file():
        raise SystemExit(f"{run_dir}: task {row} has not finished (no train/{stage.name}/final)")
    runner = ContinualRunner(config, output_dir=run_dir)
    trainer = runner._ensure_trainer()
    if config.method.adapter is not None:
        trainer.attach_adapter(config.method.adapter)
    trainer.run_stage(stage, [], resume=True)  # a finished stage: loads its final weights, trains nothing
    cache = trainer.feature_cache if supports_feature_cache(trainer.vlm) else None
    out = {"row": row, "after": config.tasks[row - 1].name, "sequence": [t.name for t in config.tasks], "tasks": {}}
    for task in config.tasks[:row]:  # tasks not yet trained have nothing to forget
        if task_names and task.name not in task_names:
            continue
        samples, _ = runner._eval_samples(task)
        scores = {kind: score_task(trainer.model, task, samples, cache=cache, blank_images=blank,
                                   batch_size=config.eval_batch_size, keep_records=True)
                  for kind, blank in (("image", False), ("blank", True))}
        image, blank = scores["image"].pop("records"), scores["blank"].pop("records")
        for kind, calibrated in (("contextual", contextual_calibration(image, blank)), ("batch", batch_calibration(image))):
            scores[kind] = {"score": records_accuracy(calibrated), "n": len(calibrated), **answer_breakdown(calibrated)}
        # the log-likelihoods themselves (4 decimals), for any other offline analysis
        scores["records"] = {"answer": [r["answer"] for r in image], **{
            kind: [{c: round(v, 4) for c, v in r["scores"].items()} for r in recs] for kind, recs in (("image", image), ("blank", blank))}}
        out["tasks"][task.name] = scores
        print(row, task.name, {k: {f: scores[k][f] for f in ("score", "pred_share", "acc_by_answer")} for k in KINDS + ("blank",)},
              flush=True)
    return out


def summarize(folder: Path) -> list[dict]:
    """Per run with row files: each task's relative forgetting (best score after its own training and
    before the last task, vs the final score; :mod:`medqwen.continual.metrics`) and the final average,
    as scored and under both calibrations (``KINDS``)."""
    from medqwen.continual import metrics

    runs: dict[tuple[str, int], dict[int, dict]] = {}
    for path in sorted(folder.glob("*_row*.json")):
        data = json.loads(path.read_text())
        runs.setdefault((data["method"], data["seed"]), {})[data["row"]] = data
    table = []
    for (method, seed), rows in sorted(runs.items()):
        names = rows[max(rows)].get("sequence", [])
        T = len(names)
        if not names or sorted(rows) != list(range(1, T + 1)) or list(rows[T]["tasks"]) != names or any(
                "batch" not in rows[i]["tasks"].get(name, {"batch": 0}) for i in rows for name in names):
            continue  # not every row yet, or files written before calibration was scored
        entry = {"method": method, "seed": seed, "run": rows[T].get("run"), "tasks": names}
        for kind in KINDS:
            # R with the cells this analysis does not score (row 0, tasks not yet trained) as 0: the
            # forgetting and final-average definitions never read them
            R = [[rows[i]["tasks"][name][kind]["score"] if i and name in rows[i]["tasks"] else 0.0 for name in names]
                 for i in range(T + 1)]
            forgetting = metrics.relative_forgetting(R)[:-1]
            entry[kind] = {"own": [R[j + 1][j] for j in range(T)], "final": R[T], "forgetting": forgetting,
                           "forgetting_mean": metrics.mean_defined(forgetting), "final_avg": metrics.final_average(R)}
        table.append(entry)
    return table


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def write_md(path: Path, table: list[dict]) -> None:
    """The summary as a Markdown table (percentages), one row per run and scorer."""
    lines = ["Continual runs rebuilt row by row (`python benchmarks/continual/answers.py RUN ... --row 1 2 3`, then "
             "`--summary`): every closed task scored by likelihood ranking as usual (image), with the answer prior "
             "of a blank image divided out (contextual), and with the mean answer probability over the task's "
             "evaluated images divided out (batch; transductive: it sees the unlabelled test images). Own = right "
             "after the task's own training.", "",
             "| run | scores | own -> final per task | relative forgetting | final average |",
             "|---|---|---|---:|---:|"]
    for entry in table:
        for kind in KINDS:
            e = entry[kind]
            own_final = "; ".join(f"{n} {100 * a:.1f} -> {100 * b:.1f}" for n, a, b in zip(entry["tasks"], e["own"], e["final"]))
            lines.append(f"| {entry['method']} seed {entry['seed']} | {kind} | {own_final} | "
                         f"{_percent(e['forgetting_mean'])}% | {100 * e['final_avg']:.1f} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
