"""Sampled estimators next to the exact lab: Monte Carlo checks of estimator bias, and batched sampled-ACE
runs.

- :func:`monte_carlo_updates` draws many per-step actor updates at a fixed ``theta`` from real behaviour
  trajectories (the follow-on trace ``F_t = i_t + gamma_t rho_{t-1} F_{t-1}`` carried along each stream,
  episode restarts included) and reports their mean, its standard error and their variance next to the exact
  expected update. This is how to test a new estimator for bias.
- :func:`run_sampled_ace` is the lab's reference *sampled estimator* runner: many independent ACE learners
  (linear softmax actor, sampled follow-on trace, oracle critic ``v_pi`` solved exactly every step), batched
  over runs and ``eta`` values as tensors, in the exact order of the authors' code. It reproduces the N18 figure-1
  protocol (docs/protocols.md).

Both use the true critic (``v_pi``, ``q_pi`` of the current policy), as the N18 oracle-critic scripts do. The
sampled equations (``F_t``, ``M_t``, ``rho_t M_t delta_t``) are those of ``emphatic_rl.emphatic``, defined there once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from emphatic_rl.emphatic import actor_coefficient, emphatic_weighting, followon_trace
from emphatic_rl.envs.tabular import TabularMDP
from emphatic_rl.exact.lab import DTYPE, USER_ESTIMATORS, DiscreteLab

SAMPLED_ESTIMATORS = ("offpac", "ace", "all-actions")


def sampled_estimator_names() -> tuple[str, ...]:
    """Estimators with a sampled form: the built-in ``SAMPLED_ESTIMATORS`` and registered ones given ``sampled``."""
    return SAMPLED_ESTIMATORS + tuple(name for name, entry in USER_ESTIMATORS.items() if entry.sampled is not None)


@dataclass(frozen=True)
class SampledStep:
    """One step of ``K`` behaviour streams, as a registered estimator's ``sampled`` form sees it (float64).

    Per stream (``[K]``): ``state`` ``S_t``, ``action`` ``A_t ~ mu``, ``next_state``, ``reward`` ``R_{t+1}``,
    ``discount`` ``gamma_{t+1}``, ``interest`` ``i_t``, ``rho`` ``pi(A_t|S_t) / mu(A_t|S_t)``, ``followon``
    ``F_t``, ``emphatic_weighting`` ``M_t = (1 - eta) i_t + eta F_t``, ``delta`` (the TD error with the true ``v_pi``);
    ``score`` ``[K, *theta_shape]``, ``grad_theta ln pi(A_t|S_t)``. Shared: ``lab``, ``theta``, ``eta``, ``pi``
    ``[S, A]``, ``v`` ``[S]`` and ``q`` ``[S, A]`` (the true values of the fixed ``theta``), ``scores``
    ``[S, A, *theta_shape]`` (``grad ln pi(a|s)`` for every pair).
    """

    lab: Any
    theta: torch.Tensor
    eta: float
    state: torch.Tensor
    action: torch.Tensor
    next_state: torch.Tensor
    reward: torch.Tensor
    discount: torch.Tensor
    interest: torch.Tensor
    rho: torch.Tensor
    followon: torch.Tensor
    emphatic_weighting: torch.Tensor
    delta: torch.Tensor
    score: torch.Tensor
    pi: torch.Tensor
    v: torch.Tensor
    q: torch.Tensor
    scores: torch.Tensor


class _Sampler:
    """Batched sampling of a :class:`TabularMDP`'s behaviour process (float64, CPU)."""

    def __init__(self, mdp: TabularMDP, interest: str | torch.Tensor, generator: torch.Generator) -> None:
        self.mdp = mdp
        self.generator = generator
        self.reward = (
            mdp.reward if mdp.reward.dim() == 3 else mdp.reward.unsqueeze(-1).expand(-1, -1, mdp.num_states)
        )
        if isinstance(interest, str):
            if interest not in ("uniform", "episodic"):
                raise ValueError(f"unknown interest {interest!r}; allowed: uniform, episodic or a tensor [S]")
            assert mdp.interest is not None  # the MDP's __post_init__ fills the default
            self.interest_kind, self.interest_vector = interest, mdp.interest
        else:
            self.interest_kind, self.interest_vector = "tensor", torch.as_tensor(interest, dtype=DTYPE)

    def start(self, n: int) -> torch.Tensor:
        return torch.multinomial(self.mdp.start.expand(n, -1), 1, generator=self.generator).squeeze(1)

    def interest(self, state: torch.Tensor, gamma_t: torch.Tensor) -> torch.Tensor:
        """``i_t = i(S_t, gamma_t)``: 1 at episode starts for ``"episodic"``, ``i(S_t)`` otherwise."""
        if self.interest_kind == "episodic":
            return (gamma_t == 0).to(DTYPE)
        return self.interest_vector[state]

    def step(self, state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Behaviour action and transition: ``(action, next_state, reward, gamma_next)``, each ``[N]``."""
        action = torch.multinomial(self.mdp.behaviour[state], 1, generator=self.generator).squeeze(1)
        next_state = torch.multinomial(
            self.mdp.transition[state, action], 1, generator=self.generator
        ).squeeze(1)
        return (
            action,
            next_state,
            self.reward[state, action, next_state],
            self.mdp.discount[state, action, next_state],
        )


@dataclass
class MonteCarloResult:
    """Sampled updates at a fixed theta next to the exact expectation (tensors of shape ``theta_shape``).

    ``mean``: the mean of all sampled updates; ``standard_error``: of that mean, from the spread of the
    per-stream means (streams are independent; samples within a stream are not); ``variance``: per-component
    variance of a single sampled update; ``expected``: the lab's exact expected update.
    ``followon_mean [S]``: the sampled ``E[F_t | S_t = s]``; ``followon_expected [S]``: the lab's ``m /
    d_mu``.
    """

    estimator: str
    eta: float
    num_samples: int
    mean: torch.Tensor
    standard_error: torch.Tensor
    variance: torch.Tensor
    expected: torch.Tensor
    followon_mean: torch.Tensor
    followon_expected: torch.Tensor

    def max_abs_z(self) -> float:
        """Largest ``|mean - expected| / standard_error`` over components with a positive SE."""
        ok = self.standard_error > 0
        return float(((self.mean - self.expected).abs()[ok] / self.standard_error[ok]).max())

    def as_dict(self) -> dict:
        return {
            "estimator": self.estimator,
            "eta": self.eta,
            "num_samples": self.num_samples,
            "mean": self.mean.tolist(),
            "standard_error": self.standard_error.tolist(),
            "variance": self.variance.tolist(),
            "total_variance": float(self.variance.sum()),
            "expected_update": self.expected.tolist(),
            "max_abs_z": self.max_abs_z(),
            "followon_mean": self.followon_mean.tolist(),
            "followon_expected": self.followon_expected.tolist(),
        }


def monte_carlo_updates(
    lab: DiscreteLab,
    theta: torch.Tensor,
    estimator: str = "ace",
    eta: float = 1.0,
    num_streams: int = 2000,
    num_steps: int = 200,
    burn_in: int = 100,
    seed: int = 0,
) -> MonteCarloResult:
    """Draw ``num_streams * num_steps`` sampled actor updates at a fixed ``theta``.

    Args:
        lab: the exact lab of the MDP (its interest is used for ``i_t``).
        theta: ``[A, d_a]``, held fixed.
        estimator: ``"offpac"`` (``rho_t i_t delta_t grad ln pi``), ``"ace"`` (``rho_t M_t delta_t grad ln pi``,
            ``M_t = (1 - eta) i_t + eta F_t``), ``"all-actions"`` (``M_t sum_a grad pi(a|S_t) q(S_t, a)``), or
            an estimator registered with ``emphatic_rl.exact.register_estimator`` and a ``sampled`` form (called
            with a :class:`SampledStep` each step; returns ``[K, *theta_shape]``).
        num_streams: independent behaviour streams (batched); each starts at ``d0`` with ``gamma_0 = 0``.
        num_steps: samples kept per stream, after ``burn_in`` steps that bring the stream and its trace to
            stationarity.
    """
    if estimator not in sampled_estimator_names():
        raise ValueError(
            f"no sampled form for estimator {estimator!r}; allowed: {', '.join(sampled_estimator_names())}"
        )
    user = USER_ESTIMATORS[estimator].sampled if estimator in USER_ESTIMATORS else None
    for name, value in (("num_streams", num_streams), ("num_steps", num_steps)):
        if not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
    lab.check_estimators([estimator])
    theta = lab.check_theta(theta).detach()
    mdp = lab.mdp
    generator = torch.Generator().manual_seed(int(seed))
    sampler = _Sampler(mdp, lab.interest_spec, generator)
    pi = lab.policy(theta)  # [S, A]
    v = lab.values(theta)
    q = lab.action_values(theta)
    score = lab.score(theta)  # [S, A, A, d]
    all_actions_term = torch.einsum("sa,sabd->sbd", pi * q, score)  # sum_a pi q grad ln pi = sum_a grad pi q
    K, S = num_streams, mdp.num_states
    state = sampler.start(K)
    gamma_t = torch.zeros(K, dtype=DTYPE)
    rho_prev = torch.ones(K, dtype=DTYPE)
    followon = torch.zeros(K, dtype=DTYPE)
    stream_sum = torch.zeros(K, *theta.shape, dtype=DTYPE)
    square_sum = torch.zeros(theta.shape, dtype=DTYPE)
    followon_sum = torch.zeros(S, dtype=DTYPE)
    visits = torch.zeros(S, dtype=DTYPE)
    for t in range(burn_in + num_steps):
        action, next_state, reward, gamma_next = sampler.step(state)
        i_t = sampler.interest(state, gamma_t)
        rho = pi[state, action] / mdp.behaviour[state, action]
        followon = followon_trace(i_t, gamma_t, rho_prev, followon)  # F_t
        weighting = emphatic_weighting(i_t, followon, eta)  # M_t
        if user is not None:
            delta = reward + gamma_next * v[next_state] - v[state]
            step = SampledStep(lab, theta, float(eta), state, action, next_state, reward, gamma_next, i_t, rho,
                               followon, weighting, delta, score[state, action], pi, v, q, score)
            update = torch.as_tensor(user(step), dtype=DTYPE)
            if tuple(update.shape) != (K, *theta.shape):
                raise ValueError(
                    f"estimator {estimator!r}: its sampled form returned shape {tuple(update.shape)}, expected "
                    f"{(K, *theta.shape)} (one update per stream)"
                )
        elif estimator == "all-actions":
            update = weighting[:, None, None] * all_actions_term[state]
        else:
            weight = i_t if estimator == "offpac" else weighting
            delta = reward + gamma_next * v[next_state] - v[state]
            update = actor_coefficient(rho, weight, delta)[:, None, None] * score[state, action]
        if t >= burn_in:
            stream_sum += update
            square_sum += (update**2).sum(0)
            followon_sum.index_add_(0, state, followon)
            visits.index_add_(0, state, torch.ones(K, dtype=DTYPE))
        gamma_t, rho_prev, state = gamma_next, rho, next_state
    n = K * num_steps
    stream_means = stream_sum / num_steps
    mean = stream_sum.sum(0) / n
    standard_error = stream_means.std(0, unbiased=True) / K**0.5
    variance = square_sum / n - mean**2
    return MonteCarloResult(
        estimator=estimator,
        eta=float(eta),
        num_samples=n,
        mean=mean,
        standard_error=standard_error,
        variance=variance,
        expected=lab.expected_update(estimator, theta, eta),
        followon_mean=torch.where(
            visits > 0, followon_sum / visits.clamp_min(1), torch.full_like(visits, float("nan"))
        ),
        followon_expected=lab.followon_expectation(theta),
    )


@dataclass
class SampledRunsResult:
    """Outcome of :func:`run_sampled_ace`: ``final_objective [E, R]`` (exact J of each run's final theta),
    ``final_theta [E, R, A, d]`` for ``etas [E]`` and ``R`` runs."""

    etas: list[float]
    final_objective: torch.Tensor
    final_theta: torch.Tensor
    steps: int


def run_sampled_ace(
    lab: DiscreteLab,
    etas: list[float] | tuple[float, ...] = (0.0, 1.0),
    alpha: float = 0.1,
    episodes: int = 2000,
    runs: int = 30,
    seed: int = 0,
    max_steps: int | None = None,
    theta0: torch.Tensor | None = None,
) -> SampledRunsResult:
    """Sampled ACE with an oracle critic, ``len(etas) * runs`` learners batched as tensors (Imani et al.
    2018, Fig. 1 protocol).

    Each learner has its own behaviour stream and follows, every step:
    ``rho_t = pi(A_t|S_t) / mu(A_t|S_t)``, ``F_t = i_t + gamma_t rho_{t-1} F_{t-1}``,
    ``M_t = (1 - eta) i_t + eta F_t``, ``delta_t = R_{t+1} + gamma_{t+1} v(S_{t+1}) - v(S_t)`` with ``v =
    v_pi`` solved exactly for the current theta, ``theta += alpha rho_t M_t delta_t grad ln pi(A_t|S_t)``. A
    learner stops after ``episodes`` episodes (terminal transitions). ``eta = 0`` is OffPAC.

    Returns:
        the exact ``J`` (the lab's objective) of every final theta, grouped by eta.
    """
    mdp = lab.mdp
    if not bool(mdp.terminal_transition.any()):
        raise ValueError(f"run_sampled_ace counts episodes, but {mdp.name} has no terminal transitions")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha!r}")
    for name, value in (("episodes", episodes), ("runs", runs)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    lab.check_estimators(["ace"])
    E, R = len(etas), runs
    P = E * R
    generator = torch.Generator().manual_seed(int(seed))
    sampler = _Sampler(mdp, lab.interest_spec, generator)
    eta = torch.tensor(etas, dtype=DTYPE).repeat_interleave(R)  # [P]
    A, d = lab.theta_shape
    theta = (
        torch.zeros(P, A, d, dtype=DTYPE)
        if theta0 is None
        else lab.check_theta(theta0).expand(P, A, d).clone()
    )
    X = lab.features
    state = sampler.start(P)
    gamma_t = torch.zeros(P, dtype=DTYPE)
    rho_prev = torch.ones(P, dtype=DTYPE)
    followon = torch.zeros(P, dtype=DTYPE)
    episodes_done = torch.zeros(P, dtype=torch.int64)
    limit = max_steps if max_steps is not None else 1000 * episodes
    eye_actions = torch.eye(A, dtype=DTYPE)
    steps = 0
    while bool((episodes_done < episodes).any()) and steps < limit:
        active = (episodes_done < episodes).to(DTYPE)
        x = X[state]  # [P, d]
        pi_s = torch.softmax(torch.einsum("pad,pd->pa", theta, x), dim=-1)  # [P, A]
        action, next_state, reward, gamma_next = sampler.step(state)
        i_t = sampler.interest(state, gamma_t)
        rho = pi_s.gather(1, action.unsqueeze(1)).squeeze(1) / mdp.behaviour[state, action]
        followon = followon_trace(i_t, gamma_t, rho_prev, followon)  # F_t
        weighting = emphatic_weighting(i_t, followon, eta)  # M_t
        policy = torch.softmax(torch.einsum("sd,pad->psa", X, theta), dim=-1)
        v = lab.batched_values(policy)  # oracle critic, [P, S]
        arange = torch.arange(P)
        delta = reward + gamma_next * v[arange, next_state] - v[arange, state]
        score = (eye_actions[action] - pi_s).unsqueeze(-1) * x.unsqueeze(1)  # [P, A, d]
        # alpha [active] rho_t M_t delta_t, the step size and the mask folded into the ratio (the product's order)
        theta = theta + actor_coefficient(alpha * active * rho, weighting, delta)[:, None, None] * score
        episodes_done += (gamma_next == 0).to(torch.int64)
        gamma_t, rho_prev, state = gamma_next, rho, next_state
        steps += 1
    final_objective = lab.batched_objective_of_theta(theta).reshape(E, R)
    return SampledRunsResult(list(etas), final_objective, theta.reshape(E, R, A, d), steps)
