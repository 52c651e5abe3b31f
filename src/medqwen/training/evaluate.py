"""Answer questions with a model and score them (VQA metrics; blank-image control on request)."""

from __future__ import annotations

import time
from typing import Any, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from medqwen.data import Sample
from medqwen.eval import vqa_scores

from .batches import FeatureCache, sample_images, supports_feature_cache


@torch.no_grad()
def predict(
    model,
    samples: Sequence[Sample],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 12,
    blank_images: bool = False,
    cache: FeatureCache | None = None,
    desc: str = "predict",
) -> list[str]:
    """Greedy answers for `samples`, in order. `blank_images` zeroes the image features (control)."""
    was_training = model.training
    model.eval()
    if cache is None and supports_feature_cache(model):
        cache = FeatureCache(model)
    answers: list[str] = []
    kwargs: dict[str, Any] = {"blank_images": True} if blank_images else {}
    try:
        for start in tqdm(range(0, len(samples), batch_size), desc=desc, disable=None):
            chunk = samples[start : start + batch_size]
            prompts = [s.question for s in chunk]
            if cache is not None:
                answers += model.generate(None, prompts, max_new_tokens, image_features=cache.get(chunk), **kwargs)
            else:
                answers += model.generate([sample_images(s) for s in chunk], prompts, max_new_tokens, **kwargs)
    finally:
        model.train(was_training)
    return answers


def records_for(samples: Sequence[Sample], predictions: Sequence[str]) -> list[dict[str, Any]]:
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


def evaluate_vqa_model(
    model, samples: Sequence[Sample], *, batch_size: int = 16, max_new_tokens: int = 12, blank_control: bool = False,
    cache: FeatureCache | None = None,
) -> Iterator[tuple[str, Any]]:
    """Yield (name, value): VQA scores, then (if asked) the same scores with blank images, then
    `records` (per-question predictions) and `seconds`."""
    start = time.perf_counter()
    if cache is None and supports_feature_cache(model):
        cache = FeatureCache(model)
    predictions = predict(model, samples, batch_size=batch_size, max_new_tokens=max_new_tokens, cache=cache, desc="eval")
    records = records_for(samples, predictions)
    for name, value in vqa_scores(records).items():
        yield name, value
    if blank_control:
        blank = predict(model, samples, batch_size=batch_size, max_new_tokens=max_new_tokens, blank_images=True, cache=cache, desc="eval blank")
        for name, value in vqa_scores(records_for(samples, blank)).items():
            if not name.startswith("n"):
                yield f"blank_image/{name}", value
    yield "records", records
    yield "seconds", time.perf_counter() - start


def evaluate_caption_model(
    model, samples: Sequence[Sample], *, batch_size: int = 8, max_new_tokens: int = 64, cache: FeatureCache | None = None,
) -> Iterator[tuple[str, Any]]:
    """Report / caption generation: BLEU-1..4, ROUGE-L, METEOR, CIDEr-D against each sample's answer."""
    from medqwen.eval import caption_scores

    start = time.perf_counter()
    predictions = predict(model, samples, batch_size=batch_size, max_new_tokens=max_new_tokens, cache=cache, desc="captions")
    yield from caption_scores(predictions, [[s.answer] for s in samples]).items()
    yield "n", len(samples)
    yield "records", [{"question": s.question, "answer": s.answer, "pred": p} for s, p in zip(samples, predictions)]
    yield "seconds", time.perf_counter() - start


def evaluate_pope_model(
    model, samples: Sequence[Sample], *, seed: int = 0, batch_size: int = 16, max_new_tokens: int = 8,
    cache: FeatureCache | None = None,
) -> Iterator[tuple[str, Any]]:
    """POPE-style hallucination probes: balanced yes/no questions built from the closed questions."""
    from medqwen.eval import build_pope_probes, pope_scores

    start = time.perf_counter()
    probes = build_pope_probes(samples, seed)
    chosen = [samples[p["index"]] for p in probes]
    predictions = predict(model, chosen, batch_size=batch_size, max_new_tokens=max_new_tokens, cache=cache, desc="pope")
    yield from pope_scores(predictions, [p["label"] for p in probes]).items()
    yield "records", [{"question": p["question"], "answer": p["answer"], "pred": pred} for p, pred in zip(probes, predictions)]
    yield "seconds", time.perf_counter() - start


def evaluate_ranked_model(
    model, samples: Sequence[Sample], *, batch_size: int = 32, blank_control: bool = True, cache: FeatureCache | None = None,
) -> Iterator[tuple[str, Any]]:
    """Closed questions scored by ranking their candidate answers' likelihoods (no generation; see
    medqwen.eval.ranking): accuracy, the same with blank images, n and the majority answer's share."""
    from medqwen.data.grounding import majority_share
    from medqwen.eval.ranking import rank_answers

    start = time.perf_counter()
    if cache is None and supports_feature_cache(model):
        cache = FeatureCache(model)
    predictions = rank_answers(model, samples, cache=cache, batch_size=batch_size)
    yield "acc", sum(p == s.answer for p, s in zip(predictions, samples)) / max(1, len(samples))
    if blank_control:
        blank = rank_answers(model, samples, cache=cache, batch_size=batch_size, blank_images=True)
        yield "blank_image/acc", sum(p == s.answer for p, s in zip(blank, samples)) / max(1, len(samples))
    yield "n", len(samples)
    yield "majority", majority_share(samples)
    yield "records", [{"question": s.question, "answer": s.answer, "pred": p} for s, p in zip(samples, predictions)]
    yield "seconds", time.perf_counter() - start
