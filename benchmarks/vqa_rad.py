"""MedQwen-mini on VQA-RAD (train -> test): no stage 3 vs LoRA r=32 vs SSLoRA 2-of-8 r=32.

All three start from the same stage-2 checkpoint (stages 1-2 run once), with the same step budget
and seed. Each method runs in its own process (so peak memory is its own) and its result is
written to benchmarks/results/vqa_rad.json as soon as it is done; re-running skips finished
methods and resumes an interrupted one from its last checkpoint.

    python benchmarks/vqa_rad.py --data-root ../shared/data            # everything, resumable
    python benchmarks/vqa_rad.py --data-root ../shared/data --only lora
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "configs" / "benchmarks"
RESULTS = HERE / "results" / "vqa_rad.json"
METHODS = {"zero_shot": None, "lora": "vqa_rad_stage3_lora.yaml", "sslora": "vqa_rad_stage3_sslora.yaml"}
SEED = 0
SYSTEM_PROMPT = "Answer the question about the medical image briefly."


def _variables(data_root: str) -> dict:
    return {"data_root": data_root}


def prepare(data_root: str, work: Path) -> Path:
    """Stages 1-2 once; returns the stage-2 model folder."""
    from medqwen.models import load_model
    from medqwen.training import Trainer, load_data, load_stage

    final = work / "stage2_instruct" / "final"
    if (final / "stage_done.json").is_file():
        return final
    model = load_model("medqwen-mini", system_prompt=SYSTEM_PROMPT)
    trainer = Trainer(model, output_dir=work, seed=SEED)
    for name in ("vqa_rad_stage1.yaml", "vqa_rad_stage2.yaml"):
        stage = load_stage(CONFIGS / name, _variables(data_root))
        trainer.run_stage(stage, load_data(stage.data, SEED), resume=True)
    return final


def run_method(method: str, data_root: str, work: Path, eval_limit: int | None) -> dict:
    from medqwen.models import load_model
    from medqwen.training import DataSpec, Trainer, load_data, load_stage
    from medqwen.training.evaluate import evaluate_vqa_model

    model = load_model(str(work / "stage2_instruct" / "final" / "model"))
    trainer = Trainer(model, output_dir=work / method, seed=SEED)
    result = {"method": method, "seed": SEED, "steps": 0, "trainable_params": 0, "s_per_step": None}
    if METHODS[method] is not None:
        stage = load_stage(CONFIGS / METHODS[method], _variables(data_root))
        trainer.run_stage(stage, load_data(stage.data, SEED), resume=True)
        metrics = [json.loads(line) for line in open(work / method / stage.name / "metrics.jsonl")]
        result["steps"] = stage.max_steps
        result["s_per_step"] = statistics.median(m["s_per_step"] for m in metrics)
        result["final_train_loss"] = statistics.mean(m["loss"] for m in metrics[-20:])
        result["trainable_params"] = trainer.adapter.trainable_parameters()[0]
    test = load_data([DataSpec(format="vqa_rad", path=f"{data_root}/vqa_rad", split="test", limit=eval_limit)], SEED)
    scores = dict(evaluate_vqa_model(trainer.model, test, batch_size=16, max_new_tokens=12, blank_control=True))
    records = scores.pop("records")
    (work / method).mkdir(parents=True, exist_ok=True)
    (work / method / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result.update({
        "closed_acc": scores["closed_acc"], "open_recall": scores["open_recall"], "exact_match": scores["exact_match"],
        "blank_closed_acc": scores["blank_image/closed_acc"], "blank_open_recall": scores["blank_image/open_recall"],
        "n_closed": scores["n_closed"], "n_open": scores["n_open"], "eval_seconds": scores["seconds"],
        "peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    })
    return result


def _save(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, RESULTS)


def table(results: dict) -> str:
    lines = ["| method | closed acc | open recall | closed acc, blank image | trainable params | s/step | peak mem MB | steps |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        if name.startswith("_"):
            continue
        sps = f"{r['s_per_step']:.2f}" if r.get("s_per_step") else "—"
        lines.append(f"| {name} | {100 * r['closed_acc']:.1f}% | {100 * r['open_recall']:.1f}% | {100 * r['blank_closed_acc']:.1f}% "
                     f"| {r['trainable_params']:,} | {sps} | {r['peak_mem_mb']:.0f} | {r['steps']} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--work", default="runs/bench_vqa_rad")
    parser.add_argument("--only", choices=list(METHODS) + ["prepare"])
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate a seeded subsample (default: all 451)")
    args = parser.parse_args()
    work = Path(args.work)
    if args.only == "prepare":
        prepare(args.data_root, work)
        return
    if args.only:  # child process: one method, result on stdout
        print("RESULT " + json.dumps(run_method(args.only, args.data_root, work, args.eval_limit)), flush=True)
        return
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    subprocess.run([sys.executable, __file__, "--data-root", args.data_root, "--work", str(work), "--only", "prepare"], check=True)
    for method in METHODS:
        if method in results:
            continue
        cmd = [sys.executable, __file__, "--data-root", args.data_root, "--work", str(work), "--only", method]
        if args.eval_limit:
            cmd += ["--eval-limit", str(args.eval_limit)]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        results[method] = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
        results["_command"] = "python benchmarks/vqa_rad.py --data-root ../shared/data"
        _save(results)
        print(table(results), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
