"""Cost of scoring closed questions by likelihood ranking, the bulk of a continual run's evaluation.

Three scorers on the eval sets of the continual sequence (real data, MedQwen-mini with the SSLoRA
adapter every continual run starts from):

- ``per_row``: one teacher-forced row per (question, candidate): the sequence scorer as it was;
- ``prefix_shared``: the same scores with each question's prompt run once on the KV cache, the
  candidates' answer tokens on top of it (what ``medqwen.eval.ranking`` now uses on MedQwen-mini);
- ``first_token``: log p(first answer token) from the prompt alone (not the same scores; a floor).

Reports per task: seconds per question (median over rounds, the scorers alternated in rotated order
within one process), the ratio to ``per_row``, and how far the prefix-shared scores are from the
per-row ones (max |difference| in nats, argmax agreement, accuracy of each).

    python benchmarks/eval_speed.py --data-root ../shared/data --model-dir runs/grounding/labels_lora/stage1_alignment/final
    python benchmarks/eval_speed.py --quick    # tiny random model, synthetic questions: checks the script runs

Take timings with nothing else running on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from medqwen.eval.evaluators import feature_cache_for  # noqa: E402
from medqwen.eval.ranking import first_token_logprobs, per_row_logprobs, prefix_shared_logprobs  # noqa: E402

SCORERS = {"per_row": per_row_logprobs, "prefix_shared": prefix_shared_logprobs, "first_token": first_token_logprobs}


def real_tasks(data_root: Path, limit: int) -> dict[str, list]:
    """The continual sequence's eval samples per task, cut to ``limit`` questions (fixed order)."""
    from medqwen.continual import load_sequence
    from medqwen.continual.tasks import read_task_data

    config = load_sequence(HERE / "continual" / "sequence.yaml", data_root=data_root, method="sslora")
    return {task.name: read_task_data(task, "eval", config.data_seed)[0][:limit] for task in config.tasks}


def quick_tasks(limit: int) -> dict[str, list]:
    from PIL import Image

    from medqwen.data.schema import Sample

    def sample(i: int, question: str, options: list[str]) -> Sample:
        pixels = (np.random.RandomState(i).rand(32, 32, 3) * 255).astype("uint8")
        return Sample([], question, options[i % len(options)], "closed", "quick", "test", {"candidates": options},
                      Image.fromarray(pixels))

    return {"three_way": [sample(i, "Which type of tumor?", ["glioma", "meningioma", "pituitary"]) for i in range(limit)],
            "yes_no": [sample(i, "Is there pneumonia?", ["yes", "no"]) for i in range(limit)]}


def build_model(model_dir: str | None):
    from medqwen.models import load_model, tiny_mini
    from medqwen.training.config import adapter_config
    from sslora import get_sslora_model

    if model_dir is not None and (Path(model_dir) / "model").is_dir():  # a stage's final/ folder
        model_dir = str(Path(model_dir) / "model")
    vlm = tiny_mini(seed=0) if model_dir is None else load_model(model_dir)
    spec = {"kind": "sslora", "r": 32, "num_experts": 8, "top_k": 2, "init": "spectral", "scaling": "optimal",
            "eta": 0.1, "rho": 10.0, "aux_loss_coef": 0.01, "seed": 0}
    if model_dir is None:
        spec.update(r=8, num_experts=4)
    return get_sslora_model(vlm, adapter_config(spec)).eval()


def measure(model, samples: list, rounds: int, batch_size: int) -> dict:
    candidates = [s.extra["candidates"] for s in samples]
    cache = feature_cache_for(model)
    for fn in SCORERS.values():  # warm-up: image features cached, allocator warm
        fn(model, samples[: min(4, len(samples))], candidates[:4], cache=cache, batch_size=batch_size)
    times = {name: [] for name in SCORERS}
    scores = {}
    names = list(SCORERS)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            scores[name] = SCORERS[name](model, samples, candidates, cache=cache, batch_size=batch_size)
            times[name].append(time.perf_counter() - start)
    gold = [options.index(s.answer) for s, options in zip(samples, candidates)]
    out = {"n": len(samples), "candidates": sorted({len(c) for c in candidates}), "scorers": {}}
    for name in names:
        picked = [int(np.argmax(row)) for row in scores[name]]
        median = statistics.median(times[name])
        out["scorers"][name] = {"s_per_question": median / len(samples), "seconds": times[name],
                                "vs_per_row": median / statistics.median(times["per_row"]),
                                "acc": float(np.mean([p == g for p, g in zip(picked, gold)]))}
    fast, slow = scores["prefix_shared"], scores["per_row"]
    out["prefix_shared_max_abs_diff"] = max(abs(a - b) for f, s in zip(fast, slow) for a, b in zip(f, s))
    out["prefix_shared_argmax_agreement"] = float(np.mean([np.argmax(f) == np.argmax(s) for f, s in zip(fast, slow)]))
    return out


def markdown(results: dict) -> str:
    lines = ["| task | n | scorer | s / question | vs per_row | acc |", "|---|---:|---|---:|---:|---:|"]
    for task, r in results["tasks"].items():
        for name, s in r["scorers"].items():
            lines.append(f"| {task} | {r['n']} | {name} | {s['s_per_question']:.3f} | {s['vs_per_row']:.2f}x | {100 * s['acc']:.1f} |")
    lines.append("")
    for task, r in results["tasks"].items():
        lines.append(f"- {task}: prefix_shared vs per_row: max |diff| {r['prefix_shared_max_abs_diff']:.2e} nats, "
                     f"argmax agreement {100 * r['prefix_shared_argmax_agreement']:.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, help="../shared/data (the continual tasks' eval sets)")
    parser.add_argument("--model-dir", help="saved model folder to score with (the continual runs' starting model)")
    parser.add_argument("--limit", type=int, default=96, help="questions per task")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="as the continual runs' eval_batch_size")
    parser.add_argument("--quick", action="store_true", help="tiny random model and synthetic questions")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "eval_speed.json")
    args = parser.parse_args(argv)
    if not args.quick and (args.data_root is None or args.model_dir is None):
        parser.error("--data-root and --model-dir are required (or --quick)")
    torch.manual_seed(0)
    model = build_model(None if args.quick else args.model_dir)
    tasks = quick_tasks(min(args.limit, 12)) if args.quick else real_tasks(args.data_root, args.limit)
    results = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
               "threads": torch.get_num_threads(), "rounds": args.rounds, "batch_size": args.batch_size, "tasks": {}}
    for name, samples in tasks.items():
        results["tasks"][name] = measure(model, samples, args.rounds, args.batch_size)
        print(f"{name}: " + ", ".join(f"{k} {v['s_per_question']:.3f} s/q ({v['vs_per_row']:.2f}x)"
                                      for k, v in results["tasks"][name]["scorers"].items()), flush=True)
    results["markdown"] = markdown(results)
    print(results["markdown"])
    if not args.quick:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=1) + "\n")
        print(f"-> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
