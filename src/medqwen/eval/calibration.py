"""Calibration of ranked closed answers: divide out the model's answer prior, estimated without labels.

Two estimates of the prior, both from the multiplicative correction ``W = diag(p_prior)^-1`` (b = 0):

**Contextual calibration** (:func:`contextual_calibration`) — Zhao et al. 2021, "Calibrate Before Use:
Improving Few-Shot Performance of Language Models" (ICML), §5: estimate the model's bias towards each answer from a content-free input (there the text "N/A"; here the
same question with a blank image, which :mod:`medqwen.eval.ranking` scores with ``blank_images=True``),
then rescale the answer probabilities by ``W = diag(p_cf)^-1`` (b = 0) and take the argmax. In logs:

    calibrated(c) = log_softmax(image scores)[c] - log_softmax(blank scores)[c]   over one question's candidates

It needs no labels and no data from the task. A blank image is far from every training image, though, so
its prior can be extreme (one answer at p ~ 1) and dividing it out then over-corrects.

**Batch calibration** (:func:`batch_calibration`) — Zhou et al. 2024, "Batch Calibration: Rethinking
Calibration for In-Context Learning and Prompt Engineering" (ICLR): the prior is estimated as the mean of
the answer probabilities over the evaluated inputs themselves (unlabelled; here over all questions that
share one candidate set). We divide it out as above, ``calibrated(c) = log p(c | x) - log mean_x' p(c | x')``.
Transductive: it sees the test inputs, not their labels.

Both ask whether a task scored as forgotten lost the image evidence or only moved its answer prior
(issue 7): a model whose likelihoods still separate the answers but whose decisions all fall on one
side recovers under calibration; one that lost the image does not.
"""

from __future__ import annotations

import math
from typing import Sequence


def _log_softmax(scores: dict[str, float]) -> dict[str, float]:
    top = max(scores.values())
    log_total = top + math.log(sum(math.exp(v - top) for v in scores.values()))
    return {k: v - log_total for k, v in scores.items()}


def _rescored(record: dict, calibrated: dict[str, float]) -> dict:
    # ties break as most_likely does: the first candidate in the record's order
    return {**record, "pred": max(calibrated, key=lambda c: calibrated[c]), "scores": calibrated}


def contextual_calibration(records: Sequence[dict], blank_records: Sequence[dict]) -> list[dict]:
    """``records`` with ``pred`` replaced by the calibrated argmax and ``scores`` by the calibrated scores.

    Both lists are the ``records`` of :func:`medqwen.eval.evaluators.evaluate_ranking` over the same samples
    in the same order (``{"question", "answer", "pred", "scores": {candidate: log-likelihood}}``), the
    second scored with blank images. ValueError when they do not line up.
    """
    if len(records) != len(blank_records):
        raise ValueError(f"{len(records)} records but {len(blank_records)} blank-image records: score the same samples")
    out = []
    for i, (rec, blank) in enumerate(zip(records, blank_records)):
        if rec["question"] != blank["question"] or sorted(rec["scores"]) != sorted(blank["scores"]):
            raise ValueError(f"record {i}: question or candidates differ between the image and blank-image records "
                             f"({rec['question']!r} {sorted(rec['scores'])} vs {blank['question']!r} {sorted(blank['scores'])})")
        image, prior = _log_softmax(rec["scores"]), _log_softmax(blank["scores"])
        out.append(_rescored(rec, {c: image[c] - prior[c] for c in rec["scores"]}))
    return out


def batch_calibration(records: Sequence[dict]) -> list[dict]:
    """``records`` (as :func:`contextual_calibration`) with each answer's mean probability over the records
    of the same candidate set divided out; ``pred`` is the calibrated argmax."""
    normalised = [_log_softmax(rec["scores"]) for rec in records]
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, rec in enumerate(records):
        groups.setdefault(tuple(sorted(rec["scores"])), []).append(i)
    log_prior: dict[int, dict[str, float]] = {}
    for options, members in groups.items():
        mean = {c: sum(math.exp(normalised[i][c]) for i in members) / len(members) for c in options}
        for i in members:
            log_prior[i] = {c: math.log(mean[c]) for c in options}
    return [_rescored(rec, {c: normalised[i][c] - log_prior[i][c] for c in rec["scores"]}) for i, rec in enumerate(records)]
