"""Evaluators of vision-language models, registered by task name.

An evaluator runs a model on samples and yields ``(name, value)`` pairs, big_vision style; the
metric functions it calls (:mod:`.vqa`, :mod:`.captioning`, :mod:`.pope`) stay pure, and every
generating evaluator shares one generation loop (:func:`predict`). The task of an evaluation set
(``DataSpec.task``) is a registered name::

    metrics = dict(get_evaluator("vqa")(model, samples, EvalSettings(batch_size=16, blank_control=True)))

Every evaluator ends with ``records`` (one dict per scored question, written as the set's
predictions file) and ``seconds``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from medqwen.errors import ConfigError, did_you_mean

from .captioning import caption_scores
from .pope import build_pope_probes, pope_scores
from .vqa import vqa_scores

CAPTION_MAX_NEW_TOKENS = 64  # reports and captions run to a few sentences
POPE_MAX_NEW_TOKENS = 8  # yes/no probes: the first whole-word yes/no counts


@dataclass(frozen=True)
class EvalSettings:
    """What every evaluator is given; each reads the settings that apply to its task."""

    batch_size: int = 16  # questions per generate call; (question, candidate) rows per ranking forward
    max_new_tokens: int = 12  # answer length of short-answer VQA (captions and POPE have their own)
    blank_control: bool = False  # also score with the image features zeroed, as blank_image/<metric>
    blank_images: bool = False  # score with the image features zeroed (the question prior alone)
    seed: int = 0  # for evaluators that draw samples (POPE's balanced probes)
    cache: Any = None  # a medqwen.training.batches.FeatureCache of frozen image features, or None


Evaluator = Callable[[Any, Sequence, EvalSettings], Iterator[tuple[str, Any]]]
EVALUATORS: dict[str, Evaluator] = {}


def register(task: str) -> Callable[[Evaluator], Evaluator]:
    """Decorator: make ``fn(model, samples, settings)`` the evaluator of evaluation sets with ``task``."""

    def add(fn: Evaluator) -> Evaluator:
        if task in EVALUATORS:
            raise ValueError(f"evaluation task {task!r} is registered twice ({EVALUATORS[task].__name__}, {fn.__name__})")
        EVALUATORS[task] = fn
        return fn

    return add


def registered_tasks() -> list[str]:
    return list(EVALUATORS)


def get_evaluator(task: str) -> Evaluator:
    if task not in EVALUATORS:
        raise ConfigError(f"unknown evaluation task {task!r}{did_you_mean(task, EVALUATORS)}; registered: {registered_tasks()}")
    return EVALUATORS[task]


# ---------------------------------------------------------------------------- the generation loop
def feature_cache_for(model, cache=None):
    """``cache``, else a new FeatureCache when the model can use one now (else None)."""
    from medqwen.training.batches import FeatureCache, supports_feature_cache

    if cache is None and supports_feature_cache(model):
        cache = FeatureCache(model)
    return cache


@torch.no_grad()
def predict(
    model,
    samples: Sequence,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 12,
    blank_images: bool = False,
    cache=None,
    desc: str = "predict",
) -> list[str]:
    """Greedy answers for ``samples``, in order. ``blank_images`` zeroes the image features (control)."""
    from medqwen.training.batches import sample_images

    was_training = model.training
    model.eval()
    cache = feature_cache_for(model, cache)
    answers: list[str] = []
    try:
        for start in tqdm(range(0, len(samples), batch_size), desc=desc, disable=None):
            chunk = samples[start : start + batch_size]
            prompts = [s.question for s in chunk]
            if cache is not None:
                answers += model.generate(None, prompts, max_new_tokens, image_features=cache.get(chunk), blank_images=blank_images)
            else:
                answers += model.generate([sample_images(s) for s in chunk], prompts, max_new_tokens, blank_images=blank_images)
    finally:
        model.train(was_training)
    return answers


def records_for(samples: Sequence, predictions: Sequence[str]) -> list[dict[str, Any]]:
    """Per-question records of VQA predictions (what :func:`.vqa.vqa_scores` reads)."""
    return [
        {
            "question": s.question,
            "answer": s.answer,
            "pred": p,
            "answer_type": s.answer_type,
            "question_type": s.extra.get("question_type"),
            "source": s.source,
        }
        for s, p in zip(samples, predictions)
    ]


# ---------------------------------------------------------------------------- the evaluators
@register("vqa")
def evaluate_vqa(model, samples: Sequence, settings: EvalSettings = EvalSettings()) -> Iterator[tuple[str, Any]]:
    """Greedy answers scored by :func:`.vqa.vqa_scores` (closed accuracy, open recall, exact match,
    counts, per-type breakdowns); with ``blank_control`` the same scores with blank images as
    ``blank_image/<name>`` (counts left out)."""
    start = time.perf_counter()
    cache = feature_cache_for(model, settings.cache)  # one cache for both passes
    predictions = predict(model, samples, batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens,
                          blank_images=settings.blank_images, cache=cache, desc="eval")
    records = records_for(samples, predictions)
    yield from vqa_scores(records).items()
    if settings.blank_control:
        blank = predict(model, samples, batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens,
                        blank_images=True, cache=cache, desc="eval blank")
        for name, value in vqa_scores(records_for(samples, blank)).items():
            if not name.startswith("n"):
                yield f"blank_image/{name}", value
    yield "records", records
    yield "seconds", time.perf_counter() - start


@register("caption")
def evaluate_captions(model, samples: Sequence, settings: EvalSettings = EvalSettings()) -> Iterator[tuple[str, Any]]:
    """Report / caption generation: BLEU-1..4, ROUGE-L, METEOR, CIDEr-D against each sample's answer."""
    start = time.perf_counter()
    predictions = predict(model, samples, batch_size=settings.batch_size, max_new_tokens=CAPTION_MAX_NEW_TOKENS,
                          blank_images=settings.blank_images, cache=settings.cache, desc="captions")
    yield from caption_scores(predictions, [[s.answer] for s in samples]).items()
    yield "n", len(samples)
    yield "records", [{"question": s.question, "answer": s.answer, "pred": p} for s, p in zip(samples, predictions)]
    yield "seconds", time.perf_counter() - start


@register("pope")
def evaluate_pope(model, samples: Sequence, settings: EvalSettings = EvalSettings()) -> Iterator[tuple[str, Any]]:
    """POPE-style hallucination probes: balanced yes/no questions drawn (``seed``) from the closed
    questions, scored by :func:`.pope.pope_scores`."""
    start = time.perf_counter()
    probes = build_pope_probes(samples, settings.seed)
    chosen = [samples[p["index"]] for p in probes]
    predictions = predict(model, chosen, batch_size=settings.batch_size, max_new_tokens=POPE_MAX_NEW_TOKENS,
                          blank_images=settings.blank_images, cache=settings.cache, desc="pope")
    yield from pope_scores(predictions, [p["label"] for p in probes]).items()
    yield "records", [{"question": p["question"], "answer": p["answer"], "pred": pred} for p, pred in zip(probes, predictions)]
    yield "seconds", time.perf_counter() - start


@register("rank")
def evaluate_ranking(
    model, samples: Sequence, settings: EvalSettings = EvalSettings(), *, scorer: str = "auto"
) -> Iterator[tuple[str, Any]]:
    """Closed questions scored by ranking their candidate answers' likelihoods (no generation; see
    :mod:`.ranking`): ``acc``; with ``scorer="sequence"`` also ``gold_logprob``, the mean
    log-likelihood of the reference answer (it moves before the accuracy does); ``batch_calibrated/acc``,
    the accuracy with the answer prior over these samples divided out (:mod:`.calibration`, transductive); with
    ``blank_control`` ``blank_image/acc``; ``n`` and ``majority`` (the most common answer's share)."""
    from medqwen.data.grounding import majority_share

    from .calibration import batch_calibration
    from .ranking import candidate_scores, most_likely

    start = time.perf_counter()
    cache = feature_cache_for(model, settings.cache)
    kwargs = {"scorer": scorer, "cache": cache, "batch_size": settings.batch_size}
    candidates, scores = candidate_scores(model, samples, blank_images=settings.blank_images, **kwargs)
    predictions = most_likely(candidates, scores)
    records = [{"question": s.question, "answer": s.answer, "pred": p, "scores": dict(zip(options, row))}
               for s, p, options, row in zip(samples, predictions, candidates, scores)]
    yield "acc", _accuracy(predictions, samples)
    calibrated = [r["pred"] for r in batch_calibration(records)]
    yield "batch_calibrated/acc", _accuracy(calibrated, samples)
    if scorer == "sequence":
        gold = [row[options.index(s.answer)] for s, options, row in zip(samples, candidates, scores)]
        yield "gold_logprob", sum(gold) / max(1, len(gold))
    if settings.blank_control:
        yield "blank_image/acc", _accuracy(most_likely(*candidate_scores(model, samples, blank_images=True, **kwargs)), samples)
    yield "n", len(samples)
    yield "majority", majority_share(samples)
    yield "records", records
    yield "seconds", time.perf_counter() - start


def _accuracy(predictions: Sequence[str], samples: Sequence) -> float:
    return sum(p == s.answer for p, s in zip(predictions, samples)) / max(1, len(samples))
