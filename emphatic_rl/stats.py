"""Statistics of runs: t-intervals, bootstrap intervals and rliable-style aggregates, in one place.

Every report and experiment of the library computes its intervals here, so a number in one table means what the
same number means in another.

**Intervals over runs** (one score per independent run, e.g. a seed):

- :func:`mean_ci` / :func:`t_interval`: the Student-t interval ``mean +- t_{(1+c)/2, n-1} * sd / sqrt(n)`` with the
  sample standard deviation (``ddof = 1``) and the t quantile of ``scipy.stats.t`` for the actual ``n`` (never the
  normal 1.96, which is about 13% too narrow at ``n = 10`` and 2.6 times too narrow at ``n = 3``).
- :func:`bootstrap_ci`: a bootstrap interval of any statistic through ``scipy.stats.bootstrap`` (BCa by default).

**Aggregates over tasks and runs** (Agarwal, Schwarzer, Castro, Courville and Bellemare 2021, "Deep reinforcement
learning at the edge of the statistical precipice", the ``rliable`` library), on a score matrix ``[runs, tasks]``
of normalised scores:

- :func:`iqm`: the interquartile mean, the mean of the middle 50% of all ``runs x tasks`` scores;
- :func:`optimality_gap`: how far the scores fall short of a target ``gamma`` (``gamma - mean(min(score, gamma))``);
- :func:`aggregate_metrics`: mean, median, IQM and optimality gap together;
- :func:`stratified_bootstrap_ci`: percentile intervals of an aggregate from resampling runs within each task;
- :func:`performance_profile`: the fraction of runs scoring above each threshold ``tau``, with bootstrap bands.

The aggregates are written here on numpy and scipy with rliable's definitions (``scipy.stats.trim_mean`` with a 25%
cut for the IQM, the stratified bootstrap's percentile interval, the run-score distribution
``mean_tasks(mean_runs(score > tau))``) rather than imported from ``rliable``: ``pip install rliable`` (1.2.0)
resolves, but ``import rliable.library`` fails with this library's dependency set (its ``arch`` 7.2 breaks against
pandas 3 at import: ``deprecate_kwarg() missing 1 required positional argument``), and it would pull statsmodels,
arch, pandas and seaborn into every install. The tests check the functions here against hand-computed values.

Arrays may be numpy arrays, torch tensors or sequences; results are floats or numpy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats as _scipy_stats

#: the default confidence level of every interval here.
CONFIDENCE = 0.95


def _as_array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def t_quantile(df: int | np.ndarray, confidence: float = CONFIDENCE) -> float | np.ndarray:
    """The two-sided Student-t quantile ``t_{(1 + confidence) / 2, df}`` (``scipy.stats.t.ppf``).

    Args:
        df: degrees of freedom (``n - 1`` for ``n`` runs), ``>= 1``; an int or an array.
        confidence: the interval's coverage; default 0.95 (so the 0.975 quantile: 12.706 at ``df = 1``, 2.262 at
            ``df = 9``, 2.045 at ``df = 29``).
    """
    _check_confidence(confidence)
    df_array = np.asarray(df)
    if np.any(df_array < 1):
        raise ValueError(f"degrees of freedom must be >= 1, got {df!r}")
    quantile = _scipy_stats.t.ppf(0.5 + confidence / 2, df_array)
    return float(quantile) if np.ndim(quantile) == 0 else quantile


def t_interval(values: Any, axis: int = -1, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Means and t-interval half-widths along ``axis``.

    Args:
        values: scores, e.g. ``[settings, runs]`` with ``axis = -1``. A NaN among a slice's runs makes its mean and
            half-width NaN (a diverged run is not silently dropped).
        axis: the runs axis; default the last.
        confidence: default 0.95.

    Returns:
        ``(mean, half_width)``, each of the shape of ``values`` without ``axis``; the interval is
        ``mean +- half_width``. The half-width is NaN where there are fewer than two runs.
    """
    _check_confidence(confidence)
    array = _as_array(values)
    n = array.shape[axis]
    if n == 0:
        mean = np.full(np.delete(np.array(array.shape), axis % array.ndim).tolist(), np.nan)
    else:
        mean = array.mean(axis=axis)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    half = t_quantile(n - 1, confidence) * array.std(axis=axis, ddof=1) / math.sqrt(n)
    return mean, half


def mean_ci(values: Any, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """``(mean, half-width of the t-interval)`` of the scores ``values [n]`` of ``n`` runs.

    The mean is NaN for ``n = 0`` or when a value is NaN; the half-width is NaN for ``n < 2``.
    """
    array = _as_array(values).reshape(-1)
    mean, half = t_interval(array, axis=0, confidence=confidence)
    return float(mean), float(half)


def bootstrap_ci(
    values: Any,
    statistic: Callable[..., Any] = np.mean,
    confidence: float = CONFIDENCE,
    n_resamples: int = 9999,
    method: str = "BCa",
    seed: int | None = 0,
) -> tuple[float, float, float]:
    """A bootstrap interval of ``statistic`` of the runs' scores, through ``scipy.stats.bootstrap``.

    Args:
        values: scores of ``n`` runs, ``[n]``.
        statistic: a function of a sample that accepts ``axis`` (``np.mean``, ``np.median``, :func:`iqm`...).
        confidence: default 0.95.
        n_resamples: bootstrap resamples; default 9999.
        method: ``"BCa"`` (bias-corrected and accelerated, the default), ``"percentile"`` or ``"basic"``.
        seed: seed of the resampling (default 0: the same data give the same interval).

    Returns:
        ``(point, low, high)``: the statistic of the data and the interval's ends (NaN if ``n < 2``).
    """
    _check_confidence(confidence)
    array = _as_array(values).reshape(-1)
    point = float(statistic(array, axis=0)) if array.size else math.nan
    if array.size < 2 or not np.isfinite(array).all():
        return point, math.nan, math.nan
    if np.all(array == array[0]):  # no spread: every resample gives the same value
        return point, point, point
    result = _scipy_stats.bootstrap(
        (array,),
        statistic,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method=method,
        random_state=np.random.default_rng(seed),
    )
    return point, float(result.confidence_interval.low), float(result.confidence_interval.high)


# ---------------------------------------------------------------------------------------------------- aggregates
def iqm(scores: Any, axis: int | None = None) -> float | np.ndarray:
    """The interquartile mean: the mean of the middle 50% of ``scores`` (25% trimmed from each end).

    Args:
        scores: ``[runs, tasks]`` (or any shape); with ``axis = None`` (default) every score counts once, as in
            rliable. An ``axis`` trims along that axis only.
    """
    return _scipy_stats.trim_mean(_as_array(scores), proportiontocut=0.25, axis=axis)


def optimality_gap(scores: Any, gamma: float = 1.0) -> float:
    """``gamma - mean(min(scores, gamma))``: the shortfall from the target ``gamma`` (default 1, a normalised score
    of 1 = solved); scores above ``gamma`` earn nothing extra. Lower is better."""
    return float(gamma - np.minimum(_as_array(scores), gamma).mean())


AGGREGATES: dict[str, Callable[[np.ndarray], float]] = {
    "mean": lambda s: float(np.mean(s)),
    "median": lambda s: float(np.median(s)),
    "iqm": lambda s: float(iqm(s)),
    "optimality_gap": optimality_gap,
}


def aggregate_metrics(scores: Any) -> dict[str, float]:
    """The four aggregates of rliable over every score of ``scores [runs, tasks]``: ``mean``, ``median``, ``iqm``,
    ``optimality_gap`` (with ``gamma = 1``)."""
    array = _as_array(scores)
    return {name: fn(array) for name, fn in AGGREGATES.items()}


def _score_matrix(scores: Any) -> np.ndarray:
    array = _as_array(scores)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] < 1:
        raise ValueError(f"scores must be [runs] or [runs, tasks], got shape {array.shape}")
    return array


def _stratified_resamples(matrix: np.ndarray, reps: int, seed: int | None) -> np.ndarray:
    """``[reps, runs, tasks]``: each task's runs resampled with replacement, independently per task."""
    runs, tasks = matrix.shape
    rng = np.random.default_rng(seed)
    index = rng.integers(0, runs, size=(reps, runs, tasks))
    return matrix[index, np.arange(tasks)]


def stratified_bootstrap_ci(
    scores: Any,
    aggregate: str | Callable[[np.ndarray], float] = "iqm",
    confidence: float = CONFIDENCE,
    reps: int = 2000,
    seed: int | None = 0,
) -> tuple[float, float, float]:
    """An aggregate of ``scores [runs, tasks]`` and its stratified-bootstrap percentile interval (rliable's).

    Each of ``reps`` resamples draws, for every task independently, ``runs`` runs with replacement; the interval is
    the ``(1 - c)/2`` and ``(1 + c)/2`` percentiles of the aggregate over the resamples.

    Args:
        scores: ``[runs, tasks]`` (or ``[runs]``: one task), normalised so that tasks are comparable.
        aggregate: a name in :data:`AGGREGATES` (``"mean"``, ``"median"``, ``"iqm"`` (default),
            ``"optimality_gap"``) or a function of a ``[runs, tasks]`` array returning a float.
        confidence: default 0.95.
        reps: bootstrap resamples; default 2000 (rliable's default).
        seed: seed of the resampling; default 0.

    Returns:
        ``(point, low, high)``.
    """
    _check_confidence(confidence)
    if isinstance(aggregate, str):
        if aggregate not in AGGREGATES:
            raise ValueError(f"unknown aggregate {aggregate!r}; allowed: {', '.join(AGGREGATES)}")
        aggregate = AGGREGATES[aggregate]
    matrix = _score_matrix(scores)
    point = float(aggregate(matrix))
    samples = _stratified_resamples(matrix, reps, seed)
    values = np.array([aggregate(sample) for sample in samples])
    alpha = (1 - confidence) / 2
    low, high = np.percentile(values, [100 * alpha, 100 * (1 - alpha)])
    return point, float(low), float(high)


def performance_profile(
    scores: Any,
    taus: Sequence[float] | np.ndarray,
    confidence: float = CONFIDENCE,
    reps: int = 2000,
    seed: int | None = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The run-score distribution ``P(score > tau)`` at each threshold, with stratified-bootstrap bands.

    ``profile[k] = mean over tasks of (fraction of the task's runs with score > taus[k])``, rliable's run-score
    distribution.

    Args:
        scores: ``[runs, tasks]`` or ``[runs]``.
        taus: thresholds ``[K]``.
        confidence: of the band (as in :func:`stratified_bootstrap_ci`).
        reps: bootstrap resamples of the band.
        seed: of the resampling (``None``: fresh randomness).

    Returns:
        ``(profile [K], low [K], high [K])``.
    """
    _check_confidence(confidence)
    matrix = _score_matrix(scores)
    tau = np.asarray(taus, dtype=np.float64).reshape(-1)

    def profile_of(m: np.ndarray) -> np.ndarray:  # [..., runs, tasks] -> [..., K]
        return (m[..., None] > tau).mean(axis=-3).mean(axis=-2)

    profile = profile_of(matrix)
    resampled = profile_of(_stratified_resamples(matrix, reps, seed))  # [reps, K]
    alpha = (1 - confidence) / 2
    low, high = np.percentile(resampled, [100 * alpha, 100 * (1 - alpha)], axis=0)
    return profile, low, high


def describe_interval(n: int, confidence: float = CONFIDENCE, method: str = "t") -> str:
    """A label for figures and tables, e.g. ``"mean ± 95% t-CI, n = 10 runs"``."""
    kinds = {"t": "t-CI", "bootstrap": "bootstrap CI", "stratified": "stratified-bootstrap CI"}
    return f"mean ± {100 * confidence:g}% {kinds.get(method, method)}, n = {n} runs"
