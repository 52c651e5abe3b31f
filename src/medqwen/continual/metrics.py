"""Continual-learning metrics as pure functions of the accuracy matrix R.

``R`` has T + 1 rows and T columns (T tasks, in training order): row 0 is the model before any task
of the sequence, row i (1..T) the model after training through task i; ``R[i][j]`` is the score on
task j (0-based column j = task j + 1). Definitions (tasks numbered 1..T as in the papers):

- **final score** of task j: ``R[T][j]``.
- **best earlier score** of task j < T: ``max_{i = j..T-1} R[i][j]``, the best the model did on task j
  after learning it and before the last task. This is the forgetting measure of Chaudhry et al. 2018
  ("Riemannian Walk for Incremental Learning", ECCV: the max over earlier rows minus the
  final score), with the max restricted to rows at or after task j was trained (rows before it measure
  transfer, not knowledge that could be forgotten). Avalanche's ``ExperienceForgetting`` compares with
  the score right after the task's own training, ``R[j][j]``, instead of the max; that variant is
  ``-BWT`` per task and is reported through BWT below.
- **relative forgetting** of task j < T: ``(best earlier - final) / best earlier`` (the paper's "drops
  by about 5%" is this relative drop). Undefined for the last task (nothing came after it) and when the
  best earlier score is 0. The run's figure is the mean over tasks 1..T-1.
- **final average accuracy** ``ACC = (1/T) sum_j R[T][j]`` (Lopez-Paz & Ranzato 2017, "Gradient
  Episodic Memory for Continual Learning", NeurIPS, section 2).
- **backward transfer** ``BWT = 1/(T-1) sum_{j=1}^{T-1} (R[T][j] - R[j][j])`` (GEM section 2; negative =
  forgetting). Avalanche's ``StreamBWT`` is the same average ("last accuracy minus the accuracy when
  first training on that experience").
- **forward transfer** ``FWT = 1/(T-1) sum_{j=2}^{T} (R[j-1][j] - b_j)`` (GEM section 2), where GEM's b_j
  is the accuracy of a *randomly initialised* model; here ``b_j = R[0][j]``, the starting model before
  any task of the sequence (a pretrained model has no meaningful random-init baseline). Needs T >= 2.
- **learning accuracy** ``(1/T) sum_j R[j][j]`` (each task right after its own training; plasticity).
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

Matrix = Sequence[Sequence[float]]


def check_matrix(R: Matrix) -> int:
    """T for a valid (T + 1) x T matrix of finite numbers; ValueError otherwise."""
    if not R:
        raise ValueError("R is empty")
    T = len(R[0])
    if T < 1 or len(R) != T + 1 or any(len(row) != T for row in R):
        raise ValueError(f"R must have T + 1 rows of T scores (row 0 = before any task); got shape {[len(r) for r in R]}")
    for i, row in enumerate(R):
        for j, value in enumerate(row):
            if not isinstance(value, (int, float)) or math.isnan(value):
                raise ValueError(f"R[{i}][{j}] = {value!r} is not a number")
    return T


def final_scores(R: Matrix) -> list[float]:
    T = check_matrix(R)
    return [float(R[T][j]) for j in range(T)]


def best_earlier(R: Matrix) -> list[float | None]:
    """Per task: max over rows j+1..T-1 (1-based: i = j..T-1) of its score; None for the last task."""
    T = check_matrix(R)
    return [max(float(R[i][j]) for i in range(j + 1, T)) if j < T - 1 else None for j in range(T)]


def absolute_forgetting(R: Matrix) -> list[float | None]:
    T = check_matrix(R)
    return [None if best is None else best - float(R[T][j]) for j, best in enumerate(best_earlier(R))]


def relative_forgetting(R: Matrix) -> list[float | None]:
    """(best earlier - final) / best earlier per task; None for the last task or a best of 0."""
    T = check_matrix(R)
    return [None if best is None or best <= 0 else (best - float(R[T][j])) / best for j, best in enumerate(best_earlier(R))]


def final_average(R: Matrix) -> float:
    """GEM's ACC: the mean final score."""
    return statistics.fmean(final_scores(R))


def backward_transfer(R: Matrix) -> float | None:
    """GEM's BWT; None when T = 1."""
    T = check_matrix(R)
    if T < 2:
        return None
    return statistics.fmean(float(R[T][j]) - float(R[j + 1][j]) for j in range(T - 1))


def forward_transfer(R: Matrix) -> float | None:
    """GEM's FWT with b_j = R[0][j] (the starting model); None when T = 1."""
    T = check_matrix(R)
    if T < 2:
        return None
    return statistics.fmean(float(R[j][j]) - float(R[0][j]) for j in range(1, T))


def learning_accuracy(R: Matrix) -> float:
    T = check_matrix(R)
    return statistics.fmean(float(R[j + 1][j]) for j in range(T))


def mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return statistics.fmean(defined) if defined else None


def summarize(R: Matrix, task_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Every metric above for one run: per task and per run."""
    T = check_matrix(R)
    names = list(task_names) if task_names is not None else [f"task{j + 1}" for j in range(T)]
    if len(names) != T:
        raise ValueError(f"{len(names)} task names for {T} tasks")
    best, final = best_earlier(R), final_scores(R)
    absolute, relative = absolute_forgetting(R), relative_forgetting(R)
    per_task = {
        name: {"before": float(R[0][j]), "after_own_training": float(R[j + 1][j]), "best_earlier": best[j],
               "final": final[j], "forgetting": absolute[j], "relative_forgetting": relative[j]}
        for j, name in enumerate(names)
    }
    return {
        "per_task": per_task,
        "forgetting": mean_defined(relative),  # mean relative forgetting over tasks 1..T-1
        "absolute_forgetting": mean_defined(absolute),
        "final_avg": final_average(R),
        "bwt": backward_transfer(R),
        "fwt": forward_transfer(R),
        "learning_acc": learning_accuracy(R),
    }


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation) over the defined values; std is None for fewer than two."""
    defined = [float(v) for v in values if v is not None]
    if not defined:
        return None, None
    return statistics.fmean(defined), (statistics.stdev(defined) if len(defined) > 1 else None)
