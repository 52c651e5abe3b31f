"""Medical VQA metrics (VQA-RAD / SLAKE / PathVQA), LLaVA-Med convention.

LLaVA-Med (Li et al., 2023, "LLaVA-Med: Training a Large Language-and-Vision
Assistant for Biomedicine in One Day", NeurIPS D&B) reports *accuracy* on
closed-set questions and token *recall* on open-set questions
(``llava/eval/run_eval.py``).  This module re-implements that protocol as pure
functions, with two deliberate fixes:

* closed (yes/no) answers are matched on whole words and on the *first*
  yes/no word of the prediction, so ``"yesterday"`` is not ``"yes"`` and
  ``"no, there is not"`` is ``"no"`` (the original used substring tests);
* the per-type counts are exact (the original script is known to miscount).

Everything is normalised with the local :func:`normalize`.
"""

from __future__ import annotations

import string
import unicodedata
from collections import Counter, defaultdict
from typing import Any, Iterable, Mapping

YES_NO = ("yes", "no")


def get_field(obj: Any, name: str, default: Any = None) -> Any:
    """Reads ``name`` from a mapping (``obj[name]``) or an object attribute."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _is_punct(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch)[0] in "PS"


def normalize(text: Any) -> str:
    """Lowercases, strips punctuation (except inside numbers), collapses spaces.

    Punctuation between two digits is kept (``"3.5"``, ``"1,000"``, ``"1/2"``);
    apostrophes are deleted (``"don't"`` -> ``"dont"``); any other punctuation
    or symbol becomes a space.  Follows the spirit of the VQA / SQuAD answer
    normalisation (Antol et al., 2015; Rajpurkar et al., 2016), without article
    removal, since "a"/"the" rarely matter in medical answers.
    """
    s = "" if text is None else str(text).lower()
    out = []
    for i, ch in enumerate(s):
        if not _is_punct(ch):
            out.append(ch)
        elif 0 < i < len(s) - 1 and s[i - 1].isdigit() and s[i + 1].isdigit():
            out.append(ch)
        elif ch in "'\u2019":
            continue
        else:
            out.append(" ")
    return " ".join("".join(out).split())


def tokens(text: Any) -> list[str]:
    """Whitespace tokens of :func:`normalize` (``text``)."""
    return normalize(text).split()


def parse_yes_no(text: Any) -> str | None:
    """Returns the first whole-word ``"yes"``/``"no"`` in ``text``, else None.

    ``"The answer is yes."`` -> ``"yes"``; ``"No, there is not"`` -> ``"no"``;
    ``"yesterday"`` -> None.  Used by closed-set VQA accuracy and by POPE.
    """
    for tok in tokens(text):
        if tok in YES_NO:
            return tok
    return None


def _contains(seq: list[str], sub: list[str]) -> bool:
    if not sub:
        return not seq
    k = len(sub)
    return any(seq[i:i + k] == sub for i in range(len(seq) - k + 1))


def closed_correct(pred: Any, gt: Any) -> bool:
    """Closed-set correctness (LLaVA-Med closed accuracy, whole-word variant).

    * yes/no ground truth: correct iff the first whole-word yes/no in ``pred``
      equals ``gt`` (:func:`parse_yes_no`); no yes/no word -> incorrect.
    * any other closed answer (``"left"``, a multiple-choice option ...):
      correct iff the normalised ``pred`` equals the normalised ``gt`` or
      contains it as a contiguous whole-word sequence.  Competing options in
      ``pred`` are not penalised (``"left or right"`` counts for ``"left"``),
      matching LLaVA-Med's containment test but without substring false
      positives (``"leftward"`` is not ``"left"``).
    """
    g = tokens(gt)
    if len(g) == 1 and g[0] in YES_NO:
        return parse_yes_no(pred) == g[0]
    p = tokens(pred)
    return p == g or _contains(p, g)


def open_recall(pred: Any, gt: Any) -> float:
    """LLaVA-Med open-set token recall: share of ``gt`` tokens found in ``pred``.

    recall = sum_w min(c_pred(w), c_gt(w)) / |gt tokens|  (clipped multiset
    recall, as in SQuAD token-F1).  Equals LLaVA-Med's ``tp / (tp + fn)`` when
    no token repeats; with repeats LLaVA-Med counts ``tp`` with *prediction*
    multiplicities, which we consider a bug.  Empty ``gt`` scores 1.0 iff the
    prediction is empty too.
    """
    g = Counter(tokens(gt))
    p = Counter(tokens(pred))
    total = sum(g.values())
    if total == 0:
        return float(not p)
    return sum(min(c, p[w]) for w, c in g.items()) / total


def exact_match(pred: Any, gt: Any) -> bool:
    """Exact string match after :func:`normalize`."""
    return normalize(pred) == normalize(gt)


def _answer_type(rec: Any) -> str:
    at = get_field(rec, "answer_type")
    if at is None:  # infer: yes/no answers are closed
        return "closed" if normalize(get_field(rec, "answer")) in YES_NO else "open"
    at = str(at).strip().lower()
    if at not in ("closed", "open"):
        raise ValueError(f"answer_type must be 'closed' or 'open', got {at!r}")
    return at


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def vqa_scores(records: Iterable[Any]) -> dict[str, float]:
    """Aggregates VQA metrics over ``records`` (LLaVA-Med protocol).

    Each record (dict or object) has ``pred``, ``answer``, ``answer_type``
    (``'closed'``/``'open'``, case-insensitive; inferred from yes/no answers
    when missing) and optionally ``question_type``.

    Returns ``closed_acc`` (mean :func:`closed_correct` over closed records),
    ``open_recall`` (mean :func:`open_recall` over open records),
    ``exact_match`` (over all records), counts ``n``, ``n_closed``,
    ``n_open``, ``n_closed_correct``, per-answer-type exact match
    (``exact_match/by_atype/<closed|open>``) and per-question-type breakdowns
    (``closed_acc/by_qtype/<q>``, ``open_recall/by_qtype/<q>``,
    ``exact_match/by_qtype/<q>``, ``n/by_qtype/<q>``).  Means over an empty
    set are NaN.
    """
    closed: list[float] = []
    opened: list[float] = []
    em: dict[str, list[float]] = {"closed": [], "open": []}
    by_q: dict[str, dict[str, list[float]]] = defaultdict(
        lambda: {"closed": [], "open": [], "em": []})
    for rec in records:
        pred, gt = get_field(rec, "pred"), get_field(rec, "answer")
        at = _answer_type(rec)
        e = float(exact_match(pred, gt))
        em[at].append(e)
        if at == "closed":
            score = float(closed_correct(pred, gt))
            closed.append(score)
        else:
            score = open_recall(pred, gt)
            opened.append(score)
        qt = get_field(rec, "question_type")
        if qt is not None and str(qt).strip():
            slot = by_q[str(qt).strip().lower()]
            slot[at].append(score)
            slot["em"].append(e)

    out: dict[str, float] = {
        "closed_acc": _mean(closed),
        "open_recall": _mean(opened),
        "exact_match": _mean(em["closed"] + em["open"]),
        "n": len(closed) + len(opened),
        "n_closed": len(closed),
        "n_open": len(opened),
        "n_closed_correct": int(sum(closed)),
        "exact_match/by_atype/closed": _mean(em["closed"]),
        "exact_match/by_atype/open": _mean(em["open"]),
    }
    for q in sorted(by_q):
        slot = by_q[q]
        if slot["closed"]:
            out[f"closed_acc/by_qtype/{q}"] = _mean(slot["closed"])
        if slot["open"]:
            out[f"open_recall/by_qtype/{q}"] = _mean(slot["open"])
        out[f"exact_match/by_qtype/{q}"] = _mean(slot["em"])
        out[f"n/by_qtype/{q}"] = len(slot["em"])
    return out
