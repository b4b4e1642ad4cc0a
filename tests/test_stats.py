"""emphatic_rl.stats against known values: scipy's t quantiles, hand-computed IQM / optimality gap / profiles."""

import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from emphatic_rl import stats


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (9, 2.262), (29, 2.045), (200, 1.972)])
def test_t_quantile_matches_the_tables(df, expected):
    assert stats.t_quantile(df) == pytest.approx(expected, abs=5e-4)
    assert stats.t_quantile(df) == scipy_stats.t.ppf(0.975, df)


def test_t_quantile_other_confidence_and_bad_input():
    assert stats.t_quantile(4, confidence=0.9) == pytest.approx(2.132, abs=5e-4)
    with pytest.raises(ValueError, match="degrees of freedom"):
        stats.t_quantile(0)
    with pytest.raises(ValueError, match="confidence"):
        stats.t_quantile(3, confidence=1.5)


def test_mean_ci_is_the_t_interval_for_ten_runs_not_the_normal_one():
    values = np.arange(10, dtype=float)  # mean 4.5, sd sqrt(55/6)
    mean, half = stats.mean_ci(values)
    assert mean == 4.5
    expected = 2.2621571627409915 * math.sqrt(55 / 6) / math.sqrt(10)
    assert half == pytest.approx(expected, rel=1e-9)
    normal = 1.959963984540054 * math.sqrt(55 / 6) / math.sqrt(10)
    assert half / normal == pytest.approx(1.154, abs=1e-3)  # the z-interval is ~13% too narrow at n = 10
    # the same from a torch tensor, and scipy's own interval agrees
    assert stats.mean_ci(torch.arange(10.0)) == pytest.approx((mean, half))
    low, high = scipy_stats.t.interval(0.95, 9, loc=4.5, scale=scipy_stats.sem(values))
    assert (mean - half, mean + half) == pytest.approx((low, high))


def test_mean_ci_edge_cases():
    assert math.isnan(stats.mean_ci([])[0])
    mean, half = stats.mean_ci([3.0])
    assert mean == 3.0 and math.isnan(half)
    mean, half = stats.mean_ci([1.0, float("nan"), 2.0])
    assert math.isnan(mean) and math.isnan(half)


def test_t_interval_along_an_axis():
    values = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]])
    mean, half = stats.t_interval(values, axis=1)
    np.testing.assert_allclose(mean, [2.0, 2.0])
    np.testing.assert_allclose(half, [4.302652729911275 * 1.0 / math.sqrt(3), 0.0])
    mean, half = stats.t_interval(values[:, :1], axis=1)
    assert np.isnan(half).all()


def test_bootstrap_ci_covers_the_mean_and_is_reproducible():
    rng = np.random.default_rng(3)
    values = rng.normal(10.0, 2.0, size=30)
    point, low, high = stats.bootstrap_ci(values)
    assert point == pytest.approx(values.mean())
    assert low < point < high
    # close to the t-interval for a normal sample of 30
    _, half = stats.mean_ci(values)
    assert (high - low) == pytest.approx(2 * half, rel=0.2)
    assert stats.bootstrap_ci(values) == (point, low, high)
    assert stats.bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)
    assert math.isnan(stats.bootstrap_ci([1.0])[1])


def test_iqm_and_optimality_gap_by_hand():
    scores = np.array([[0.0, 10.0], [1.0, 2.0], [3.0, 4.0], [5.0, 100.0]])  # 8 scores: middle four are 2, 3, 4, 5
    assert stats.iqm(scores) == pytest.approx((2 + 3 + 4 + 5) / 4)
    assert stats.optimality_gap(np.array([0.5, 1.5, 0.0, 1.0])) == pytest.approx(1 - (0.5 + 1 + 0 + 1) / 4)
    assert stats.optimality_gap(np.array([2.0]), gamma=3.0) == pytest.approx(1.0)
    metrics = stats.aggregate_metrics(scores)
    assert metrics["mean"] == pytest.approx(125 / 8)
    assert metrics["median"] == pytest.approx(3.5)
    assert metrics["iqm"] == pytest.approx(3.5)


def test_stratified_bootstrap_resamples_within_tasks():
    # task 0 is constant, so any resample of it is too; task 1's runs are 0 or 1
    scores = np.array([[5.0, 0.0], [5.0, 1.0], [5.0, 0.0], [5.0, 1.0]])
    point, low, high = stats.stratified_bootstrap_ci(scores, "mean", reps=500)
    assert point == pytest.approx(2.75)
    assert 2.5 <= low <= point <= high <= 3.0
    # one task, many runs: close to the t-interval of the mean
    rng = np.random.default_rng(0)
    one_task = rng.normal(0.0, 1.0, size=(50, 1))
    point, low, high = stats.stratified_bootstrap_ci(one_task, "mean")
    _, half = stats.mean_ci(one_task[:, 0])
    assert high - low == pytest.approx(2 * half, rel=0.15)
    with pytest.raises(ValueError, match="unknown aggregate"):
        stats.stratified_bootstrap_ci(scores, "mode")


def test_performance_profile_by_hand():
    scores = np.array([[0.1, 0.9], [0.5, 0.2], [0.7, 0.6]])  # task 0: 0.1 0.5 0.7; task 1: 0.9 0.2 0.6
    taus = [0.0, 0.4, 0.65, 1.0]
    profile, low, high = stats.performance_profile(scores, taus, reps=300)
    # tau 0.4: task 0 2/3, task 1 2/3 -> 2/3; tau 0.65: task 0 1/3, task 1 1/3 -> 1/3
    np.testing.assert_allclose(profile, [1.0, 2 / 3, 1 / 3, 0.0])
    assert (low <= profile + 1e-12).all() and (profile <= high + 1e-12).all()
    assert low[0] == high[0] == 1.0 and low[-1] == high[-1] == 0.0


def test_describe_interval():
    assert stats.describe_interval(10) == "mean ± 95% t-CI, n = 10 runs"
