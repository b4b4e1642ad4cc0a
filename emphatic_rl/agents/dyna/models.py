"""Environment models for Dyna planning: forward (successor) and backward (predecessor), with controllable error.

A model answers batched queries, one per population member: ``state: int64[P]`` (tabular state indices).

- ``ForwardModel.sample_forward(state, action, generator) -> ForwardSample(next_state [P], reward [P], terminal [P])``.
- ``BackwardModel.sample_backward(state, generator) -> BackwardSample(previous_state [P], action [P], reward [P],
  terminal [P])``: one sampled predecessor transition ``previous_state --action, reward--> state``; ``terminal``
  says whether that transition ends the episode (``state`` is terminal).

Models never say whether a state they return is real: the *environment* tells (its ``real_state_mask`` and
``is_real_state``, declared with ``has_real_state_test``), so the same instruments work for a given model with
injected error and for a learned model that hallucinates by itself. What a model kind needs from the env is a declared
capability, never probed: the given model needs ``has_tabular_dynamics`` (:func:`given_model_of`), a model that learns
is a :class:`TrainableModel`.

``GivenTabularModel`` is the given model of a tabular env (the true dynamics tables, e.g. of
:class:`~emphatic_rl.envs.gridworld.BorderedGridworld`) with controllable error (our construction for the hypothesis):
with probability ``hallucination_probability[p]`` (``p_h``, one value per member, so one run holds a whole p_h sweep)
each model query independently returns a *hallucinated* state instead of the true outcome, drawn uniformly from the
env's unreachable states (the border ring). Forward: the next state is replaced (the reward stays the step reward, never
terminal). Backward: the predecessor is replaced by a uniform unreachable state with a uniform action (the reward is the
step reward, the transition is not terminal-entering unless the queried state is terminal).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from typing import Any, NamedTuple

import torch

from emphatic_rl.envs.base import TabularDynamics, TensorEnv


class ForwardSample(NamedTuple):
    """``next_state int64[P]``, ``reward float32[P]``, ``terminal bool[P]`` (the transition ended the episode)."""

    next_state: torch.Tensor
    reward: torch.Tensor
    terminal: torch.Tensor


class BackwardSample(NamedTuple):
    """One predecessor transition ``previous_state --action--> state``: all ``[P]``."""

    previous_state: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    terminal: torch.Tensor


class ForwardModel(ABC):
    """A (possibly wrong) successor model over tabular states."""

    @abstractmethod
    def sample_forward(self, state: torch.Tensor, action: torch.Tensor, generator: torch.Generator) -> ForwardSample:
        """``state, action: int64[P]`` -> one simulated step from each."""


class BackwardModel(ABC):
    """A (possibly wrong) predecessor model over tabular states."""

    @abstractmethod
    def sample_backward(self, state: torch.Tensor, generator: torch.Generator) -> BackwardSample:
        """``state: int64[P]`` -> one simulated predecessor transition of each."""


def check_hallucination_probability(value: float | list[float] | torch.Tensor, population_size: int) -> torch.Tensor:
    """``p_h`` as ``float32[P]``: a scalar or one value per member, each in ``[0, 1]`` (one clear error otherwise)."""
    tensor = torch.as_tensor(value, dtype=torch.float32).flatten()
    if tensor.numel() == 1:
        tensor = tensor.expand(population_size).clone()
    if tensor.numel() != population_size:
        raise ValueError(
            f"hallucination_probability must be a scalar or have one value per member ({population_size}), "
            f"got {tensor.numel()} values"
        )
    if not bool(torch.isfinite(tensor).all()) or bool(((tensor < 0) | (tensor > 1)).any()):
        raise ValueError(f"hallucination_probability (p_h) must be in [0, 1], got {tensor.tolist()}")
    return tensor


class GivenTabularModel(ForwardModel, BackwardModel):
    """The given dynamics tables of a tabular env, with hallucinations injected at rate ``p_h`` per query.

    Args:
        next_state_table: ``int64[S, A]`` true next state (``env.next_state_table``).
        reward_table: ``float32[S, A]``.
        terminal_table: ``bool[S, A]`` the transition ends the episode.
        hallucination_states: ``int64[K]`` the states a hallucination is drawn from (the env's unreachable states);
            empty only when ``p_h`` is zero everywhere.
        hallucination_probability: ``p_h``, a scalar or ``[P]`` with values in ``[0, 1]``.
        population_size: ``P``.
        terminal_states: ``int64[T]`` states from which no transition starts (excluded as predecessors).
        predecessor_triples: ``(source, action, target)``, ``int64[M]`` each: the relation the backward model
            inverts; default: every ``(s, a) -> next_state_table[s, a]`` with ``s`` not terminal.

    The backward model samples uniformly among the true predecessor pairs ``(s_prev, a)`` with
    ``next_state_table[s_prev, a] == s`` (``s_prev`` not terminal); a state without predecessors returns itself
    with action 0 (the agent treats it like any other sample; it never happens for reachable non-start states).
    """

    def __init__(
        self,
        next_state_table: torch.Tensor,
        reward_table: torch.Tensor,
        terminal_table: torch.Tensor,
        hallucination_states: torch.Tensor,
        hallucination_probability: float | list[float] | torch.Tensor,
        population_size: int,
        terminal_states: torch.Tensor | None = None,
        predecessor_triples: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        if next_state_table.dim() != 2:
            raise ValueError(f"next_state_table must be [S, A], got shape {tuple(next_state_table.shape)}")
        self.device = next_state_table.device
        self.next_state_table = next_state_table
        self.reward_table = reward_table.float()
        self.terminal_table = terminal_table.bool()
        self.num_states, self.num_actions = next_state_table.shape
        self.hallucination_states = hallucination_states.to(self.device).long()
        self.hallucination_probability = check_hallucination_probability(hallucination_probability, population_size).to(
            self.device
        )
        if self.hallucination_states.numel() == 0 and bool((self.hallucination_probability > 0).any()):
            raise ValueError("hallucination_probability > 0 needs at least one hallucination state")
        # Predecessor lists: pairs (s_prev, a) grouped by next state, padded to the largest in-degree.
        if predecessor_triples is None:
            source_ok = torch.ones(self.num_states, dtype=torch.bool, device=self.device)
            if terminal_states is not None and terminal_states.numel() > 0:
                source_ok[terminal_states.to(self.device)] = False
            sources = torch.arange(self.num_states, device=self.device).repeat_interleave(self.num_actions)
            actions = torch.arange(self.num_actions, device=self.device).repeat(self.num_states)
            targets = next_state_table.flatten()
            keep = source_ok[sources]
            sources, actions, targets = sources[keep], actions[keep], targets[keep]
        else:
            sources, actions, targets = (t.to(self.device).long() for t in predecessor_triples)
        order = torch.argsort(targets, stable=True)
        sources, actions, targets = sources[order], actions[order], targets[order]
        counts = torch.bincount(targets, minlength=self.num_states)
        width = max(int(counts.max()), 1)
        offsets = torch.cumsum(counts, 0) - counts
        slot = torch.arange(targets.numel(), device=self.device) - offsets[targets]
        self.predecessor_state = torch.arange(self.num_states, device=self.device).unsqueeze(1).repeat(1, width)
        self.predecessor_action = torch.zeros(self.num_states, width, dtype=torch.int64, device=self.device)
        self.predecessor_state[targets, slot] = sources
        self.predecessor_action[targets, slot] = actions
        self.predecessor_count = counts.clamp(min=1)

    def _hallucinate(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mask bool[P], hallucinated_state int64[P])``: which queries hallucinate, and into which state."""
        p = self.hallucination_probability.numel()
        mask = torch.rand(p, generator=generator, device=self.device) < self.hallucination_probability
        count = max(self.hallucination_states.numel(), 1)
        pick = torch.randint(count, (p,), generator=generator, device=self.device)
        states = self.hallucination_states[pick] if self.hallucination_states.numel() else pick
        return mask, states

    def sample_forward(self, state: torch.Tensor, action: torch.Tensor, generator: torch.Generator) -> ForwardSample:
        """``state, action: int64[P]`` -> ``ForwardSample`` with hallucinations at rate ``p_h``."""
        next_state = self.next_state_table[state, action]
        reward = self.reward_table[state, action]
        terminal = self.terminal_table[state, action]
        mask, fake = self._hallucinate(generator)
        return ForwardSample(torch.where(mask, fake, next_state), reward, terminal & ~mask)

    def sample_backward(self, state: torch.Tensor, generator: torch.Generator) -> BackwardSample:
        """``state: int64[P]`` -> one predecessor transition each, hallucinated at rate ``p_h``."""
        count = self.predecessor_count[state]
        u = torch.rand(state.shape, generator=generator, device=self.device)
        slot = (u * count).long().clamp(max=self.predecessor_state.shape[1] - 1)
        previous = self.predecessor_state[state, slot]
        action = self.predecessor_action[state, slot]
        mask, fake = self._hallucinate(generator)
        fake_action = torch.randint(self.num_actions, state.shape, generator=generator, device=self.device)
        previous = torch.where(mask, fake, previous)
        action = torch.where(mask, fake_action, action)
        true_reward = self.reward_table[self.predecessor_state[state, slot], self.predecessor_action[state, slot]]
        step_reward = self.reward_table[fake, fake_action]
        reward = torch.where(mask, step_reward, true_reward)
        terminal = self.terminal_table[self.predecessor_state[state, slot], self.predecessor_action[state, slot]]
        # Whether the transition enters a terminal state depends only on the queried state: keep it for
        # hallucinated predecessors too.
        return BackwardSample(previous, action, reward, terminal)


def tabular_dynamics_of(
    env: TensorEnv, border_physics: str = "closed", needed_by: str = "a given tabular model"
) -> TabularDynamics:
    """``env.tabular_dynamics(border_physics)`` (:class:`~emphatic_rl.envs.base.TabularDynamics`), or one clear error
    naming ``needed_by`` when the env does not declare the capability (``TensorEnv.has_tabular_dynamics``)."""
    if not (isinstance(env, TensorEnv) and env.has_tabular_dynamics):
        name = env.name if isinstance(env, TensorEnv) else type(env).__name__
        raise ValueError(
            f"{needed_by} needs an env that declares tabular dynamics (has_tabular_dynamics, e.g. "
            f"'bordered-gridworld'); env {name!r} does not"
        )
    return env.tabular_dynamics(border_physics)


def given_model_of(
    env: TensorEnv,
    hallucination_probability: float | list[float] | torch.Tensor,
    population_size: int,
    border_physics: str = "closed",
) -> GivenTabularModel:
    """The given model of an env that declares tabular dynamics (``has_tabular_dynamics``, e.g.
    ``BorderedGridworld``): its tables, with hallucinations drawn from its unreachable states.

    ``border_physics`` (``"closed"`` or ``"open"``) picks how the model moves from unreachable states (see
    :meth:`BorderedGridworld.model_transitions`).

    Raises:
        ValueError: the env declares no tabular dynamics, or does not offer ``border_physics``.
    """
    dynamics = tabular_dynamics_of(env, border_physics, "a given tabular model (model='given')")
    return GivenTabularModel(
        dynamics.next_state,
        dynamics.reward,
        dynamics.terminal,
        torch.nonzero(~dynamics.real_state_mask).squeeze(1),
        hallucination_probability,
        population_size,
        dynamics.terminal_states,
        dynamics.predecessor_triples,
    )


class TrainableModel(ABC):
    """A model that learns from real transitions: Dyna trains it every real step on transitions replayed from the
    loop's ``TrajectoryBuffer`` (:class:`emphatic_rl.agents.dyna.learned_models.LearnedTabularModel`). A model that is
    not a ``TrainableModel`` is fixed (the given model)."""

    @abstractmethod
    def train_step(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
        directions: tuple[str, ...] = ("forward", "backward"),
    ) -> dict[str, torch.Tensor]:
        """One optimiser step on transitions ``[P, B, ...]`` (``next_obs``: the true ``S_{t+1}``), training the
        ``directions`` asked for; returns the losses, each ``[P]``."""

    @abstractmethod
    def parameters_finite(self) -> torch.Tensor:
        """``bool[P]``: which members' parameters are finite."""

    @abstractmethod
    def freeze(self, members: torch.Tensor) -> None:
        """Stop training ``members`` (``bool[P]``)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# ---------------------------------------------------------------------------------------------------------------
# "Is this a real state?": the instruments' hallucination flag for model outputs. Each env declares its own test
# (``TensorEnv.has_real_state_test`` / ``is_real_state``); these helpers resolve an env name to a default instance.


@functools.cache
def _default_env(env_name: str) -> TensorEnv:
    from emphatic_rl.envs import make_env

    return make_env(env_name, num_envs=1)


def real_state_envs() -> list[str]:
    """The registered envs that declare a real-state test (``has_real_state_test``)."""
    from emphatic_rl.envs import ENV_REGISTRY

    return sorted(name for name, entry in ENV_REGISTRY.items() if _declares_real_state_test(entry.factory))


def _declares_real_state_test(factory: Any) -> bool:
    return isinstance(factory, type) and issubclass(factory, TensorEnv) and factory.has_real_state_test


def is_real_state(env: str | TensorEnv, state: torch.Tensor, terminal: torch.Tensor | None = None) -> torch.Tensor:
    """``bool[B]``: whether each model-generated state is a real state of ``env``: ``env.is_real_state(state,
    terminal)`` (see each env's documentation: the interior cells of the Bordered Gridworld, CartPole inside its
    termination bounds, Puddle World inside the unit square).

    Args:
        env: an env that declares the test (``has_real_state_test``), or a registered env's name (its default
            options; a state test that depends on the options, such as the gridworld's size, needs the env).
        state: ``[B, *state_shape]`` in observation units (``int64[B]`` cell indices for tabular envs).
        terminal: ``bool[B]``, the transition that produced each state ended the episode (``None``: unknown).

    Raises:
        ValueError: an env that declares no real-state test, or a state of the wrong shape.
    """
    if isinstance(env, str):
        from emphatic_rl.envs import ENV_REGISTRY

        if env not in ENV_REGISTRY:
            raise ValueError(f"is_real_state: unknown env {env!r}; envs with a real-state test: {real_state_envs()}")
        if not _declares_real_state_test(ENV_REGISTRY[env].factory):
            raise ValueError(
                f"is_real_state: env {env!r} declares no test of which states are real (has_real_state_test); "
                f"envs that do: {', '.join(real_state_envs())}"
            )
        env = _default_env(env)
    elif not env.has_real_state_test:
        raise ValueError(
            f"is_real_state: env {env.name!r} declares no test of which states are real (has_real_state_test); "
            f"envs that do: {', '.join(real_state_envs())}"
        )
    return env.is_real_state(state, terminal)
