"""Sampled learners on the continuous-action exact lab (``ContinuousLab``), batched over learners in float64.

- :class:`BatchedContinuousOracle`: the lab's exact quantities (``J``, ``v_pi``, ``m / d_mu``, ``grad_a q``) for
  ``P`` linear policies at once; :class:`_ContinuousSampler` samples the MDP's Gaussian behaviour process.
- :func:`run_sampled_gaussian_ace`: continuous-action ACE / OffPAC with a linear Gaussian policy (below).
- :class:`LinearDPG` and :func:`run_sampled_linear_dpg`: linear DPG / emphatic DPG for the counterexample studies
  (the deep DDPG agent ``dpg`` is in ``emphatic_rl.agents.deep.ddpg``).

These are lab learners, not registered agents: they read the lab's exact quantities (oracle critics, the oracle
emphatic ratio) and report the exact ``J`` at checkpoints, like ``emphatic_rl.exact.sampled`` does for tabular
MDPs with discrete actions.

Linear Gaussian ACE / OffPAC (Imani et al. 2018, Sec. 5).

Policy ``pi(.|s) = N(u . x(s), exp(log_std)^2)`` with ``theta = [u (d), log_std]``: the standard deviation is an
exponential, so a non-positive std cannot be represented (no check needed, none possible to violate). This is the
exact lab's Gaussian parameterisation (``ContinuousLab(policy="gaussian")``), so sampled runs and expected-update
ascent are directly comparable.

Per step, in the order of linear ACE (all reads with ``theta`` before this step's update):

    rho_t   = pi(A_t|S_t) / mu(A_t|S_t)                      (from the two densities)
    F_t     = i_t + gamma_t rho_{t-1} F_{t-1}                (FollowonTrace, agents/emphasis.py)
    M_t     = (1 - eta) i_t + eta F_t                        (eta = 0: OffPAC, eta = 1: ACE)
    delta_t = R_{t+1} + gamma_{t+1} v(S_{t+1}) - v(S_t)      (oracle v_pi of the current policy)
    theta  += alpha rho_t M_t delta_t grad_theta ln pi(A_t|S_t)

with ``grad_u ln pi = (a - mean) / std^2 x`` and ``grad_log_std ln pi = ((a - mean) / std)^2 - 1``. ``M_t`` and
``rho_t M_t delta_t`` are computed by ``emphatic_rl.emphatic`` (where every emphatic equation is defined once).

The deep Gaussian ACE / OffPAC agent on replay (``gaussian-ace``, ``gaussian-offpac``) is in
``emphatic_rl.agents.deep.gaussian``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from emphatic_rl.agents.emphasis import FollowonTrace
from emphatic_rl.emphatic import actor_coefficient, emphatic_weighting
from emphatic_rl.exact.lab import ContinuousLab

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
    if not (isinstance(lab, ContinuousLab) and lab.policy_kind == "gaussian"):
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


# ====================================================================================================== linear DPG
LINEAR_EMPHASIS_CHOICES = ("none", "oracle", "learned")
LINEAR_CRITIC_CHOICES = ("compatible", "oracle")


class LinearDPG:
    """``P`` linear deterministic actors ``pi(s) = u . x(s)`` (one real action, ``u: [P, d]``, ``u_0 = 0``) with DPG's
    actor update weighted by ``M_t`` (docs/algorithms/deterministic.md):

        u += alpha_actor * M_t * grad_a q(S_t, a)|_{a = pi(S_t)} * x_t

    Critics (``critic``):

    - ``"compatible"``: COPDAC-Q (Silver et al. 2014), the off-policy linear action-value critic
      ``Q(s, a) = (a - u.x) (w.x) + v.x``: ``delta = R + gamma_{t+1} v.x_{t+1} - Q(S_t, A_t)``,
      ``w += alpha_critic delta (A_t - u.x_t) x_t``, ``v += alpha_value delta x_t``; then ``grad_a Q = w.x``.
    - ``"oracle"``: ``grad_a q`` is passed in (the exact lab's, as in the N18 scripts).

    Emphasis (``emphasis``; switches, one code path):

    - ``"none"``: ``M_t = i_t`` (1 by default: DPG, the semi-gradient);
    - ``"oracle"``: ``F_t = m(S_t) / d_mu(S_t)`` is passed in (from the exact lab: "true" emphatic DPG) and
      ``M_t = (1 - eta) i_t + eta F_t``;
    - ``"learned"``: ``M_t = (1 - eta) i_t + eta fhat(x_t)`` with ACE-direct's ``LearnedEmphasis`` (emphasis.py),
      its ratio ``rho_t = N(A_t; pi(S_t), sigma^2) / mu(A_t|S_t)`` taken with a Gaussian smoothing of width
      ``emphasis_target_std`` of the deterministic policy (see the module docstring for why a trace cannot be
      used).

    All step sizes are scalars (one value for the population) or ``[P]``.
    """

    def __init__(
        self,
        num_features: int,
        population_size: int,
        alpha_actor: Any,
        *,
        critic: str = "oracle",
        emphasis: str = "none",
        alpha_critic: Any = 0.1,
        alpha_value: Any = 0.1,
        alpha_emphasis: Any = 0.1,
        emphasis_target_std: float = 0.3,
        eta: Any = 1.0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if critic not in LINEAR_CRITIC_CHOICES:
            raise ValueError(f"critic must be one of {', '.join(LINEAR_CRITIC_CHOICES)}, got {critic!r}")
        if emphasis not in LINEAR_EMPHASIS_CHOICES:
            raise ValueError(f"emphasis must be one of {', '.join(LINEAR_EMPHASIS_CHOICES)}, got {emphasis!r}")
        if not emphasis_target_std > 0:
            raise ValueError(f"emphasis_target_std must be > 0, got {emphasis_target_std!r}")
        P, d = population_size, num_features

        def per_member(name: str, value: Any) -> torch.Tensor:
            tensor = torch.as_tensor(value, dtype=dtype, device=device)
            tensor = tensor.expand(P).clone() if tensor.dim() == 0 else tensor.clone()
            if tuple(tensor.shape) != (P,):
                raise ValueError(f"{name} must be a scalar or a tensor [P={P}], got shape {tuple(tensor.shape)}")
            if bool((tensor < 0).any()):
                raise ValueError(f"{name} must be >= 0")
            return tensor

        self.critic, self.emphasis = critic, emphasis
        self.alpha_actor = per_member("alpha_actor", alpha_actor)
        self.alpha_critic = per_member("alpha_critic", alpha_critic)
        self.alpha_value = per_member("alpha_value", alpha_value)
        self.eta = per_member("eta", eta)
        self.emphasis_target_std = float(emphasis_target_std)
        self.actor_weights = torch.zeros(P, d, dtype=dtype, device=device)  # u
        self.advantage_weights = torch.zeros(P, d, dtype=dtype, device=device)  # w (compatible critic)
        self.value_weights = torch.zeros(P, d, dtype=dtype, device=device)  # v (compatible critic)
        self.learned_emphasis = None
        if emphasis == "learned":
            from emphatic_rl.agents.emphasis import LearnedEmphasis  # ACE-direct's linear learned emphasis

            self.learned_emphasis = LearnedEmphasis(d, P, alpha_emphasis, device=device)
            self.learned_emphasis.weights = self.learned_emphasis.weights.to(dtype)
            self.learned_emphasis.alpha = self.learned_emphasis.alpha.to(dtype)

    def action(self, features: torch.Tensor) -> torch.Tensor:
        """``pi(s) = u . x``: ``[P]`` for ``features [P, d]``."""
        return (self.actor_weights * features).sum(-1)

    def update_step(
        self,
        features: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_features: torch.Tensor,
        gamma: torch.Tensor,
        next_gamma: torch.Tensor,
        behaviour_log_prob: torch.Tensor | None = None,
        interest: torch.Tensor | None = None,
        next_interest: torch.Tensor | None = None,
        action_value_gradient: torch.Tensor | None = None,
        emphatic_ratio: torch.Tensor | None = None,
        active: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One transition per learner, in the order of linear ACE (emphasis, critic, actor; all reads before writes).

        ``features``/``next_features``: ``x_t``/``x_{t+1}`` ``[P, d]``; ``action``, ``reward``: ``[P]``;
        ``gamma``/``next_gamma``: ``gamma_t`` (0 at an episode start) and ``gamma_{t+1}`` (0 on termination), ``[P]``;
        ``behaviour_log_prob``: ``log mu(A_t|S_t)`` (needed for ``emphasis="learned"``); ``interest``: ``i_t``
        (default 1); ``action_value_gradient``: ``grad_a q(S_t, pi(S_t))`` ``[P]`` (``critic="oracle"``);
        ``emphatic_ratio``: ``m(S_t) / d_mu(S_t)`` ``[P]`` (``emphasis="oracle"``); ``active``: ``[P]`` mask of
        learners still updating (others are left unchanged). Returns metrics ``[P]``: ``emphasis`` (``F_t``: ``i_t``,
        the oracle ratio or ``fhat(x_t)``), ``emphatic_weighting`` (``M_t``), ``action_value_gradient``, ``td_error``.
        """
        ones = torch.ones_like(reward)
        interest = ones if interest is None else interest
        next_interest = ones if next_interest is None else next_interest
        scale = ones if active is None else active.to(reward.dtype)
        policy_action = self.action(features)
        # ---- emphasis: F_t and M_t
        if self.emphasis == "none":
            followon = weighting = interest  # M_t = i_t whatever eta
        elif self.emphasis == "oracle":
            if emphatic_ratio is None:
                raise ValueError("emphasis='oracle' needs emphatic_ratio (m / d_mu at S_t)")
            followon = emphatic_ratio
            weighting = emphatic_weighting(interest, followon, self.eta)
        else:
            if behaviour_log_prob is None:
                raise ValueError("emphasis='learned' needs behaviour_log_prob")
            std = torch.as_tensor(self.emphasis_target_std, dtype=reward.dtype)
            z = (action - policy_action) / std
            smoothed_log_prob = -0.5 * z.square() - std.log() - 0.5 * math.log(2 * math.pi)
            rho = (smoothed_log_prob - behaviour_log_prob).exp()
            assert self.learned_emphasis is not None  # made for emphasis="learned"
            followon = self.learned_emphasis.step(
                features, next_features, interest, next_interest, gamma, next_gamma, rho,
                episode_start=gamma == 0, next_is_boundary=next_gamma == 0,
            )
            weighting = emphatic_weighting(interest, followon, self.eta)
        # ---- critic
        if self.critic == "oracle":
            if action_value_gradient is None:
                raise ValueError("critic='oracle' needs action_value_gradient (grad_a q at pi(S_t))")
            dq_da = action_value_gradient
            td_error = torch.zeros_like(reward)
        else:
            dq_da = (self.advantage_weights * features).sum(-1)
            exploration = action - policy_action
            q_taken = exploration * dq_da + (self.value_weights * features).sum(-1)
            td_error = reward + next_gamma * (self.value_weights * next_features).sum(-1) - q_taken
            self.advantage_weights += (scale * self.alpha_critic * td_error * exploration).unsqueeze(-1) * features
            self.value_weights += (scale * self.alpha_value * td_error).unsqueeze(-1) * features
        # ---- actor
        self.actor_weights += (scale * self.alpha_actor * weighting * dq_da).unsqueeze(-1) * features
        return {
            "followon": followon,
            "emphatic_weighting": weighting,
            "action_value_gradient": dq_da,
            "td_error": td_error,
        }


class BatchedContinuousOracle:
    """Exact quantities of a ``ContinuousLab`` (float64) for ``P`` linear policies at once, without a loop over ``P``.

    Policies are given by their per-state mean actions ``mean [P, S]`` and, for Gaussian policies, ``std [P]``
    (``None`` for deterministic). The members' actions become the quadrature axis of the MDP's functions.
    """

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.mdp = lab.mdp
        self.num_states = lab.num_states
        self.features = lab.features  # [S, d]

    def _actions(self, mean: torch.Tensor, std: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions ``[S, P * K]`` and quadrature weights ``[K]``."""
        P, S = mean.shape
        if std is None:
            return mean.T.contiguous(), torch.ones(1, dtype=mean.dtype)
        nodes, weights = self.lab.nodes, self.lab.node_weights
        actions = mean.T.unsqueeze(-1) + std.view(1, P, 1) * nodes  # [S, P, K]
        return actions.reshape(S, -1), weights

    def transition(self, mean: torch.Tensor, std: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``P_{pi,gamma} [P, S, S]`` and ``r_pi [P, S]``."""
        P, S = mean.shape
        actions, weights = self._actions(mean, std)
        K = weights.shape[0]
        probs = self.mdp.next_state_probs(actions).view(S, P, K, S)
        rewards = self.mdp.expected_reward(actions).view(S, P, K)
        P_pg = torch.einsum("k,spkt,st->pst", weights, probs, self.mdp.discount)
        return P_pg, torch.einsum("k,spk->ps", weights, rewards)

    def values(self, mean: torch.Tensor, std: torch.Tensor | None = None) -> torch.Tensor:
        """``v_pi [P, S]``."""
        P_pg, r_pi = self.transition(mean, std)
        eye = torch.eye(self.num_states, dtype=mean.dtype)
        return torch.linalg.solve(eye - P_pg, r_pi.unsqueeze(-1)).squeeze(-1)

    def objective(self, mean: torch.Tensor, std: torch.Tensor | None = None) -> torch.Tensor:
        """``J_mu [P]``."""
        return self.values(mean, std) @ self.lab.interest_weights

    def emphatic_ratio(self, mean: torch.Tensor, std: torch.Tensor | None = None) -> torch.Tensor:
        """``m(s) / d_mu(s) [P, S]`` (``m = (I - P_{pi,gamma}^T)^{-1} d_i``; the lab's d_mu is exact)."""
        P_pg, _ = self.transition(mean, std)
        eye = torch.eye(self.num_states, dtype=mean.dtype)
        m = torch.linalg.solve((eye - P_pg).transpose(1, 2), self.lab.interest_weights.expand_as(mean).unsqueeze(-1))
        return m.squeeze(-1) / self.lab.d_mu.clamp_min(1e-300)

    def action_value_gradient(self, mean: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``grad_a q(s, a)|_{a = mean[p, s]}`` with ``v = values [P, S]`` held fixed: ``[P, S]``."""
        action = mean.T.detach().clone().requires_grad_(True)  # [S, P]
        probs = self.mdp.next_state_probs(action)  # [S, P, S]
        q = self.mdp.expected_reward(action) + torch.einsum("spt,st,pt->sp", probs, self.mdp.discount, values)
        (gradient,) = torch.autograd.grad(q.sum(), action)
        return gradient.T


@dataclass
class SampledDPGResult:
    """``objective [V, R, C]``: exact ``J`` of every run's policy at ``C`` checkpoints (``checkpoint_episodes``) for
    variants ``V`` (emphasis modes); ``final_actor [V, R, d]``."""

    variants: list[str]
    checkpoint_episodes: list[int]
    objective: torch.Tensor
    final_actor: torch.Tensor


def run_sampled_linear_dpg(
    lab: Any,
    variants: tuple[str, ...] = ("none", "oracle"),
    alpha: float = 0.1,
    episodes: int = 2000,
    runs: int = 10,
    seed: int = 0,
    checkpoints: int = 20,
    critic: str = "oracle",
    alpha_critic: float = 0.1,
    alpha_emphasis: float = 0.1,
) -> SampledDPGResult:
    """Sampled linear DPG / emphatic DPG on a ``ContinuousLab``'s MDP (deterministic policy), ``V * R`` learners
    batched in float64, each with its own behaviour stream (the protocol of Imani et al. 2018, Fig. 5).

    ``variants``: emphasis modes of ``LinearDPG`` (``"none"`` = DPG with ``M = 1``, ``"oracle"`` = ``M = m / d_mu``,
    ``"learned"``). The critic is the oracle ``grad_a q`` of the current policy (as in the N18 scripts) or the
    compatible COPDAC-Q critic. A learner stops after ``episodes`` terminal transitions.
    """
    if not (isinstance(lab, ContinuousLab) and lab.policy_kind == "deterministic"):
        raise ValueError("run_sampled_linear_dpg needs a ContinuousLab with policy='deterministic'")
    for name in variants:
        if name not in LINEAR_EMPHASIS_CHOICES:
            raise ValueError(f"unknown variant {name!r}; allowed: {', '.join(LINEAR_EMPHASIS_CHOICES)}")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha!r}")
    V, R = len(variants), runs
    mdp, oracle = lab.mdp, BatchedContinuousOracle(lab)
    X = lab.features
    d = X.shape[1]
    learners = [
        LinearDPG(d, R, alpha, critic=critic, emphasis=v, alpha_critic=alpha_critic, alpha_value=alpha_critic,
                  alpha_emphasis=alpha_emphasis, dtype=DTYPE64)
        for v in variants
    ]
    generator = torch.Generator().manual_seed(int(seed))
    sampler = _ContinuousSampler(mdp, generator)
    state = sampler.start(V * R)
    gamma_t = torch.zeros(V * R, dtype=DTYPE64)
    episodes_done = torch.zeros(V * R, dtype=torch.int64)
    marks = sorted({max(1, round(episodes * (k + 1) / checkpoints)) for k in range(checkpoints)})
    objective = torch.full((V * R, len(marks)), float("nan"), dtype=DTYPE64)
    limit = 100 * episodes * max(1, mdp.num_states)
    for _ in range(limit):
        active = episodes_done < episodes
        if not bool(active.any()):
            break
        u = torch.cat([learner.actor_weights for learner in learners])  # [V R, d]
        mean = u @ X.T  # [V R, S]
        action, log_mu, reward, next_state, gamma_next = sampler.step(state)
        need_oracle = critic == "oracle" or "oracle" in variants
        dq_da = ratio = None
        if need_oracle:
            arange = torch.arange(V * R)
            if critic == "oracle":
                dq_da = oracle.action_value_gradient(mean, oracle.values(mean).detach())[arange, state]
            if "oracle" in variants:
                ratio = oracle.emphatic_ratio(mean)[arange, state]
        for index, learner in enumerate(learners):
            rows = slice(index * R, (index + 1) * R)
            learner.update_step(
                X[state[rows]], action[rows], reward[rows], X[next_state[rows]], gamma_t[rows], gamma_next[rows],
                behaviour_log_prob=log_mu[rows],
                action_value_gradient=None if dq_da is None else dq_da[rows],
                emphatic_ratio=None if ratio is None else ratio[rows],
                active=active[rows],
            )
        ended = (gamma_next == 0) & active
        episodes_done += ended.long()
        for k, mark in enumerate(marks):
            hit = ended & (episodes_done == mark)
            if bool(hit.any()):
                u_now = torch.cat([learner.actor_weights for learner in learners])
                objective[hit, k] = oracle.objective(u_now[hit] @ X.T)
        gamma_t, state = gamma_next, next_state
    final_actor = torch.cat([learner.actor_weights for learner in learners]).view(V, R, d)
    return SampledDPGResult(list(variants), marks, objective.view(V, R, -1), final_actor)


class _ContinuousSampler:
    """Batched sampling of a ``ContinuousActionMDP``'s Gaussian behaviour process (float64, CPU)."""

    def __init__(self, mdp: Any, generator: torch.Generator) -> None:
        self.mdp, self.generator = mdp, generator

    def start(self, n: int) -> torch.Tensor:
        return torch.multinomial(self.mdp.start.expand(n, -1), 1, generator=self.generator).squeeze(1)

    def step(self, state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(action, log mu(action|state), reward, next_state, gamma_{t+1})``, each ``[N]``."""
        mdp, n = self.mdp, state.shape[0]
        mean, std = mdp.behaviour_mean[state], mdp.behaviour_std[state]
        action = mean + std * torch.randn(n, dtype=DTYPE64, generator=self.generator)
        z = (action - mean) / std
        log_mu = -0.5 * z.square() - std.log() - 0.5 * math.log(2 * math.pi)
        actions = action.unsqueeze(0).expand(mdp.num_states, n)
        arange = torch.arange(n)
        probs = mdp.next_state_probs(actions)[state, arange]  # [N, S]
        reward = mdp.expected_reward(actions)[state, arange]
        next_state = torch.multinomial(probs.clamp_min(0), 1, generator=self.generator).squeeze(1)
        return action, log_mu, reward, next_state, mdp.discount[state, next_state]
