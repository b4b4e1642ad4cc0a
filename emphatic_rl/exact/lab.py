"""The exact gradient lab: off-policy objectives, true gradients and expected estimator updates in float64.

For a tabular MDP (:class:`~emphatic_rl.envs.tabular.TabularMDP`, linear softmax policy) or a finite-state MDP
with one real action (:class:`~emphatic_rl.envs.tabular.ContinuousActionMDP`, linear deterministic or Gaussian
policy), the lab computes (notation of docs/algorithms/actor-critic.md):

- ``d_mu``: the stationary distribution of the behaviour process, episodic restarts included (the MDP's ``P``
rows
  already contain the restart, see :mod:`emphatic_rl.envs.tabular`);
- the *interest-weighted distribution* ``d_i(s) = d_mu(s) E_mu[i_t | S_t = s]``:

  * ``"uniform"``: ``i_t = i(S_t)`` (the MDP's ``interest`` field, ones by default), so ``d_i = d_mu * i``
    (the excursions objective);
  * ``"episodic"``: ``i_t = 1`` exactly when ``gamma_t = 0`` (as in the authors' ``run_ace.py``), i.e. when ``S_t`` is
  the
    first state of an episode. In the stationary behaviour process
    ``d_i(s') = P(S_t = s', t is an episode start) = sum_{s, a} d_mu(s) mu(a|s) P(s'|s, a) [gamma(s, a, s') =
    0]``; for an episodic task that restarts from ``d0`` this is ``(rate of episode ends) * d0``, so
    ``J = sum_s d_i v_pi`` is the episodic objective ``sum d0 v_pi`` times the episode rate;
  * a tensor ``[S]``: ``i_t = i(S_t)`` with that interest;

- ``v_pi``, ``q_pi``; the emphatic weighting ``m = (I - P_{pi,gamma}^T)^{-1} d_i`` and
  ``m_eta = eta m + (1 - eta) d_i``;
- ``J_mu(theta) = sum_s d_i(s) v_pi(s)`` and its true gradient by autograd;
- the EXPECTED update of each estimator (see :data:`ESTIMATORS`), and expected-update ascent.

Estimators (the expectation under the stationary behaviour process of the per-step actor update, with the true
``v_pi``/``q_pi`` as critic):

- ``true``: autograd gradient of ``J_mu``;
- ``offpac``: ``E[rho_t i_t delta_t grad ln pi]``, the semi-gradient (weighting ``d_i``);
- ``ace``: ``E[rho_t M_t delta_t grad ln pi]`` with ``M_t = (1 - eta) i_t + eta F_t``; weighting ``m_eta``;
- ``ace-direct``: ACE with the learned emphasis ``fhat(x) = phi^T x`` (critic features) at the fixed point of
its
  backward-TD update (Graves et al. 2023): ``X^T (D - P_{pi,gamma}^T D) X phi = X^T d_i``; weighting
  ``(1 - eta) d_i + eta d_mu * fhat``;
- ``all-actions``: ``E[M_t sum_a grad pi(a|S_t) q(S_t, a)]``, weighting ``m_eta``;
- ``dpg`` / ``emphatic-dpg`` (deterministic policies): ``sum_s w(s) grad_u pi(s) grad_a q(s, a)|_{a = pi(s)}``
  with ``w = d_i`` / ``w = m_eta``;
- any estimator registered with :func:`register_estimator` (its exact expected update, and optionally its sampled
  form for ``monte_carlo_updates``); ``Lab.bias`` / ``Lab.relative_bias`` compare any of them with the true
  gradient.

The ``offpac``/``ace`` expectations are computed in their TD-error form (``mu * rho * E[delta | s, a] * grad
ln pi`` with the closed-form softmax score), the ``all-actions`` one by autograd of ``sum_s w(s) sum_a pi(a|s)
q(s, a)`` with ``w`` and ``q`` held fixed, and ``true`` by autograd through the linear solve: three
independent code paths, which the tests compare (the off-policy policy gradient theorem says ``ace`` with eta
= 1 equals ``true``).

The weightings are the expected forms of the sampled equations of ``emphatic_rl.emphatic`` and call them:
``m_eta = emphatic_weighting(d_i, m, eta)`` (``d_mu E[M_t | s]`` with ``d_mu E[i_t | s] = d_i`` and
``d_mu E[F_t | s] = m``) and the ACE-direct weighting ``emphatic_weighting(d_i, d_mu fhat, eta)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from emphatic_rl.emphatic import emphatic_weighting
from emphatic_rl.envs.tabular import ContinuousActionMDP, TabularMDP

DTYPE = torch.float64
ESTIMATORS = ("true", "offpac", "ace", "ace-direct", "all-actions", "dpg", "emphatic-dpg")
STOCHASTIC_ESTIMATORS = ("true", "offpac", "ace", "ace-direct", "all-actions")
DETERMINISTIC_ESTIMATORS = ("true", "dpg", "emphatic-dpg")
IMPORTANCE_SAMPLED = ("offpac", "ace", "ace-direct")
INTERESTS = ("uniform", "episodic")
CONTINUOUS_POLICIES = ("deterministic", "gaussian")


@dataclass(frozen=True)
class UserEstimator:
    """An estimator registered with :func:`register_estimator` (see there for the fields)."""

    name: str
    expected: Callable[..., torch.Tensor]
    sampled: Callable[..., torch.Tensor] | None
    labs: tuple[type, ...]
    importance_sampled: bool
    description: str


#: Estimators registered by users (``register_estimator``), by name, next to the built-in ``ESTIMATORS``.
USER_ESTIMATORS: dict[str, UserEstimator] = {}


def register_estimator(
    name: str,
    expected: Callable[..., torch.Tensor] | None = None,
    *,
    sampled: Callable[..., torch.Tensor] | None = None,
    labs: tuple[type, ...] | None = None,
    importance_sampled: bool = False,
    description: str = "",
) -> Any:
    """Register a new actor-update estimator with the exact lab (a function call, or a decorator of ``expected``).

    Once registered, ``lab.expected_update(name, theta, eta)``, ``lab.bias``, ``lab.ascent``,
    ``emphatic-rl gradients --estimators NAME`` and, given a ``sampled`` form,
    ``emphatic_rl.exact.monte_carlo_updates(lab, theta, NAME)`` treat it like a built-in one.

    Args:
        name: the estimator's name (must not clash with a built-in or registered one).
        expected: ``expected(lab, theta, eta) -> Tensor[theta_shape]``, the exact expected update at ``theta``
            (float64), computed from the lab's exact quantities (``lab.values``, ``lab.action_values``,
            ``lab.emphatic_weighting``, ``lab.score``, ``lab.policy``, ``lab.d_mu``, ``lab.interest_weights``...).
        sampled: optional ``sampled(step: SampledStep) -> Tensor[K, *theta_shape]``, one sampled update per
            behaviour stream from the quantities of one step of ``K`` streams (see
            ``emphatic_rl.exact.sampled.SampledStep``); needed by ``monte_carlo_updates``.
        labs: the lab classes it applies to (default ``(DiscreteLab,)``: linear softmax policies).
        importance_sampled: it uses ``rho = pi / mu``, so the lab checks that ``mu`` covers ``pi``.
        description: one line for listings.

    Returns:
        ``expected`` (so it can decorate it).
    """

    def decorate(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if not isinstance(name, str) or not name:
            raise ValueError(f"an estimator name must be a non-empty string, got {name!r}")
        if name in ESTIMATORS or name in USER_ESTIMATORS:
            raise ValueError(f"estimator name {name!r} is already taken; taken: {', '.join(estimator_names())}")
        if not callable(function) or (sampled is not None and not callable(sampled)):
            raise ValueError(f"estimator {name!r}: expected and sampled must be functions")
        USER_ESTIMATORS[name] = UserEstimator(
            name, function, sampled, tuple(labs) if labs else (DiscreteLab,), importance_sampled, description
        )
        return function

    return decorate if expected is None else decorate(expected)


def unregister_estimator(name: str) -> None:
    """Forget a registered estimator (built-in ones cannot be removed)."""
    if name not in USER_ESTIMATORS:
        raise ValueError(f"{name!r} is not a registered estimator; registered: {', '.join(USER_ESTIMATORS) or 'none'}")
    del USER_ESTIMATORS[name]


def estimator_names() -> tuple[str, ...]:
    """Every estimator name: the built-in ``ESTIMATORS`` and the registered ones."""
    return ESTIMATORS + tuple(USER_ESTIMATORS)


def check_estimator_names(names: list[str] | tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming the first unknown estimator and the allowed names."""
    allowed = estimator_names()
    for name in names:
        if name not in allowed:
            raise ValueError(f"unknown estimator {name!r}; allowed: {', '.join(allowed)}")


def stationary_distribution(chain: torch.Tensor) -> torch.Tensor:
    """Stationary distribution ``d [S]`` of a row-stochastic ``chain [S, S]`` (``d^T chain = d^T``, ``sum d =
    1``).

    Solves ``(I - chain^T + 1 1^T) d = 1``, which has a unique solution iff the chain has one recurrent class.

    Raises:
        ValueError: if the chain has no unique stationary distribution.
    """
    S = chain.shape[0]
    eye = torch.eye(S, dtype=chain.dtype)
    system = eye - chain.T + torch.ones(S, S, dtype=chain.dtype)
    try:
        d = torch.linalg.solve(system, torch.ones(S, dtype=chain.dtype))
    except RuntimeError:
        raise ValueError(
            "the behaviour process has no unique stationary distribution (more than one recurrent class)"
        ) from None
    residual = (d @ chain - d).abs().max() + (d.sum() - 1).abs()
    if not bool(torch.isfinite(d).all()) or residual > 1e-8 or bool((d < -1e-10).any()):
        raise ValueError(
            "the behaviour process has no unique stationary distribution (more than one recurrent class)"
        )
    return d.clamp_min(0.0)


@dataclass
class AscentResult:
    """Trajectory of expected-update ascent: ``objective[k]`` is ``J(theta_k)``, ``thetas[k]`` is ``theta_k``.

    ``objective: [steps + 1]``, ``thetas: [steps + 1, *theta_shape]``, ``policies``: the policy summary of the
    final theta (see ``Lab.policy_summary``).
    """

    estimator: str
    objective: torch.Tensor
    thetas: torch.Tensor
    final_policy: Any = field(default=None)

    @property
    def final_objective(self) -> float:
        return float(self.objective[-1])


class Lab:
    """Shared machinery: subclasses define the policy, ``P_{pi,gamma}`` and ``r_pi`` as functions of theta."""

    num_states: int
    theta_shape: tuple[int, ...]
    d_mu: torch.Tensor
    interest_weights: torch.Tensor
    critic_features: torch.Tensor
    available_estimators: tuple[str, ...]

    # ------------------------------------------------------------------ subclass hooks
    def policy_transition(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P_{pi,gamma} [S, S], r_pi [S])``, differentiable in ``theta``."""
        raise NotImplementedError

    def policy_summary(self, theta: torch.Tensor) -> Any:
        raise NotImplementedError

    def _expected_update(self, estimator: str, theta: torch.Tensor, eta: float) -> torch.Tensor:
        raise NotImplementedError

    def best_corner_objective(self) -> tuple[float, list[Any]]:
        """``(J*, the corner policy)``: the best objective over the policy class's corners (``ValueError`` where
        no corner qualifies)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ input checks
    def check_theta(self, theta: Any) -> torch.Tensor:
        """Return ``theta`` as float64; raise ``ValueError`` if its shape is not ``theta_shape``."""
        theta = torch.as_tensor(theta, dtype=DTYPE)
        if tuple(theta.shape) != tuple(self.theta_shape):
            raise ValueError(
                f"theta has shape {tuple(theta.shape)}, expected {tuple(self.theta_shape)} "
                f"({self.parameterization})"
            )
        if not bool(torch.isfinite(theta).all()):
            raise ValueError("theta must be finite")
        return theta

    def applicable_estimators(self) -> tuple[str, ...]:
        """The built-in estimators of this policy class and the registered ones that apply to this lab."""
        user = tuple(name for name, entry in USER_ESTIMATORS.items() if isinstance(self, entry.labs))
        return tuple(self.available_estimators) + user

    def check_estimators(self, names: list[str] | tuple[str, ...]) -> None:
        """Raise ``ValueError`` for an unknown estimator or one this policy class does not support."""
        check_estimator_names(names)
        allowed = self.applicable_estimators()
        for name in names:
            if name not in allowed:
                raise ValueError(
                    f"estimator {name!r} does not apply to a {self.parameterization}; "
                    f"allowed here: {', '.join(allowed)}"
                )

    parameterization: str = ""

    # ------------------------------------------------------------------ exact quantities
    def values(self, theta: torch.Tensor) -> torch.Tensor:
        """``v_pi [S]`` by solving ``(I - P_{pi,gamma}) v = r_pi``."""
        theta = self.check_theta(theta)
        P_pg, r_pi = self.policy_transition(theta)
        eye = torch.eye(self.num_states, dtype=DTYPE)
        return torch.linalg.solve(eye - P_pg, r_pi)

    def objective(self, theta: torch.Tensor) -> torch.Tensor:
        """``J_mu(theta) = sum_s d_i(s) v_pi(s)`` (a 0-d tensor, differentiable in ``theta``)."""
        return self.interest_weights @ self.values(theta)

    def true_gradient(self, theta: Any) -> torch.Tensor:
        """``grad_theta J_mu`` by autograd through the linear solve, shape ``theta_shape``."""
        theta = self.check_theta(theta).detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(self.objective(theta), theta)
        return gradient

    def emphatic_weighting(self, theta: Any, eta: float = 1.0) -> torch.Tensor:
        """``m_eta [S] = eta m + (1 - eta) d_i`` with ``m = (I - P_{pi,gamma}^T)^{-1} d_i`` (Imani et al. 2018)."""
        theta = self.check_theta(theta).detach()
        P_pg, _ = self.policy_transition(theta)
        eye = torch.eye(self.num_states, dtype=DTYPE)
        m = torch.linalg.solve((eye - P_pg).T, self.interest_weights)
        return emphatic_weighting(self.interest_weights, m, eta)  # (1 - eta) d_i + eta m

    def followon_expectation(self, theta: Any) -> torch.Tensor:
        """``E_mu[F_t | S_t = s] = m(s) / d_mu(s)`` (NaN where ``d_mu(s) = 0``), shape ``[S]``."""
        m = self.emphatic_weighting(theta, 1.0)
        return torch.where(self.d_mu > 0, m / self.d_mu.clamp_min(1e-300), torch.full_like(m, float("nan")))

    def learned_emphasis(self, theta: Any) -> torch.Tensor:
        """The fixed point ``fhat [S]`` of ACE-direct's linear emphasis on the critic features (Graves et al. 2023).

        Solves ``X^T (D - P_{pi,gamma}^T D) X phi = X^T d_i`` (the expected backward-TD update is zero); with
        tabular features ``fhat = m / d_mu``.
        """
        theta = self.check_theta(theta).detach()
        P_pg, _ = self.policy_transition(theta)
        X = self.critic_features
        D = torch.diag(self.d_mu)
        A = X.T @ (D - P_pg.T @ D) @ X
        b = X.T @ self.interest_weights
        phi = torch.linalg.lstsq(A, b.unsqueeze(1)).solution.squeeze(1)
        return X @ phi

    def learned_emphatic_weighting(self, theta: Any, eta: float = 1.0) -> torch.Tensor:
        """ACE-direct's actor weighting ``[S] = (1 - eta) d_i + eta d_mu fhat`` (``fhat``: ``learned_emphasis``)."""
        return emphatic_weighting(self.interest_weights, self.d_mu * self.learned_emphasis(theta), eta)

    def expected_update(self, estimator: str, theta: Any, eta: float = 1.0) -> torch.Tensor:
        """Expected update of ``estimator`` at ``theta`` (shape ``theta_shape``); ``true`` is the gradient."""
        self.check_estimators([estimator])
        theta = self.check_theta(theta).detach()
        if estimator == "true":
            return self.true_gradient(theta)
        if estimator in USER_ESTIMATORS:
            update = torch.as_tensor(USER_ESTIMATORS[estimator].expected(self, theta, float(eta)), dtype=DTYPE)
            if tuple(update.shape) != tuple(self.theta_shape):
                raise ValueError(
                    f"estimator {estimator!r}: its expected update has shape {tuple(update.shape)}, expected "
                    f"{tuple(self.theta_shape)} (theta's)"
                )
            return update.detach()
        return self._expected_update(estimator, theta, float(eta))

    def bias(self, estimator: str, theta: Any, eta: float = 1.0) -> torch.Tensor:
        """``E[update] - grad J_mu`` at ``theta`` (shape ``theta_shape``): the estimator's bias against the true
        gradient."""
        return self.expected_update(estimator, theta, eta) - self.true_gradient(theta)

    def relative_bias(self, estimator: str, theta: Any, eta: float = 1.0) -> float:
        """``|E[update] - grad J_mu| / |grad J_mu|`` (NaN where the true gradient is zero)."""
        norm = float(self.true_gradient(theta).norm())
        return float(self.bias(estimator, theta, eta).norm()) / norm if norm > 0 else math.nan

    # ------------------------------------------------------------------ ascent
    def ascent(self, estimator: str, theta0: Any, steps: int, lr: float, eta: float = 1.0) -> AscentResult:
        """Follow ``theta <- theta + lr * expected_update(estimator, theta)`` for ``steps`` steps."""
        self.check_estimators([estimator])
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        theta = self.check_theta(theta0).detach().clone()
        thetas = [theta.clone()]
        objective = [float(self.objective(theta))]
        for _ in range(steps):
            theta = theta + lr * self.expected_update(estimator, theta, eta)
            thetas.append(theta.clone())
            objective.append(float(self.objective(theta)))
        return AscentResult(
            estimator, torch.tensor(objective, dtype=DTYPE), torch.stack(thetas), self.policy_summary(theta)
        )


# ---------------------------------------------------------------------- discrete actions, linear softmax


def interest_weights_from(
    mdp_interest: torch.Tensor,
    d_mu: torch.Tensor,
    episode_start_mass: torch.Tensor,
    interest: str | torch.Tensor,
) -> torch.Tensor:
    """``d_i [S]`` for ``interest`` in ``"uniform"``, ``"episodic"`` or a tensor ``[S]`` (see module doc)."""
    if isinstance(interest, str):
        if interest == "uniform":
            return d_mu * mdp_interest
        if interest == "episodic":
            return episode_start_mass
        raise ValueError(f"unknown interest {interest!r}; allowed: {', '.join(INTERESTS)} or a tensor [S]")
    values = torch.as_tensor(interest, dtype=DTYPE)
    if tuple(values.shape) != tuple(d_mu.shape) or bool((values < 0).any()):
        raise ValueError(f"an interest tensor must be non-negative with shape {tuple(d_mu.shape)}")
    return d_mu * values


class DiscreteLab(Lab):
    """Exact lab for a :class:`TabularMDP` with a linear softmax policy ``pi(a|s) ∝ exp(theta_a . x(s))``.

    Args:
        mdp: the MDP (its ``behaviour`` is ``mu``).
        interest: ``"uniform"``, ``"episodic"`` or a tensor ``[S]`` (see the module docstring).

    ``theta: [A, d_a]``.
    """

    available_estimators = STOCHASTIC_ESTIMATORS

    def __init__(self, mdp: TabularMDP, interest: str | torch.Tensor = "uniform") -> None:
        self.mdp = mdp
        self.num_states, self.num_actions = mdp.num_states, mdp.num_actions
        self.theta_shape = (mdp.num_actions, mdp.actor_features.shape[1])
        self.parameterization = (
            f"linear softmax policy on {mdp.name} (theta [A={self.theta_shape[0]}, d={self.theta_shape[1]}])"
        )
        self.features = mdp.actor_features
        self.critic_features = mdp.critic_features
        self.behaviour_chain = torch.einsum("sa,sat->st", mdp.behaviour, mdp.transition)
        self.d_mu = stationary_distribution(self.behaviour_chain)
        terminal = mdp.terminal_transition.to(DTYPE)
        self.episode_start_mass = torch.einsum(
            "s,sa,sat,sat->t", self.d_mu, mdp.behaviour, mdp.transition, terminal
        )
        self.interest_name = interest if isinstance(interest, str) else "custom"
        self.interest_spec = interest
        assert mdp.interest is not None  # the MDP's __post_init__ fills the default
        self.interest_weights = interest_weights_from(
            mdp.interest, self.d_mu, self.episode_start_mass, interest
        )
        self.discounted_transition = mdp.transition * mdp.discount  # [S, A, S]
        self.reward = mdp.expected_reward  # [S, A]

    # ------------------------------------------------------------------ policy
    def policy(self, theta: torch.Tensor) -> torch.Tensor:
        """``pi [S, A]``."""
        return torch.softmax(self.features @ theta.T, dim=-1)

    def policy_transition(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pi = self.policy(theta)
        return torch.einsum("sa,sat->st", pi, self.discounted_transition), (pi * self.reward).sum(-1)

    def policy_summary(self, theta: torch.Tensor) -> list[list[float]]:
        """``pi(a|s)`` as nested lists ``[S][A]``."""
        return self.policy(self.check_theta(theta)).tolist()

    def policy_values(self, policy: torch.Tensor) -> torch.Tensor:
        """``v [S]`` of any fixed policy matrix ``policy [S, A]`` (e.g. the MDP's ``target_policy``)."""
        policy = torch.as_tensor(policy, dtype=DTYPE)
        if tuple(policy.shape) != (self.num_states, self.num_actions):
            raise ValueError(f"policy must have shape {(self.num_states, self.num_actions)}")
        return self.batched_values(policy.unsqueeze(0))[0]

    def action_values(self, theta: Any) -> torch.Tensor:
        """``q_pi [S, A] = r(s, a) + sum_s' P gamma v_pi(s')``."""
        theta = self.check_theta(theta)
        return self.reward + self.discounted_transition @ self.values(theta)

    # ------------------------------------------------------------------ coverage
    def uncovered_actions(self) -> list[tuple[int, int]]:
        """``(s, a)`` pairs with ``d_mu(s) > 0`` and ``mu(a|s) = 0``: pi can take them, mu never does."""
        bad = (self.d_mu > 0).unsqueeze(1) & (self.mdp.behaviour == 0)
        return [(int(pair[0]), int(pair[1])) for pair in bad.nonzero()]

    def check_coverage(self, estimators: list[str] | tuple[str, ...] = IMPORTANCE_SAMPLED) -> None:
        """Raise ``ValueError`` if an importance-sampled estimator is asked for and mu does not cover pi."""
        needs = [
            name for name in estimators
            if name in IMPORTANCE_SAMPLED or (name in USER_ESTIMATORS and USER_ESTIMATORS[name].importance_sampled)
        ]
        uncovered = self.uncovered_actions()
        if needs and uncovered:
            s, a = uncovered[0]
            raise ValueError(
                f"the behaviour policy gives probability 0 to action {a} in state {s} of {self.mdp.name} "
                f"(d_mu = {float(self.d_mu[s]):.4g}), but the softmax target policy can take it: the "
                f"importance-sampled estimators ({', '.join(needs)}) need mu(a|s) > 0 wherever pi(a|s) > 0"
            )

    def check_estimators(self, names: list[str] | tuple[str, ...]) -> None:
        super().check_estimators(names)
        self.check_coverage(names)

    # ------------------------------------------------------------------ estimators
    def score(self, theta: torch.Tensor) -> torch.Tensor:
        """``grad_theta ln pi(a|s)``, ``[S, A, A, d]``: entry ``[s, a, b, :] = (1[b=a] - pi(b|s)) x(s)``."""
        pi = self.policy(theta)
        eye = torch.eye(self.num_actions, dtype=DTYPE)
        return (eye.unsqueeze(0) - pi.unsqueeze(1)).unsqueeze(-1) * self.features[:, None, None, :]

    def actor_weighting(self, estimator: str, theta: torch.Tensor, eta: float) -> torch.Tensor:
        """``w [S] = d_mu(s) E[M_t | S_t = s]`` for the estimator (``d_i``: OffPAC, ``m_eta``: ACE)."""
        if estimator == "offpac":
            return self.interest_weights
        if estimator == "ace-direct":
            return self.learned_emphatic_weighting(theta, eta)
        return self.emphatic_weighting(theta, eta)

    def _expected_update(self, estimator: str, theta: torch.Tensor, eta: float) -> torch.Tensor:
        weights = self.actor_weighting(estimator, theta, eta)
        v = self.values(theta)
        if estimator == "all-actions":
            q = (self.reward + self.discounted_transition @ v).detach()
            theta_var = theta.clone().requires_grad_(True)
            surrogate = (weights.detach() * (self.policy(theta_var) * q).sum(-1)).sum()
            (update,) = torch.autograd.grad(surrogate, theta_var)
            return update
        # TD-error form: E_mu[rho M delta grad ln pi] = sum_s w(s) sum_a mu rho E[delta|s, a] score.
        mu = self.mdp.behaviour
        pi = self.policy(theta)
        rho = torch.where(mu > 0, pi / mu.clamp_min(1e-300), torch.zeros_like(pi))
        expected_delta = self.reward + self.discounted_transition @ v - v.unsqueeze(1)  # [S, A]
        coefficient = weights.unsqueeze(1) * mu * rho * expected_delta  # [S, A]
        return torch.einsum("sa,sabd->bd", coefficient, self.score(theta))

    # ------------------------------------------------------------------ batched helpers and J*
    def batched_values(self, policy: torch.Tensor) -> torch.Tensor:
        """``v [B, S]`` for a batch of policy matrices ``policy [B, S, A]``."""
        P_pg = torch.einsum("bsa,sat->bst", policy, self.discounted_transition)
        r_pi = (policy * self.reward).sum(-1)
        eye = torch.eye(self.num_states, dtype=DTYPE)
        return torch.linalg.solve(eye - P_pg, r_pi.unsqueeze(-1)).squeeze(-1)

    def batched_objective_of_theta(self, theta: torch.Tensor) -> torch.Tensor:
        """``J [B]`` for ``theta [B, A, d]``."""
        policy = torch.softmax(torch.einsum("sd,bad->bsa", self.features, theta.to(DTYPE)), dim=-1)
        return self.batched_values(policy) @ self.interest_weights

    def best_corner_objective(self, max_policies: int = 1 << 16) -> tuple[float, list[int]]:
        """J* over the policy class's corners: the best deterministic policy that the features can express.

        Needs aggregation actor features (every row one-hot): states with the same active feature share one
        action, giving ``A^G`` deterministic group policies (softmax policies approach them as ``|theta| ->
        inf``). Corners under which some episode never ends (a ``gamma = 1`` loop, so ``I - P_{pi,gamma}`` is
        singular) are skipped. For the N18 counterexamples this is the J* of docs/environments.md (1.25 on the
        three-state one).

        Returns:
            ``(J*, action per feature group)``.
        """
        X = self.features
        one_hot = bool(((X == 0) | (X == 1)).all()) and bool((X.sum(1) == 1).all())
        if not one_hot:
            raise ValueError("best_corner_objective needs one-hot (state-aggregation) actor features")
        groups = X.argmax(1)
        G, A = X.shape[1], self.num_actions
        if A**G > max_policies:
            raise ValueError(f"best_corner_objective: {A}^{G} policies is more than {max_policies}")
        choices = torch.tensor(list(itertools.product(range(A), repeat=G)), dtype=torch.int64)  # [B, G]
        policy = torch.nn.functional.one_hot(choices[:, groups], A).to(DTYPE)  # [B, S, A]
        P_pg = torch.einsum("bsa,sat->bst", policy, self.discounted_transition)
        power = P_pg
        for _ in range(24):  # P^(2^24): vanishes iff the spectral radius is below 1
            power = power @ power
        proper = power.abs().amax(dim=(1, 2)) < 1e-6
        if not bool(proper.any()):
            raise ValueError("best_corner_objective: no deterministic corner policy ends its episodes")
        J = torch.full((len(choices),), -math.inf, dtype=DTYPE)
        J[proper] = self.batched_values(policy[proper]) @ self.interest_weights
        best = int(J.argmax())
        return float(J[best]), choices[best].tolist()


# ---------------------------------------------------------------------- one real action


def gauss_hermite(num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``z [K]`` and weights ``w [K]`` with ``E[f(Z)] ≈ sum_k w_k f(z_k)`` for ``Z ~ N(0, 1)``."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(num_nodes)
    return torch.tensor(nodes, dtype=DTYPE), torch.tensor(weights / math.sqrt(2 * math.pi), dtype=DTYPE)


class ContinuousLab(Lab):
    """Exact lab for a :class:`ContinuousActionMDP` with a linear policy on the actor features.

    Args:
        mdp: the MDP (behaviour ``N(behaviour_mean[s], behaviour_std[s]^2)``).
        policy: ``"deterministic"``: ``pi(s) = u . x(s)``, ``theta = u [d_a]``; ``"gaussian"``:
            ``N(u . x(s), exp(log_std)^2)``, ``theta = [u, log_std]`` of shape ``[d_a + 1]``.
        interest: as for :class:`DiscreteLab`.
        quadrature_nodes: Gauss-Hermite nodes for every expectation over a Gaussian action (exact to float64
            precision for the smooth counterexamples; 64 by default).
    """

    def __init__(
        self,
        mdp: ContinuousActionMDP,
        policy: str = "deterministic",
        interest: str | torch.Tensor = "uniform",
        quadrature_nodes: int = 64,
    ) -> None:
        if policy not in CONTINUOUS_POLICIES:
            raise ValueError(
                f"unknown continuous policy {policy!r}; allowed: {', '.join(CONTINUOUS_POLICIES)}"
            )
        self.mdp = mdp
        self.policy_kind = policy
        self.num_states = mdp.num_states
        d = mdp.actor_features.shape[1]
        self.theta_shape = (d,) if policy == "deterministic" else (d + 1,)
        self.parameterization = f"linear {policy} policy on {mdp.name} (theta [{self.theta_shape[0]}]" + (
            ", the last entry is log std)" if policy == "gaussian" else ")"
        )
        self.available_estimators = (
            DETERMINISTIC_ESTIMATORS if policy == "deterministic" else STOCHASTIC_ESTIMATORS
        )
        self.features = mdp.actor_features
        self.critic_features = mdp.critic_features
        self.nodes, self.node_weights = gauss_hermite(quadrature_nodes)
        behaviour_actions = (
            mdp.behaviour_mean.unsqueeze(1) + mdp.behaviour_std.unsqueeze(1) * self.nodes
        )  # [S, K]
        self.behaviour_chain = torch.einsum(
            "k,skt->st", self.node_weights, mdp.next_state_probs(behaviour_actions)
        )
        self.d_mu = stationary_distribution(self.behaviour_chain)
        terminal = (mdp.discount == 0).to(DTYPE)
        self.episode_start_mass = torch.einsum("s,st,st->t", self.d_mu, self.behaviour_chain, terminal)
        self.interest_name = interest if isinstance(interest, str) else "custom"
        self.interest_spec = interest
        assert mdp.interest is not None  # the MDP's __post_init__ fills the default
        self.interest_weights = interest_weights_from(
            mdp.interest, self.d_mu, self.episode_start_mass, interest
        )

    # ------------------------------------------------------------------ policy
    def split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(mean action [S], std or None)``."""
        d = self.features.shape[1]
        mean = self.features @ theta[:d]
        return mean, (theta[d].exp() if self.policy_kind == "gaussian" else None)

    def policy_actions(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions ``[S, K]`` and their weights ``[K]`` (one action, weight 1, if deterministic)."""
        mean, std = self.split(theta)
        if std is None:
            return mean.unsqueeze(1), torch.ones(1, dtype=DTYPE)
        return mean.unsqueeze(1) + std * self.nodes, self.node_weights

    def action_value_at(self, actions: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q(s, a) [S, K]`` for ``actions [S, K]`` given ``v [S]``."""
        probs = self.mdp.next_state_probs(actions)  # [S, K, S]
        return self.mdp.expected_reward(actions) + torch.einsum("skt,st,t->sk", probs, self.mdp.discount, v)

    def policy_transition(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        actions, weights = self.policy_actions(theta)
        probs = self.mdp.next_state_probs(actions)
        P_pg = torch.einsum("k,skt,st->st", weights, probs, self.mdp.discount)
        r_pi = self.mdp.expected_reward(actions) @ weights
        return P_pg, r_pi

    def policy_summary(self, theta: torch.Tensor) -> dict[str, Any]:
        """``{"action": [S]}`` (deterministic) or ``{"mean": [S], "std": float}`` (Gaussian)."""
        mean, std = self.split(self.check_theta(theta))
        if std is None:
            return {"action": mean.tolist()}
        return {"mean": mean.tolist(), "std": float(std)}

    # ------------------------------------------------------------------ estimators
    def _expected_update(self, estimator: str, theta: torch.Tensor, eta: float) -> torch.Tensor:
        v = self.values(theta).detach()
        if estimator in ("offpac", "dpg"):
            weights = self.interest_weights
        elif estimator == "ace-direct":
            weights = self.learned_emphatic_weighting(theta, eta)
        else:
            weights = self.emphatic_weighting(theta, eta)
        if estimator in ("dpg", "emphatic-dpg"):
            # sum_s w(s) grad_u pi(s) grad_a q(s, a)|_{a = pi(s)}, with grad_u pi(s) = x(s).
            mean, _ = self.split(theta)
            action = mean.detach().unsqueeze(1).requires_grad_(True)
            (dq_da,) = torch.autograd.grad(self.action_value_at(action, v).sum(), action)
            return self.features.T @ (weights * dq_da.squeeze(1))
        if estimator == "all-actions":
            # grad of sum_s w(s) E_{a ~ pi}[q(s, a)] with w and q fixed (reparameterised quadrature).
            theta_var = theta.clone().requires_grad_(True)
            actions, node_weights = self.policy_actions(theta_var)
            surrogate = weights @ (self.action_value_at(actions, v) @ node_weights)
            (update,) = torch.autograd.grad(surrogate, theta_var)
            return update
        # offpac / ace / ace-direct: E_mu[rho M delta grad ln pi] = sum_s w(s) E_{a~pi}[(q - v) grad ln pi]
        # (importance sampling identity), score function in closed form at the quadrature nodes.
        mean, std = self.split(theta)
        assert std is not None  # these estimators are the Gaussian policy's (checked at construction)
        actions = mean.unsqueeze(1) + std * self.nodes  # [S, K]
        advantage = self.action_value_at(actions, v) - v.unsqueeze(1)  # [S, K]
        coefficient = weights.unsqueeze(1) * advantage * self.node_weights  # [S, K]
        grad_mean = (coefficient * self.nodes / std).sum(1) @ self.features  # [d]
        grad_log_std = (coefficient * (self.nodes**2 - 1)).sum()
        return torch.cat([grad_mean, grad_log_std.reshape(1)])

    def best_corner_objective(self, saturation: float = 40.0) -> tuple[float, list[float]]:
        """Best J of a deterministic policy whose action per feature is ``+-saturation``; the supremum J* of
        the
        DPG counterexample is approached there (its rewards and transitions are sigmoids of the action)."""
        d = self.features.shape[1]
        best_J, best_u = -math.inf, []
        for signs in itertools.product((-1.0, 1.0), repeat=d):
            u = torch.tensor(signs, dtype=DTYPE) * saturation
            theta = (
                u
                if self.policy_kind == "deterministic"
                else torch.cat([u, torch.tensor([-30.0], dtype=DTYPE)])
            )
            J = float(self.objective(theta))
            if J > best_J:
                best_J, best_u = J, u.tolist()
        return best_J, best_u


def make_lab(
    mdp: TabularMDP | ContinuousActionMDP, interest: str | torch.Tensor = "uniform", policy: str | None = None
) -> Lab:
    """The lab for ``mdp``: :class:`DiscreteLab` (softmax) or :class:`ContinuousLab` (``policy`` =
    ``"deterministic"`` by default, or ``"gaussian"``)."""
    if isinstance(mdp, TabularMDP):
        if policy not in (None, "softmax"):
            raise ValueError(f"a discrete-action MDP uses the softmax policy, got policy={policy!r}")
        return DiscreteLab(mdp, interest)
    if isinstance(mdp, ContinuousActionMDP):
        return ContinuousLab(mdp, policy or "deterministic", interest)
    raise ValueError(f"the exact lab needs a TabularMDP or ContinuousActionMDP, got {type(mdp).__name__}")
