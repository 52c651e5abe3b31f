"""Zero-shot radiology classification with a CPU-scale dual encoder: aligned vs LoRA vs SSLoRA vs full FT vs MoE.

Model: EfficientNet-Lite0 (ImageNet) + all-MiniLM-L6-v2, linear heads to 256-d, learnable temperature
(``medqwen.dual.mini``). Recipe:

1. **Alignment** (once): the heads and temperature on ROCOv2 *train* captions (towers frozen, their
   features computed once), symmetric InfoNCE.
2. **Fine-tuning** (per method and seed, equal data and steps): image-caption pairs built from the
   *training* splits' labels (PneumoniaMNIST train, VQA-RAD images not in its test set, ROCOv2 train
   modalities, brain-tumour MRI train; at most ``--per-class`` images per class, one seeded caption
   per image from the task's prompts), contrastive loss with same-class positives; heads trained in
   every method, plus: ``lora`` r=32 / ``sslora`` 2-of-8 r=32 on the towers' Linear layers and
   1x1 convs (same target list), ``full_ft`` every tower weight, ``full_moe`` 8 full copies of each
   targeted weight + routers (top-2). ``aligned`` is the alignment-only model; ``heads`` a heads-only control.
3. **Zero-shot evaluation** on images disjoint from all training data: PneumoniaMNIST test, VQA-RAD
   test images (organ), ROCOv2 valid (modality), brain-tumour MRI test (class); accuracy, balanced
   accuracy, ROC-AUC (macro one-vs-rest), then their mean over datasets (``average``).

Each (method, seed) runs in its own process and writes benchmarks/results/zero_shot_runs/<method>_seed<k>.json
when it finishes; re-running skips finished runs, and an interrupted run resumes from its last training
checkpoint (every 25 steps, <work>/checkpoints/<method>_seed<k>/; a finished training is not redone if
evaluation was cut off). The summary (means and std over seeds) and the BiomedCLIP-sized parameter table go
to benchmarks/results/zero_shot.json.

    python benchmarks/zero_shot.py --data-root ../shared/data                 # everything, resumable
    python benchmarks/zero_shot.py --data-root ../shared/data --only sslora --seeds 0
    python benchmarks/zero_shot.py --params-only                              # just the parameter table
    python benchmarks/zero_shot.py --summary-only                             # re-summarize finished runs
    python benchmarks/zero_shot.py --data-root ../shared/data --quick         # smoke run (work dir only)
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
COMMAND = "python benchmarks/zero_shot.py --data-root ../shared/data"
METHODS = ("aligned", "heads", "lora", "sslora", "full_ft", "full_moe")
MULTI_SEED = ("lora", "sslora")  # the others run seed 0 only
LR = {"heads": 3e-4, "lora": 3e-4, "sslora": 3e-4, "full_ft": 1e-5, "full_moe": 1e-5}
EVAL_TASKS = [("pneumoniamnist", "pneumoniamnist", "test"), ("vqa_rad_organ", "vqa_rad", "test"),
              ("roco_modality", "rocov2_sample", "val"), ("image_folder", "brain_tumor_mri", "test")]
FULL = {"align_steps": 400, "align_batch": 64, "steps": 300, "batch_size": 32, "per_class": 100, "eval_limit": None,
        "align_limit": None, "image_size": 224, "head_lr": 3e-4}
QUICK = {"align_steps": 5, "align_batch": 8, "steps": 3, "batch_size": 4, "per_class": 3, "eval_limit": 12,
         "align_limit": 16, "image_size": 224, "head_lr": 3e-4}


def _write_json(path: Path, data) -> None:
    from medqwen.continual.io import write_json  # atomic: temp file + rename

    write_json(path, data, indent=2)


def eval_tasks(data_root: str, limit: int | None, seed: int = 0):
    from medqwen.eval.zero_shot_tasks import build_task

    return [build_task(kind, Path(data_root) / folder, split).subset(limit, seed) for kind, folder, split in EVAL_TASKS]


def train_tasks(data_root: str, per_class: int | None, seed: int = 0):
    """The labelled training data: the training splits of the evaluation datasets (images disjoint from them)."""
    from medqwen.eval.zero_shot_tasks import build_task, vqa_rad_images

    root = Path(data_root)
    tasks = [build_task("pneumoniamnist", root / "pneumoniamnist", "train"),
             build_task("vqa_rad_organ", root / "vqa_rad", "train", exclude_images=vqa_rad_images(root / "vqa_rad", "test")),
             build_task("roco_modality", root / "rocov2_sample", "train"),
             build_task("image_folder", root / "brain_tumor_mri", "train")]
    return [t.per_class(per_class, seed) for t in tasks]


def training_pairs(data_root: str, per_class: int | None, seed: int):
    from medqwen.dual import task_pairs

    pairs, offset = [], 0
    for task in train_tasks(data_root, per_class):
        pairs += task_pairs(task, seed=seed, label_offset=offset)
        offset += len(task.classes)
    return pairs


def align(data_root: str, work: Path, cfg: dict) -> Path:
    """Alignment once: heads on ROCOv2 train captions; returns the saved heads file."""
    from safetensors.torch import save_file

    from medqwen.data.captions import read_roco
    from medqwen.data.schema import load_image
    from medqwen.dual import Pair, align_heads, mini_dual_encoder

    target = work / "aligned" / "heads.safetensors"
    if target.is_file():
        return target
    model = mini_dual_encoder(image_size=cfg["image_size"], seed=0)
    samples = read_roco(Path(data_root) / "rocov2_sample", "train")[: cfg["align_limit"]]
    pairs = [Pair(lambda s=s: load_image(s), s.answer, i) for i, s in enumerate(samples)]
    start = time.perf_counter()
    history = align_heads(model, pairs, steps=cfg["align_steps"], batch_size=cfg["align_batch"], lr=1e-3, seed=0,
                          log=lambda r: print("align", r, file=sys.stderr, flush=True))
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({n: p.detach().contiguous() for n, p in model.head_parameters().items()}, str(target))
    _write_json(target.parent / "alignment.json", {"pairs": len(pairs), "steps": cfg["align_steps"], "history": history,
                                                   "seconds": time.perf_counter() - start})
    return target


def run_method(method: str, seed: int, data_root: str, work: Path, cfg: dict) -> dict:
    """One (method, seed): load the aligned model, fine-tune (unless aligned), evaluate every task."""
    import torch
    from safetensors.torch import load_file

    from medqwen.dual import MethodSpec, apply_method, mini_dual_encoder, trainable_count, train_pairs
    from medqwen.eval.zero_shot import zero_shot_scores

    model = mini_dual_encoder(image_size=cfg["image_size"], seed=0)
    heads = load_file(str(align(data_root, work, cfg)))
    with torch.no_grad():
        for name, param in model.head_parameters().items():
            param.copy_(heads[name])
    base_params = sum(p.numel() for p in model.parameters())
    spec = MethodSpec(method, r=32, num_experts=8, top_k=2, seed=seed)
    trained = apply_method(model, spec)
    torch.manual_seed(seed)
    result = {"method": method, "seed": seed, "trainable_params": trainable_count(trained), "base_params": base_params,
              "steps": 0, "s_per_step": None, "lr": LR.get(method), "head_lr": cfg["head_lr"]}
    result["trainable_pct"] = 100.0 * result["trainable_params"] / base_params
    if method != "aligned":
        pairs = training_pairs(data_root, cfg["per_class"], seed)
        history = train_pairs(trained, pairs, steps=cfg["steps"], batch_size=cfg["batch_size"], lr=LR[method],
                              head_lr=cfg["head_lr"], seed=seed,
                              log=lambda r: print(method, seed, r, file=sys.stderr, flush=True),
                              checkpoint_dir=checkpoint_dir(work, method, seed), checkpoint_every=25)
        result.update(steps=cfg["steps"], pairs=len(pairs), epochs=cfg["steps"] * cfg["batch_size"] / len(pairs),
                      s_per_step=statistics.median(h["s_per_step"] for h in history), history=history)
    result["datasets"] = {}
    for task in eval_tasks(data_root, cfg["eval_limit"]):
        scores = zero_shot_scores(trained, task)
        print(method, seed, task.name, {k: scores[k] for k in ("acc", "balanced_acc", "auc")}, file=sys.stderr, flush=True)
        result["datasets"][task.name] = {k: scores[k] for k in ("acc", "balanced_acc", "auc", "n", "recall_by_class")}
    result["peak_mem_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def checkpoint_dir(work: Path, method: str, seed: int) -> Path:
    """Where a run's training checkpoints go (every 25 steps; an interrupted run resumes there; removed once
    its result file is written)."""
    return work / "checkpoints" / f"{method}_seed{seed}"


def summarize(runs: list[dict]) -> dict:
    """Per method: per dataset and averaged over datasets, mean (and std over seeds) of acc / balanced_acc / auc."""
    out = {}
    for method in METHODS:
        mine = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
        if not mine:
            continue
        common = {"trainable_params": mine[0]["trainable_params"], "trainable_pct": mine[0]["trainable_pct"],
                  "seeds": [r["seed"] for r in mine]}
        entry = {}
        names = list(mine[0]["datasets"])
        for name in names + ["average"]:
            row = dict(common)
            for metric in ("acc", "balanced_acc", "auc"):
                if name == "average":
                    values = [statistics.mean(r["datasets"][d][metric] for d in names) for r in mine]
                else:
                    values = [r["datasets"][name][metric] for r in mine]
                row[metric] = statistics.mean(values)
                row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            if name != "average":
                row["n"] = mine[0]["datasets"][name]["n"]
            entry[name] = row
        entry["_run"] = {"steps": mine[0]["steps"], "s_per_step": mine[0]["s_per_step"], "lr": mine[0]["lr"],
                         "peak_mem_mb": max(r["peak_mem_mb"] for r in mine)}
        out[method] = entry
    return out


def param_table() -> dict:
    from medqwen.dual.params import PAPER, parameter_table, targeted_modules

    return {"model": "BiomedCLIP-sized: ViT-B/16 (CLIPVisionConfig, 224 px) + PubMedBERT-base (BertConfig), "
                     "linear image head 768->512, MLP text head 768->640->512, built on the meta device",
            "targeted_modules": targeted_modules(), "note": "heads not counted as trainable; % of the base model's parameters",
            "rows": parameter_table(), "paper": PAPER}


def markdown(summary: dict) -> str:
    lines = ["| method | " + " | ".join(d for d in next(iter(summary.values())) if not d.startswith("_")) + " | trainable % | seeds |",
             "|---|" + "---:|" * (len([d for d in next(iter(summary.values())) if not d.startswith("_")]) + 2)]
    for method, entry in summary.items():
        cells = [f"{100 * v['acc']:.1f} / {100 * v['balanced_acc']:.1f} / {v['auc']:.3f}"
                 for d, v in entry.items() if not d.startswith("_")]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {entry['average']['trainable_pct']:.2f}% | {len(entry['average']['seeds'])} |")
    return "acc % / balanced acc % / AUC\n" + "\n".join(lines)


def param_markdown(table: dict) -> str:
    lines = ["| towers | r | layers | SSLoRA params (%) | LoRA params (%) | full-rank MoE params (%) | MoE / SSLoRA |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in table["rows"]:
        lines.append(f"| {r['towers']} | {r['r']} | {r['layers']} | {r['sslora_params']:,} ({r['sslora_pct']:.2f}%) | "
                     f"{r['lora_params']:,} ({r['lora_pct']:.2f}%) | {r['full_moe_params']:,} ({r['full_moe_pct']:.0f}%) | "
                     f"{r['full_moe_over_sslora']:.0f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", help="../shared/data (not needed with --params-only)")
    parser.add_argument("--work", default="runs/bench_zero_shot")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", choices=METHODS)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny subsets, a few steps, one seed; "
                        "writes only under --work/quick, never to benchmarks/results")
    parser.add_argument("--params-only", action="store_true", help="compute the parameter table and write it to the results file")
    parser.add_argument("--summary-only", action="store_true", help="rewrite the results file's summary from the finished run files")
    for key in ("steps", "batch_size", "per_class", "align_steps", "image_size", "eval_limit"):
        parser.add_argument("--" + key.replace("_", "-"), type=int, help=f"override {key} (full default {FULL[key]})")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    overrides = {k: getattr(args, k) for k in FULL if getattr(args, k, None) is not None}
    cfg.update(overrides)
    work = Path(args.work) / ("quick" if args.quick else "")
    results_file = work / "zero_shot.json" if args.quick else RESULTS / "zero_shot.json"
    runs_dir = work / "runs" if args.quick else RESULTS / "zero_shot_runs"
    if args.child:  # one run in this process, result on stdout
        print("RESULT " + json.dumps(run_method(args.only, args.seeds[0], args.data_root, work, cfg)), flush=True)
        return
    table = param_table()
    print(param_markdown(table), flush=True)
    if args.params_only:
        data = json.loads(results_file.read_text()) if results_file.is_file() else {}
        _write_json(results_file, {**data, "param_table": table})
        return
    if args.summary_only:
        print(markdown(write_summary(results_file, runs_dir, cfg, table)), flush=True)
        return
    if not args.data_root:
        parser.error("--data-root is required (except with --params-only)")
    seeds = args.seeds[:1] if args.quick else args.seeds
    align(args.data_root, work, cfg)
    for seed in seeds:
        for method in [args.only] if args.only else METHODS:
            if method not in MULTI_SEED and seed != seeds[0]:
                continue
            target = runs_dir / f"{method}_seed{seed}.json"
            if target.is_file():
                continue
            cmd = [sys.executable, __file__, "--child", "--data-root", args.data_root, "--work", args.work, "--only", method,
                   "--seeds", str(seed)] + (["--quick"] if args.quick else [])
            cmd += [a for k, v in overrides.items() for a in ("--" + k.replace("_", "-"), str(v))]
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            _write_json(target, json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
            shutil.rmtree(checkpoint_dir(work, method, seed), ignore_errors=True)
            print(markdown(write_summary(results_file, runs_dir, cfg, table)), flush=True)


def write_summary(results_file: Path, runs_dir: Path, cfg: dict, table: dict) -> dict:
    """Summarize every finished run file into the results file (re-read from disk, so parallel drivers
    that finish together still leave a complete summary once either is re-run with --summary-only)."""
    summary = summarize([json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))])
    config = dict(cfg) | {"lr": LR, "eval_tasks": EVAL_TASKS, "r": 32, "num_experts": 8, "top_k": 2}
    _write_json(results_file, {**summary, "param_table": table, "_setup": config, "_command": COMMAND})
    return summary


if __name__ == "__main__":
    main()
