"""Zero-shot image classification with a CLIP-style dual encoder: metrics, prompt ensembling, evaluator.

Class names -> prompt templates -> text embeddings, averaged per class (prompt ensembling, Radford
et al. 2021, §3.1.4: mean of the unit-norm embeddings, renormalised); an image's class scores are
``e^t * cos(image, class)`` with the model's learned temperature t, its prediction the argmax.

The model is anything with ``embed_images(PIL list) -> (N, D)``, ``embed_texts(str list) -> (M, D)``
(unit norm) and ``logit_scale`` — a :class:`medqwen.dual.DualEncoder`, or an SSLoRAModel around one.
Tasks (datasets with class prompts) are built in :mod:`medqwen.eval.zero_shot_tasks`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from medqwen.data.schema import load_image

from .zero_shot_tasks import ZeroShotTask


# ---------------------------------------------------------------------------------------------- metrics
def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Share of exact label matches (NaN for no samples)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else math.nan


def balanced_accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (Brodersen et al. 2010, "The balanced
    accuracy and its posterior distribution"; the definition of scikit-learn's ``balanced_accuracy_score``)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = np.unique(y_true)
    if not len(classes):
        return math.nan
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


def binary_auc(positive: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve = P(score of a random positive > that of a random negative) + P(tie) / 2,
    computed from mid-ranks (the Mann-Whitney U statistic; Hanley & McNeil 1982; Fawcett 2006, §7).
    NaN when either class is empty."""
    from scipy.stats import rankdata

    positive, scores = np.asarray(positive, dtype=bool), np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc(y_true: Sequence[int], probs: np.ndarray) -> float:
    """ROC-AUC of class probabilities ``probs`` (N, C). Two classes: the AUC of class 1's probability.
    More: the unweighted (macro) mean of the one-vs-rest AUCs of ``probs[:, c]`` over the classes c
    present in ``y_true`` (Fawcett 2006, §10.1: the class-reference formulation of Provost & Domingos,
    with equal instead of prevalence weights; scikit-learn's ``roc_auc_score(multi_class="ovr",
    average="macro")``). Classes absent from ``y_true`` have no one-vs-rest AUC and are skipped."""
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise ValueError(f"probs must be (N, C) with N = {len(y_true)}, got {probs.shape}")
    if probs.shape[1] == 2:
        return binary_auc(y_true == 1, probs[:, 1])
    aucs = [binary_auc(y_true == c, probs[:, c]) for c in np.unique(y_true)]
    aucs = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(aucs)) if aucs else math.nan


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits, numerically stable."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def classification_scores(y_true: Sequence[int], logits: np.ndarray) -> dict[str, float]:
    """acc, balanced_acc and auc of (N, C) logits against integer labels."""
    logits = np.asarray(logits)
    pred = logits.argmax(axis=1) if len(logits) else np.zeros(0, dtype=int)
    return {"acc": accuracy(y_true, pred), "balanced_acc": balanced_accuracy(y_true, pred),
            "auc": roc_auc(y_true, softmax(logits)) if len(logits) else math.nan}


# ---------------------------------------------------------------------------------------------- the model side
@torch.no_grad()
def class_embeddings(model: Any, class_texts: Sequence[Sequence[str]]) -> torch.Tensor:
    """Per class, its prompts (templates x names) -> mean of unit-norm text embeddings, renormalised: (C, D)."""
    flat = [t for texts in class_texts for t in texts]
    emb = model.embed_texts(flat)  # (sum_c M_c, D)
    out, start = [], 0
    for texts in class_texts:
        mean = emb[start : start + len(texts)].mean(dim=0)
        out.append(mean / mean.norm())
        start += len(texts)
    return torch.stack(out)


@torch.no_grad()
def zero_shot_logits(model: Any, task: ZeroShotTask, *, batch_size: int = 32) -> np.ndarray:
    """(N, C) logits ``e^t * cos(image, class)`` of every image of ``task`` (images loaded chunk by chunk)."""
    classes = class_embeddings(model, task.class_texts())
    scale = float(model.logit_scale.detach().exp().clamp(max=100.0))
    rows = []
    for start in range(0, len(task.samples), batch_size):
        images = [load_image(s) for s in task.samples[start : start + batch_size]]
        rows.append(model.embed_images(images, batch_size=batch_size) @ classes.T.to(torch.float32))
    logits = torch.cat(rows) * scale if rows else torch.zeros(0, len(task.classes))
    return logits.cpu().numpy()


def evaluate_zero_shot(model: Any, task: ZeroShotTask, *, batch_size: int = 32) -> Iterator[tuple[str, Any]]:
    """big_vision-style evaluator: yields acc, balanced_acc, auc, n, n_classes, per-class recall, seconds."""
    start = time.perf_counter()
    logits = zero_shot_logits(model, task, batch_size=batch_size)
    labels = np.asarray(task.labels)
    yield from classification_scores(labels, logits).items()
    yield "n", len(labels)
    yield "n_classes", len(task.classes)
    pred = logits.argmax(axis=1) if len(logits) else np.zeros(0, dtype=int)
    yield "recall_by_class", {c: (float(np.mean(pred[labels == i] == i)) if np.any(labels == i) else None)
                              for i, c in enumerate(task.classes)}
    yield "seconds", time.perf_counter() - start


def zero_shot_scores(model: Any, task: ZeroShotTask, **kwargs: Any) -> dict[str, Any]:
    """:func:`evaluate_zero_shot` as a dict."""
    return dict(evaluate_zero_shot(model, task, **kwargs))
