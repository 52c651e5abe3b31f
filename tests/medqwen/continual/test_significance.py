"""medqwen.continual.significance: the paired t-test against its closed form at small df, its power against
published values and a seeded simulation."""

import math

import numpy as np
import pytest

from medqwen.continual.significance import confidence_interval, pairs_needed, paired_t_test, power


def test_paired_t_test_matches_the_closed_form_of_two_degrees_of_freedom():
    test = paired_t_test([0.1, 0.2, 0.3])
    t = 0.2 / (0.1 / math.sqrt(3))
    assert (test["n"], test["mean"], test["std"], test["t"]) == (3, pytest.approx(0.2), pytest.approx(0.1), pytest.approx(t))
    assert test["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t))  # Student's t with 2 df: F(t) = 1/2 + t / (2 sqrt(2 + t^2))


@pytest.mark.parametrize("differences", [[0.3], [0.2, 0.2, 0.2]])
def test_no_spread_gives_no_test(differences):
    test = paired_t_test(differences)
    assert test["t"] is None and test["p"] is None and test["mean"] == pytest.approx(differences[0])


def test_power_is_alpha_without_an_effect_and_matches_cohens_tables():
    assert power(5, 0.0, 1.0) == pytest.approx(0.05)
    assert power(10, 1.0, 1.0) == pytest.approx(0.8031, abs=5e-4)  # d = 1, n = 10: G*Power's one-sample t-test
    assert pairs_needed(1.0, 1.0) == 10
    assert pairs_needed(-1.0, 1.0) == 10  # two-sided: the sign does not matter
    assert pairs_needed(0.0, 1.0) is None
    assert pairs_needed(0.01, 1.0, most=64) is None


def test_power_matches_a_seeded_simulation_of_the_test():
    rng = np.random.default_rng(0)
    n, effect, sd, trials = 4, 0.15, 0.108, 20_000
    d = rng.normal(effect, sd, size=(trials, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    rejected = np.mean(np.abs(t) > 3.182446305284263)  # t_{0.975, 3}
    assert power(n, effect, sd) == pytest.approx(rejected, abs=0.015)


def test_pairs_needed_is_the_first_n_reaching_the_target():
    n = pairs_needed(0.048, 0.108)
    assert power(n, 0.048, 0.108) >= 0.8 > power(n - 1, 0.048, 0.108)
    with pytest.raises(ValueError, match="n >= 2"):
        power(1, 0.1, 0.1)


def test_confidence_interval_uses_students_quantile():
    low, high = confidence_interval(paired_t_test([0.1, 0.2, 0.3]))
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t_{0.975, 2}
    assert (low, high) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))
    assert confidence_interval(paired_t_test([0.2, 0.2])) is None
