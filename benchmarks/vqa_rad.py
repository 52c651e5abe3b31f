"""MedQwen-mini on VQA-RAD (train -> test): zero-shot vs LoRA r=32 vs SSLoRA 2-of-8 r=32, over seeds.

The default recipe (configs/experiments/recipe.yaml: stage 1, LoRA merged) runs once (seed 0) and gives the shared starting
model; from it every (method, seed) run trains stage 3 on VQA-RAD's closed questions (the stage configs
say why not the open ones) with the same step budget (the seed changes
the adapter init, the data order and dropout), so LoRA and SSLoRA are compared paired, on the same
base. Each run is its own process (its own peak memory) and writes its own result file
(benchmarks/results/vqa_rad_runs/<method>_seed<k>.json) when it finishes; re-running skips finished
runs and resumes an unfinished one from its last checkpoint. The summary (means +- std over seeds)
goes to benchmarks/results/vqa_rad.json; the stage-3 models' grounding probe scores go to the
`lora` / `sslora` entries of benchmarks/results/grounding.json.

    python benchmarks/vqa_rad.py --data-root ../shared/data                  # everything, resumable
    python benchmarks/vqa_rad.py --data-root ../shared/data --seeds 0 --only lora
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIGS = REPO / "configs"
RESULTS = HERE / "results"
RUNS = RESULTS / "vqa_rad_runs"
RECIPE = CONFIGS / "experiments" / "recipe.yaml"  # the default recipe before task training
METHODS = {"zero_shot": None, "lora": "vqa_rad_stage3_lora.yaml", "sslora": "vqa_rad_stage3_sslora.yaml"}
ABLATIONS = {"sslora_lr1e-3": "vqa_rad_stage3_sslora_lr1e-3.yaml",  # run only when named with --only
             "lora_lr1e-3": "vqa_rad_stage3_lora_lr1e-3.yaml"}
STAGE_CONFIGS = {**METHODS, **ABLATIONS}
COMMAND = "python benchmarks/vqa_rad.py --data-root ../shared/data"


def _write_json(path: Path, data) -> None:
    from medqwen.continual.io import write_json  # atomic: temp file + rename

    write_json(path, data, indent=2)


def prepare(data_root: str, work: Path) -> Path:
    """The default recipe once; returns its last stage's model folder (with model/)."""
    from medqwen.training import Trainer, load_data, load_experiment
    from medqwen.training.pipeline import build_model

    config = load_experiment(RECIPE, {"data_root": data_root})
    final = work / "recipe" / config.stages[-1].name / "final"
    trained = not (final / "stage_done.json").is_file()
    if trained:
        trainer = Trainer(build_model(config), output_dir=work / "recipe", seed=config.seed)
        for stage in config.stages:
            trainer.run_stage(stage, load_data(stage.data, config.seed), resume=True)
    record_build(final, trained)
    return final


@functools.lru_cache(maxsize=None)  # prepare() and run_method() ask for the same 540 MB file
def model_fingerprint(final: Path) -> str:
    """Which build of the recipe a run started from (medqwen.models.weights_sha256 of final/model)."""
    from medqwen.models import weights_sha256

    return weights_sha256(final / "model")


def record_build(final: Path, trained_here: bool) -> str:
    """Note the recipe model's fingerprint in results/recipe_builds.json. Trained again (a new machine
    or thread count), the recipe gives a slightly different model: runs say which one they used."""
    import datetime
    import os

    import torch

    builds_file = RESULTS / "recipe_builds.json"
    builds = json.loads(builds_file.read_text()) if builds_file.is_file() else []
    sha = model_fingerprint(final)
    if not any(b["sha256"] == sha for b in builds):
        done = json.loads((final / "stage_done.json").read_text())
        build = {"sha256": sha, "recorded": datetime.date.today().isoformat(), "last_step_loss": done.get("loss")}
        if trained_here:  # the settings it was trained with (a model found on disk: unknown)
            # the CPU too: the recipe trained with one thread on another machine gave another build
            sys.path.insert(0, str(HERE))
            from init_speed import cpu_name  # the sibling benchmark script, as speed_tools.py uses it

            build.update(threads=torch.get_num_threads(), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS"), cpu=cpu_name())
        builds.append(build)
        _write_json(builds_file, builds)
        print(f"recipe model {sha[:12]}: a build not seen before (results/recipe_builds.json)", flush=True)
    return sha


def run_method(method: str, seed: int, data_root: str, work: Path, eval_limit: int | None) -> dict:
    sys.path.insert(0, str(HERE))
    from grounding import probe_scores

    from medqwen.eval import EvalSettings, evaluate_vqa
    from medqwen.models import load_model
    from medqwen.training import DataSpec, Trainer, load_data, load_stage

    stage2 = prepare(data_root, work)
    run_dir = work / f"{method}_seed{seed}"
    model = load_model(str(stage2 / "model"))
    trainer = Trainer(model, output_dir=run_dir, seed=seed)
    result = {"method": method, "seed": seed, "steps": 0, "epochs": 0.0, "trainable_params": 0, "s_per_step": None,
              "base_model_sha256": model_fingerprint(stage2)}
    if STAGE_CONFIGS[method] is not None:
        stage = load_stage(CONFIGS / "benchmarks" / STAGE_CONFIGS[method], {"data_root": data_root})
        samples = load_data(stage.data, seed)
        trainer.run_stage(stage, samples, resume=True)
        metrics = [json.loads(line) for line in open(run_dir / stage.name / "metrics.jsonl")]
        result["steps"] = stage.max_steps
        result["epochs"] = stage.max_steps * stage.batch_size / len(samples)
        result["s_per_step"] = statistics.median(m["s_per_step"] for m in metrics)
        result["final_train_loss"] = statistics.mean(m["loss"] for m in metrics[-20:])
        result["trainable_params"] = trainer.adapter.trainable_parameters()[0]
    test = load_data([DataSpec(format="vqa_rad", path=f"{data_root}/vqa_rad", split="test", limit=eval_limit)], seed)
    cache = trainer.feature_cache
    scores = dict(evaluate_vqa(trainer.model, test, EvalSettings(batch_size=16, max_new_tokens=12, blank_control=True, cache=cache)))
    records = scores.pop("records")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result.update({
        "closed_acc": scores["closed_acc"], "open_recall": scores["open_recall"], "exact_match": scores["exact_match"],
        "blank_closed_acc": scores["blank_image/closed_acc"], "blank_open_recall": scores["blank_image/open_recall"],
        "n_closed": scores["n_closed"], "n_open": scores["n_open"], "eval_seconds": scores["seconds"],
        "peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    })
    result.update(closed_rank_scores(trainer.model, test, cache))
    result["grounding"] = probe_scores(trainer.model, data_root, cache=cache)
    return result


def closed_rank_scores(model, test: list, cache) -> dict:
    """The yes/no closed questions scored by likelihood ranking of "yes" / "no" (the continual
    sequence's scorer), with the blank-image control: what the model prefers, free of phrasing."""
    import dataclasses

    from medqwen.eval import EvalSettings, evaluate_ranking

    yes_no = [dataclasses.replace(s, extra={**s.extra, "candidates": ["no", "yes"]})
              for s in test if s.answer_type == "closed" and s.answer in ("yes", "no")]
    scores = dict(evaluate_ranking(model, yes_no, EvalSettings(batch_size=16, blank_control=True, cache=cache), scorer="sequence"))
    return {"closed_rank_acc": scores["acc"], "blank_closed_rank_acc": scores["blank_image/acc"],
            "n_closed_rank": scores["n"], "closed_rank_majority": scores["majority"]}


def summarize(runs: list[dict]) -> dict:
    """Per method: means and sample std over seeds of the headline scores (std 0 for one seed)."""
    out = {}
    for method in STAGE_CONFIGS:
        mine = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
        if not mine:
            continue
        entry = {"seeds": [r["seed"] for r in mine], "steps": mine[0]["steps"], "epochs": mine[0]["epochs"],
                 "trainable_params": mine[0]["trainable_params"],
                 "s_per_step": statistics.median(r["s_per_step"] for r in mine) if mine[0]["s_per_step"] else None}
        for key in ("closed_acc", "open_recall", "blank_closed_acc", "blank_open_recall", "exact_match",
                    "closed_rank_acc", "blank_closed_rank_acc"):
            values = [r[key] for r in mine if key in r]  # the ranking keys: runs scored since they were added
            if not values:
                continue
            entry[key] = statistics.mean(values)
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        entry["runs"] = {f"seed{r['seed']}": {k: r[k] for k in ("closed_acc", "open_recall", "blank_closed_acc")} for r in mine}
        out[method] = entry
    if "lora" in out and "sslora" in out:  # paired by seed: same base model, same data order per seed
        pairs = [(out["sslora"]["runs"][s]["closed_acc"] - out["lora"]["runs"][s]["closed_acc"])
                 for s in out["lora"]["runs"] if s in out["sslora"]["runs"]]
        out["_sslora_minus_lora_closed"] = {"mean": statistics.mean(pairs), "std": statistics.stdev(pairs) if len(pairs) > 1 else 0.0,
                                            "seeds": len(pairs)}
    out["_command"] = COMMAND
    return out


def update_grounding(runs: list[dict]) -> None:
    """Add the stage-3 models' probe scores (means over seeds) to results/grounding.json."""
    path = RESULTS / "grounding.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    for method in ("lora", "sslora"):
        mine = [r for r in runs if r["method"] == method and "grounding" in r]
        if not mine:
            continue
        for probe in data:
            if probe.startswith("_") or probe not in mine[0]["grounding"]:
                continue
            data[probe][method] = {k: statistics.mean(r["grounding"][probe][k] for r in mine) for k in ("acc", "blank_acc")}
            data[probe][method]["seeds"] = [r["seed"] for r in mine]
    _write_json(path, data)


def table(summary: dict) -> str:
    lines = ["| method | closed acc | open recall | closed acc, blank image | yes/no by ranking (blank image) "
             "| trainable params | s/step | steps (epochs) | seeds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in summary.items():
        if name.startswith("_"):
            continue
        sps = f"{r['s_per_step']:.2f}" if r.get("s_per_step") else "—"
        rank = (f"{100 * r['closed_rank_acc']:.1f} ± {100 * r['closed_rank_acc_std']:.1f}% "
                f"({100 * r['blank_closed_rank_acc']:.1f})" if "closed_rank_acc" in r else "—")
        lines.append(f"| {name} | {100 * r['closed_acc']:.1f} ± {100 * r['closed_acc_std']:.1f}% | {100 * r['open_recall']:.1f} ± "
                     f"{100 * r['open_recall_std']:.1f}% | {100 * r['blank_closed_acc']:.1f} ± {100 * r['blank_closed_acc_std']:.1f}% "
                     f"| {rank} | {r['trainable_params']:,} | {sps} | {r['steps']} ({r['epochs']:.2f}) | {len(r['seeds'])} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--work", default="runs/bench_vqa_rad")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", choices=list(STAGE_CONFIGS) + ["prepare"], help="one method (ablations run only so)")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate a seeded subsample (default: all 451)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # internal: one run, result on stdout
    args = parser.parse_args()
    work = Path(args.work)
    if args.only == "prepare":
        print(prepare(args.data_root, work))
        return
    if args.child:  # one run in its own process (its own peak memory), result on stdout
        print("RESULT " + json.dumps(run_method(args.only, args.seeds[0], args.data_root, work, args.eval_limit)), flush=True)
        return
    subprocess.run([sys.executable, __file__, "--data-root", args.data_root, "--work", str(work), "--only", "prepare"], check=True)
    for seed in args.seeds:
        for method in [args.only] if args.only else list(METHODS):
            if method == "zero_shot" and seed != args.seeds[0]:
                continue  # no training: the same model whatever the seed
            target = RUNS / f"{method}_seed{seed}.json"
            if target.is_file():
                continue
            cmd = [sys.executable, __file__, "--data-root", args.data_root, "--work", str(work), "--only", method,
                   "--seeds", str(seed), "--child"] + (["--eval-limit", str(args.eval_limit)] if args.eval_limit else [])
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            _write_json(target, json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
            runs = [json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))]
            _write_json(RESULTS / "vqa_rad.json", summarize(runs))
            update_grounding(runs)
            print(table(summarize(runs)), flush=True)


if __name__ == "__main__":
    main()
