"""Contrastive training of a DualEncoder on image-text pairs: alignment and fine-tuning.

- :func:`align_heads`: towers frozen, so their pooled features are computed once and only the heads
  and temperature train (seconds per hundred steps on CPU) — the alignment stage.
- :func:`train_pairs`: end-to-end steps through the towers (adapters, full fine-tuning, MoE), with
  the SSLoRA balance loss (added by the SSLoRAModel wrapper) or the full-rank MoE's. Given a
  ``checkpoint_dir`` it saves every ``checkpoint_every`` steps (atomic, safetensors + JSON: the
  trainer's format, :mod:`medqwen.training.checkpoint`) and resumes from the newest checkpoint there,
  with the same weights at the end as a run that was never interrupted.

Pairs carry an integer ``label``: pairs with equal labels are positives of each other (UniCL-style
targets, see :func:`medqwen.dual.base.clip_loss`); give distinct labels (e.g. the index) for captions.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from medqwen.training.checkpoint import STATE_NAME, latest_checkpoint, load_checkpoint, save_checkpoint

from .adapters import unwrap
from .base import DualEncoder
from .full_moe import moe_aux_loss


@dataclass
class Pair:
    """One image (a loader returning a PIL image) with its text and contrastive label."""

    image: Callable[[], Image.Image]
    text: str
    label: int


class PixelCache:
    """Preprocessed pixel tensors per pair index, kept as float16 (B, 3, S, S) to halve memory."""

    def __init__(self, model: DualEncoder, pairs: Sequence[Pair]):
        self.model, self.pairs, self.store = model, pairs, {}

    def get(self, indices: Sequence[int]) -> Tensor:
        missing = [i for i in indices if i not in self.store]
        if missing:
            pixels = self.model.preprocess([self.pairs[i].image() for i in missing])
            for i, p in zip(missing, pixels):
                self.store[i] = p.half()
        return torch.stack([self.store[i] for i in indices]).float()


def batches(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """``steps`` batches of indices: seeded epoch-wise shuffles of range(n), concatenated."""
    rng, order, out = random.Random(seed), [], []
    while len(out) < steps:
        if len(order) < batch_size:
            epoch = list(range(n))
            rng.shuffle(epoch)
            order += epoch
        out.append(order[:batch_size])
        order = order[batch_size:]
    return out


def _optimizer(model: nn.Module, lr: float, head_lr: float, weight_decay: float) -> torch.optim.Optimizer:
    dual = unwrap(model)
    heads = {id(p) for p in dual.head_parameters().values()}
    groups: dict[str, list] = {"heads": [], "decay": [], "no_decay": []}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        groups["heads" if id(p) in heads else ("decay" if p.ndim >= 2 else "no_decay")].append(p)
    spec = [{"params": groups["heads"], "lr": head_lr, "weight_decay": 0.0},
            {"params": groups["decay"], "lr": lr, "weight_decay": weight_decay},
            {"params": groups["no_decay"], "lr": lr, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in spec if g["params"]])


def cosine_lr(step: int, steps: int, warmup: int) -> float:
    """Multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_pairs(model: nn.Module, pairs: Sequence[Pair], *, steps: int, batch_size: int = 32, lr: float = 3e-4,
                head_lr: float = 1e-3, weight_decay: float = 0.0, warmup: int = 10, seed: int = 0,
                moe_aux_coef: float = 0.01, log_every: int = 10, log: Callable[[dict], Any] | None = None,
                checkpoint_dir: str | Path | None = None, checkpoint_every: int = 50) -> list[dict]:
    """``steps`` AdamW steps of the contrastive loss through ``model`` (a DualEncoder or an SSLoRAModel
    around one) on seeded batches of ``pairs``. Returns the logged metrics (loss, s/step).

    ``checkpoint_dir``: save there every ``checkpoint_every`` steps and resume from its newest checkpoint
    (a checkpoint of other settings — steps, batch size, lrs, seed, number of pairs — is refused)."""
    dual = unwrap(model)
    cache = PixelCache(dual, pairs)
    optimizer = _optimizer(model, lr, head_lr, weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    settings = {"steps": steps, "batch_size": batch_size, "lr": lr, "head_lr": head_lr, "weight_decay": weight_decay,
                "warmup": warmup, "seed": seed, "moe_aux_coef": moe_aux_coef, "pairs": len(pairs)}
    torch.manual_seed(seed)
    history, window, first = [], [], 0
    if checkpoint_dir is not None:
        history, window, first = _resume(Path(checkpoint_dir), trainable, optimizer, settings)
    model.train()
    start, timed = time.perf_counter(), 0  # steps run in this process since the last log (a resumed window has fewer)
    for step, idx in enumerate(batches(len(pairs), batch_size, steps, seed)):
        if step < first:
            continue
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * cosine_lr(step, steps, warmup)
        text = dual.tokenize([pairs[i].text for i in idx])
        labels = torch.tensor([pairs[i].label for i in idx])
        out = model(pixel_values=cache.get(idx), input_ids=text["input_ids"], attention_mask=text["attention_mask"], labels=labels)
        loss = out.loss
        aux = moe_aux_loss(dual)
        if aux is not None:
            loss = loss + moe_aux_coef * aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        window.append(float(loss.detach()))
        timed += 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            record = {"step": step + 1, "loss": sum(window) / len(window), "s_per_step": (time.perf_counter() - start) / timed,
                      "temperature": float(dual.logit_scale.detach().exp())}
            history.append(record)
            if log:
                log(record)
            window, start, timed = [], time.perf_counter(), 0
        if checkpoint_dir is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
            save_checkpoint(checkpoint_dir, trainable=trainable, optimizer=optimizer, keep=1,
                            state={"step": step + 1, "settings": settings, "history": history, "window": window})
    model.eval()
    return history


def _resume(directory: Path, trainable: dict, optimizer: torch.optim.Optimizer, settings: dict) -> tuple[list, list, int]:
    """(history, losses not yet logged, step) of the newest checkpoint in ``directory``, restored in place
    (weights, optimizer, RNG); ([], [], 0) without one."""
    found = latest_checkpoint(directory)
    if found is None:
        return [], [], 0
    saved = json.loads((found / STATE_NAME).read_text())["settings"]
    if saved != settings:
        diff = {k: (saved.get(k), settings.get(k)) for k in set(saved) | set(settings) if saved.get(k) != settings.get(k)}
        raise ValueError(f"{found}: a checkpoint of other training settings (saved, now): {diff}; "
                         "use another checkpoint folder or delete this one")
    state = load_checkpoint(found, parameters=trainable, optimizer=optimizer)
    return state["history"], state["window"], state["step"]


@torch.no_grad()
def tower_features(model: DualEncoder, pairs: Sequence[Pair], batch_size: int = 32) -> tuple[Tensor, Tensor, Tensor]:
    """Pooled tower features of every pair: image (P, F_img), text (P, F_txt), and the text tokens' count (P,)."""
    model.eval()
    images, texts, lengths = [], [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        images.append(model.image_features(model.preprocess([p.image() for p in chunk])))
        tok = model.tokenize([p.text for p in chunk])
        texts.append(model.text_features(tok["input_ids"], tok["attention_mask"]))
        lengths.append(tok["attention_mask"].sum(1))
    return torch.cat(images), torch.cat(texts), torch.cat(lengths)


def align_heads(model: DualEncoder, pairs: Sequence[Pair], *, steps: int, batch_size: int = 64, lr: float = 1e-3,
                weight_decay: float = 0.0, seed: int = 0, features: tuple[Tensor, Tensor] | None = None,
                log_every: int = 50, log: Callable[[dict], Any] | None = None) -> list[dict]:
    """Alignment: train only the heads and temperature on frozen-tower features (computed once unless given)."""
    for p in model.parameters():
        p.requires_grad_(False)
    heads = list(model.head_parameters().values())
    for p in heads:
        p.requires_grad_(True)
    image_feats, text_feats = features if features is not None else tower_features(model, pairs)[:2]
    optimizer = torch.optim.AdamW(heads, lr=lr, weight_decay=weight_decay)
    labels = torch.tensor([p.label for p in pairs])
    torch.manual_seed(seed)
    history, window = [], []
    for step, idx in enumerate(batches(len(pairs), batch_size, steps, seed)):
        for group in optimizer.param_groups:
            group["lr"] = lr * cosine_lr(step, steps, max(1, steps // 20))
        img = nn.functional.normalize(model.project_image(image_feats[idx]), dim=-1)
        txt = nn.functional.normalize(model.project_text(text_feats[idx]), dim=-1)
        loss = model.contrastive_loss(img, txt, labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append(float(loss.detach()))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            history.append({"step": step + 1, "loss": float(np.mean(window)), "temperature": float(model.logit_scale.detach().exp())})
            if log:
                log(history[-1])
            window = []
    for p in heads:
        p.requires_grad_(False)
    return history


def task_pairs(task: Any, *, seed: int = 0, label_offset: int = 0) -> list[Pair]:
    """A :class:`medqwen.eval.zero_shot_tasks.ZeroShotTask` -> image-caption pairs (one seeded caption per
    image); label = ``label_offset`` + class index, so give each task its own offset when mixing tasks."""
    from medqwen.data.schema import load_image

    return [Pair(lambda s=s: load_image(s), caption, label_offset + y)
            for s, caption, y in zip(task.samples, task.captions(seed), task.labels)]
