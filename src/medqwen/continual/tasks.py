"""A task's data (filtered, fixed seeded subsets) and its score (likelihood ranking or generation)."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import replace
from typing import Any, Sequence

from medqwen.data import Sample, normalize_answer, read_dataset
from medqwen.eval.evaluators import EvalSettings, evaluate_ranking, evaluate_vqa
from medqwen.training.config import DataSpec

from .config import TaskConfig


def read_task_data(task: TaskConfig, which: str, seed: int) -> tuple[list[Sample], dict[str, Any]]:
    """The train or eval samples of a task: every DataSpec read, filtered (``answer_type``,
    ``candidates``), then cut to its ``limit`` by a shuffle seeded with ``seed`` (the data seed, the
    same for every method and run seed), then combined (``weight``s -> mixture proportions).
    Returns (samples, info: counts read / kept / dropped)."""
    specs: list[DataSpec] = task.train if which == "train" else task.eval
    lists, info = [], {"read": 0, "dropped": 0, "n": 0}
    for spec in specs:
        samples = list(read_dataset(spec.format, spec.path, spec.split, **spec.options))
        info["read"] += len(samples)
        kept = [s for s in samples if task.answer_type is None or s.answer_type == task.answer_type]
        if task.candidates is not None:
            allowed = [normalize_answer(c) for c in task.candidates]
            kept = [s for s in kept if normalize_answer(s.answer) in allowed]
            kept = [s if s.extra.get("candidates") else replace(s, extra={**s.extra, "candidates": list(allowed)}) for s in kept]
        info["dropped"] += len(samples) - len(kept)
        if spec.limit is not None and spec.limit < len(kept):
            random.Random(seed).shuffle(kept)
            kept = kept[: spec.limit]
        lists.append(kept)
    weights = [spec.weight for spec in specs] if any(spec.weight is not None for spec in specs) else None
    if len(lists) == 1 and weights is None:
        out = lists[0]
    else:
        from medqwen.data import mix_datasets

        out = mix_datasets(lists, weights=None if weights is None else [1.0 if w is None else w for w in weights], seed=seed)
    if not out:
        raise ValueError(f"task {task.name!r}: no {which} samples left after filtering (read {info['read']})")
    if which == "eval" and task.metric == "closed_rank":
        for i, s in enumerate(out):
            options = s.extra.get("candidates")
            if not options:
                raise ValueError(f"task {task.name!r}: eval sample {i} has no extra['candidates']; "
                                 "set the task's field 'candidates' or use metric 'vqa'")
            if s.answer not in options:
                raise ValueError(f"task {task.name!r}: eval sample {i}: answer {s.answer!r} is not among its candidates {options}")
    info["n"] = len(out)
    info["majority"] = max(Counter(s.answer for s in out).values()) / len(out)
    return out, info


def scorer_name(task: TaskConfig) -> str:
    return "closed_rank" if task.metric == "closed_rank" else f"vqa:{task.score}"


def answer_breakdown(records: Sequence[dict]) -> dict[str, dict[str, float]]:
    """``pred_share``: the share of questions given each answer; ``acc_by_answer``: accuracy on the questions
    of each reference answer (the recall of that answer). A task forgotten as a shift of the answer prior
    (everything answered "yes") shows here, where the accuracy alone cannot tell it from lost image use."""
    preds, golds = Counter(r["pred"] for r in records), Counter(r["answer"] for r in records)
    hits = Counter(r["answer"] for r in records if r["pred"] == r["answer"])
    n = max(1, len(records))
    out = {"pred_share": {a: preds[a] / n for a in sorted(preds)},
           "acc_by_answer": {a: hits[a] / golds[a] for a in sorted(golds)}}
    auc = ranking_auc(records)
    if auc is not None:
        out["rank_auc"] = auc
    return out


def ranking_auc(records: Sequence[dict]) -> float | None:
    """ROC-AUC of the candidates' likelihoods (softmax over each question's candidates; macro one-vs-rest
    beyond two answers, :func:`medqwen.eval.zero_shot.roc_auc`): how well the scores still separate the
    answers whatever the decision threshold. None without per-candidate ``scores``, without one candidate
    set shared by every question, or with a single reference answer."""
    import numpy as np

    from medqwen.eval.zero_shot import roc_auc

    if not records or any("scores" not in r for r in records):
        return None
    options = sorted(records[0]["scores"])
    kept = [r for r in records if r["answer"] in options]
    if any(sorted(r["scores"]) != options for r in records) or len({r["answer"] for r in kept}) < 2:
        return None
    logits = np.array([[r["scores"][o] for o in options] for r in kept], dtype=np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return float(roc_auc([options.index(r["answer"]) for r in kept], probs))


def records_accuracy(records: Sequence[dict]) -> float:
    """The share of ranking records whose ``pred`` is the reference ``answer``."""
    return sum(r["pred"] == r["answer"] for r in records) / max(1, len(records))


def score_task(
    model, task: TaskConfig, samples: Sequence[Sample], *, cache=None, blank_images: bool = False,
    batch_size: int = 32, max_new_tokens: int = 12, keep_records: bool = False,
) -> dict[str, Any]:
    """{"score", "n", "scorer", ["gold_logprob", "pred_share", "acc_by_answer", "rank_auc", "batch_calibrated"],
    "seconds"} of ``model`` on a task's eval samples, by the registered evaluators of :mod:`medqwen.eval`.

    ``closed_rank``: accuracy of the most likely candidate (the "rank" evaluator with the sequence
    scorer: log p(candidate | image, question) of every candidate, each question's prompt run once on
    models with a prefix cache, see :mod:`medqwen.eval.ranking`); ``gold_logprob`` = the mean
    log-likelihood of the reference answer, which moves before the accuracy does). ``vqa``: greedy
    generation scored by the "vqa" evaluator (``task.score``: closed_acc, open_recall or exact_match).
    ``batch_calibrated``: the closed_rank accuracy with the answer prior estimated over these samples divided
    out (:func:`medqwen.eval.calibration.batch_calibration`; no extra forward pass).
    ``blank_images`` zeroes the image features (the question-prior control). ``keep_records`` adds the
    ranking's per-question ``records`` (with each candidate's log-likelihood; closed_rank only).
    """
    start = time.perf_counter()
    settings = EvalSettings(batch_size=batch_size, max_new_tokens=max_new_tokens, blank_images=blank_images, cache=cache)
    extra: dict[str, Any] = {}
    if task.metric == "closed_rank":
        metrics = dict(evaluate_ranking(model, samples, settings, scorer="sequence"))
        score = metrics["acc"]
        extra["gold_logprob"] = metrics["gold_logprob"]
        extra.update(answer_breakdown(metrics["records"]))
        extra["batch_calibrated"] = metrics["batch_calibrated/acc"]
        if keep_records:
            extra["records"] = metrics["records"]
    else:
        score = dict(evaluate_vqa(model, samples, settings))[task.score]
    return {"score": float(score), "n": len(samples), "scorer": scorer_name(task), **extra, "seconds": time.perf_counter() - start}
