"""Estimators of the emphatic weighting ``m(s) / d_mu(s)`` used by ACE (docs/algorithms/actor-critic.md).

All are batched over a population ``P``; interest, discounts and ratios are tensors ``[P]``.

- ``FollowonTrace``: ``F_t = i_t + gamma_t rho_{t-1} F_{t-1}`` (``normalize``: ``(1 - gamma_t) i_t + ...``), with
  ``F_{-1} = 0`` and ``rho_{-1} = 1``. ``rho_{t-1}`` is the previous step's ratio, computed with the policy of that
  time (stale), exactly as in the paper's code.
- ``LearnedEmphasis`` (ACE-direct): linear ``fhat(x) = phi . x`` trained by a backward TD rule towards
  ``i_{t+1} + gamma_{t+1} rho_t fhat(x_t)``; its tabular fixed point is ``m / d_mu``.
- ``IdealTrace``: the follow-on trace recomputed over the current episode with the *current* policy.
"""

from __future__ import annotations

from typing import Any

import torch

from emphatic_rl.emphatic import followon_trace, learned_emphasis_start_target, learned_emphasis_target
from emphatic_rl.features import add_scaled_, linear_value


class FollowonTrace:
    """The sampled follow-on trace, one per learner.

    Args:
        population_size: ``P``.
        normalize: use ``F_t = (1 - gamma_t) i_t + gamma_t rho_{t-1} F_{t-1}`` (estimates the normalised
            follow-on distribution) instead of ``i_t + gamma_t rho_{t-1} F_{t-1}``.
    """

    state_names = ("previous_followon", "previous_rho")

    def __init__(
        self,
        population_size: int,
        normalize: bool = False,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.normalize = normalize
        self.previous_followon = torch.zeros(population_size, device=device, dtype=dtype)  # F_{-1} = 0
        self.previous_rho = torch.ones(population_size, device=device, dtype=dtype)  # rho_{-1} = 1

    def step(self, interest: torch.Tensor, gamma: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        """Return ``F_t`` (``[P]``) from ``i_t``, ``gamma_t`` and the stored ``rho_{t-1}``, ``F_{t-1}``; then
        store ``F_t`` and ``rho_t`` (``rho``, this step's ratio) for the next step."""
        followon = followon_trace(interest, gamma, self.previous_rho, self.previous_followon, self.normalize)
        self.previous_followon.copy_(followon)
        self.previous_rho.copy_(rho)
        return followon

    def tensors(self) -> list[torch.Tensor]:
        return [self.previous_followon, self.previous_rho]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).clone() for name in self.state_names}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.state_names:
            getattr(self, name).copy_(state[name])


class LearnedEmphasis:
    """ACE-direct's linear estimate ``fhat(x) = phi . x`` of ``m(s) / d_mu(s)``, ``phi: [P, d]`` (Graves et al. 2023).

    Each step (``fhat`` read *before* the update of this step)::

        F_t    = fhat(x_t)
        target = i_{t+1} + gamma_{t+1} rho_t fhat(x_t)     # normalize: (1 - gamma_{t+1}) i_{t+1} + ...
        phi   += alpha (target - fhat(x_{t+1})) x_{t+1}

    Episode boundaries with same-step autoreset data (our buffers): the paper's code carried ``x_{t+1}`` over as
    the next ``x_t``, so its update at a state entered with ``gamma = 0`` was the update of the *next episode's
    first state*. Our streams hand the true last state ``S_{t+1}`` and then a fresh ``S_0``, so this class
    (i) skips the update at ``x_{t+1}`` when the transition ends the flow of emphasis (``next_gamma_is_boundary``,
    i.e. a termination, or a time-out treated as terminal), and (ii) fits ``fhat(S_0) <- i_0`` at each episode
    start *before* reading ``F_t``, which is where the paper's code had applied that update. With tabular features
    the fixed point is then exactly ``m / d_mu`` over the states the actor updates at.

    The authors' code never fits the stream's very first state (it fits a start state only through the target
    after an episode end); ``fit_stream_start=False`` reproduces that, ``True`` (default) fits every episode start,
    the stream's first one included.

    Args:
        num_features: ``d``.
        population_size: ``P``.
        alpha: step size ``alpha_v``, scalar or ``[P]`` (already divided by the number of active features).
        normalize: use the normalised target.
        fit_stream_start: also fit ``fhat(S_0) <- i_0`` at the first state of each stream (default True).
    """

    state_names = ("weights",)

    def __init__(
        self,
        num_features: int,
        population_size: int,
        alpha: Any,
        normalize: bool = False,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        fit_stream_start: bool = True,
    ) -> None:
        self.normalize = normalize
        self.fit_stream_start = bool(fit_stream_start)
        alpha = torch.as_tensor(alpha, dtype=dtype, device=device)
        self.alpha = alpha.expand(population_size).clone() if alpha.dim() == 0 else alpha.clone()
        self.weights = torch.zeros(population_size, num_features, device=device, dtype=dtype)

    def estimate(self, features: torch.Tensor) -> torch.Tensor:
        """``fhat(x)``: ``[P]`` for features ``[P, K|d]``."""
        return linear_value(self.weights, features)

    def step(
        self,
        features: torch.Tensor,
        next_features: torch.Tensor,
        interest: torch.Tensor,
        next_interest: torch.Tensor,
        gamma: torch.Tensor,
        next_gamma: torch.Tensor,
        rho: torch.Tensor,
        episode_start: torch.Tensor,
        next_is_boundary: torch.Tensor,
        stream_start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One step for every learner; returns ``F_t = fhat(x_t)`` (``[P]``).

        ``features``/``next_features``: ``x_t``/``x_{t+1}``; ``interest``/``next_interest``: ``i_t``/``i_{t+1}``;
        ``gamma``/``next_gamma``: ``gamma_t``/``gamma_{t+1}``; ``rho``: ``rho_t``; ``episode_start``: ``bool[P]``,
        ``S_t`` starts an episode; ``next_is_boundary``: ``bool[P]``, the transition ends the emphasis flow;
        ``stream_start``: ``bool[P]``, ``S_t`` is the stream's first state (only read with
        ``fit_stream_start=False``).
        """
        fit_start = episode_start
        if not self.fit_stream_start and stream_start is not None:
            fit_start = episode_start & ~stream_start
        start_target = learned_emphasis_start_target(interest, gamma, self.normalize)
        start_error = torch.where(fit_start, start_target - self.estimate(features), 0.0)
        add_scaled_(self.weights, features, self.alpha * start_error)
        followon = self.estimate(features)
        target = learned_emphasis_target(next_interest, next_gamma, rho, followon, self.normalize)
        error = torch.where(next_is_boundary, 0.0, target - self.estimate(next_features))
        add_scaled_(self.weights, next_features, self.alpha * error)
        return followon

    def tensors(self) -> list[torch.Tensor]:
        return [self.weights]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.weights.copy_(state["weights"])


class IdealTrace:
    """The "ideal" follow-on trace (of the authors' Puddle World code): at every step, ``F_t`` is recomputed over the
    current episode with the **current** policy, ``F_t = i_t + sum_{j >= 1} i_{t-j} prod_{k=t-j}^{t-1} gamma
    rho_k(theta_now)``.

    It keeps a bounded per-stream history of the current episode: the last ``history_cap`` steps' features,
    actions, behaviour log-probabilities and interest (ring buffers ``[R, cap, ...]``). In episodes longer than the
    cap, the oldest kept state acts as the start (``F = i`` there): the dropped part of ``F_t`` is at most
    ``F_{t-cap} * prod (gamma rho)`` over ``cap`` steps, negligible for ``gamma^cap`` small (``0.95^1000`` is
    ``5e-23``). Cost per step is ``O(P * cap * K * A)``.

    Args:
        num_streams: ``R``; ``stream_of: int64[P]`` maps learners to streams.
        feature_shape: ``(K,)`` active indices (int64) or ``(d,)`` dense values.
        sparse: whether features are active indices.
        gamma: the discount (scalar).
        history_cap: number of past steps kept per stream.
    """

    state_names = (
        "history_features",
        "history_actions",
        "history_behaviour_log_prob",
        "history_interest",
        "history_length",
        "step_count",
    )

    def __init__(
        self,
        num_streams: int,
        stream_of: torch.Tensor,
        feature_shape: tuple[int, ...],
        sparse: bool,
        gamma: float,
        history_cap: int = 1000,
        device: torch.device | str = "cpu",
        value_dtype: torch.dtype = torch.float32,
    ) -> None:
        if not isinstance(history_cap, int) or history_cap < 1:
            raise ValueError(f"ideal_history_cap must be an integer >= 1, got {history_cap!r}")
        self.stream_of = stream_of
        self.gamma = gamma
        self.cap = history_cap
        dtype = torch.int64 if sparse else value_dtype
        self.history_features = torch.zeros(
            num_streams, history_cap, *feature_shape, dtype=dtype, device=device
        )
        self.history_actions = torch.zeros(num_streams, history_cap, dtype=torch.int64, device=device)
        self.history_behaviour_log_prob = torch.zeros(num_streams, history_cap, device=device, dtype=value_dtype)
        self.history_interest = torch.zeros(num_streams, history_cap, device=device, dtype=value_dtype)
        self.history_length = torch.zeros(num_streams, dtype=torch.int64, device=device)
        self.step_count = torch.zeros((), dtype=torch.int64, device=device)
        self._ages = torch.arange(1, history_cap + 1, device=device)

    def step(
        self,
        policy: Any,
        interest: torch.Tensor,
        stream_features: torch.Tensor,
        stream_action: torch.Tensor,
        stream_behaviour_log_prob: torch.Tensor,
        stream_interest: torch.Tensor,
        stream_episode_start: torch.Tensor,
    ) -> torch.Tensor:
        """Return ``F_t`` (``[P]``) for learners whose policy is ``policy`` (a ``LinearSoftmaxPolicy``), then append
        step ``t`` (per-stream tensors ``[R, ...]``) to the history. ``interest``: ``i_t`` per learner ``[P]``."""
        self.history_length.masked_fill_(stream_episode_start, 0)
        slots = torch.remainder(self.step_count - self._ages, self.cap)  # slot of step t - j, j = 1..cap
        streams = self.stream_of
        features = self.history_features[:, slots][streams]  # [P, cap, ...]
        actions = self.history_actions[:, slots][streams]  # [P, cap]
        behaviour = self.history_behaviour_log_prob[:, slots][streams]
        past_interest = self.history_interest[:, slots][streams]
        valid = self._ages[None, :] <= self.history_length[streams][:, None]  # [P, cap]
        log_pi = policy.log_probs(features).gather(2, actions[..., None]).squeeze(2)  # [P, cap]
        factor = torch.where(valid, self.gamma * torch.exp(log_pi - behaviour), 0.0)
        products = torch.cumprod(factor, dim=1)  # prod_{k=t-j}^{t-1} gamma rho_k
        followon = interest + (past_interest * products).sum(1)
        slot = torch.remainder(self.step_count, self.cap)
        self.history_features[:, slot] = stream_features
        self.history_actions[:, slot] = stream_action
        self.history_behaviour_log_prob[:, slot] = stream_behaviour_log_prob
        self.history_interest[:, slot] = stream_interest
        self.history_length.add_(1).clamp_(max=self.cap)
        self.step_count += 1
        return followon

    def tensors(self) -> list[torch.Tensor]:
        return []  # per-stream data, not per-learner parameters

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).clone() for name in self.state_names}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.state_names:
            getattr(self, name).copy_(state[name])
