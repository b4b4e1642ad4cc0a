"""The ``Agent`` protocol and the fixed behaviour policies.

Shapes. An agent holds a *population* of ``P`` learners; every parameter carries a leading ``P`` axis. Acting and
evaluation take observations laid out population-major, ``obs: [P, E, *obs_shape]`` (``E`` environment copies per
member), and return ``action: [P, E, *action_shape]``. A deep agent usually has ``P = 1`` and many ``E``; a linear
population usually has ``E = 1`` and a large ``P``.

Agents that learn from a fixed behaviour policy (``Behaviour``) do not act during training; the loop feeds their
``update`` from the buffer, whose streams ``R`` map to learners through ``stream_of[p]``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from emphatic_rl.envs.base import BoxSpec, DiscreteSpec, Spec

if TYPE_CHECKING:
    from emphatic_rl.buffers.trajectory import TrajectoryBuffer


class ActionOutput(NamedTuple):
    """``action: [..., *action_shape]`` and the log-probability the acting policy gave it, ``log_prob: [...]``."""

    action: torch.Tensor
    log_prob: torch.Tensor


class Agent(ABC):
    """A population of ``P`` learners of one algorithm.

    Subclasses set ``population_size`` and implement ``act`` (behaviour, with exploration), ``evaluation_action``
    (the target policy being evaluated), ``update`` and the ``state_dict`` pair.
    """

    #: registry name (``"dqn"``, ``"ace"``...), set by subclasses.
    name: str = ""
    population_size: int = 1
    #: True when the agent explores with its own policy; False when it learns from a fixed ``Behaviour``.
    acts_in_env: bool = True
    #: time rows the loop's ``TrajectoryBuffer`` keeps per stream (replay agents: their replay size; online agents
    #: need only the latest step).
    buffer_capacity: int = 1

    @abstractmethod
    def act(self, obs: torch.Tensor, env_step: int) -> ActionOutput:
        """Behaviour actions for ``obs: [P, E, *obs_shape]``: ``action [P, E, ...]``, ``log_prob [P, E]``."""

    @abstractmethod
    def evaluation_action(self, obs: torch.Tensor) -> torch.Tensor:
        """Target-policy actions for ``obs: [P, E, *obs_shape]`` (sampled or greedy, as the agent documents)."""

    def predict_action(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Target-policy actions ``[P, E, ...]`` for ``obs: [P, E, *obs_shape]``, for users of a trained agent.

        ``deterministic=True``: the policy's most likely action (the argmax of a discrete policy, the mean of a
        Gaussian one) where the agent defines it; ``False``: a draw from the target policy. The default is
        ``evaluation_action`` either way (agents whose target policy is deterministic need no more).
        """
        return self.evaluation_action(obs)

    @abstractmethod
    def update(self, buffer: TrajectoryBuffer, env_step: int) -> dict[str, torch.Tensor]:
        """Learn from the buffer after the loop wrote step ``env_step``. Returns metrics, each a tensor ``[P]``.

        The loop calls it once per iteration, after adding that iteration's transition of every stream to
        ``buffer`` (online agents read ``buffer.latest()``, replay agents sample it)."""

    def exact_objective(self) -> torch.Tensor | None:
        """The exact objective ``J_mu`` of each member's current policy, ``[P]``, where the agent can compute it
        (linear actors on tabular MDPs, from the exact lab); ``None`` otherwise. The loop logs it as
        ``eval/exact_J``."""
        return None

    def parameters_finite(self) -> torch.Tensor:
        """``bool[P]``: which members still have finite parameters (the loop freezes the others)."""
        return torch.ones(self.population_size, dtype=torch.bool)

    def freeze(self, members: torch.Tensor) -> None:  # noqa: B027 - optional hook
        """Stop updating the members where ``members`` (``bool[P]``) is true (they diverged)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Parameters, optimiser state and generators: everything a bit-identical resume needs."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


class Behaviour(ABC):
    """A fixed behaviour policy ``mu`` that produces the training data (independent of any learner)."""

    name: str = ""

    @abstractmethod
    def act(self, obs: torch.Tensor, generator: torch.Generator) -> ActionOutput:
        """Actions and ``log mu(a|s)`` for ``obs: [N, *obs_shape]``."""

    @abstractmethod
    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``log mu(action|obs)`` for ``obs: [N, ...]``, ``action: [N, ...]``."""


class UniformRandomBehaviour(Behaviour):
    """Uniform over a discrete action set, or uniform in a bounded box.

    Args:
        action_spec: the env's action spec (a ``BoxSpec`` must have finite bounds).
    """

    name = "uniform"

    def __init__(self, action_spec: Spec) -> None:
        self.action_spec = action_spec
        if isinstance(action_spec, BoxSpec):
            low, high = action_spec.low_tensor(), action_spec.high_tensor()
            if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
                raise ValueError("uniform behaviour needs a bounded action box")
            self._log_density = -float(torch.log(high - low).sum())

    def act(self, obs: torch.Tensor, generator: torch.Generator) -> ActionOutput:
        n, device = obs.shape[0], obs.device
        spec = self.action_spec
        if isinstance(spec, DiscreteSpec):
            action = torch.randint(spec.n, (n,), generator=generator, device=device)
            return ActionOutput(action, torch.full((n,), -math.log(spec.n), device=device))
        low, high = spec.low_tensor(device), spec.high_tensor(device)
        u = torch.rand((n, *spec.shape), generator=generator, device=device)
        return ActionOutput(low + (high - low) * u, torch.full((n,), self._log_density, device=device))

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        n = obs.shape[0]
        if isinstance(self.action_spec, DiscreteSpec):
            return torch.full((n,), -math.log(self.action_spec.n), device=obs.device)
        return torch.full((n,), self._log_density, device=obs.device)


class FixedDiscreteBehaviour(Behaviour):
    """A state-independent distribution over discrete actions, e.g. ``(0.25, 0.75)`` in the N18 counterexamples.

    Args:
        probabilities: one probability per action; positive, summing to 1.
    """

    name = "fixed"

    def __init__(self, probabilities: list[float] | tuple[float, ...] | torch.Tensor) -> None:
        probs = torch.as_tensor(probabilities, dtype=torch.float64)
        if probs.dim() != 1 or (probs < 0).any() or abs(float(probs.sum()) - 1.0) > 1e-6:
            raise ValueError(f"behaviour probabilities must be a non-negative vector summing to 1, got {probabilities}")
        self.probabilities = probs.float()
        self.log_probabilities = probs.log().float()

    def act(self, obs: torch.Tensor, generator: torch.Generator) -> ActionOutput:
        n, device = obs.shape[0], obs.device
        probs = self.probabilities.to(device).expand(n, -1)
        action = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return ActionOutput(action, self.log_probabilities.to(device)[action])

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.log_probabilities.to(action.device)[action]


class EnvStateBehaviour(Behaviour):
    """The behaviour policy an env defines on its true state (e.g. ``mu[S, A]`` of a tabular MDP, which may differ
    between states whose observations are aliased). Reads ``env.current_behaviour_probabilities() -> [N, A]``.

    Args:
        env: an env with ``current_behaviour_probabilities``.
    """

    name = "env"

    def __init__(self, env) -> None:
        self.env = env

    def act(self, obs: torch.Tensor, generator: torch.Generator) -> ActionOutput:
        probs = self.env.current_behaviour_probabilities()
        action = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return ActionOutput(action, probs.gather(1, action.unsqueeze(1)).squeeze(1).log())

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        probs = self.env.current_behaviour_probabilities()
        return probs.gather(1, action.long().unsqueeze(1)).squeeze(1).log()
