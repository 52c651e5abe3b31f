import math
from dataclasses import dataclass

import pytest

from medqwen.eval import vqa
from medqwen.eval.vqa import (closed_correct, exact_match, normalize, open_recall,
                              parse_yes_no, vqa_scores)


@pytest.mark.parametrize("text, expected", [
    ("The Answer is YES!", "the answer is yes"),
    ("  left   lung.\n", "left lung"),
    ("3.5 cm, 1,000 cells; ratio 1/2", "3.5 cm 1,000 cells ratio 1/2"),
    ("x-ray (PA view)", "x ray pa view"),
    ("don't", "dont"),
    ("end.", "end"),
    ("5%", "5"),
    (None, ""),
])
def test_normalize(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("yes", "yes"),
    ("The answer is yes.", "yes"),
    ("No, there is not.", "no"),
    ("NO", "no"),
    ("yesterday the scan was taken", None),
    ("nothing abnormal", None),
    ("no; yes", "no"),
    ("", None),
])
def test_parse_yes_no_whole_word_first(text, expected):
    assert parse_yes_no(text) == expected


@pytest.mark.parametrize("pred, gt, ok", [
    ("Yes", "yes", True),
    ("yes.", "YES", True),
    ("The answer is yes.", "yes", True),
    ("no, there is not", "no", True),
    ("yesterday", "yes", False),           # substring is not a match
    ("Not sure", "no", False),             # 'not' is not 'no'
    ("no, but yes on the left", "yes", False),  # first yes/no word decides
    ("I cannot tell", "no", False),
    # non yes/no closed answers: exact or whole-word containment
    ("left", "left", True),
    ("The lesion is on the left side.", "left", True),
    ("leftward shift", "left", False),
    ("right", "left", False),
    ("in the left lung", "Left lung", True),
    ("lung left", "left lung", False),
    ("MRI", "mri", True),
])
def test_closed_correct(pred, gt, ok):
    assert closed_correct(pred, gt) is ok


def test_open_recall_hand_computed():
    # gt tokens {left, lower, lobe}; pred covers lower, lobe -> 2/3
    assert open_recall("the lower lobe", "Left lower lobe") == pytest.approx(2 / 3)
    assert open_recall("left lower lobe pneumonia", "left lower lobe") == 1.0
    assert open_recall("heart", "left lower lobe") == 0.0
    # clipped multiplicity: gt has 'left' twice, pred once -> 1/2
    assert open_recall("left", "left left") == 0.5
    # pred repetitions cannot inflate recall beyond 1
    assert open_recall("left left left", "left") == 1.0
    assert open_recall("", "") == 1.0 and open_recall("x", "") == 0.0


def test_open_recall_bounds():
    for pred in ["", "a", "a b c", "lung lung lung"]:
        for gt in ["a", "lung", "a b", "b c d lung"]:
            assert 0.0 <= open_recall(pred, gt) <= 1.0


def test_exact_match():
    assert exact_match("Left lung.", "left lung")
    assert not exact_match("the left lung", "left lung")


def _records():
    return [
        {"pred": "Yes.", "answer": "yes", "answer_type": "CLOSED", "question_type": "PRES"},
        {"pred": "yesterday", "answer": "yes", "answer_type": "closed", "question_type": "pres"},
        {"pred": "No, it is not.", "answer": "no", "answer_type": "closed", "question_type": "ABN"},
        {"pred": "left", "answer": "left", "answer_type": "closed"},
        {"pred": "lower lobe", "answer": "left lower lobe", "answer_type": "open",
         "question_type": "POS"},
        {"pred": "brain", "answer": "brain", "answer_type": "OPEN", "question_type": "organ"},
    ]


def test_vqa_scores_hand_computed():
    s = vqa_scores(_records())
    # closed: correct, wrong, correct, correct -> 3/4 (counted over 4 closed, not 6)
    assert s["n_closed"] == 4 and s["n_open"] == 2 and s["n"] == 6
    assert s["n_closed_correct"] == 3
    assert s["closed_acc"] == pytest.approx(0.75)
    assert s["open_recall"] == pytest.approx((2 / 3 + 1.0) / 2)
    # exact: "Yes."==yes, "left"==left, "brain"==brain -> 3/6
    assert s["exact_match"] == pytest.approx(0.5)
    assert s["exact_match/by_atype/closed"] == pytest.approx(2 / 4)
    assert s["exact_match/by_atype/open"] == pytest.approx(1 / 2)
    # per question type (lower-cased; records without one are excluded)
    assert s["closed_acc/by_qtype/pres"] == pytest.approx(0.5)
    assert s["n/by_qtype/pres"] == 2
    assert s["closed_acc/by_qtype/abn"] == 1.0
    assert s["open_recall/by_qtype/pos"] == pytest.approx(2 / 3)
    assert s["open_recall/by_qtype/organ"] == 1.0
    assert "open_recall/by_qtype/pres" not in s
    assert "closed_acc/by_qtype/organ" not in s


def test_vqa_scores_attribute_records_and_inferred_type():
    @dataclass
    class Rec:
        pred: str
        answer: str
        answer_type: str | None = None

    s = vqa_scores([Rec("yes", "yes"), Rec("no", "yes"), Rec("the heart", "heart")])
    # yes/no answers inferred closed, others open
    assert s["n_closed"] == 2 and s["n_open"] == 1
    assert s["closed_acc"] == 0.5 and s["open_recall"] == 1.0


def test_vqa_scores_empty_groups_are_nan_and_bad_type_raises():
    s = vqa_scores([{"pred": "yes", "answer": "yes", "answer_type": "closed"}])
    assert s["closed_acc"] == 1.0 and math.isnan(s["open_recall"]) and s["n_open"] == 0
    with pytest.raises(ValueError):
        vqa_scores([{"pred": "a", "answer": "a", "answer_type": "choice"}])


def test_get_field_dict_and_attr():
    class Record:
        question = "q"
    assert vqa.get_field({"question": "q"}, "question") == "q"
    assert vqa.get_field(Record(), "question") == "q"
    assert vqa.get_field(Record(), "missing", 3) == 3
