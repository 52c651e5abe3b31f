"""POPE-style object/finding hallucination probes for medical VQA data.

POPE (Li et al., 2023, "Evaluating Object Hallucination in Large
Vision-Language Models", EMNLP; arXiv:2305.10355) asks balanced yes/no
questions ("Is there a <object> in the image?") and reports accuracy,
precision, recall and F1 with "yes" as the positive class, plus the ratio of
"yes" answers (a yes-bias indicator; 0.5 is ideal on a balanced set).

Here the probes are the closed yes/no questions of an existing medical VQA
set, balanced by subsampling the majority answer.  Predictions are parsed with
the whole-word rule of :func:`medqwen.eval.vqa.parse_yes_no`.  Difference from
the POPE script: an answer without a yes/no word counts as "no" (POPE counts
it as "yes") and is reported as ``unparsed``, so evasive answers are never
rewarded as positives.
"""

from __future__ import annotations

import random
from typing import Any, Iterable, Sequence

from .vqa import YES_NO, get_field, normalize, parse_yes_no


def build_pope_probes(samples: Iterable[Any], seed: int, n: int | None = None) -> list[dict]:
    """Builds a balanced, deterministic set of yes/no probes from VQA samples.

    Keeps samples with ``answer_type`` closed (case-insensitive) whose
    normalised ``answer`` is exactly ``yes`` or ``no``; samples may be dicts or
    objects with ``question``, ``answer``, ``answer_type``, ``images``
    attributes.  Both classes are subsampled to the same size
    ``k = min(#yes, #no)`` (or ``min(k, n // 2)`` if ``n`` is given) with
    ``random.Random(seed)``.  Returns probes sorted by source position, each a
    dict ``{"index", "question", "answer", "label", "images"}`` where
    ``label`` is 1 for yes and 0 for no and ``index`` is the sample position.
    """
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    pools: dict[str, list[tuple[int, Any]]] = {"yes": [], "no": []}
    for idx, s in enumerate(samples):
        if str(get_field(s, "answer_type", "")).strip().lower() != "closed":
            continue
        ans = normalize(get_field(s, "answer"))
        if ans in YES_NO:
            pools[ans].append((idx, s))
    k = min(len(pools["yes"]), len(pools["no"]))
    if n is not None:
        k = min(k, n // 2)
    rng = random.Random(seed)
    chosen = []
    for ans in YES_NO:  # fixed order -> deterministic draws
        chosen += [(idx, s, ans) for idx, s in rng.sample(pools[ans], k)]
    chosen.sort(key=lambda t: t[0])
    return [{"index": idx, "question": get_field(s, "question"), "answer": ans,
             "label": int(ans == "yes"), "images": get_field(s, "images")}
            for idx, s, ans in chosen]


def _label(x: Any) -> int:
    if isinstance(x, str):
        x = normalize(x)
        if x not in YES_NO:
            raise ValueError(f"label must be yes/no, got {x!r}")
        return int(x == "yes")
    if x in (0, 1):  # also bools
        return int(x)
    raise ValueError(f"label must be yes/no, bool or 0/1, got {x!r}")


def pope_scores(preds: Sequence[Any], labels: Sequence[Any]) -> dict[str, float]:
    """POPE metrics (Li et al., 2023), positive class = "yes".

    ``preds`` are free-text answers parsed with the first whole-word yes/no
    (unparseable -> "no", counted in ``unparsed``); ``labels`` are "yes"/"no"
    strings, bools or 0/1.  Returns ``accuracy``, ``precision`` = TP/(TP+FP),
    ``recall`` = TP/(TP+FN), ``f1``, ``yes_ratio`` = share of "yes"
    predictions, plus counts ``n``, ``tp``, ``fp``, ``tn``, ``fn``,
    ``unparsed``.  Undefined ratios (0/0) are reported as 0.0.
    """
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions vs {len(labels)} labels")
    tp = fp = tn = fn = unparsed = 0
    for p, y in zip(preds, labels):
        parsed = parse_yes_no(p)
        unparsed += parsed is None
        yhat = int(parsed == "yes")
        y = _label(y)
        tp += yhat and y
        fp += yhat and not y
        fn += (not yhat) and y
        tn += (not yhat) and not y
    n = len(preds)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n if n else 0.0,
        "n": n, "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn),
        "unparsed": int(unparsed),
    }
