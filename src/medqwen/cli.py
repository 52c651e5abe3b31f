"""`medqwen train | eval | predict | demo` — each command is the typed function below."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from sslora._cli import run

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def load_trained(model_dir: str | Path):
    """A model saved by `medqwen train` (its `final/` folder): base + projector (+ SSLoRA adapter)."""
    from medqwen.models import load_model
    from sslora import SSLoRAModel

    model_dir = Path(model_dir)
    if not (model_dir / "model").is_dir():
        raise FileNotFoundError(f"{model_dir}: expected a trained model folder with model/ (and adapter/) inside")
    model = load_model(str(model_dir / "model"))
    if (model_dir / "adapter").is_dir():
        model = SSLoRAModel.from_pretrained(model, model_dir / "adapter")
    return model.eval()


def train(config: Path, data_root: Optional[Path] = None, output_dir: Optional[Path] = None, resume: bool = False) -> dict:
    """Run an experiment YAML: every stage in order, then its evaluation sets.

    Args:
        config: experiment YAML (see configs/experiments/).
        data_root: value of ${data_root} in the config (e.g. ../shared/data).
        output_dir: overrides the config's output_dir.
        resume: continue from the newest checkpoint of each unfinished stage.
    """
    from medqwen.training import load_experiment, run_experiment

    experiment = load_experiment(config, {"data_root": str(data_root) if data_root else None})
    if output_dir is not None:
        experiment.output_dir = str(output_dir)
    results = run_experiment(experiment, resume=resume)
    if "final_dir" in results:  # the main process under `accelerate launch`
        _print_scores(results["eval"])
        print(f"saved to {results['final_dir']}")
    return results


def eval(model_dir: Path, data: str, path: Path, split: str = "test", limit: Optional[int] = None,
         blank_control: bool = False, output: Optional[Path] = None, batch_size: int = 16) -> dict:
    """Evaluate a trained model on a VQA set; writes JSON + Markdown next to `output`.

    Args:
        model_dir: a trained model folder (the `final/` of `medqwen train`).
        data: dataset format (vqa_rad, slake, pathvqa, omnimedvqa, medmnist, synthetic, ...).
        path: the dataset's folder or file.
        split: which split.
        limit: evaluate a seeded subsample of this size.
        blank_control: also score with image features zeroed (question prior control).
        output: results folder (default: <model_dir>/eval).
        batch_size: questions per generate call.
    """
    from medqwen.eval.report import write_results
    from medqwen.training import DataSpec
    from medqwen.training.evaluate import evaluate_vqa_model
    from medqwen.training.pipeline import load_data

    model = load_trained(model_dir)
    samples = load_data([DataSpec(format=data, path=str(path), split=split, limit=limit)])
    metrics = dict(evaluate_vqa_model(model, samples, batch_size=batch_size, blank_control=blank_control))
    metrics.pop("records")
    out = Path(output or Path(model_dir) / "eval")
    write_results(metrics, out, f"{data}_{split}")
    _print_scores({f"{data}_{split}": metrics})
    return metrics


def predict(model_dir: Path, image: Optional[Path] = None, question: Optional[str] = None,
            file: Optional[Path] = None, max_new_tokens: int = 24) -> list[str]:
    """Answer a question about an image, or every line of a JSONL file {"image": ..., "question": ...}.

    Args:
        model_dir: a trained model folder (the `final/` of `medqwen train`).
        image: an image file.
        question: the question about it.
        file: JSONL with one {"image", "question"} object per line (instead of --image/--question).
        max_new_tokens: longest answer in tokens.
    """
    from PIL import Image

    if (image is None) != (question is None) or (file is None) == (image is None):
        raise ValueError("give either --image and --question, or --file")
    items = [{"image": str(image), "question": question}] if file is None else _read_jsonl(file)
    model = load_trained(model_dir)
    images = [[Image.open(item["image"]).convert("RGB")] for item in items]
    answers = model.generate(images, [item["question"] for item in items], max_new_tokens)
    for item, answer in zip(items, answers):
        print(json.dumps({**item, "answer": answer}))
    return answers


def _read_jsonl(path: Path) -> list[dict]:
    items = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {number}: invalid JSON: {err.msg}") from err
            for key in ("image", "question"):
                if not item.get(key):
                    raise ValueError(f"{path}: line {number}: field {key!r} is missing or empty")
            items.append(item)
    return items


def demo(data_root: Optional[Path] = None, output_dir: Path = Path("runs/demo"), resume: bool = False) -> dict:
    """The main job: MedQwen-mini through alignment, instruction tuning and SSLoRA fine-tuning,
    then evaluation (with a blank-image control), a saved adapter and one answered question.

    Args:
        data_root: folder holding vqa_rad/ and rocov2_sample/ (e.g. ../shared/data); without it a
            small synthetic radiology VQA set is generated.
        output_dir: where checkpoints, the final model and results go.
        resume: continue an interrupted demo.
    """
    from medqwen.data.synthetic import describe_synthetic
    from medqwen.training import load_experiment, run_experiment

    start = time.perf_counter()
    if data_root is None:
        print(describe_synthetic())
        config = CONFIGS / "experiments" / "demo_synthetic.yaml"
        variables = {"data_root": str(Path(output_dir) / "data")}
    else:
        config = CONFIGS / "experiments" / "demo_vqa_rad.yaml"
        variables = {"data_root": str(data_root)}
    experiment = load_experiment(config, variables)
    experiment.output_dir = str(output_dir)
    results = run_experiment(experiment, resume=resume)
    _print_scores(results["eval"])
    first = experiment.eval[0]
    predictions = Path(output_dir) / "eval" / f"{first.format}_{first.split}_predictions.jsonl"
    records = [json.loads(line) for line in open(predictions)]
    example = records[0]
    print(f"sample question: {example['question']!r} -> model: {example['pred']!r} (reference: {example['answer']!r})")
    print(f"adapter saved to {Path(results['final_dir']) / 'adapter'}; total {time.perf_counter() - start:.0f}s")
    return results


def _print_scores(scores: dict) -> None:
    for name, metrics in scores.items():
        keys = ("closed_acc", "open_recall", "exact_match", "blank_image/closed_acc", "blank_image/open_recall",
                "bleu_4", "rouge_l", "meteor", "cider_d", "accuracy", "f1", "yes_ratio")
        shown = {k: metrics[k] for k in keys if k in metrics}
        print(f"{name}: " + ", ".join(f"{k}={v:.3f}" for k, v in shown.items()) + f" (n={metrics.get('n')})")


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run("medqwen", "MedQwen: medical VLMs with Sparse Spectral LoRA",
            {"train": train, "eval": eval, "predict": predict, "demo": demo}, argv, positional={"train": ["config"]})
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"medqwen: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
