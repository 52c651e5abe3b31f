from collections import Counter
from dataclasses import dataclass, field

import pytest

from medqwen.eval.pope import build_pope_probes, pope_scores


@dataclass
class Sample:
    question: str
    answer: str
    answer_type: str
    images: list = field(default_factory=lambda: ["img.png"])


def _samples():
    out = []
    for i in range(10):
        out.append(Sample(f"q{i} lesion?", "Yes" if i < 7 else "no.", "CLOSED", [f"{i}.png"]))
    out.append({"question": "which side?", "answer": "left", "answer_type": "closed",
                "images": ["l.png"]})
    out.append({"question": "is it normal?", "answer": "no", "answer_type": "open",
                "images": ["o.png"]})
    out.append({"question": "any mass?", "answer": "no", "answer_type": "closed",
                "images": ["d.png"]})
    return out  # closed yes/no: 7 yes (idx 0-6), 4 no (idx 7, 8, 9, 12)


def test_probes_balanced_and_filtered():
    probes = build_pope_probes(_samples(), seed=0)
    labels = Counter(p["answer"] for p in probes)
    assert labels == {"yes": 4, "no": 4}  # majority (yes) subsampled to 4
    idx = [p["index"] for p in probes]
    assert idx == sorted(idx)
    assert {7, 8, 9, 12} <= set(idx)  # the minority class is kept whole
    assert 10 not in idx and 11 not in idx  # non yes/no closed and open are dropped
    for p in probes:
        assert p["label"] == int(p["answer"] == "yes")
        assert set(p) == {"index", "question", "answer", "label", "images"}
    by_idx = {p["index"]: p for p in probes}
    assert by_idx[12]["images"] == ["d.png"] and by_idx[12]["question"] == "any mass?"
    assert by_idx[7]["images"] == ["7.png"]


def test_probes_deterministic_in_seed():
    samples = [{"question": f"q{i}", "answer": "yes" if i % 3 else "no",
                "answer_type": "closed", "images": []} for i in range(60)]
    a = build_pope_probes(samples, seed=1)
    assert a == build_pope_probes(samples, seed=1)
    seeds = {tuple(p["index"] for p in build_pope_probes(samples, seed=s)) for s in range(5)}
    assert len(seeds) > 1  # the subsample depends on the seed
    assert Counter(p["answer"] for p in a) == {"yes": 20, "no": 20}


def test_probes_n_cap_and_degenerate_inputs():
    probes = build_pope_probes(_samples(), seed=0, n=5)
    assert Counter(p["answer"] for p in probes) == {"yes": 2, "no": 2}
    assert build_pope_probes(_samples(), seed=0, n=0) == []
    only_yes = [{"question": "q", "answer": "yes", "answer_type": "closed", "images": []}]
    assert build_pope_probes(only_yes, seed=0) == []
    with pytest.raises(ValueError):
        build_pope_probes(_samples(), seed=0, n=-1)


def test_pope_scores_hand_computed():
    preds = ["Yes, there is a mass.",   # y=1 -> TP
             "yes",                     # y=0 -> FP
             "No.",                     # y=1 -> FN
             "no, it is not present",   # y=0 -> TN
             "yesterday's scan",        # unparsed -> no; y=0 -> TN
             "The answer is yes"]       # y=1 -> TP
    labels = ["yes", "no", "yes", "no", "No", 1]
    s = pope_scores(preds, labels)
    assert (s["tp"], s["fp"], s["tn"], s["fn"]) == (2, 1, 2, 1)
    assert s["n"] == 6 and s["unparsed"] == 1
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)
    assert s["yes_ratio"] == pytest.approx(3 / 6)


def test_pope_scores_all_no_and_label_formats():
    s = pope_scores(["no", "nope", "no"], [True, 0, 1])
    assert s["precision"] == 0.0 and s["recall"] == 0.0 and s["f1"] == 0.0
    assert s["yes_ratio"] == 0.0 and s["unparsed"] == 1
    assert s["accuracy"] == pytest.approx(1 / 3)
    perfect = pope_scores(["yes", "no"], ["yes", "no"])
    assert perfect["accuracy"] == perfect["f1"] == 1.0 and perfect["yes_ratio"] == 0.5


def test_pope_scores_errors_and_evaluator():
    with pytest.raises(ValueError):
        pope_scores(["yes"], [])
    with pytest.raises(ValueError):
        pope_scores(["yes"], ["maybe"])
    with pytest.raises(ValueError):
        pope_scores(["yes"], [2])
    assert pope_scores([], [])["accuracy"] == 0.0


def test_probe_labels_roundtrip_into_scores():
    probes = build_pope_probes(_samples(), seed=3)
    s = pope_scores([p["answer"] for p in probes], [p["label"] for p in probes])
    assert s["accuracy"] == 1.0 and s["yes_ratio"] == 0.5
