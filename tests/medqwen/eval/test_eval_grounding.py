"""Likelihood ranking of candidate answers and the grounding evaluator (tiny random model)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medqwen.data.schema import Sample
from medqwen.eval.grounding import (
    ProbeSet, evaluate_probe_set, linear_probe, predict_logistic, probe_answers,
)
from medqwen.eval.ranking import candidate_logprobs, rank_answers, reference_sequence_logprobs, sequence_logprobs
from medqwen.models import tiny_mini


def _image(seed):
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(32, 32, 3) * 255).astype("uint8"))


def _question(i, label, asked):
    extra = {"index": i, "label": label, "asked": asked, "candidates": ["yes", "no"]}
    return Sample([], f"Is this {asked}?", "yes" if asked == label else "no", "closed", "probe", "val", extra, _image(i))


@pytest.fixture(scope="module")
def model():
    return tiny_mini(seed=0).eval()


def test_sequence_logprobs_matches_reference_from_full_logits(model):
    batch = model.build_inputs([_image(0), _image(1)], ["Is this a CT?", "Which organ?"], ["yes", "the left kidney"])
    out = model(**batch, full_logits=True)
    fast = sequence_logprobs(out.answer_logits, out.answer_labels, batch["labels"])
    torch.testing.assert_close(fast, reference_sequence_logprobs(out.logits, batch["labels"]), rtol=1e-5, atol=1e-5)


def test_rank_answers_picks_the_most_likely_candidate(model):
    samples = [_question(i, "ct", "ct") for i in range(3)]
    candidates = [["yes", "no"], ["no", "maybe so", "yes"], ["ct"]]
    scores = candidate_logprobs(model, samples, candidates, batch_size=2)  # batches cut across questions
    assert [len(s) for s in scores] == [2, 3, 1] and all(v < 0 for row in scores for v in row)
    for sample, options, row in zip(samples, candidates, scores):  # each score = log p(answer) of that pair alone
        batch = model.build_inputs([sample.image] * len(options), [sample.question] * len(options), options)
        out = model(**batch)
        alone = sequence_logprobs(out.answer_logits, out.answer_labels, batch["labels"])
        torch.testing.assert_close(torch.tensor(row), alone, rtol=1e-4, atol=1e-4)
    picked = rank_answers(model, samples, candidates, scorer="sequence")
    assert picked == [opts[int(np.argmax(row))] for opts, row in zip(candidates, scores)]


def test_blank_images_change_the_scores_only_through_the_image(model):
    samples = [_question(i, "ct", "ct") for i in range(2)]
    real = candidate_logprobs(model, samples, [["yes", "no"]] * 2)
    blank = candidate_logprobs(model, samples, [["yes", "no"]] * 2, blank_images=True)
    assert real != blank
    # with the image blanked, two samples that differ only in their image score the same
    torch.testing.assert_close(torch.tensor(blank[0]), torch.tensor(blank[1]))


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g)
    y = x[:, :3].argmax(1)  # 3 classes, linearly separable
    fitted, l2 = linear_probe(x, y, 3)
    assert l2 in (1e-4, 1e-3, 1e-2, 1e-1)
    assert (predict_logistic(fitted, x) == y).float().mean() == 1.0


def test_probe_answers_turn_a_class_into_the_question_answer():
    questions = [_question(0, "ct", "ct"), _question(1, "ct", "mri"), Sample([], "Which?", "mri", "closed", "p", "val", {})]
    assert probe_answers(questions, ["ct", "ct", "mri"]) == ["yes", "no", "mri"]
    assert probe_answers(questions, ["mri", "mri", "ct"]) == ["no", "yes", "ct"]


def test_evaluate_probe_set_reports_model_blank_and_probe(model):
    labels = ["ct", "mri", "x-ray", "ct", "mri", "x-ray"]
    questions = [_question(i, lab, asked) for i, lab in enumerate(labels) for asked in (lab, "ultrasound")]
    for i, q in enumerate(questions):
        q.extra["index"] = i // 2
    train = [(Sample([], "d", "d", "open", "t", "train", {"index": 100 + i}, _image(100 + i)), lab)
             for i, lab in enumerate(labels * 3)]
    result = dict(evaluate_probe_set(model, ProbeSet("toy", "modality", questions, train)))
    assert result["n"] == 12 and result["majority"] == 0.5 and result["probe_train_n"] == 18
    records = result["records"]
    assert result["acc"] == sum(r["pred"] == r["answer"] for r in records) / 12
    assert result["blank_acc"] == sum(r["blank_pred"] == r["answer"] for r in records) / 12
    assert 0.0 <= result["probe_acc"] <= 1.0 and result["probe_acc"] * 12 == round(result["probe_acc"] * 12)
    assert [r["pred"] for r in records] == rank_answers(model, questions)


def test_ranked_evaluator_scores_accuracy_and_blank_control(model):
    from medqwen.training.evaluate import evaluate_ranked_model

    questions = [_question(i, "ct", asked) for i, asked in enumerate(["ct", "mri", "ct", "x-ray"])]
    result = dict(evaluate_ranked_model(model, questions))
    picked = rank_answers(model, questions)
    blank = rank_answers(model, questions, blank_images=True)
    assert result["acc"] == sum(p == q.answer for p, q in zip(picked, questions)) / 4
    assert result["blank_image/acc"] == sum(p == q.answer for p, q in zip(blank, questions)) / 4
    assert result["n"] == 4 and result["majority"] == 0.5


def test_first_token_scores_equal_the_first_term_of_the_sequence_scores(model):
    from medqwen.eval.ranking import answer_tokens, chosen_scorer, first_token_logprobs

    samples = [_question(i, "ct", "ct") for i in range(3)]
    samples[1].question = "A much longer question, so that the batch is left-padded?"
    candidates = [["yes", "no"]] * 3
    fast = first_token_logprobs(model, samples, candidates, batch_size=2)
    for sample, row in zip(samples, fast):
        for candidate, value in zip(["yes", "no"], row):
            batch = model.build_inputs([sample.image], [sample.question], [candidate])
            out = model(**batch)
            first = torch.log_softmax(out.answer_logits[0].float(), -1)[out.answer_labels[0]]
            assert out.answer_labels[0] == answer_tokens(model, candidate)[0]
            assert abs(float(first) - value) < 1e-4
    assert chosen_scorer(model, candidates) == "first_token"
    assert chosen_scorer(model, [["yes", "yes please"]]) == "sequence"  # same first token: full sequences
    assert rank_answers(model, samples, candidates) == rank_answers(model, samples, candidates, scorer="first_token")
    with pytest.raises(ValueError, match="scorer='best'"):
        rank_answers(model, samples, candidates, scorer="best")
