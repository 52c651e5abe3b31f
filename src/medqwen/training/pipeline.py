"""An experiment = a model + a sequence of stages + evaluation sets (see config.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from medqwen.data.images import decode_files
from medqwen.eval.evaluators import EvalSettings, get_evaluator
from medqwen.eval.report import write_results
from medqwen.models import check_model_name

from .config import DataSpec, ExperimentConfig
from .batches import FeatureCache, supports_feature_cache
from .preflight import SpecData, decode_check, mix, read_spec, skip_counts
from .trainer import Trainer, make_accelerator


def load_data(specs: list[DataSpec], seed: int = 0, *, where: str = "data") -> list:
    """Read every DataSpec (limit -> seeded subsample), check its images (header, then a full decode;
    bad ones are an error naming them, or skipped with ``skip_invalid``) and mix them (weights ->
    proportions)."""
    parts = [read_spec(spec, seed, f"{where}[{i}]") for i, spec in enumerate(specs)]
    decode_check(parts)
    return mix(parts, seed)


def read_experiment_data(config: ExperimentConfig) -> tuple[dict[str, list[SpecData]], list[SpecData]]:
    """Every stage's and evaluation set's data, read and header-checked: a bad option, file or image
    anywhere is found before the model is built and before any stage trains."""
    stages = {stage.name: [read_spec(spec, config.seed, f"stage {stage.name!r} data[{i}]") for i, spec in enumerate(stage.data)]
              for stage in config.stages}
    return stages, [read_spec(spec, config.seed, f"eval[{i}]") for i, spec in enumerate(config.eval)]


def _image_decoder(trainer: Trainer, config: ExperimentConfig):
    """The full-decode check: images whose features the trainer's cache already holds (memory or disk,
    for this file version) decoded before and are not decoded again, when the vision tower stays
    frozen for the whole run (otherwise cached features are not used, and every file is decoded)."""
    cache = trainer.feature_cache
    vision_trained = any("vision" in st.trainable or "vision" in str((st.adapter or {}).get("target_modules", ""))
                         for st in config.stages)
    if cache is None or vision_trained or not supports_feature_cache(trainer.vlm):
        return decode_files
    return lambda sample: None if cache.has_stored(sample) else decode_files(sample)


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
    if model is None:
        check_model_name(config.model)
    accelerator = make_accelerator()  # under torchrun / accelerate launch: this process's rank
    prepare_output_dir(out, resume=resume, overwrite=overwrite, accelerator=accelerator)
    with accelerator.main_process_first():  # a generated (synthetic) set is written by the main process only
        stage_data, eval_data = read_experiment_data(config)
    if model is None:
        with accelerator.main_process_first():  # downloads and conversions into the model cache happen once
            model = build_model(config)
    trainer = Trainer(model, output_dir=out, seed=config.seed, accelerator=accelerator)
    every_part = [p for parts in stage_data.values() for p in parts] + eval_data
    with accelerator.main_process_first():
        decode_check(every_part, _image_decoder(trainer, config))
    results: dict[str, Any] = {"stages": {}}
    skipped = skip_counts(every_part)
    if skipped:
        results["skipped"] = skipped
    for stage in config.stages:
        samples = mix(stage_data[stage.name], config.seed)
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
    results["eval"] = evaluate_sets(trainer.model, config.eval, config, out, blank_control=blank_control, cache=cache,
                                    data=[p.samples for p in eval_data])
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if trainer.adapter is not None:
        _write_final_card(final / "adapter", trainer.adapter, config, results)
    results["final_dir"] = str(final)
    return results


def _write_final_card(directory: Path, adapter, config: ExperimentConfig, results: dict[str, Any]) -> None:
    """The final adapter's model card: every stage's data and steps, and the evaluation results."""
    from sslora.model_card import write_model_card

    datasets = [d.name or d.format for stage in config.stages for d in stage.data]
    training = {"datasets": list(dict.fromkeys(datasets)),
                "steps": sum(int(r.get("steps", 0)) for r in results["stages"].values() if isinstance(r, dict)),
                "stages": [{"name": st.name, "trainable": st.trainable, "learning_rate": st.lr} for st in config.stages],
                "seed": config.seed}
    evals = {name: {k: v for k, v in scores.items() if "/" not in k} for name, scores in results.get("eval", {}).items()}
    write_model_card(directory, adapter.sslora_config.to_dict(), base_model=adapter.base_model,
                     trainable_params=(adapter.adapter_parameter_count(), results["adapter_parameters"]["total"]), training=training, results=evals)


def evaluate_sets(
    model, specs: list[DataSpec], config: ExperimentConfig, out: Path, *, blank_control: bool, cache: FeatureCache | None = None,
    data: list[list] | None = None,
) -> dict:
    """Score every evaluation set with its task's evaluator (`data`: their samples, already read and
    checked, else read here); results and predictions go to `out/eval/<set's output_name>.*`."""
    settings = EvalSettings(batch_size=config.eval_batch_size, max_new_tokens=config.max_new_tokens,
                            blank_control=blank_control, seed=config.seed, cache=cache)
    scores = {}
    for i, spec in enumerate(specs):
        evaluator = get_evaluator(spec.task)
        samples = data[i] if data is not None else load_data([spec], config.seed, where=f"eval[{i}]")
        name = spec.output_name
        metrics = dict(evaluator(model, samples, settings))
        records = metrics.pop("records")
        (out / "eval").mkdir(parents=True, exist_ok=True)
        with open(out / "eval" / f"{name}_predictions.jsonl", "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
        write_results(metrics, out / "eval", name)
        scores[name] = metrics
    return scores
