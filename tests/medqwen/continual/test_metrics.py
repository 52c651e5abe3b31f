"""Continual-learning metrics against values worked out by hand."""

import math

import pytest

from medqwen.continual import metrics

# rows: start, after task 1, after task 2, after task 3; columns: tasks 1..3
R = [
    [0.30, 0.50, 0.40],
    [0.90, 0.55, 0.45],
    [0.92, 0.95, 0.50],  # task 1 still improves after task 2: its best earlier score is 0.92, not R[1][0]
    [0.60, 0.76, 0.85],
]


def test_per_task_scores_by_hand():
    assert metrics.final_scores(R) == [0.60, 0.76, 0.85]
    assert metrics.best_earlier(R) == [0.92, 0.95, None]  # max over rows 1..2 for task 1, row 2 for task 2
    absolute = metrics.absolute_forgetting(R)
    assert absolute[0] == pytest.approx(0.32) and absolute[1] == pytest.approx(0.19) and absolute[2] is None
    relative = metrics.relative_forgetting(R)
    assert relative[0] == pytest.approx(0.32 / 0.92)  # 0.3478
    assert relative[1] == pytest.approx(0.19 / 0.95)  # 0.2
    assert relative[2] is None  # the last task has nothing after it


def test_run_figures_by_hand():
    assert metrics.final_average(R) == pytest.approx((0.60 + 0.76 + 0.85) / 3)  # 0.7367
    # GEM BWT: ((R[3][0] - R[1][0]) + (R[3][1] - R[2][1])) / 2 = (-0.30 - 0.19) / 2
    assert metrics.backward_transfer(R) == pytest.approx(-0.245)
    # FWT with b = row 0: ((R[1][1] - R[0][1]) + (R[2][2] - R[0][2])) / 2 = (0.05 + 0.10) / 2
    assert metrics.forward_transfer(R) == pytest.approx(0.075)
    assert metrics.learning_accuracy(R) == pytest.approx((0.90 + 0.95 + 0.85) / 3)
    summary = metrics.summarize(R, ["a", "b", "c"])
    assert summary["forgetting"] == pytest.approx((0.32 / 0.92 + 0.2) / 2)  # 0.2739
    assert summary["bwt"] == pytest.approx(-0.245)
    assert summary["per_task"]["a"]["best_earlier"] == 0.92
    assert summary["per_task"]["c"]["relative_forgetting"] is None
    assert summary["per_task"]["b"]["before"] == 0.50 and summary["per_task"]["b"]["after_own_training"] == 0.95


def test_no_forgetting_and_single_task():
    flat = [[0.5, 0.5], [0.8, 0.5], [0.8, 0.9]]
    assert metrics.relative_forgetting(flat) == [0.0, None]
    assert metrics.backward_transfer(flat) == 0.0
    one = [[0.2], [0.7]]
    assert metrics.backward_transfer(one) is None and metrics.forward_transfer(one) is None
    assert metrics.summarize(one)["forgetting"] is None
    assert metrics.final_average(one) == 0.7


def test_zero_best_earlier_is_undefined_not_a_division_error():
    assert metrics.relative_forgetting([[0.0, 0.0], [0.0, 0.5], [0.0, 0.9]]) == [None, None]


@pytest.mark.parametrize("bad", [[], [[0.1, 0.2], [0.3, 0.4]], [[0.1], [0.2], [0.3]], [[0.1], [math.nan]], [[0.1], ["x"]]])
def test_bad_matrix_is_refused(bad):
    with pytest.raises(ValueError):
        metrics.final_average(bad)


def test_mean_std_over_seeds():
    mean, std = metrics.mean_std([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and std == pytest.approx(0.1)  # sample std (n - 1)
    assert metrics.mean_std([0.4]) == (0.4, None)
    assert metrics.mean_std([None, 0.4]) == (0.4, None)
    assert metrics.mean_std([]) == (None, None)
