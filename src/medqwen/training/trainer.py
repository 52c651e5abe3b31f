"""The one training loop. A stage is data (StageConfig); a run or a task sequence is a loop over stages
that reuses the same model, adapter and evaluators.

Determinism and resume: the sample order of epoch e is a permutation seeded by (seed, stage, e), so
the data position is a function of the step; a checkpoint stores the step, weights, optimizer and
RNG states, and `resume=True` continues from the newest checkpoint to the same result as a run that
was never interrupted.

Distributed (DDP; `torchrun --nproc_per_node N -m medqwen.cli train ...` or `accelerate launch
--multi_gpu --num_processes N ...`, on GPUs or, with gloo, on CPUs): each rank trains on its shard of
every global batch, gradients are all-reduced, and the loss of a step is the token mean over the
answer tokens of *all* ranks (each rank's token-mean loss is weighted by its share of the tokens), so
N ranks with batch b follow one process with batch N*b up to float rounding. The router balance loss
is per rank, averaged over ranks (as in Switch/Mixtral implementations): with `aux_loss_coef > 0` this
is the one term that differs from one process. Only the main process writes (metrics, checkpoints,
final weights, TensorBoard); the spectral init is computed by the main process first and read from the
SVD cache by the others.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from medqwen.data import Sample
from medqwen.errors import TrainingDiverged
from medqwen.models.base import IGNORE_INDEX
from sslora import SSLoRAModel, get_sslora_model

from .batches import FeatureCache, make_batch, supports_feature_cache
from .checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from .config import StageConfig, adapter_config
from .distributed import check_distributed_type, make_accelerator
from .metrics_log import MetricsLogger


def lr_at(step: int, total: int, stage: StageConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr (a pure function of the step)."""
    warmup = max(1, int(stage.warmup_ratio * total)) if stage.warmup_ratio > 0 else 0
    if step < warmup:
        return stage.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = stage.min_lr_ratio
    return stage.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _stable_seed(*parts: Any) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") % (2**31)


class Trainer:
    """Trains a VisionLanguageModel stage by stage.

    Args:
        model: the VLM (see medqwen.models).
        output_dir: stage folders (checkpoints, metrics.jsonl, TensorBoard logs, final weights).
        seed: seeds sample order and adapter init.
        accelerator: an `accelerate.Accelerator`; one is created if None.
        sslora_cache_dir: SVD cache of the spectral init (default $SSLORA_CACHE).
    """

    def __init__(self, model, *, output_dir: str | Path, seed: int = 0, accelerator=None, sslora_cache_dir=None):
        self.vlm = model
        self.adapter: SSLoRAModel | None = None
        self.output_dir = Path(output_dir)
        self.seed = seed
        self.accelerator = accelerator or make_accelerator()
        check_distributed_type(self.accelerator)
        self.sslora_cache_dir = sslora_cache_dir
        self.feature_cache = FeatureCache(model) if model.supports_image_features else None
        self.trained_groups: set[str] = set()
        self._epoch_order: tuple[tuple, list[int]] = ((), [])

    # ------------------------------------------------------------------ model parts
    @property
    def model(self):
        """What the loop calls: the adapter wrapper (adds the aux loss, masks padding) or the VLM."""
        return self.adapter if self.adapter is not None else self.vlm

    def attach_adapter(self, spec: dict[str, Any]) -> SSLoRAModel:
        """Inject the adapter of a stage once; later stages train the same adapter."""
        if self.adapter is not None:
            return self.adapter
        config = adapter_config({"seed": self.seed, **spec})
        with self.accelerator.main_process_first():  # rank 0 computes the SVDs, the others hit the cache
            self.adapter = get_sslora_model(self.vlm, config, cache_dir=self.sslora_cache_dir)
        return self.adapter

    def _set_trainable(self, stage: StageConfig) -> dict[str, torch.nn.Parameter]:
        if "adapter" in stage.trainable and stage.adapter is None and self.adapter is None:
            raise ValueError(f"stage {stage.name!r} trains 'adapter' but no stage so far defines field 'adapter'")
        if stage.adapter is not None:
            self.attach_adapter(stage.adapter)
        self.vlm.set_trainable([g for g in stage.trainable if g != "adapter"])
        if self.adapter is not None and self.adapter.sslora_config.fold_residual and "language" in stage.trainable:
            raise ValueError(
                f"stage {stage.name!r}: adapter field 'fold_residual: true' folds W_res into the frozen base "
                "weights; it cannot be combined with training the 'language' group (set fold_residual: false)"
            )
        if self.adapter is not None:
            self.adapter.set_adapter_trainable("adapter" in stage.trainable)
        self.trained_groups |= {g for g in stage.trainable if g != "adapter"}
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    # ------------------------------------------------------------------ the loop
    def run_stage(self, stage: StageConfig, samples: Sequence[Sample], *, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        """Train one stage. `stop_after` ends after that many optimizer steps (tests of resume)."""
        acc = self.accelerator
        stage_dir = self.output_dir / stage.name
        if (stage_dir / "final" / "stage_done.json").is_file() and resume:
            return self._load_final(stage, stage_dir / "final")
        params = self._set_trainable(stage)
        optimizer = torch.optim.AdamW(self._param_groups(stage, params), lr=stage.lr)
        acc.free_memory()  # drop the previous stage's wrapped model and optimizer
        model, optimizer = acc.prepare(self.model, optimizer)
        world = acc.num_processes
        shard = list(samples)
        per_step = stage.batch_size * stage.grad_accum * world
        steps_per_epoch = max(1, math.ceil(len(shard) / per_step))
        total = stage.max_steps or max(1, math.ceil(stage.epochs * steps_per_epoch))
        start = 0
        _seed_everything(_stable_seed(self.seed, stage.name, acc.process_index))  # dropout masks etc.
        if resume:
            start = self._resume_from_checkpoint(stage, stage_dir / "checkpoints", params, optimizer)
        cache = self.feature_cache if self.feature_cache is not None and supports_feature_cache(self.vlm) else None
        logger = MetricsLogger(stage_dir, enabled=acc.is_main_process, resume_step=start)
        bad_in_a_row = 0
        model.train()
        progress = tqdm(range(start, total), desc=stage.name, initial=start, total=total, disable=not acc.is_main_process)
        last = {}
        for step in progress:
            began = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, stage) * group["lr_scale"]
            lm_total = aux_total = 0.0
            micro_batches = []
            for micro in range(stage.grad_accum):
                batch_samples, real = self._micro_batch(shard, stage, step * stage.grad_accum + micro)
                micro_batches.append((make_batch(self.vlm, batch_samples, with_answers=True, cache=cache), real))
            weights = self._loss_weights(micro_batches) if world > 1 else None
            for micro, (batch, _) in enumerate(micro_batches):
                batch = {k: v.to(acc.device) for k, v in batch.items()}
                if weights is None:  # one process: exactly the loss the model returns
                    output = model(**batch)
                    aux = self.adapter.aux_loss().detach() if self.adapter is not None else torch.zeros(())
                    acc.backward(output.loss / stage.grad_accum)
                    lm_total += (output.loss.detach() - aux).item() / stage.grad_accum
                    aux_total += aux.item() / stage.grad_accum
                    continue
                # several ranks: the global token mean (gradients are averaged over the ranks, hence * world)
                lm_weight, aux_weight = weights[micro]
                sync = micro == stage.grad_accum - 1  # all-reduce once per step, after the last micro-batch
                with contextlib.nullcontext() if sync else acc.no_sync(model):
                    output = model(**batch)
                    aux = self._aux_in_loss(output.loss)
                    lm = output.loss - aux
                    acc.backward((lm * lm_weight + aux * aux_weight) * (world / stage.grad_accum))
                lm_total += (lm.detach() * lm_weight).item() / stage.grad_accum
                aux_total += (aux.detach() * aux_weight).item() / stage.grad_accum
            grad_norm = acc.clip_grad_norm_(list(params.values()), stage.max_grad_norm)
            if world > 1:  # every rank logs the global loss and takes the same skip decision
                lm_total, aux_total, bad = acc.reduce(torch.tensor(
                    [lm_total, aux_total, float(not math.isfinite(float(grad_norm)))], dtype=torch.float64, device=acc.device), "sum").tolist()
                grad_norm = math.nan if bad else grad_norm
            finite = math.isfinite(lm_total) and math.isfinite(aux_total) and math.isfinite(float(grad_norm))
            if finite:
                optimizer.step()
                bad_in_a_row = 0
            else:  # a non-finite loss or gradient never reaches the weights
                bad_in_a_row += 1
                warnings.warn(f"stage {stage.name!r} step {step + 1}: non-finite loss ({lm_total}) or gradient norm "
                              f"({float(grad_norm)}): step skipped ({bad_in_a_row} in a row)", stacklevel=2)
            optimizer.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - began
            last = {"step": step + 1, "loss": lm_total, "aux_loss": aux_total, "lr": lr_at(step, total, stage),
                    "grad_norm": float(grad_norm), "s_per_step": seconds, "samples_per_s": per_step / seconds,
                    **({} if finite else {"skipped": True})}
            progress.set_postfix(loss=f"{lm_total:.3f}", samples_s=f"{per_step / seconds:.1f}")
            if (step + 1) % stage.log_every == 0 or not finite:
                logger.log(last)
            if bad_in_a_row >= MAX_NONFINITE_STEPS:
                logger.close()
                raise TrainingDiverged(
                    f"stage {stage.name!r}: {bad_in_a_row} steps in a row (up to step {step + 1}) had a non-finite loss or "
                    f"gradient; training stopped. The weights are those of the last finite step; lower 'lr' "
                    f"(now {stage.lr}) or check the data. Checkpoints written so far are intact.")
            done = step + 1 == total
            if acc.is_main_process and ((step + 1) % stage.checkpoint_every == 0 or done):
                save_checkpoint(stage_dir / "checkpoints", trainable={**params, **self._trained_buffers(stage)}, optimizer=optimizer,
                                state={"step": step + 1, "total": total, "stage": stage.name, "metrics": last,
                                       "stage_config": stage_fingerprint(stage)}, adapter=self.adapter)
            if stop_after is not None and step + 1 - start >= stop_after and not done:
                logger.close()
                return {"stopped_at": step + 1, **last}
        logger.close()
        acc.wait_for_everyone()
        if stage.merge_adapter:
            self._merge_adapter()
        if acc.is_main_process:
            self.save(stage_dir / "final", extra={"stage": stage.name, "steps": total, **last, "stage_config": stage_fingerprint(stage)})
        return {"steps": total, **last}

    def _merge_adapter(self) -> None:
        """Fold the adapter into the language model (merge_and_unload) and save the language group from now on."""
        self.adapter.merge_and_unload()
        self.adapter = None
        self.trained_groups.add("language")

    def _resume_from_checkpoint(self, stage: StageConfig, directory: Path, params, optimizer) -> int:
        """Load the newest intact checkpoint (falling back to older ones with a warning); the step to
        continue from (0 if none). Leftover temporary folders of interrupted saves are removed."""
        if self.accelerator.is_main_process:
            for leftover in directory.glob(".tmp-checkpoint-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        for ckpt in reversed(list_checkpoints(directory)):
            try:
                state = load_checkpoint(ckpt, parameters={**params, **self._trained_buffers(stage)}, optimizer=optimizer)
            except Exception as err:  # torn / corrupted files: an older checkpoint is better than none
                warnings.warn(f"{ckpt}: unreadable checkpoint ({type(err).__name__}: {err}); trying the previous one", stacklevel=2)
                continue
            saved = state.get("stage_config")
            if saved is not None and saved != stage_fingerprint(stage):
                changed = sorted(k for k in set(saved) | set(stage_fingerprint(stage)) if saved.get(k) != stage_fingerprint(stage).get(k))
                raise ValueError(f"{ckpt}: stage {stage.name!r} was started with a different config (fields {changed} differ); "
                                 f"resume it with the same config, or start over with --overwrite")
            return int(state["step"])
        return 0

    def _trained_buffers(self, stage: StageConfig) -> dict[str, torch.Tensor]:
        """Persistent buffers of the trained groups' modules (e.g. a projector's BatchNorm statistics):
        they change in training, so checkpoints keep them beside the trainable weights."""
        modules = [m for g in stage.trainable if g != "adapter" for m in self.vlm._group_modules().get(g, [])]
        owned = {id(b) for m in modules for n, b in m.named_buffers() if n.rsplit(".", 1)[-1] in _PERSISTENT_BUFFERS}
        return {n: b for n, b in self.model.named_buffers() if id(b) in owned}

    def _param_groups(self, stage: StageConfig, params: dict[str, torch.nn.Parameter]) -> list[dict[str, Any]]:
        """AdamW groups: (model group or adapter) x (weight decay on matrices, none on vectors).
        A group named in ``stage.lr_groups`` gets that peak lr (same schedule); the others ``stage.lr``."""
        owner = {id(p): name for name, ps in self.vlm.trainable_groups().items() for p in ps}
        groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
        for p in params.values():
            groups.setdefault((owner.get(id(p), "adapter"), p.ndim >= 2), []).append(p)
        return [{"params": ps, "weight_decay": stage.weight_decay if matrix else 0.0,
                 "lr_scale": stage.lr_groups.get(name, stage.lr) / stage.lr}
                for (name, matrix), ps in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))]

    def _batch_for(self, samples: Sequence[Sample], stage: StageConfig, micro_index: int) -> list[Sample]:
        """The samples of micro-batch `micro_index` of this rank: a pure function of the index."""
        return self._micro_batch(samples, stage, micro_index)[0]

    def _micro_batch(self, samples: Sequence[Sample], stage: StageConfig, micro_index: int) -> tuple[list[Sample], bool]:
        """(samples, real) of micro-batch `micro_index` of this rank. The ranks' batches together are
        the global batch of one process with batch size batch_size * num_processes; a rank whose share
        of the epoch's last, short batch is empty gets filler samples (`real` False) that the loss
        weights by zero (it must still run forward/backward: DDP all-reduces every rank's gradients)."""
        acc = self.accelerator
        per_epoch = max(1, math.ceil(len(samples) / (stage.batch_size * acc.num_processes)))
        epoch, position = divmod(micro_index, per_epoch)
        key = (stage.name, epoch, len(samples))
        if self._epoch_order[0] != key:  # one permutation per epoch, not per micro-batch
            generator = torch.Generator().manual_seed(_stable_seed(self.seed, stage.name, epoch))
            self._epoch_order = (key, torch.randperm(len(samples), generator=generator).tolist())
        mine = self._epoch_order[1][acc.process_index :: acc.num_processes]
        chosen = mine[position * stage.batch_size : (position + 1) * stage.batch_size]
        real = bool(chosen)
        return [samples[i] for i in (chosen or mine[: stage.batch_size] or self._epoch_order[1][: stage.batch_size])], real

    def _loss_weights(self, micro_batches: list[tuple[dict[str, torch.Tensor], bool]]) -> list[tuple[float, float]]:
        """Per micro-batch (weight of this rank's token-mean LM loss, weight of its balance loss) such
        that their sum over ranks is the token mean over all ranks' answer tokens and the mean of the
        balance losses of the ranks with real samples. One all-reduce of the answer-token counts."""
        counts = []
        for batch, real in micro_batches:  # the loss is the mean over positions t with labels[t + 1] set
            tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) if real else 0
            counts.append([float(tokens), float(real)])
        local = torch.tensor(counts, dtype=torch.float64, device=self.accelerator.device)
        totals = self.accelerator.reduce(local.clone(), "sum")
        return [(n / total_n if total_n > 0 else 0.0, r / total_r if total_r > 0 else 0.0)
                for (n, r), (total_n, total_r) in zip(local.tolist(), totals.tolist())]

    def _aux_in_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The part of the model's training loss that is the adapter's balance loss (0 without one)."""
        adapter = self.adapter
        if adapter is None or not (adapter.sslora_config.add_aux_loss_to_loss and adapter.sslora_config.aux_loss_coef > 0):
            return torch.zeros((), device=loss.device, dtype=loss.dtype)
        return adapter.aux_loss()

    # ------------------------------------------------------------------ saving
    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """model/ (trained non-adapter groups) + adapter/ (SSLoRA) + stage_done.json."""
        directory = Path(directory)
        bad = sorted(n for n, p in self.model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p.detach()).all()))
        if bad:
            raise ValueError(f"refusing to save {directory}: non-finite values in {bad[:5]}")
        groups = sorted(self.trained_groups | {"projector"})  # the projector is small: saved folders are self-contained
        with self.adapter.residual_unfolded() if self.adapter is not None else contextlib.nullcontext():
            self.vlm.save_pretrained(directory / "model", groups=groups)  # W0, not W0 - W_res
        if self.adapter is not None:
            self.adapter.save_pretrained(directory / "adapter", training=_card_training(extra or {}))
        # has_adapter: `medqwen eval/predict` refuse a copy of this folder that lost its adapter/
        (directory / "stage_done.json").write_text(json.dumps({**(extra or {}), "has_adapter": self.adapter is not None}, indent=1))
        return directory

    def _load_final(self, stage: StageConfig, directory: Path) -> dict[str, Any]:
        """Skip a finished stage on resume: load what it produced (refused if its config changed)."""
        done = json.loads((directory / "stage_done.json").read_text())
        saved = done.get("stage_config")
        if saved is not None and saved != stage_fingerprint(stage):
            changed = sorted(k for k in set(saved) | set(stage_fingerprint(stage)) if saved.get(k) != stage_fingerprint(stage).get(k))
            raise ValueError(f"{directory}: stage {stage.name!r} finished with a different config (fields {changed} differ); "
                             f"resume with the config it was trained with, or start over with --overwrite")
        self._set_trainable(stage)
        if stage.merge_adapter:  # the saved language weights hold the merged adapter
            self._merge_adapter()
        self.vlm.load_pretrained(directory / "model")
        if self.adapter is not None:
            self.adapter.load_adapter_weights(directory / "adapter")
        return json.loads((directory / "stage_done.json").read_text())


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


MAX_NONFINITE_STEPS = 3
_PERSISTENT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
# fields whose change does not change what a stage computes (resume may differ in them)
_RESUME_NEUTRAL = ("checkpoint_every", "log_every")


def _card_training(extra: dict[str, Any]) -> dict[str, Any]:
    """The training facts of a stage for the adapter's model card: stage, steps, datasets, lr."""
    stage = extra.get("stage_config") or {}
    datasets = [d.get("name") or d.get("format") for d in stage.get("data", []) if isinstance(d, dict)]
    facts = {"stage": extra.get("stage"), "steps": extra.get("steps"), "datasets": list(dict.fromkeys(filter(None, datasets))),
             "learning_rate": stage.get("lr"), "batch_size": stage.get("batch_size")}
    return {k: v for k, v in facts.items() if v not in (None, [])}


def stage_fingerprint(stage: StageConfig) -> dict[str, Any]:
    """What a stage computes, as JSON-able data: a resumed stage must match it."""
    from dataclasses import asdict

    data = json.loads(json.dumps(asdict(stage), default=str))
    for spec in data.get("data", []):  # a field added later, at its default: older checkpoints stay resumable
        if spec.get("skip_invalid") is False:
            del spec["skip_invalid"]
    if data.get("merge_adapter") is False:
        del data["merge_adapter"]
    return {k: v for k, v in data.items() if k not in _RESUME_NEUTRAL}
