"""medqwen.continual.tasks: the answer breakdown of a closed task's predictions, by hand."""

from __future__ import annotations

import pytest

from medqwen.continual.tasks import answer_breakdown


def test_answer_breakdown_by_hand():
    # 3 "yes" questions, 1 "no": everything answered "yes" -> yes recall 1, no recall 0, accuracy 3/4
    records = [{"answer": "yes", "pred": "yes"}] * 3 + [{"answer": "no", "pred": "yes"}]
    assert answer_breakdown(records) == {"pred_share": {"yes": 1.0}, "acc_by_answer": {"no": 0.0, "yes": 1.0}}
    mixed = [{"answer": "yes", "pred": "no"}, {"answer": "no", "pred": "no"}, {"answer": "maybe", "pred": "yes"}]
    out = answer_breakdown(mixed)
    assert out["pred_share"] == pytest.approx({"no": 2 / 3, "yes": 1 / 3})
    assert out["acc_by_answer"] == {"maybe": 0.0, "no": 1.0, "yes": 0.0}
    assert answer_breakdown([]) == {"pred_share": {}, "acc_by_answer": {}}


def test_ranking_auc_by_hand():
    # yes/no margins log p(yes) - log p(no): yes questions 2, 0; no questions 1, -1. Pairs (yes, no) ranked
    # right: (2,1) (2,-1) (0,-1); wrong: (0,1) -> AUC 3/4, while accuracy (all answered "yes") is 1/2
    rows = [("yes", 2.0), ("yes", 0.0), ("no", 1.0), ("no", -1.0)]
    records = [{"answer": a, "pred": "yes", "scores": {"yes": m, "no": 0.0}} for a, m in rows]
    out = answer_breakdown(records)
    assert out["rank_auc"] == pytest.approx(0.75) and out["acc_by_answer"] == {"no": 0.0, "yes": 1.0}
    assert "rank_auc" not in answer_breakdown([{"answer": "yes", "pred": "yes"}])  # no scores: no AUC
    one_answer = [{"answer": "yes", "pred": "yes", "scores": {"yes": 0.0, "no": -1.0}}] * 2
    assert "rank_auc" not in answer_breakdown(one_answer)
