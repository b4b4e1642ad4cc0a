"""The exact gradient lab: tabular MDPs solved in float64 (d_mu, v_pi, q_pi, emphatic weightings, J and its
true gradient, expected updates of every estimator, expected-update ascent) and Monte Carlo checks of sampled
estimators. See :mod:`emphatic_rl.exact.lab`."""

from emphatic_rl.exact.lab import (
    ESTIMATORS,
    INTERESTS,
    USER_ESTIMATORS,
    AscentResult,
    ContinuousLab,
    DiscreteLab,
    Lab,
    check_estimator_names,
    estimator_names,
    make_lab,
    register_estimator,
    stationary_distribution,
    unregister_estimator,
)
from emphatic_rl.exact.sampled import (
    MonteCarloResult,
    SampledRunsResult,
    SampledStep,
    monte_carlo_updates,
    run_sampled_ace,
    sampled_estimator_names,
)

__all__ = [
    "ESTIMATORS",
    "INTERESTS",
    "USER_ESTIMATORS",
    "AscentResult",
    "ContinuousLab",
    "DiscreteLab",
    "Lab",
    "MonteCarloResult",
    "SampledRunsResult",
    "SampledStep",
    "check_estimator_names",
    "estimator_names",
    "make_lab",
    "monte_carlo_updates",
    "register_estimator",
    "run_sampled_ace",
    "sampled_estimator_names",
    "stationary_distribution",
    "unregister_estimator",
]
