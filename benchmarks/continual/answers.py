"""Which answers a continual run's model gives, after a given task (issue 7: is a forgotten yes/no task
forgotten as a shifted answer prior, or as lost image use?).

Rebuilds the model of row N of a finished (or partly finished) run — the start model, the method's adapter,
task N's final weights — and scores tasks with the answer breakdown the runner now records
(`pred_share`, `acc_by_answer`, and `rank_auc`, the ROC-AUC of the candidates' likelihoods: whether the
scores still separate the answers when the decisions all fall on one side; rows of runs started before
2026-12-06 17:00 lack them), with the image and blank.

    python benchmarks/continual/answers.py runs/continual/lora/seed1 --method lora --seed 1 \\
        --data-root ../shared/data --base-model-dir runs/bench_vqa_rad/recipe/stage1_alignment/final \\
        --row 3 --tasks pneumonia
    # -> benchmarks/results/continual_answers/<method>_seed<k>_row<N>.json

The run's fingerprint must match the arguments (the same check as resuming it). A few minutes per task.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--method", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--base-model-dir", type=Path, help="the run's --start-from")
    parser.add_argument("--sequence", type=Path, default=Path(__file__).resolve().parent / "sequence.yaml")
    parser.add_argument("--row", type=int, required=True, help="1..T: the model after task ROW")
    parser.add_argument("--tasks", nargs="+", help="task names (default: every task)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "continual_answers")
    args = parser.parse_args(argv)

    from medqwen.continual import load_sequence
    from medqwen.continual.io import write_json
    from medqwen.continual.runner import ContinualRunner, make_stage
    from medqwen.continual.tasks import score_task
    from medqwen.training.batches import supports_feature_cache

    config = load_sequence(args.sequence.resolve(), data_root=str(args.data_root.resolve()), method=args.method)
    changes = {"seed": args.seed, **({"start_from": str(args.base_model_dir.resolve())} if args.base_model_dir else {})}
    config = dataclasses.replace(config, **changes)
    saved = json.loads((args.run_dir / "run.json").read_text())["fingerprint"]
    if saved != config.fingerprint():  # run_info's fingerprint, without hashing the start model's weights
        raise SystemExit(f"{args.run_dir} is a run of another configuration than these arguments give")
    if not 1 <= args.row <= len(config.tasks):
        raise SystemExit(f"--row must be 1..{len(config.tasks)}")
    stage = make_stage(config, args.row, config.tasks[args.row - 1])
    if not (args.run_dir / "train" / stage.name / "final" / "stage_done.json").is_file():
        raise SystemExit(f"{args.run_dir}: task {args.row} has not finished (no train/{stage.name}/final)")
    runner = ContinualRunner(config, output_dir=args.run_dir)
    trainer = runner._ensure_trainer()
    if config.method.adapter is not None:
        trainer.attach_adapter(config.method.adapter)
    trainer.run_stage(stage, [], resume=True)  # a finished stage: loads its final weights, trains nothing
    cache = trainer.feature_cache if supports_feature_cache(trainer.vlm) else None
    out = {"run": str(args.run_dir), "method": args.method, "seed": args.seed, "row": args.row,
           "after": config.tasks[args.row - 1].name, "tasks": {}}
    for task in config.tasks:
        if args.tasks and task.name not in args.tasks:
            continue
        samples, _ = runner._eval_samples(task)
        scores = {kind: score_task(trainer.model, task, samples, cache=cache, blank_images=blank,
                                   batch_size=config.eval_batch_size)
                  for kind, blank in (("image", False), ("blank", True))}
        out["tasks"][task.name] = scores
        print(task.name, {k: {f: v[f] for f in ("score", "pred_share", "acc_by_answer")} for k, v in scores.items()},
              flush=True)
    name = f"{Path(args.method).stem}_seed{args.seed}_row{args.row}.json"
    write_json(args.out / name, out)
    print(f"-> {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
