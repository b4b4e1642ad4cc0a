"""The emphatic equations, each defined once.

Every agent (linear, deep discrete, deep Gaussian, DPG / DDPG, linear Gaussian), the sampled estimators of
``emphatic_rl.exact.sampled``, the exact lab's expected forms and the compiled (numba) population kernels call
these functions; none of them writes the equations again.

Names (the same in code, docs and metrics):

- ``i_t``: interest of ``S_t``; ``gamma_t``: the discount *into* ``S_t`` (0 at the first state of an episode);
  ``rho_t = pi(A_t|S_t) / mu(A_t|S_t)``.
- ``F_t`` (**followon**; metric ``followon``, its batch mean ``followon_mean`` in the deep agents): the follow-on
  estimate of the emphatic ratio ``m(s) / d_mu(s)``: the sampled trace, a learned ``fhat(S_t)`` (ACE-direct) or
  the ideal trace.
- ``M_t`` (**emphatic weighting**, metric ``emphatic_weighting``): ``(1 - eta) i_t + eta F_t``; the actor's
  weight (eta = 0: OffPAC, ``M_t = i_t``; eta = 1: ACE, ``M_t = F_t``).
- ``M^c_t`` (**critic emphasis**): ETD(lambda)'s ``lambda i_t + (1 - lambda) F_t``.

The functions are plain arithmetic on their arguments: they take Python floats, numpy arrays, torch tensors (with
or without autograd) alike, and ``numba.njit`` compiles them unchanged for the CPU kernels
(``emphatic_rl.agents.linear.kernels``), so each equation has one home for every backend. Boolean switches are
Python ``bool`` values (constant per agent), never tensors.

References: Sutton, Mahmood and White (2016), "An emphatic approach to the problem of off-policy temporal-difference
learning" (follow-on trace, ETD's ``M^c``); Imani, Graves and White (2018), "An off-policy policy gradient
theorem using emphatic weightings" (ACE, ``M_t``); Graves, Imani, Kumaraswamy and White (2023), "Off-policy
actor-critic with emphatic weightings" (ACE-direct's learned emphasis, the start-state fit).
"""

from __future__ import annotations

from typing import Any, TypeAlias

__all__ = [
    "followon_trace",
    "emphatic_weighting",
    "critic_emphasis",
    "learned_emphasis_target",
    "learned_emphasis_start_target",
    "learned_emphasis_loss",
    "actor_coefficient",
]

#: a Python float, a numpy array or a torch tensor; the arguments of one call may mix them (``eta`` a float,
#: ``interest`` a tensor...), so the equations are typed by what they accept, not by one type variable.
T: TypeAlias = Any


def followon_trace(interest: T, gamma: T, previous_rho: T, previous_followon: T, normalize: bool = False) -> T:
    """The sampled follow-on trace ``F_t = i_t + gamma_t rho_{t-1} F_{t-1}``.

    With ``normalize=True``: ``F_t = (1 - gamma_t) i_t + gamma_t rho_{t-1} F_{t-1}`` (estimates the normalised
    follow-on distribution). Start the recursion with ``F_{-1} = 0`` and ``rho_{-1} = 1``; ``gamma_t = 0`` at an
    episode's first state cuts the trace there. ``rho_{t-1}`` is the ratio computed at step ``t - 1`` with the
    policy of that time (as in the papers' code).
    """
    base = (1 - gamma) * interest if normalize else interest
    return base + gamma * previous_rho * previous_followon


def emphatic_weighting(interest: T, followon: T, eta: T) -> T:
    """``M_t = (1 - eta) i_t + eta F_t``: the actor's emphatic weighting (eta = 0: OffPAC, eta = 1: ACE)."""
    return (1 - eta) * interest + eta * followon


def critic_emphasis(interest: T, followon: T, trace_decay: T) -> T:
    """ETD(lambda)'s ``M^c_t = lambda i_t + (1 - lambda) F_t`` (``trace_decay`` is the critic's lambda)."""
    return trace_decay * interest + (1 - trace_decay) * followon


def learned_emphasis_target(next_interest: T, next_gamma: T, rho: T, followon: T, normalize: bool = False) -> T:
    """ACE-direct's backward-TD target for ``fhat(S_{t+1})``: ``i_{t+1} + gamma_{t+1} rho_t fhat(S_t)``.

    ``followon`` is ``fhat(S_t)`` read before this step's update (deep agents: a target network's value and,
    optionally, a clipped ``rho``). ``normalize``: ``(1 - gamma_{t+1}) i_{t+1} + gamma_{t+1} rho_t fhat(S_t)``.
    """
    base = (1 - next_gamma) * next_interest if normalize else next_interest
    return base + next_gamma * rho * followon


def learned_emphasis_start_target(interest: T, gamma: T, normalize: bool = False) -> T:
    """The target of ``fhat(S_0)`` at an episode's first state: ``i_0`` (normalised: ``(1 - gamma_0) i_0``).

    A start state is never anyone's ``S_{t+1}``, so the backward-TD rule alone never fits it; the agents that fit
    it (``fit_start_state`` in the linear learner) use this target. ``gamma`` is ``gamma_0`` (0 at a start).
    """
    return (1 - gamma) * interest if normalize else interest


def learned_emphasis_loss(prediction: T, target: T) -> T:
    """The semi-gradient regression loss ``0.5 (fhat - target)^2`` of the deep learned emphasis (per sample)."""
    error = prediction - target
    return 0.5 * error * error


def actor_coefficient(rho: T, emphatic_weighting_t: T, td_error: T) -> T:
    """The actor's per-sample weight ``rho_t M_t delta_t`` of ``grad ln pi(A_t|S_t)`` (sampled actor update)."""
    return rho * emphatic_weighting_t * td_error
