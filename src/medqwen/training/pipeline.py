"""An experiment = a model + a sequence of stages + evaluation sets (see config.py)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

from medqwen.data import read_dataset
from medqwen.eval.report import write_results

from .config import DataSpec, ExperimentConfig
from .evaluate import evaluate_caption_model, evaluate_pope_model, evaluate_ranked_model, evaluate_vqa_model
from .batches import FeatureCache, supports_feature_cache
from .trainer import Trainer, make_accelerator


def load_data(specs: list[DataSpec], seed: int = 0) -> list:
    """Read every DataSpec (limit -> seeded subsample) and mix them (weights -> proportions)."""
    from medqwen.data import mix_datasets

    lists = []
    for spec in specs:
        samples = list(read_dataset(spec.format, spec.path, spec.split, **spec.options))
        if spec.limit is not None and spec.limit < len(samples):
            random.Random(seed).shuffle(samples)
            samples = samples[: spec.limit]
        lists.append(samples)
    weights = [spec.weight for spec in specs] if any(spec.weight is not None for spec in specs) else None
    if weights is not None:
        weights = [1.0 if w is None else w for w in weights]
    if len(lists) == 1 and weights is None:
        return lists[0]
    return mix_datasets(lists, weights=weights, seed=seed)


def build_model(config: ExperimentConfig):
    from medqwen.models import load_model

    return load_model(config.model, system_prompt=config.system_prompt, **config.model_kwargs)


def check_data_paths(config: ExperimentConfig) -> None:
    """Every local data path of every stage and evaluation set exists (hub ids, and the synthetic set
    that is generated on first use, are not checked)."""
    specs = [(f"stage {stage.name!r} data[{i}]", spec) for stage in config.stages for i, spec in enumerate(stage.data)]
    specs += [(f"eval[{i}]", spec) for i, spec in enumerate(config.eval)]
    for where, spec in specs:
        if spec.path is None or spec.format in ("synthetic",) or spec.format.startswith("hf") or str(spec.path).startswith("hf://"):
            continue
        if not Path(spec.path).exists():
            raise FileNotFoundError(f"{where}: field 'path' = {spec.path!r} does not exist (format {spec.format!r})")


def prepare_output_dir(out: Path, *, resume: bool, overwrite: bool, accelerator=None) -> None:
    """A non-empty output folder is continued (`resume`), emptied (`overwrite`) or refused.

    With several processes (`accelerator`), every rank checks before any rank writes (so all of them
    refuse together) and only the main process deletes."""
    if resume and overwrite:
        raise ValueError("choose one of --resume (continue the run in the output folder) and --overwrite (start over)")
    delete = out.is_dir() and any(out.iterdir()) and not resume
    if delete and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty: pass --resume to continue that run, --overwrite to "
                              f"delete it and start over, or choose another --output-dir")
    if accelerator is not None:
        accelerator.wait_for_everyone()  # every rank has looked before the main process deletes
    if delete and (accelerator is None or accelerator.is_main_process):
        shutil.rmtree(out)
    if accelerator is not None:
        accelerator.wait_for_everyone()


def run_experiment(
    config: ExperimentConfig, *, resume: bool = False, overwrite: bool = False, model=None, blank_control: bool = True, log=print
) -> dict[str, Any]:
    """Train every stage in order, save `output_dir/final`, evaluate; returns the results.
    A non-empty output folder needs `resume` (continue) or `overwrite` (start over)."""
    out = Path(config.output_dir)
    check_data_paths(config)  # a typo in stage 3 or in an eval set must not surface after stages 1-2 trained
    accelerator = make_accelerator()  # under torchrun / accelerate launch: this process's rank
    prepare_output_dir(out, resume=resume, overwrite=overwrite, accelerator=accelerator)
    if model is None:
        with accelerator.main_process_first():  # downloads and conversions into the model cache happen once
            model = build_model(config)
    trainer = Trainer(model, output_dir=out, seed=config.seed, accelerator=accelerator)
    results: dict[str, Any] = {"stages": {}}
    for stage in config.stages:
        with accelerator.main_process_first():  # a generated (synthetic) set is written by the main process only
            samples = load_data(stage.data, config.seed)
        if accelerator.is_main_process:
            log(f"stage {stage.name}: {len(samples)} samples, trainable {stage.trainable}"
                + (f", {accelerator.num_processes} processes" if accelerator.num_processes > 1 else ""))
        results["stages"][stage.name] = trainer.run_stage(stage, samples, resume=resume)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:  # other ranks only helped train; evaluation runs on the main process
        return results
    final = trainer.save(out / "final", extra={"stages": [s.name for s in config.stages]})
    if trainer.adapter is not None:
        trainable, total = trainer.adapter.trainable_parameters()
        results["adapter_parameters"] = {"trainable": trainable, "total": total}
    cache = trainer.feature_cache if supports_feature_cache(trainer.vlm) else None
    results["eval"] = evaluate_sets(trainer.model, config.eval, config, out, blank_control=blank_control, cache=cache)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    results["final_dir"] = str(final)
    return results


def evaluate_sets(
    model, specs: list[DataSpec], config: ExperimentConfig, out: Path, *, blank_control: bool, cache: FeatureCache | None = None
) -> dict:
    scores = {}
    for spec in specs:
        samples = load_data([spec], config.seed)
        name = spec.name or f"{spec.format}_{spec.split}" + ("" if spec.task == "vqa" else f"_{spec.task}")
        if spec.task == "caption":
            metrics = dict(evaluate_caption_model(model, samples, batch_size=config.eval_batch_size, cache=cache))
        elif spec.task == "rank":
            metrics = dict(evaluate_ranked_model(model, samples, batch_size=2 * config.eval_batch_size, blank_control=blank_control, cache=cache))
        elif spec.task == "pope":
            metrics = dict(evaluate_pope_model(model, samples, seed=config.seed, batch_size=config.eval_batch_size, cache=cache))
        else:
            metrics = dict(evaluate_vqa_model(model, samples, batch_size=config.eval_batch_size,
                                              max_new_tokens=config.max_new_tokens, blank_control=blank_control, cache=cache))
        records = metrics.pop("records")
        (out / "eval").mkdir(parents=True, exist_ok=True)
        with open(out / "eval" / f"{name}_predictions.jsonl", "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
        write_results(metrics, out / "eval", name)
        scores[name] = metrics
    return scores
