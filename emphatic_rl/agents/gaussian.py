"""Continuous-action ACE / OffPAC with a linear Gaussian policy (Imani et al. 2018, Sec. 5), batched over learners.

Policy ``pi(.|s) = N(u . x(s), exp(log_std)^2)`` with ``theta = [u (d), log_std]``: the standard deviation is an
exponential, so a non-positive std cannot be represented (no check needed, none possible to violate). This is the
exact lab's Gaussian parameterisation (``ContinuousLab(policy="gaussian")``), so sampled runs and expected-update
ascent are directly comparable.

Per step, in the order of linear ACE (all reads with ``theta`` before this step's update):

    rho_t   = pi(A_t|S_t) / mu(A_t|S_t)                      (from the two densities)
    F_t     = i_t + gamma_t rho_{t-1} F_{t-1}                (FollowonTrace, emphasis.py)
    M_t     = (1 - eta) i_t + eta F_t                        (eta = 0: OffPAC, eta = 1: ACE)
    delta_t = R_{t+1} + gamma_{t+1} v(S_{t+1}) - v(S_t)      (oracle v_pi of the current policy)
    theta  += alpha rho_t M_t delta_t grad_theta ln pi(A_t|S_t)

with ``grad_u ln pi = (a - mean) / std^2 x`` and ``grad_log_std ln pi = ((a - mean) / std)^2 - 1``. ``M_t`` and
``rho_t M_t delta_t`` are computed by ``emphatic_rl.emphatic`` (where every emphatic equation is defined once).

The deep Gaussian ACE / OffPAC agent on replay (``gaussian-ace``, ``gaussian-offpac``) is in deep_gaussian.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from emphatic_rl.agents.dpg import BatchedContinuousOracle, _ContinuousSampler
from emphatic_rl.agents.emphasis import FollowonTrace
from emphatic_rl.emphatic import actor_coefficient, emphatic_weighting

DTYPE64 = torch.float64


@dataclass
class SampledGaussianACEResult:
    """``objective [E, R, C]``: exact ``J`` at ``C`` checkpoints (``checkpoint_episodes``) for ``etas [E]`` and ``R``
    runs; ``final_theta [E, R, d + 1]`` (last entry ``log_std``)."""

    etas: list[float]
    checkpoint_episodes: list[int]
    objective: torch.Tensor
    final_theta: torch.Tensor


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """``log N(action; mean, exp(log_std)^2)``, elementwise."""
    z = (action - mean) / log_std.exp()
    return -0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)


def run_sampled_gaussian_ace(
    lab: Any,
    etas: tuple[float, ...] = (0.0, 0.5, 1.0),
    alpha: float = 0.1,
    episodes: int = 2000,
    runs: int = 10,
    seed: int = 0,
    checkpoints: int = 20,
    initial_log_std: float = 0.0,
    rho_clip: float | None = None,
) -> SampledGaussianACEResult:
    """Sampled linear Gaussian ACE (oracle critic, sampled follow-on trace) on a ``ContinuousLab``'s MDP
    (``policy="gaussian"``); ``E * R`` learners batched in float64, each with its own behaviour stream.

    ``rho_clip``: optional truncation of ``rho`` (``None``: exact ratios, as in the paper's code).
    """
    if getattr(lab, "policy_kind", None) != "gaussian":
        raise ValueError("run_sampled_gaussian_ace needs a ContinuousLab with policy='gaussian'")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha!r}")
    for eta_value in etas:
        if not 0.0 <= eta_value <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta_value!r}")
    E, R = len(etas), runs
    N = E * R
    mdp, oracle, X = lab.mdp, BatchedContinuousOracle(lab), lab.features
    d = X.shape[1]
    eta = torch.tensor(etas, dtype=DTYPE64).repeat_interleave(R)
    u = torch.zeros(N, d, dtype=DTYPE64)
    log_std = torch.full((N,), float(initial_log_std), dtype=DTYPE64)
    trace = FollowonTrace(N)
    trace.previous_followon = trace.previous_followon.to(DTYPE64)
    trace.previous_rho = trace.previous_rho.to(DTYPE64)
    generator = torch.Generator().manual_seed(int(seed))
    sampler = _ContinuousSampler(mdp, generator)
    state = sampler.start(N)
    gamma_t = torch.zeros(N, dtype=DTYPE64)
    episodes_done = torch.zeros(N, dtype=torch.int64)
    marks = sorted({max(1, round(episodes * (k + 1) / checkpoints)) for k in range(checkpoints)})
    objective = torch.full((N, len(marks)), float("nan"), dtype=DTYPE64)
    arange = torch.arange(N)
    for _ in range(100 * episodes * mdp.num_states):
        active = episodes_done < episodes
        if not bool(active.any()):
            break
        x = X[state]
        mean_all = u @ X.T  # [N, S]
        action, log_mu, reward, next_state, gamma_next = sampler.step(state)
        mean = mean_all[arange, state]
        rho = (gaussian_log_prob(mean, log_std, action) - log_mu).exp()
        if rho_clip is not None:
            rho = rho.clamp(max=rho_clip)
        interest = torch.ones(N, dtype=DTYPE64)
        followon = trace.step(interest, gamma_t, rho)
        weighting = emphatic_weighting(interest, followon, eta)  # M_t
        v = oracle.values(mean_all, log_std.exp())
        delta = reward + gamma_next * v[arange, next_state] - v[arange, state]
        z = (action - mean) / log_std.exp()
        # alpha rho_t M_t delta_t, with the step size folded into the ratio (the product's order as before)
        coefficient = torch.where(active, actor_coefficient(alpha * rho, weighting, delta), 0.0)
        u = u + (coefficient * z / log_std.exp()).unsqueeze(-1) * x
        log_std = log_std + coefficient * (z.square() - 1)
        ended = (gamma_next == 0) & active
        episodes_done += ended.long()
        for k, mark in enumerate(marks):
            hit = ended & (episodes_done == mark)
            if bool(hit.any()):
                objective[hit, k] = oracle.objective(u[hit] @ X.T, log_std[hit].exp())
        gamma_t, state = gamma_next, next_state
    final_theta = torch.cat([u, log_std.unsqueeze(-1)], -1).view(E, R, d + 1)
    return SampledGaussianACEResult(list(etas), marks, objective.view(E, R, -1), final_theta)
