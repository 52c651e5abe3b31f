"""The one training loop. A stage is data (StageConfig); a run or a task sequence is a loop over stages
that reuses the same model, adapter and evaluators.

Determinism and resume: the sample order of epoch e is a permutation seeded by (seed, stage, e), so
the data position is a function of the step; a checkpoint stores the step, weights, optimizer and
RNG states, and `resume=True` continues from the newest checkpoint to the same result as a run that
was never interrupted. Runs unchanged under `accelerate launch` (samples are sharded by rank; the
spectral init is computed by the main process first and read from the SVD cache by the others).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from medqwen.data import Sample
from sslora import SSLoRAModel, get_sslora_model

from .batches import FeatureCache, make_batch, supports_feature_cache
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import StageConfig, adapter_config


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
        from accelerate import Accelerator

        self.vlm = model
        self.adapter: SSLoRAModel | None = None
        self.output_dir = Path(output_dir)
        self.seed = seed
        self.accelerator = accelerator or Accelerator(mixed_precision=_mixed_precision())
        self.sslora_cache_dir = sslora_cache_dir
        self.feature_cache = FeatureCache(model) if hasattr(model, "encode_images") else None
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
        decay = [p for n, p in params.items() if p.ndim >= 2]
        no_decay = [p for n, p in params.items() if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": stage.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=stage.lr
        )
        model, optimizer = acc.prepare(self.model, optimizer)
        shard = list(samples)
        per_step = stage.batch_size * stage.grad_accum * acc.num_processes
        steps_per_epoch = max(1, math.ceil(len(shard) / per_step))
        total = stage.max_steps or max(1, math.ceil(stage.epochs * steps_per_epoch))
        start = 0
        _seed_everything(_stable_seed(self.seed, stage.name, acc.process_index))  # dropout masks etc.
        ckpt = latest_checkpoint(stage_dir / "checkpoints") if resume else None
        if ckpt is not None:
            start = load_checkpoint(ckpt, parameters=params, optimizer=optimizer)["step"]
        cache = self.feature_cache if self.feature_cache is not None and supports_feature_cache(self.vlm) else None
        logger = _MetricsLogger(stage_dir, enabled=acc.is_main_process)
        model.train()
        progress = tqdm(range(start, total), desc=stage.name, initial=start, total=total, disable=not acc.is_main_process)
        last = {}
        for step in progress:
            began = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, stage)
            lm_total = aux_total = 0.0
            for micro in range(stage.grad_accum):
                batch_samples = self._batch_for(shard, stage, step * stage.grad_accum + micro)
                batch = {k: v.to(acc.device) for k, v in make_batch(self.vlm, batch_samples, with_answers=True, cache=cache).items()}
                output = model(**batch)
                aux = self.adapter.aux_loss().detach() if self.adapter is not None else torch.zeros(())
                acc.backward(output.loss / stage.grad_accum)
                lm_total += (output.loss.detach() - aux).item() / stage.grad_accum
                aux_total += aux.item() / stage.grad_accum
            grad_norm = acc.clip_grad_norm_(list(params.values()), stage.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - began
            last = {"step": step + 1, "loss": lm_total, "aux_loss": aux_total, "lr": optimizer.param_groups[0]["lr"],
                    "grad_norm": float(grad_norm), "s_per_step": seconds, "samples_per_s": per_step / seconds}
            progress.set_postfix(loss=f"{lm_total:.3f}", samples_s=f"{per_step / seconds:.1f}")
            if (step + 1) % stage.log_every == 0:
                logger.log(last)
            done = step + 1 == total
            if acc.is_main_process and ((step + 1) % stage.checkpoint_every == 0 or done):
                save_checkpoint(stage_dir / "checkpoints", trainable=params, optimizer=optimizer,
                                state={"step": step + 1, "total": total, "stage": stage.name, "metrics": last}, adapter=self.adapter)
            if stop_after is not None and step + 1 - start >= stop_after and not done:
                logger.close()
                return {"stopped_at": step + 1, **last}
        logger.close()
        acc.wait_for_everyone()
        if acc.is_main_process:
            self.save(stage_dir / "final", extra={"stage": stage.name, "steps": total, **last})
        return {"steps": total, **last}

    def _batch_for(self, samples: Sequence[Sample], stage: StageConfig, micro_index: int) -> list[Sample]:
        """The samples of micro-batch `micro_index` of this rank: a pure function of the index."""
        acc = self.accelerator
        per_epoch = max(1, math.ceil(len(samples) / (stage.batch_size * acc.num_processes)))
        epoch, position = divmod(micro_index, per_epoch)
        key = (stage.name, epoch, len(samples))
        if self._epoch_order[0] != key:  # one permutation per epoch, not per micro-batch
            generator = torch.Generator().manual_seed(_stable_seed(self.seed, stage.name, epoch))
            self._epoch_order = (key, torch.randperm(len(samples), generator=generator).tolist())
        mine = self._epoch_order[1][acc.process_index :: acc.num_processes]
        chosen = mine[position * stage.batch_size : (position + 1) * stage.batch_size] or mine[: stage.batch_size]
        return [samples[i] for i in chosen]

    # ------------------------------------------------------------------ saving
    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """model/ (trained non-adapter groups) + adapter/ (SSLoRA) + stage_done.json."""
        directory = Path(directory)
        groups = sorted(self.trained_groups) or ["projector"]
        self.vlm.save_pretrained(directory / "model", groups=groups)
        if self.adapter is not None:
            self.adapter.save_pretrained(directory / "adapter")
        (directory / "stage_done.json").write_text(json.dumps(extra or {}, indent=1))
        return directory

    def _load_final(self, stage: StageConfig, directory: Path) -> dict[str, Any]:
        """Skip a finished stage on resume: load what it produced."""
        self._set_trainable(stage)
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


def _mixed_precision() -> str:
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"  # bf16 is emulated (~90x slower) on CPUs without bf16 units: train in fp32


class _MetricsLogger:
    """metrics.jsonl (one JSON object per logged step) + TensorBoard scalars."""

    def __init__(self, directory: Path, enabled: bool):
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        directory.mkdir(parents=True, exist_ok=True)
        self.handle = open(directory / "metrics.jsonl", "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(directory / "tensorboard"))
        except ImportError:  # tensorboard is a dependency, but logging must never stop training
            self.writer = None

    def log(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.handle.write(json.dumps(metrics) + "\n")
        self.handle.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                if key != "step":
                    self.writer.add_scalar(f"train/{key}", value, metrics["step"])

    def close(self) -> None:
        if self.enabled:
            self.handle.close()
            if self.writer is not None:
                self.writer.close()
