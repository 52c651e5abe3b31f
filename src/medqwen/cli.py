"""`medqwen train | eval | predict | serve | demo | continual` — each command is the typed function below."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from sslora.typed_cli import build_parser, run


def load_trained(model_dir: str | Path):
    """A model saved by `medqwen train` (its `final/` folder): base + projector (+ SSLoRA adapter);
    an incomplete folder is refused (see medqwen.predict.check_model_dir)."""
    from medqwen.predict import load_trained as load

    return load(model_dir)


def train(config: Path, data_root: Path | None = None, output_dir: Path | None = None, resume: bool = False,
          overwrite: bool = False) -> dict:
    """Run an experiment YAML: every stage in order, then its evaluation sets.

    Args:
        config: experiment YAML (see configs/experiments/).
        data_root: value of ${data_root} in the config (e.g. ../shared/data).
        output_dir: overrides the config's output_dir.
        resume: continue from the newest checkpoint of each unfinished stage.
        overwrite: delete a non-empty output folder and start over (without it, or --resume, a
            non-empty output folder is refused).
    """
    from medqwen.training import load_experiment, run_experiment

    experiment = load_experiment(config, {"data_root": str(data_root) if data_root else None})
    if output_dir is not None:
        experiment.output_dir = str(output_dir)
    results = run_experiment(experiment, resume=resume, overwrite=overwrite)
    if "final_dir" in results:  # the main process under `accelerate launch`
        _print_scores(results["eval"])
        print(f"saved to {results['final_dir']}")
    return results


def eval(model_dir: Path, data: str, path: Path, split: str = "test", limit: int | None = None,
         blank_control: bool = False, output: Path | None = None, batch_size: int = 16) -> dict:
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
    from medqwen.eval import EvalSettings, evaluate_vqa
    from medqwen.eval.report import write_results
    from medqwen.training import DataSpec
    from medqwen.training.pipeline import load_data

    model = load_trained(model_dir)
    samples = load_data([DataSpec(format=data, path=str(path), split=split, limit=limit)])
    metrics = dict(evaluate_vqa(model, samples, EvalSettings(batch_size=batch_size, blank_control=blank_control)))
    metrics.pop("records")
    out = Path(output or Path(model_dir) / "eval")
    write_results(metrics, out, f"{data}_{split}")
    _print_scores({f"{data}_{split}": metrics})
    return metrics


def predict(model_dir: Path, image: Path | None = None, question: str | None = None,
            file: Path | None = None, max_new_tokens: int = 24, batch_size: int = 8) -> list[str]:
    """Answer a question about an image, or every line of a JSONL file {"image": ..., "question": ...}.

    Args:
        model_dir: a trained model folder (the `final/` of `medqwen train`).
        image: an image file (PNG, JPEG, ... or DICOM .dcm: rescaled, windowed, middle frame).
        question: the question about it.
        file: JSONL with one {"image", "question"} object per line (instead of --image/--question); answers
            are printed as each batch finishes; bad lines are reported by number and the others answered.
        max_new_tokens: longest answer in tokens.
        batch_size: lines of --file answered per generate call.
    """
    from medqwen.predict import predict as run_predict

    return run_predict(model_dir, image, question, file, max_new_tokens=max_new_tokens, batch_size=batch_size)


def serve(model_dir: Path, port: int = 7860, host: str = "127.0.0.1", max_new_tokens: int = 24,
          max_pixels: int = 50_000_000, examples_dir: Path | None = None) -> None:
    """Web page (Gradio) to ask a trained model about an image: PNG, JPEG or DICOM upload, a question,
    the answer, the answer with the image blanked, and which experts each adapted layer chose.

    Args:
        model_dir: a trained model folder (the `final/` of `medqwen train`: model/ and optional adapter/).
        port: TCP port of the page.
        host: address to bind; 127.0.0.1 serves this machine only (0.0.0.0 would expose it to the network).
        max_new_tokens: longest answer in tokens.
        max_pixels: largest image accepted (width x height), checked before decoding.
        examples_dir: where the clickable synthetic examples are written (default: ~/.cache/medqwen/serve_examples).
    """
    try:
        import gradio  # noqa: F401
        import matplotlib  # noqa: F401

        from medqwen.serve import launch
    except ImportError as err:
        raise ValueError(f"medqwen serve needs the serve extra ({err.name} is missing): pip install 'medqwen[serve]'") from err
    launch(model_dir, host=host, port=port, max_new_tokens=max_new_tokens, max_pixels=max_pixels,
           examples_dir=examples_dir)


def demo(data_root: Path | None = None, output_dir: Path = Path("runs/demo"), resume: bool = False) -> dict:
    """The main job: MedQwen-mini through alignment, instruction tuning and SSLoRA fine-tuning,
    then evaluation (with a blank-image control), a saved adapter and one answered question.

    Args:
        data_root: folder holding vqa_rad/ and rocov2_sample/ (e.g. ../shared/data); without it a
            small synthetic radiology VQA set is generated.
        output_dir: where checkpoints, the final model and results go.
        resume: continue an interrupted demo.
    """
    from medqwen.configs import packaged_config  # package data: found in an installed package too
    from medqwen.data.synthetic import describe_synthetic
    from medqwen.training import load_experiment, run_experiment

    start = time.perf_counter()
    if data_root is None:
        print(describe_synthetic())
        config = packaged_config("experiments/demo_synthetic.yaml")
        variables = {"data_root": str(Path(output_dir) / "data")}
    else:
        config = packaged_config("experiments/demo_vqa_rad.yaml")
        variables = {"data_root": str(data_root)}
    experiment = load_experiment(config, variables)
    experiment.output_dir = str(output_dir)
    results = run_experiment(experiment, resume=resume, overwrite=not resume)  # the demo's own folder: re-running starts over
    _print_scores(results["eval"])
    first = experiment.eval[0]
    predictions = Path(output_dir) / "eval" / f"{first.format}_{first.split}_predictions.jsonl"
    records = [json.loads(line) for line in open(predictions)]
    example = records[0]
    print(f"sample question: {example['question']!r} -> model: {example['pred']!r} (reference: {example['answer']!r})")
    print(f"adapter saved to {Path(results['final_dir']) / 'adapter'}; total {time.perf_counter() - start:.0f}s")
    return results


def continual(config: Path, method: str | None = None, seed: int | None = None, data_root: Path | None = None,
              output_dir: Path | None = None, start_from: Path | None = None, var: list[str] | None = None,
              max_steps: int | None = None, max_train: int | None = None, max_eval: int | None = None) -> dict:
    """Continual learning: train the tasks of a sequence YAML one after another with one model and one
    adapter; after each task score every task (matrix R), then forgetting, BWT, FWT, JSON/Markdown/PNG.

    Resumable: re-running the same command continues an interrupted run (finished tasks are not redone).

    Args:
        config: sequence YAML (see benchmarks/continual/sequence.yaml).
        method: a method YAML, or a name in methods/ or ablations/ next to the sequence (lora, sslora, ...).
        seed: run seed (adapter init, sample order); evaluation subsets do not depend on it.
        data_root: value of ${data_root} in the config (e.g. ../shared/data).
        output_dir: the run folder (default: <output_dir of the config>/<method>/seed<seed>).
        start_from: a saved model folder to start from (e.g. a stage-2 final/), instead of the config's model.
        var: NAME=VALUE overrides of the sequence's variables (e.g. steps_brain=20 eval_per_class=10).
        max_steps: cap every task's training steps (smoke runs).
        max_train: cap every training dataset to this many samples (smoke runs).
        max_eval: cap every evaluation dataset to this many samples (smoke runs).
    """
    import dataclasses

    from medqwen.continual import apply_limits, load_sequence, parse_overrides, run_sequence

    sequence = load_sequence(config, data_root=str(data_root) if data_root else None, method=method,
                             overrides=parse_overrides(var))
    changes = {k: v for k, v in (("seed", seed), ("start_from", str(start_from) if start_from else None)) if v is not None}
    sequence = apply_limits(dataclasses.replace(sequence, **changes), max_steps=max_steps, max_train=max_train, max_eval=max_eval)
    results = run_sequence(sequence, output_dir=output_dir)
    print(f"results: {Path(results['output_dir']) / 'results.md'}")
    return results


def _print_scores(scores: dict) -> None:
    for name, metrics in scores.items():
        keys = ("closed_acc", "open_recall", "exact_match", "blank_image/closed_acc", "blank_image/open_recall",
                "acc", "batch_calibrated/acc", "blank_image/acc", "majority", "bleu_4", "rouge_l", "meteor", "cider_d", "accuracy", "f1", "yes_ratio")
        shown = {k: metrics[k] for k in keys if k in metrics}
        print(f"{name}: " + ", ".join(f"{k}={v:.3f}" for k, v in shown.items()) + f" (n={metrics.get('n')})")


COMMANDS = {"train": train, "eval": eval, "predict": predict, "serve": serve, "demo": demo, "continual": continual}


def parser():
    """The `medqwen` command line (a jsonargparse parser; see sslora.typed_cli)."""
    return build_parser("medqwen", "MedQwen: medical VLMs with Sparse Spectral LoRA", COMMANDS,
                        positional={"train": ["config"], "continual": ["config"]})


def main(argv: list[str] | None = None) -> None:
    from medqwen.errors import TrainingDiverged

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run(parser(), COMMANDS, argv)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, TrainingDiverged) as err:
        print(f"medqwen: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
