"""Closed questions scored by ranking candidate answers by their likelihood (no generation).

For a question with candidates c_1..c_K the model's choice is argmax_k log p(c_k <eot> | image,
question): the summed log-probability of the candidate's answer tokens, end-of-turn included (so a
candidate that is a prefix of another is not favoured). This is the multiple-choice "acc" of
lm-evaluation-harness (Gao et al. 2021, unnormalised log-likelihood). It needs one teacher-forced
forward per (question, candidate) — rows of one batch — instead of a token-by-token decode, and it
scores what the model prefers even when its free-form answer would be phrased differently.
Generation stays the scorer for open questions.

Two scorers, chosen per call (``scorer=``): ``"sequence"`` is the above; ``"first_token"`` scores
each candidate by log p(first answer token | image, question) from ONE forward of the prompt alone
(only the last position's logits are computed) — exact for the argmax whenever the candidates'
first tokens differ and every later token is near-certain (yes/no, class names), and K times
cheaper. ``"auto"`` (default) uses ``first_token`` when every sample's candidates start with
distinct tokens, else ``sequence``; :func:`chosen_scorer` tells which.

The sequence scorer shares each question's prompt between its candidates on models with
``supports_prefix_cache`` (MedQwen-mini): the prompt runs once with the language model's KV cache,
the cache is repeated per candidate, and only the candidates' answer tokens run on top of it — the
same log-probabilities as one full row per candidate (:func:`per_row_logprobs`, the reference; equal
up to float rounding), at about 1/K of the cost for K candidates whose answers are a few tokens.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def sequence_logprobs(answer_logits: torch.Tensor, answer_labels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row sum of log p(label) over the labelled tokens.

    answer_logits: (T, V) logits at the T labelled positions of the batch, row-major (as
    ``VLMOutput.answer_logits``); answer_labels: (T,) their targets; labels: (B, L) the batch labels
    (-100 = ignored; position t predicts labels[t + 1]). Returns (B,) float32.
    """
    per_token = F.log_softmax(answer_logits.float(), dim=-1).gather(-1, answer_labels[:, None]).squeeze(-1)
    counts = (labels[:, 1:] != -100).sum(1)
    rows = torch.repeat_interleave(torch.arange(labels.shape[0], device=per_token.device), counts.to(per_token.device))
    return torch.zeros(labels.shape[0], device=per_token.device).index_add_(0, rows, per_token)


def reference_sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Slow, obviously-correct version of :func:`sequence_logprobs` from full logits (B, L, V)."""
    out = torch.zeros(labels.shape[0])
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            if labels[b, t + 1] != -100:
                out[b] += torch.log_softmax(logits[b, t].float(), -1)[labels[b, t + 1]]
    return out


def answer_tokens(model, candidate: str) -> list[int]:
    """The token ids a model is trained to produce for ``candidate`` (end of turn included)."""
    cache = model.__dict__.setdefault("_answer_token_cache", {})
    if candidate not in cache:
        ids, labels = model.tokenize_sample("?", candidate, [])
        cache[candidate] = [t for t, lab in zip(ids, labels) if lab != -100]
    return cache[candidate]


def chosen_scorer(model, candidates: Sequence[Sequence[str]], scorer: str = "auto") -> str:
    """"first_token" or "sequence" for these candidate lists (see the module docstring)."""
    if scorer not in ("auto", "first_token", "sequence"):
        raise ValueError(f"scorer={scorer!r}; allowed: 'auto', 'first_token', 'sequence'")
    if scorer != "auto":
        return scorer
    vlm = getattr(model, "base_model", model)
    for options in candidates:
        firsts = [answer_tokens(vlm, c)[0] for c in options]
        if len(set(firsts)) != len(firsts):
            return "sequence"
    return "first_token"


@torch.no_grad()
def first_token_logprobs(
    model, samples: Sequence, candidates: Sequence[Sequence[str]], *, cache=None, blank_images: bool = False,
    batch_size: int = 32,
) -> list[list[float]]:
    """log p(first answer token of each candidate | image, question): one prompt-only forward per
    sample (left-padded batch, LM head on the last position only)."""
    from medqwen.training.batches import make_batch_from

    was_training = model.training
    model.eval()
    vlm = getattr(model, "base_model", model)
    scores: list[list[float]] = []
    kwargs = {"blank_images": True} if blank_images else {}
    try:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            batch = make_batch_from(vlm, chunk, None, cache=cache, padding_side="left")
            batch = {k: v.to(vlm.device) for k, v in batch.items()}
            logprobs = F.log_softmax(model(**batch, logits_to_keep=1, **kwargs).logits[:, -1].float(), dim=-1)
            for row, options in zip(logprobs, candidates[start : start + batch_size]):
                scores.append([float(row[answer_tokens(vlm, c)[0]]) for c in options])
    finally:
        model.train(was_training)
    return scores


def candidate_logprobs(
    model, samples: Sequence, candidates: Sequence[Sequence[str]], *, cache=None, blank_images: bool = False,
    batch_size: int = 32,
) -> list[list[float]]:
    """log p(candidate | image, question) for every candidate of every sample (see module docstring):
    :func:`prefix_shared_logprobs` when the model supports a prefix cache, else :func:`per_row_logprobs`.

    ``model`` is a VisionLanguageModel or an adapter wrapper around one; ``cache`` a FeatureCache
    (frozen image features) or None.
    """
    if len(candidates) != len(samples):
        raise ValueError(f"{len(candidates)} candidate lists for {len(samples)} samples")
    if any(not options for options in candidates):
        raise ValueError("every sample needs at least one candidate answer")
    vlm = getattr(model, "base_model", model)
    score = prefix_shared_logprobs if getattr(vlm, "supports_prefix_cache", False) else per_row_logprobs
    return score(model, samples, candidates, cache=cache, blank_images=blank_images, batch_size=batch_size)


@torch.no_grad()
def per_row_logprobs(
    model, samples: Sequence, candidates: Sequence[Sequence[str]], *, cache=None, blank_images: bool = False,
    batch_size: int = 32,
) -> list[list[float]]:
    """The sequence scorer with one teacher-forced row per (question, candidate); ``batch_size``
    counts rows. Works on every model; the reference for :func:`prefix_shared_logprobs`."""
    from medqwen.training.batches import make_batch_from

    rows = [(i, c) for i, options in enumerate(candidates) for c in options]
    was_training = model.training
    model.eval()
    vlm = getattr(model, "base_model", model)
    scores: list[list[float]] = [[] for _ in samples]
    kwargs = {"blank_images": True} if blank_images else {}
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = make_batch_from(vlm, [samples[i] for i, _ in chunk], [c for _, c in chunk], cache=cache)
            batch = {k: v.to(vlm.device) for k, v in batch.items()}
            out = model(**batch, **kwargs)
            for (i, _), value in zip(chunk, sequence_logprobs(out.answer_logits, out.answer_labels, batch["labels"]).tolist()):
                scores[i].append(value)
    finally:
        model.train(was_training)
    return scores


@torch.no_grad()
def prefix_shared_logprobs(
    model, samples: Sequence, candidates: Sequence[Sequence[str]], *, cache=None, blank_images: bool = False,
    batch_size: int = 32,
) -> list[list[float]]:
    """The sequence scorer with each prompt run once (``batch_size`` counts prompts).

    For a candidate with answer tokens a_1..a_n: log p(a_1) from the prompt's last position, and
    log p(a_{j+1}) from position j of a continuation a_1..a_{n-1} run on the prompt's KV cache.
    """
    from medqwen.training.batches import make_batch_from

    was_training = model.training
    model.eval()
    vlm = getattr(model, "base_model", model)
    scores: list[list[float]] = []
    kwargs = {"blank_images": True} if blank_images else {}
    try:
        for start in range(0, len(samples), batch_size):
            options = candidates[start : start + batch_size]
            batch = make_batch_from(vlm, samples[start : start + batch_size], None, cache=cache, padding_side="left")
            batch = {k: v.to(vlm.device) for k, v in batch.items()}
            prompt = model(**batch, logits_to_keep=1, use_cache=True, **kwargs)
            tokens = [answer_tokens(vlm, c) for opts in options for c in opts]  # R rows
            row_prompt = torch.repeat_interleave(
                torch.arange(len(options), device=vlm.device), torch.tensor([len(o) for o in options], device=vlm.device)
            )  # (R,) which prompt each row continues
            first = F.log_softmax(prompt.logits[:, -1].float(), dim=-1)  # (B, V)
            totals = first[row_prompt, torch.tensor([t[0] for t in tokens], device=vlm.device)]  # (R,)
            rest = max(len(t) for t in tokens) - 1
            if rest > 0:
                cont = torch.full((len(tokens), rest), vlm.pad_token_id, dtype=torch.long, device=vlm.device)
                cont_mask = torch.zeros_like(cont)
                targets = torch.full_like(cont, -100)
                for r, t in enumerate(tokens):
                    cont[r, : len(t) - 1] = torch.tensor(t[:-1])
                    cont_mask[r, : len(t) - 1] = 1
                    targets[r, : len(t) - 1] = torch.tensor(t[1:])
                kv = prompt.past_key_values
                kv.batch_select_indices(row_prompt)  # (B, ...) -> (R, ...), in place
                mask = torch.cat([batch["attention_mask"][row_prompt], cont_mask], dim=1)
                logprobs = F.log_softmax(model(input_ids=cont, attention_mask=mask, past_key_values=kv).logits.float(), -1)
                picked = logprobs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)  # (R, rest)
                totals = totals + (picked * (targets != -100)).sum(1)
            flat = totals.tolist()
            for opts in options:
                scores.append(flat[: len(opts)])
                flat = flat[len(opts) :]
    finally:
        model.train(was_training)
    return scores


def candidate_scores(
    model, samples: Sequence, candidates: Sequence[Sequence[str]] | None = None, *, scorer: str = "auto", **kwargs
) -> tuple[list[list[str]], list[list[float]]]:
    """(candidates, log-probability scores) per sample, by ``scorer`` ("auto" | "first_token" |
    "sequence"). Candidates default to ``sample.extra["candidates"]``. Keyword arguments: ``cache``,
    ``blank_images``, ``batch_size``."""
    if candidates is None:
        missing = [i for i, s in enumerate(samples) if not s.extra.get("candidates")]
        if missing:
            raise ValueError(f"samples {missing[:5]} have no extra['candidates'] and none were given")
        candidates = [s.extra["candidates"] for s in samples]
    score = first_token_logprobs if chosen_scorer(model, candidates, scorer) == "first_token" else candidate_logprobs
    return list(candidates), score(model, samples, candidates, **kwargs)


def most_likely(candidates: Sequence[Sequence[str]], scores: Sequence[Sequence[float]]) -> list[str]:
    """Per sample, the first candidate with the highest score."""
    return [options[max(range(len(options)), key=row.__getitem__)] for options, row in zip(candidates, scores)]


def rank_answers(model, samples: Sequence, candidates: Sequence[Sequence[str]] | None = None, **kwargs) -> list[str]:
    """The most likely candidate per sample (arguments as :func:`candidate_scores`)."""
    return most_likely(*candidate_scores(model, samples, candidates, **kwargs))
