"""Likelihood ranking of candidate answers and the grounding evaluator (tiny random model)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medqwen.data.schema import Sample
from medqwen.data.grounding import CLASSES
from medqwen.eval.grounding import (
    ProbeSet, evaluate_probe_set, linear_probe, pooled_features, predict_logistic, probe_answers,
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
    assert [r["pred"] for r in records] == rank_answers(model, questions)
    assert [r["blank_pred"] for r in records] == rank_answers(model, questions, blank_images=True)
    # the linear probe: fitted on the training images' pooled features, asked the same questions
    classes = CLASSES["modality"]
    x = pooled_features(model, [s for s, _ in train])
    fitted, l2 = linear_probe(x, torch.tensor([classes.index(c) for _, c in train]), len(classes))
    predicted = [classes[i] for i in predict_logistic(fitted, pooled_features(model, questions)).tolist()]
    answers = probe_answers(questions, predicted)
    assert result["probe_l2"] == l2
    assert result["probe_acc"] == sum(a == q.answer for a, q in zip(answers, questions)) / 12


def test_first_token_scores_equal_the_first_term_of_the_sequence_scores(model):
    from medqwen.eval.ranking import answer_tokens, chosen_scorer, first_token_logprobs

    samples = [_question(i, "ct", "ct") for i in range(3)]
    samples[1].question = "A much longer question, so that the batch is left-padded?"
    candidates = [["yes", "no"]] * 3
    fast = first_token_logprobs(model, samples, candidates, batch_size=2)
    for sample, row in zip(samples, fast):
        for candidate, value in zip(["yes", "no"], row):
            batch = model.build_inputs([sample.image], [sample.question], [candidate])
            with torch.no_grad():
                out = model(**batch)
            first = torch.log_softmax(out.answer_logits[0].float(), -1)[out.answer_labels[0]]
            assert out.answer_labels[0] == answer_tokens(model, candidate)[0]
            assert abs(float(first) - value) < 1e-4
    assert chosen_scorer(model, candidates) == "first_token"
    assert chosen_scorer(model, [["yes", "yes please"]]) == "sequence"  # same first token: full sequences
    assert rank_answers(model, samples, candidates) == rank_answers(model, samples, candidates, scorer="first_token")
    with pytest.raises(ValueError, match="scorer='best'"):
        rank_answers(model, samples, candidates, scorer="best")
