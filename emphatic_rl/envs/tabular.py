"""Finite MDPs described by tensors, as batched ``TensorEnv`` s (and, through the registered envs' Gymnasium ids such
as ``emphatic_rl/CounterexampleLong-v0``, as Gymnasium envs: see :mod:`emphatic_rl.envs.registration`).

The description (:class:`TabularMDP`) is a plain dataclass of float64 tensors; the exact gradient lab
(:mod:`emphatic_rl.exact`) reads it directly, and :class:`TabularEnv` samples from it on any device.

How termination is represented
------------------------------
The MDP is written in the *unified* (White 2017) form used by ACE (docs/algorithms/actor-critic.md): a
transition-dependent discount ``gamma[s, a, s']`` and a transition tensor ``P[s, a, s']`` whose rows **sum to 1 over
real states**. A transition with ``gamma[s, a, s'] == 0`` is a **terminal transition**: the episode ends there and
``s'`` is the first state of the next episode (the restart). So ``P`` describes the whole behaviour process, episodic
restarts included, and the stationary distribution ``d_mu`` of ``sum_a mu(a|s) P[s, a, s']`` is the one the objective
uses. An episodic task puts its restart distribution in the rows of its terminal transitions (usually ``d0``), e.g. "s1
--a0--> terminal" becomes ``P[s1, a0, :] = d0`` with ``gamma[s1, a0, :] = 0``. The ``d0`` field is the distribution of
the very first state of a stream (and of a reset after a time-out).

As a ``TensorEnv``, a terminal transition reports ``terminated = True``; ``final_obs`` is the observation of
the (featureless) terminal state, a zero vector, and ``obs`` is the restart state ``s'`` drawn from ``P``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from emphatic_rl.envs.base import BoxSpec, DiscreteSpec, TensorEnv

ROW_SUM_TOLERANCE = 1e-9
ObservationKind = Literal["actor", "critic", "state"]
OBSERVATION_KINDS = ("actor", "critic", "state")


def _as_float64(name: str, value: Any) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"TabularMDP.{name} must be a numeric tensor: {error}") from None
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"TabularMDP.{name} must be finite")
    return tensor


@dataclass
class TabularMDP:
    """A finite MDP with transition-dependent discount, features and a behaviour policy (float64 tensors).

    Fields (``S`` states, ``A`` actions):
        transition: ``P[S, A, S]``, ``P[s, a, s'] = Pr(S_{t+1} = s' | s, a)``; every row sums to 1 (terminal
            transitions included, see the module docstring).
        reward: expected reward ``[S, A]`` or ``[S, A, S]`` (reward of the transition ``s, a -> s'``).
        discount: ``gamma[S, A, S]`` in ``[0, 1]``; 0 marks a terminal transition. A float is broadcast,
        except that
            it is not allowed to mark terminations (pass the full tensor for episodic tasks).
        start: ``d0[S]``, distribution of the first state of a stream.
        actor_features: ``[S, d_a]`` features of the policy (rows may coincide: aliased states).
        critic_features: ``[S, d_c]`` features of the critic and of the learned emphasis.
        behaviour: ``mu[S, A]``, rows sum to 1.
        interest: ``i[S] >= 0``, the state interest of the "uniform"-style objective (default all ones).
        target_policy: optional fixed target ``pi[S, A]`` for prediction tasks (Collision, Baird).
        name: a short label.

    Raises:
        ValueError: on any shape mismatch, rows of ``P``/``mu``/``pi`` not summing to 1, negative probabilities,
            discounts outside ``[0, 1]`` or negative interest (one message naming the field).
    """

    transition: torch.Tensor
    reward: torch.Tensor
    discount: torch.Tensor
    start: torch.Tensor
    actor_features: torch.Tensor
    critic_features: torch.Tensor
    behaviour: torch.Tensor
    interest: torch.Tensor | None = None
    target_policy: torch.Tensor | None = None
    name: str = "tabular"
    notes: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self.transition = _as_float64("transition", self.transition)
        if self.transition.dim() != 3 or self.transition.shape[0] != self.transition.shape[2]:
            raise ValueError(
                f"TabularMDP.transition must have shape [S, A, S], got {tuple(self.transition.shape)}"
            )
        S, A, _ = self.transition.shape
        if (self.transition < 0).any():
            raise ValueError("TabularMDP.transition has negative probabilities")
        row_sums = self.transition.sum(-1)
        bad = (row_sums - 1).abs() > ROW_SUM_TOLERANCE
        if bad.any():
            s, a = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"TabularMDP.transition rows must sum to 1 over next states (terminal transitions included, "
                f"with gamma = 0 and the restart state as s'); "
                f"row P[{s}, {a}, :] sums to {float(row_sums[s, a]):.12g}"
            )
        self.reward = _as_float64("reward", self.reward)
        if tuple(self.reward.shape) not in ((S, A), (S, A, S)):
            raise ValueError(
                f"TabularMDP.reward must have shape [S, A] or [S, A, S] = {(S, A)} or {(S, A, S)}, "
                f"got {tuple(self.reward.shape)}"
            )
        self.discount = _as_float64("discount", self.discount)
        if self.discount.dim() == 0:
            self.discount = self.discount.expand(S, A, S).clone()
        if tuple(self.discount.shape) != (S, A, S):
            raise ValueError(
                f"TabularMDP.discount must be a float or have shape {(S, A, S)}, "
                f"got {tuple(self.discount.shape)}"
            )
        if ((self.discount < 0) | (self.discount > 1)).any():
            raise ValueError("TabularMDP.discount must lie in [0, 1]")
        self.start = self._distribution("start", self.start, (S,))
        self.actor_features = _as_float64("actor_features", self.actor_features)
        self.critic_features = _as_float64("critic_features", self.critic_features)
        for name in ("actor_features", "critic_features"):
            features = getattr(self, name)
            if features.dim() != 2 or features.shape[0] != S:
                raise ValueError(f"TabularMDP.{name} must have shape [S={S}, d], got {tuple(features.shape)}")
        self.behaviour = self._distribution("behaviour", self.behaviour, (S, A))
        if self.interest is None:
            self.interest = torch.ones(S, dtype=torch.float64)
        self.interest = _as_float64("interest", self.interest)
        if tuple(self.interest.shape) != (S,) or (self.interest < 0).any():
            raise ValueError(f"TabularMDP.interest must be a non-negative vector of shape {(S,)}")
        if self.target_policy is not None:
            self.target_policy = self._distribution("target_policy", self.target_policy, (S, A))

    @staticmethod
    def _distribution(name: str, value: Any, shape: tuple[int, ...]) -> torch.Tensor:
        tensor = _as_float64(name, value)
        if tuple(tensor.shape) != shape:
            raise ValueError(f"TabularMDP.{name} must have shape {shape}, got {tuple(tensor.shape)}")
        if (tensor < 0).any():
            raise ValueError(f"TabularMDP.{name} has negative probabilities")
        sums = tensor.sum(-1)
        if ((sums - 1).abs() > ROW_SUM_TOLERANCE).any():
            raise ValueError(f"TabularMDP.{name} must sum to 1 over its last axis, got sums {sums.tolist()}")
        return tensor

    # ------------------------------------------------------------------ derived quantities
    @property
    def num_states(self) -> int:
        return int(self.transition.shape[0])

    @property
    def num_actions(self) -> int:
        return int(self.transition.shape[1])

    @property
    def expected_reward(self) -> torch.Tensor:
        """``r[S, A] = sum_s' P[s, a, s'] R[s, a, s']`` (or ``R`` itself when it is ``[S, A]``)."""
        if self.reward.dim() == 2:
            return self.reward
        return (self.transition * self.reward).sum(-1)

    @property
    def terminal_transition(self) -> torch.Tensor:
        """``bool[S, A, S]``: the transitions that end an episode (``gamma == 0``)."""
        return self.discount == 0

    def with_behaviour(self, behaviour: torch.Tensor) -> TabularMDP:
        """A copy with another behaviour policy ``mu[S, A]``."""
        return replace(self, behaviour=behaviour)

    def to_env(self, num_envs: int = 1, device: torch.device | str = "cpu", **options: Any) -> TabularEnv:
        """A batched :class:`TabularEnv` that samples this MDP."""
        return TabularEnv(self, num_envs=num_envs, device=device, **options)


class TabularEnv(TensorEnv):
    """``N`` copies of a :class:`TabularMDP`, sampled on ``device`` (see the module docstring for
    termination).

    Args:
        mdp: the MDP.
        num_envs: copies ``N``.
        device: torch device.
        observation: what ``obs`` holds: ``"actor"`` (actor features, ``float32[N, d_a]``, the default),
            ``"critic"`` (``float32[N, d_c]``) or ``"state"`` (one-hot state, ``float32[N, S]``). The terminal
            state observes as zeros.
        max_episode_steps: optional time limit (reported as ``truncated``; the next state is drawn from ``d0``).

    The current state indices are ``env.state: int64[N]``; ``env.last_discount: float32[N]`` is the discount
    ``gamma(S_t, A_t, S_{t+1})`` of the last transition, for tasks whose discount is not just "0 at
    termination".
    """

    has_state_behaviour = True  # current_behaviour_probabilities(): the MDP's mu on the true state

    state_names = ("state", "restart_state", "at_terminal", "last_discount")

    def __init__(
        self,
        mdp: TabularMDP,
        num_envs: int = 1,
        device: torch.device | str = "cpu",
        observation: ObservationKind = "actor",
        max_episode_steps: int | None = None,
        check_actions: bool = True,
    ) -> None:
        if observation not in OBSERVATION_KINDS:
            raise ValueError(
                f"observation must be one of {', '.join(OBSERVATION_KINDS)}, got {observation!r}"
            )
        super().__init__(num_envs, device, max_episode_steps, check_actions)
        self.mdp = mdp
        self.name = mdp.name
        self.observation_kind = observation
        features = {
            "actor": mdp.actor_features,
            "critic": mdp.critic_features,
            "state": torch.eye(mdp.num_states, dtype=torch.float64),
        }[observation]
        self._features = features.to(device=self.device, dtype=torch.float32)
        self._transition_cdf = mdp.transition.cumsum(-1).to(self.device, torch.float32).contiguous()
        self._transition_cdf[..., -1] = 1.0
        self._start = mdp.start.to(self.device, torch.float32)
        reward = (
            mdp.reward if mdp.reward.dim() == 3 else mdp.reward.unsqueeze(-1).expand(-1, -1, mdp.num_states)
        )
        self._reward = reward.to(self.device, torch.float32)
        self._discount = mdp.discount.to(self.device, torch.float32)
        self._behaviour = mdp.behaviour.to(self.device, torch.float32)
        self.observation_spec = BoxSpec((features.shape[1],), -float("inf"), float("inf"))
        self.action_spec = DiscreteSpec(mdp.num_actions)
        n = num_envs
        self.state = torch.zeros(n, dtype=torch.int64, device=self.device)
        self.restart_state = torch.zeros(n, dtype=torch.int64, device=self.device)
        self.at_terminal = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.last_discount = torch.zeros(n, dtype=torch.float32, device=self.device)

    def _reset_where(self, mask: torch.Tensor) -> None:
        fresh = torch.multinomial(self._start.expand(self.num_envs, -1), 1, generator=self.generator).squeeze(
            1
        )
        # After a terminal transition the restart state was already drawn from P; otherwise draw from d0.
        new_state = torch.where(self.at_terminal, self.restart_state, fresh)
        self.state = torch.where(mask, new_state, self.state)
        self.last_discount = torch.where(mask, torch.zeros_like(self.last_discount), self.last_discount)
        self.at_terminal = self.at_terminal & ~mask

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cdf = self._transition_cdf[self.state, action]  # [N, S]
        u = torch.rand(self.num_envs, 1, generator=self.generator, device=self.device)
        next_state = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_max(self.mdp.num_states - 1)
        reward = self._reward[self.state, action, next_state]
        discount = self._discount[self.state, action, next_state]
        terminated = discount == 0
        self.last_discount = discount
        self.restart_state = next_state
        self.at_terminal = terminated
        self.state = next_state
        return reward, terminated

    def current_behaviour_probabilities(self) -> torch.Tensor:
        """``mu(.|S_t)`` of every copy's current state, ``float32[N, A]`` (the MDP's behaviour policy, which may depend
        on the true state even where observations are aliased)."""
        return self._behaviour[self.state]

    def _observe(self) -> torch.Tensor:
        obs = self._features[self.state]
        return torch.where(self.at_terminal.unsqueeze(1), torch.zeros_like(obs), obs)


# ---------------------------------------------------------------------- continuous actions


@dataclass
class ContinuousActionMDP:
    """A finite-state MDP with one real action per step, described by differentiable float64 functions.

    Used by the DPG counterexample (Imani et al. 2018) and by the exact lab's deterministic / Gaussian policies.

    Fields (``S`` states):
        next_state_probs: ``f(action: float64[S, K]) -> [S, K, S]``, ``Pr(s' | s, a)`` for action ``action[s,
        k]``
            taken in state ``s``; rows sum to 1 (terminal transitions included, as in :class:`TabularMDP`).
        expected_reward: ``f(action: float64[S, K]) -> [S, K]``.
        discount: ``gamma[S, S]`` (depends on ``s, s'`` only); 0 marks a terminal transition.
        start: ``d0[S]``.
        actor_features: ``[S, d_a]``; critic_features: ``[S, d_c]``.
        behaviour_mean, behaviour_std: ``[S]``, the Gaussian behaviour ``mu(.|s) = N(mean[s], std[s]^2)``.
        interest: ``i[S]`` (default ones).
    """

    next_state_probs: Any
    expected_reward: Any
    discount: torch.Tensor
    start: torch.Tensor
    actor_features: torch.Tensor
    critic_features: torch.Tensor
    behaviour_mean: torch.Tensor
    behaviour_std: torch.Tensor
    interest: torch.Tensor | None = None
    name: str = "continuous"

    def __post_init__(self) -> None:
        for name in (
            "discount",
            "start",
            "actor_features",
            "critic_features",
            "behaviour_mean",
            "behaviour_std",
        ):
            setattr(self, name, _as_float64(name, getattr(self, name)))
        S = self.start.shape[0]
        if tuple(self.discount.shape) != (S, S):
            raise ValueError(f"ContinuousActionMDP.discount must have shape {(S, S)}")
        if self.interest is None:
            self.interest = torch.ones(S, dtype=torch.float64)
        self.interest = _as_float64("interest", self.interest)
        if (self.behaviour_std <= 0).any():
            raise ValueError("ContinuousActionMDP.behaviour_std must be positive")
        probs = self.next_state_probs(torch.linspace(-3, 3, 7, dtype=torch.float64).expand(S, 7))
        if ((probs.sum(-1) - 1).abs() > ROW_SUM_TOLERANCE).any():
            raise ValueError("ContinuousActionMDP.next_state_probs rows must sum to 1 over next states")

    @property
    def num_states(self) -> int:
        return int(self.start.shape[0])


class ContinuousActionEnv(TensorEnv):
    """``N`` copies of a :class:`ContinuousActionMDP`; actions are ``float32[N, 1]``. Observations: actor
    features.

    Termination follows :class:`TabularEnv` (a transition with ``gamma == 0`` is terminal, ``s'`` is the
    restart).
    """

    has_state_behaviour = True  # current_behaviour_probabilities(): the MDP's mu on the true state

    state_names = ("state", "restart_state", "at_terminal")

    def __init__(
        self,
        mdp: ContinuousActionMDP,
        num_envs: int = 1,
        device: torch.device | str = "cpu",
        max_episode_steps: int | None = None,
        check_actions: bool = True,
    ) -> None:
        super().__init__(num_envs, device, max_episode_steps, check_actions)
        self.mdp = mdp
        self.name = mdp.name
        self._features = mdp.actor_features.to(self.device, torch.float32)
        self._start = mdp.start.to(self.device, torch.float32)
        self._discount = mdp.discount.to(self.device)
        self.observation_spec = BoxSpec((mdp.actor_features.shape[1],), -float("inf"), float("inf"))
        self.action_spec = BoxSpec((1,), -float("inf"), float("inf"))
        self.state = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.restart_state = torch.zeros_like(self.state)
        self.at_terminal = torch.zeros(num_envs, dtype=torch.bool, device=self.device)

    def _reset_where(self, mask: torch.Tensor) -> None:
        fresh = torch.multinomial(self._start.expand(self.num_envs, -1), 1, generator=self.generator).squeeze(
            1
        )
        new_state = torch.where(self.at_terminal, self.restart_state, fresh)
        self.state = torch.where(mask, new_state, self.state)
        self.at_terminal = self.at_terminal & ~mask

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        S, n = self.mdp.num_states, self.num_envs
        # Evaluate the MDP's functions for every state with this batch's actions, then pick each copy's state.
        actions = action.reshape(1, n).to(torch.float64).cpu().expand(S, n)
        probs = self.mdp.next_state_probs(actions)[self.state.cpu(), torch.arange(n)]  # [N, S]
        rewards = self.mdp.expected_reward(actions)[self.state.cpu(), torch.arange(n)]
        probs, rewards = probs.to(self.device), rewards.to(self.device)
        next_state = torch.multinomial(probs.float(), 1, generator=self.generator).squeeze(1)
        terminated = self._discount[self.state, next_state] == 0
        self.restart_state = next_state
        self.at_terminal = terminated
        self.state = next_state
        return rewards.float(), terminated

    def current_behaviour_probabilities(self) -> torch.Tensor:
        """``mu(.|S_t)`` of every copy's current state, ``float32[N, A]`` (the MDP's behaviour policy, which may depend
        on the true state even where observations are aliased)."""
        return self._behaviour[self.state]

    def _observe(self) -> torch.Tensor:
        obs = self._features[self.state]
        return torch.where(self.at_terminal.unsqueeze(1), torch.zeros_like(obs), obs)
