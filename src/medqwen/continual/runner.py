"""One continual-learning run: one model, one method (adapter or trainable groups), the tasks in order.

Row 0 scores every task before any training (with the adapter attached, as the method starts); after
training task i, row i scores every task again, plus task i with blank images (the question-prior
control; row 0 has the blank control for every task). Each row is written to ``eval/row_XX.json``
as soon as it is computed, so an interrupted run resumes at the first missing row; a task's training
resumes from its newest checkpoint (``medqwen.training.Trainer``), a finished task reloads its final
weights. When every row exists, the results (JSON, Markdown, PNG) are assembled from the row files.

Layout of a run folder::

    run.json                 configuration + fingerprint (a resumed run must match it)
    train/task1_<name>/      the trainer's stage folder (checkpoints, metrics.jsonl, final/)
    eval/row_00.json ...     one file per row of R (scores, blank control, training figures)
    eval/row_01_routing.json per-task routing shares (adapters with more than one expert)
    results.json results.md R_heatmap.png R_lines.png [routing.png]
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import statistics
from pathlib import Path
from typing import Any, Callable

from .config import SequenceConfig, TaskConfig
from .io import read_json, write_json
from .report import build_results, row_labels, write_report
from .routing import expert_axis_label, plot_routing, routing_shares, routing_summary
from .tasks import read_task_data, score_task, scorer_name


def default_output_dir(config: SequenceConfig) -> Path:
    return Path(config.output_dir) / config.method.name / f"seed{config.seed}"


def stage_name(index: int, task: TaskConfig) -> str:
    return f"task{index}_{task.name}"


def row_path(out: Path, index: int, kind: str = "") -> Path:
    return out / "eval" / f"row_{index:02d}{'_' + kind if kind else ''}.json"


def build_model(config: SequenceConfig):
    """The starting model: a saved model folder (``start_from``) or a named model."""
    from medqwen.models import CONFIG_NAME, load_model

    if config.start_from:
        path = Path(config.start_from)
        if (path / "model").is_dir():
            if (path / "adapter").is_dir():
                raise ValueError(f"{path} holds an adapter: a continual run starts from a model without one "
                                 "(start from the stage before the adapter, e.g. the stage-2 final/)")
            path = path / "model"
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{config.start_from}: not a saved model folder (no {CONFIG_NAME} in it or in model/)")
        return load_model(str(path))
    return load_model(config.model, system_prompt=config.system_prompt)


def make_stage(config: SequenceConfig, index: int, task: TaskConfig):
    from medqwen.training import StageConfig

    method = config.method
    return StageConfig(
        name=stage_name(index, task), trainable=list(method.trainable), data=task.train, adapter=method.adapter,
        lr=method.lr if method.lr is not None else task.lr, epochs=task.epochs or 1.0, max_steps=task.steps,
        batch_size=task.batch_size, warmup_ratio=task.warmup_ratio, checkpoint_every=task.checkpoint_every,
    )


def start_model_sha256(start_from: str) -> str | None:
    """The starting model's weights fingerprint (runs of a grid can then say which build they share)."""
    from medqwen.models import weights_sha256

    path = Path(start_from)
    try:
        return weights_sha256(path / "model" if (path / "model").is_dir() else path)
    except FileNotFoundError:
        return None


def run_info(config: SequenceConfig) -> dict[str, Any]:
    return {
        "sequence": config.name,
        "source": config.source,
        "fingerprint": config.fingerprint(),
        "method": dataclasses.asdict(config.method),
        "seed": config.seed,
        "data_seed": config.data_seed,
        "model": config.start_from or config.model,
        **({"model_sha256": start_model_sha256(config.start_from)} if config.start_from else {}),
        "variables": config.variables,
        "tasks": [
            {"name": t.name, "scorer": scorer_name(t), "steps": t.steps, "epochs": t.epochs, "batch_size": t.batch_size,
             "lr": config.method.lr if config.method.lr is not None else t.lr, "answer_type": t.answer_type,
             "candidates": t.candidates, "train": [dataclasses.asdict(s) for s in t.train],
             "eval": [dataclasses.asdict(s) for s in t.eval]}
            for t in config.tasks
        ],
    }


def _train_figures(stage_dir: Path) -> dict[str, Any]:
    path = stage_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    import json

    by_step = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            by_step[entry["step"]] = entry  # a resumed run logs the re-done steps again: keep the last
    entries = [by_step[k] for k in sorted(by_step)]
    if not entries:
        return {}
    last = entries[-10:]
    return {"logged_steps": len(entries), "s_per_step": statistics.median(e["s_per_step"] for e in entries),
            "final_loss": statistics.fmean(e["loss"] for e in last)}


class ContinualRunner:
    """Runs (or resumes) one sequence with one method and seed. ``model`` replaces the configured one."""

    def __init__(self, config: SequenceConfig, *, output_dir: str | Path | None = None, model=None,
                 log: Callable[[str], None] = print):
        if config.method is None:
            raise ValueError("the sequence has no method")
        self.config = config
        self.out = Path(output_dir) if output_dir is not None else default_output_dir(config)
        self.model = model
        self.log = log
        self.trainer = None
        self.eval_data: dict[str, tuple[list, dict]] = {}

    # ------------------------------------------------------------------ state on disk
    def _check_run_file(self) -> dict[str, Any]:
        info = run_info(self.config)
        path = self.out / "run.json"
        if path.is_file():
            old = read_json(path)
            if old.get("fingerprint") != info["fingerprint"]:
                raise ValueError(f"{self.out} holds a run of another configuration (fingerprint {old.get('fingerprint')} "
                                 f"!= {info['fingerprint']}): use another --output-dir or delete that folder")
        else:
            write_json(path, info)
        return info

    def _rows_on_disk(self) -> dict[int, dict]:
        rows = {}
        for index in range(len(self.config.tasks) + 1):
            if row_path(self.out, index).is_file():
                rows[index] = read_json(row_path(self.out, index))
        return rows

    # ------------------------------------------------------------------ model and evaluation
    def _ensure_trainer(self):
        if self.trainer is None:
            from medqwen.training import Trainer

            model = self.model if self.model is not None else build_model(self.config)
            self.trainer = Trainer(model, output_dir=self.out / "train", seed=self.config.seed)
        return self.trainer

    def _eval_samples(self, task: TaskConfig):
        if task.name not in self.eval_data:
            self.eval_data[task.name] = read_task_data(task, "eval", self.config.data_seed)
        return self.eval_data[task.name]

    def _evaluate_row(self, index: int, blank_for: list[str]) -> tuple[dict, dict]:
        from medqwen.training.batches import supports_feature_cache

        trainer = self.trainer
        cache = trainer.feature_cache if supports_feature_cache(trainer.vlm) else None
        adapter = trainer.adapter
        track = adapter is not None and adapter.sslora_config.num_experts > 1
        scores, blank, routing = {}, {}, {}
        for task in self.config.tasks:
            samples, info = self._eval_samples(task)
            if track:
                adapter.reset_routing_stats()
            kwargs = dict(cache=cache, batch_size=self.config.eval_batch_size, max_new_tokens=self.config.max_new_tokens)
            with adapter.recording_routing() if track else contextlib.nullcontext():
                scores[task.name] = {**score_task(trainer.model, task, samples, **kwargs), "majority": info["majority"]}
            if track:
                routing[task.name] = routing_shares(adapter.routing_stats(reset=True))
            if self.config.blank_control and task.name in blank_for:
                blank[task.name] = score_task(trainer.model, task, samples, blank_images=True, **kwargs)
            shown = f"{task.name}: {100 * scores[task.name]['score']:.1f}"
            if task.name in blank:
                shown += f" (blank {100 * blank[task.name]['score']:.1f})"
            self.log(f"  [{row_labels([t.name for t in self.config.tasks])[index]}] {shown} n={len(samples)}")
        return {"row": index, "scores": scores, "blank": blank}, routing

    def _write_row(self, index: int, row: dict, routing: dict) -> None:
        if routing:
            write_json(row_path(self.out, index, "routing"), routing)
        write_json(row_path(self.out, index), row)  # last: the row counts as done once this exists

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        config = self.config
        info = self._check_run_file()
        rows = self._rows_on_disk()
        T = len(config.tasks)
        names = [t.name for t in config.tasks]
        if len(rows) < T + 1:
            trainer = self._ensure_trainer()
            method = config.method
            self.log(f"continual {config.name}: method {method.name}, seed {config.seed}, {T} tasks -> {self.out}")
            if 0 not in rows:
                if method.adapter is not None:
                    trainer.attach_adapter(method.adapter)  # row 0 scores the model as the method starts
                row, routing = self._evaluate_row(0, blank_for=names)
                row.update(after=None, train={})
                self._write_row(0, row, routing)
                rows[0] = row
            for index, task in enumerate(config.tasks, 1):
                stage = make_stage(config, index, task)
                stage_dir = trainer.output_dir / stage.name
                done = (stage_dir / "final" / "stage_done.json").is_file()
                if index in rows and done:
                    if all(k in rows for k in range(index, T + 1)):
                        break  # every later row exists too: nothing left to train
                    trainer.run_stage(stage, [], resume=True)  # loads the task's final weights
                    continue
                samples, train_info = read_task_data(task, "train", config.data_seed)
                self.log(f"task {index}/{T} {task.name}: {len(samples)} training samples, "
                         f"{stage.max_steps or stage.epochs} {'steps' if stage.max_steps else 'epochs'}")
                trainer.run_stage(stage, samples, resume=True)
                if index in rows:
                    continue
                figures = _train_figures(stage_dir)
                trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
                row, routing = self._evaluate_row(index, blank_for=[task.name])
                row.update(after=task.name, train={"n_train": len(samples), "data": train_info, "trainable_params": trainable,
                                                   "lr": stage.lr, "steps": stage.max_steps, **figures})
                self._write_row(index, row, routing)
                rows[index] = row
                if not config.keep_checkpoints and (stage_dir / "final" / "stage_done.json").is_file():
                    shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)
        ordered = [rows[i] for i in range(T + 1)]
        for task_info in info["tasks"]:
            first = ordered[0]["scores"][task_info["name"]]
            task_info.update(n_eval=first["n"], majority=first.get("majority"))
        results = build_results(info, ordered)
        results["output_dir"] = str(self.out)
        routing_rows = {i: read_json(row_path(self.out, i, "routing")) for i in range(T + 1) if row_path(self.out, i, "routing").is_file()}
        if T in routing_rows:
            labels = row_labels(names)
            results["routing"] = {labels[i]: routing_summary(r, names) for i, r in routing_rows.items()}
            plot_routing(routing_rows[T], names, self.out / "routing.png",
                         title=f"token share per expert, final model: {config.method.name}, seed {config.seed}",
                         expert_label=expert_axis_label(config.method.adapter))
        write_report(results, self.out)
        metrics = results["metrics"]
        forgetting = "—" if metrics["forgetting"] is None else f"{100 * metrics['forgetting']:.1f}%"
        self.log(f"done: final avg {100 * metrics['final_avg']:.1f}%, mean relative forgetting {forgetting} -> {self.out}")
        return results


def run_sequence(config: SequenceConfig, **kwargs) -> dict[str, Any]:
    return ContinualRunner(config, **kwargs).run()
