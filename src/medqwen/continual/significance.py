"""How far a handful of paired runs can separate two methods: the paired t-test and its power.

Two methods run with the same seed from the same start model form a pair; the per-pair differences d_1..d_n
are tested with Student's one-sample t-test on d (Student 1908, "The probable error of a mean", Biometrika 6;
scipy.stats.ttest_rel computes the same statistic). Its power, the chance that n pairs give p < alpha when
the true mean difference is `effect` and the pairs' spread is `sd`, follows the noncentral t distribution
with n - 1 degrees of freedom and noncentrality effect / sd * sqrt(n) (Cohen 1988, "Statistical Power
Analysis for the Behavioral Sciences", ch. 2; G*Power's "t tests - means: difference from constant").
The spread of the runs themselves stands in for the unknown true sd, so the power is a planning figure,
not a measurement.
"""

from __future__ import annotations

import math
from typing import Sequence

from scipy import stats

from .metrics import mean_std


def paired_t_test(differences: Sequence[float]) -> dict:
    """{n, mean, std (sample, n - 1), t, p (two-sided)} of per-pair differences; t and p are None for fewer than
    two pairs or when every pair differs by the same amount (no spread to test against)."""
    n = len(differences)
    mean, std = mean_std(differences)
    if std is None or std < 1e-12:  # equal differences leave rounding noise, not a spread
        return {"n": n, "mean": mean, "std": std, "t": None, "p": None}
    t = mean / (std / math.sqrt(n))
    return {"n": n, "mean": mean, "std": std, "t": t, "p": float(2 * stats.t.sf(abs(t), n - 1))}


def confidence_interval(test: dict, *, level: float = 0.95) -> tuple[float, float] | None:
    """The two-sided `level` interval of the mean difference, mean +- t_{(1+level)/2, n-1} * std / sqrt(n), from a
    paired_t_test result; None without a spread."""
    if test["t"] is None:
        return None
    half = stats.t.ppf((1 + level) / 2, test["n"] - 1) * test["std"] / math.sqrt(test["n"])
    return test["mean"] - half, test["mean"] + half


def power(n: int, effect: float, sd: float, *, alpha: float = 0.05) -> float:
    """The chance that a two-sided paired t-test over n pairs gives p < alpha, when the true mean difference is
    `effect` and the differences spread with standard deviation `sd`."""
    if n < 2 or sd <= 0:
        raise ValueError(f"power needs n >= 2 pairs and sd > 0, got n={n}, sd={sd}")
    df, shift = n - 1, abs(effect) / sd * math.sqrt(n)
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift))


def pairs_needed(effect: float, sd: float, *, target: float = 0.8, alpha: float = 0.05, most: int = 10_000) -> int | None:
    """The fewest pairs (>= 2) whose paired t-test reaches power `target` at `effect` and `sd`; None if even
    `most` pairs do not (an effect of 0 never does)."""
    if effect == 0:
        return None
    low, high = 2, 2
    while power(high, effect, sd, alpha=alpha) < target:  # power grows with n: double, then bisect
        if high >= most:
            return None
        low, high = high, min(2 * high, most)
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if power(middle, effect, sd, alpha=alpha) < target else (low, middle)
    return high
