"""The evaluator registry and each registered evaluator on a tiny random model: every metric equals
the pure metric function applied to the evaluator's own records."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from medqwen.data.schema import Sample
from medqwen.errors import ConfigError
from medqwen.eval import (EVALUATORS, EvalSettings, caption_scores, evaluate_captions, evaluate_pope,
                          evaluate_ranking, evaluate_vqa, get_evaluator, pope_scores, predict, register,
                          registered_tasks, vqa_scores)
from medqwen.eval.calibration import batch_calibration
from medqwen.eval.evaluators import records_for
from medqwen.eval.ranking import candidate_logprobs, rank_answers
from medqwen.models import tiny_mini
from medqwen.training import DataSpec


def _image(seed):
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(32, 32, 3) * 255).astype("uint8"))


def _sample(i, question, answer, answer_type="closed", **extra):
    return Sample([], question, answer, answer_type, "toy", "test", {"index": i, **extra}, _image(i))


@pytest.fixture(scope="module")
def model():
    return tiny_mini(seed=0).eval()


@pytest.fixture
def vqa_samples():
    return [_sample(0, "Is there a mass?", "yes"), _sample(1, "Is it normal?", "no"),
            _sample(2, "Which organ?", "left lung", "open", question_type="organ"), _sample(3, "Any fracture?", "yes")]


def test_tasks_are_registered_by_name_and_unknown_ones_are_named():
    assert registered_tasks() == ["vqa", "caption", "pope", "rank"]
    assert get_evaluator("rank") is evaluate_ranking and get_evaluator("caption") is evaluate_captions
    with pytest.raises(ConfigError, match=r"unknown evaluation task 'rnak' \(did you mean 'rank'\?\); "
                                          r"registered: \['vqa', 'caption', 'pope', 'rank'\]"):
        get_evaluator("rnak")
    # evaluation sets accept exactly the registered tasks
    with pytest.raises(ConfigError, match=r"field 'task' = 'captions' \(did you mean 'caption'\?\); allowed: \['vqa'"):
        DataSpec(format="vqa_rad", task="captions")
    try:
        register("count")(lambda model, samples, settings: iter([("n", len(samples))]))
        assert DataSpec(format="vqa_rad", task="count").output_name == "vqa_rad_train_count"
        with pytest.raises(ValueError, match="registered twice"):
            register("count")(evaluate_vqa)
    finally:
        EVALUATORS.pop("count", None)


def test_vqa_evaluator_scores_its_own_predictions(model, vqa_samples):
    metrics = dict(evaluate_vqa(model, vqa_samples, EvalSettings(batch_size=3, max_new_tokens=4, blank_control=True)))
    records = metrics.pop("records")
    assert [r["pred"] for r in records] == predict(model, vqa_samples, batch_size=4, max_new_tokens=4)
    assert records == records_for(vqa_samples, [r["pred"] for r in records])
    seconds = metrics.pop("seconds")
    assert seconds > 0
    blank_preds = predict(model, vqa_samples, max_new_tokens=4, blank_images=True)
    expected = vqa_scores(records)
    expected.update({f"blank_image/{k}": v for k, v in vqa_scores(records_for(vqa_samples, blank_preds)).items()
                     if not k.startswith("n")})
    assert metrics.keys() == expected.keys()
    np.testing.assert_equal(metrics, expected)  # NaN (no open question scored) equals NaN here


def test_caption_and_pope_evaluators_score_their_records(model, vqa_samples):
    settings = EvalSettings(batch_size=2, seed=3)
    captions = dict(evaluate_captions(model, vqa_samples[:3], settings))
    preds = [r["pred"] for r in captions["records"]]
    assert preds == predict(model, vqa_samples[:3], max_new_tokens=64)
    assert {k: captions[k] for k in caption_scores(preds, [[s.answer] for s in vqa_samples[:3]])} == \
        caption_scores(preds, [[s.answer] for s in vqa_samples[:3]])
    assert captions["n"] == 3
    pope = dict(evaluate_pope(model, vqa_samples, settings))
    labels = [r["answer"] for r in pope["records"]]
    assert sorted(labels) == ["no", "yes"]  # balanced: one "no" in the set, so one "yes" drawn
    assert {k: pope[k] for k in pope_scores([], [])} == pope_scores([r["pred"] for r in pope["records"]], labels)


def test_rank_evaluator_accuracy_gold_logprob_and_blank_control(model):
    questions = [_sample(i, f"Is this {asked}?", "yes" if asked == "ct" else "no", candidates=["yes", "no"])
                 for i, asked in enumerate(["ct", "mri", "ct", "x-ray"])]
    settings = EvalSettings(batch_size=3, blank_control=True)
    result = dict(evaluate_ranking(model, questions, settings))
    picked = rank_answers(model, questions)
    blank = rank_answers(model, questions, blank_images=True)
    assert result["acc"] == sum(p == q.answer for p, q in zip(picked, questions)) / 4
    assert result["blank_image/acc"] == sum(p == q.answer for p, q in zip(blank, questions)) / 4
    assert result["n"] == 4 and result["majority"] == 0.5 and "gold_logprob" not in result
    assert [r["pred"] for r in result["records"]] == picked
    calibrated = batch_calibration(result["records"])
    assert result["batch_calibrated/acc"] == sum(r["pred"] == q.answer for r, q in zip(calibrated, questions)) / 4
    sequence = dict(evaluate_ranking(model, questions, replace(settings, blank_control=False), scorer="sequence"))
    scores = candidate_logprobs(model, questions, [q.extra["candidates"] for q in questions])
    gold = [row[["yes", "no"].index(q.answer)] for q, row in zip(questions, scores)]
    assert sequence["gold_logprob"] == pytest.approx(sum(gold) / 4, rel=1e-5)
    assert "blank_image/acc" not in sequence


def test_each_evaluation_set_writes_its_own_files(model, vqa_samples, tmp_path):
    from medqwen.training import ExperimentConfig, StageConfig
    from medqwen.training.pipeline import evaluate_sets

    stage = StageConfig(name="s", trainable=["projector"], data=[DataSpec(format="synthetic")])
    specs = [DataSpec(format="synthetic", split="test", name="first"), DataSpec(format="synthetic", split="test", name="second"),
             DataSpec(format="synthetic", split="test", task="rank")]
    config = ExperimentConfig(model="tiny-mini", stages=[stage], eval=specs, max_new_tokens=2)
    ranked = [replace(s, extra={**s.extra, "candidates": ["yes", "no"]}) for s in vqa_samples if s.answer in ("yes", "no")]
    scores = evaluate_sets(model, specs, config, tmp_path, blank_control=False,
                           data=[vqa_samples[:2], vqa_samples[2:], ranked])
    assert list(scores) == ["first", "second", "synthetic_test_rank"]
    for name, n in (("first", 2), ("second", 2), ("synthetic_test_rank", 3)):
        lines = (tmp_path / "eval" / f"{name}_predictions.jsonl").read_text().splitlines()
        assert len(lines) == n and scores[name]["n"] == n
        assert json.loads((tmp_path / "eval" / f"{name}.json").read_text())["n"] == n
    assert [json.loads(line)["question"] for line in (tmp_path / "eval" / "second_predictions.jsonl").open()] == \
        [s.question for s in vqa_samples[2:]]
