"""The exact gradient lab: tabular MDPs solved in float64 (d_mu, v_pi, q_pi, emphatic weightings, J and its
true gradient, expected updates of every estimator, expected-update ascent) and Monte Carlo checks of sampled
estimators. See :mod:`emphatic_rl.exact.lab`."""

from emphatic_rl.exact.lab import (
    ESTIMATORS,
    INTERESTS,
    AscentResult,
    ContinuousLab,
    DiscreteLab,
    Lab,
    check_estimator_names,
    make_lab,
    stationary_distribution,
)
from emphatic_rl.exact.sampled import (
    MonteCarloResult,
    SampledRunsResult,
    monte_carlo_updates,
    run_sampled_ace,
)

__all__ = [
    "ESTIMATORS",
    "INTERESTS",
    "AscentResult",
    "ContinuousLab",
    "DiscreteLab",
    "Lab",
    "MonteCarloResult",
    "SampledRunsResult",
    "check_estimator_names",
    "make_lab",
    "monte_carlo_updates",
    "run_sampled_ace",
    "stationary_distribution",
]
