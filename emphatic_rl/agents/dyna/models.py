"""Environment models for Dyna planning: forward (successor) and backward (predecessor), with controllable error.

A model answers batched queries, one per population member: ``state: int64[P]`` (tabular state indices).

- ``ForwardModel.sample_forward(state, action, generator) -> ForwardSample(next_state [P], reward [P], terminal [P])``.
- ``BackwardModel.sample_backward(state, generator) -> BackwardSample(previous_state [P], action [P], reward [P],
  terminal [P])``: one sampled predecessor transition ``previous_state --action, reward--> state``; ``terminal``
  says whether that transition ends the episode (``state`` is terminal).

Models never say whether a state they return is real: the *environment* tells (``real_state_mask``), so the same
instruments work for a given model with injected error and for a learned model that hallucinates by itself.

``GivenTabularModel`` is the given model of a tabular env (the true dynamics tables, e.g. of
:class:`~emphatic_rl.envs.gridworld.BorderedGridworld`) with controllable error (our construction for the hypothesis):
with probability ``hallucination_probability[p]`` (``p_h``, one value per member, so one run holds a whole p_h sweep)
each model query independently returns a *hallucinated* state instead of the true outcome, drawn uniformly from the
env's unreachable states (the border ring). Forward: the next state is replaced (the reward stays the step reward, never
terminal). Backward: the predecessor is replaced by a uniform unreachable state with a uniform action (the reward is the
step reward, the transition is not terminal-entering unless the queried state is terminal).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import NamedTuple

import torch


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


def given_model_of(
    env,
    hallucination_probability: float | list[float] | torch.Tensor,
    population_size: int,
    border_physics: str = "closed",
) -> GivenTabularModel:
    """The given model of a tabular env with ``next_state_table``, ``reward_table``, ``terminal_table``,
    ``real_state_mask`` (e.g. ``BorderedGridworld``): hallucinations go to the env's unreachable states.

    ``border_physics`` (``"closed"`` or ``"open"``) picks how the model moves from unreachable states when the env
    offers ``model_transitions`` (see :meth:`BorderedGridworld.model_transitions`).
    """
    for attribute in ("next_state_table", "reward_table", "terminal_table", "real_state_mask"):
        if not hasattr(env, attribute):
            raise ValueError(
                f"env {type(env).__name__} has no {attribute!r}: a given tabular model needs an env with dynamics "
                "tables (e.g. 'bordered-gridworld')"
            )
    unreachable = torch.nonzero(~env.real_state_mask).squeeze(1)
    terminal_states = torch.tensor([env.goal_state]) if hasattr(env, "goal_state") else None
    forward, triples = env.next_state_table, None
    if hasattr(env, "model_transitions"):
        forward, triples = env.model_transitions(border_physics)
    elif border_physics != "closed":
        raise ValueError(f"env {type(env).__name__} only supports border_physics='closed'")
    return GivenTabularModel(
        forward,
        env.reward_table,
        env.terminal_table,
        unreachable,
        hallucination_probability,
        population_size,
        terminal_states,
        triples,
    )


# ---------------------------------------------------------------------------------------------------------------
# "Is this a real state?" per env: the instruments' hallucination flag for model outputs (our construction).
#: CartPole's termination bounds: |x| <= 2.4 and |theta| <= 12 degrees.
CARTPOLE_X_LIMIT = 2.4
CARTPOLE_THETA_LIMIT = 12 * 2 * math.pi / 360
#: How far past its bounds a real terminal CartPole state can lie: one step of at most this size (tau = 0.02 s
#: times a generous bound of 10 units/s on the velocities), so the last observation of a real episode is real.
CARTPOLE_TERMINAL_SLACK = 0.2


def is_real_state(env_name: str, state: torch.Tensor, terminal: torch.Tensor | None = None, env=None) -> torch.Tensor:
    """``bool[B]``: whether each model-generated state is a real, reachable state of ``env_name``.

    - ``bordered-gridworld``: ``state: int64[B]`` cell indices; real = an interior cell (needs ``env`` for its
      ``real_state_mask``; the default 6 x 6 layout otherwise).
    - ``cartpole``: ``state: [B, 4]`` ``(x, x_dot, theta, theta_dot)``; real = inside the termination bounds
      ``|x| <= 2.4``, ``|theta| <= 12 deg``; a state past them is real only if the model marks the transition
      ``terminal`` and it lies within one step's slack (``CARTPOLE_TERMINAL_SLACK``) of the bounds. A state beyond
      the bounds that does not end the episode is hallucinated (the kind of hallucination the paper names for
      CartPole: beyond its termination bounds without signalling termination).
    - ``puddle-world``: ``state: [B, 2]`` positions; real = inside the unit square (the env clamps every move).

    Raises:
        ValueError: an env this function cannot judge, or a state of the wrong shape.
    """
    if env_name == "bordered-gridworld":
        if state.dtype != torch.int64 or state.dim() != 1:
            raise ValueError(
                f"bordered-gridworld states must be int64[B] cell indices, got {state.dtype} {tuple(state.shape)}"
            )
        if env is None:
            from emphatic_rl.envs.gridworld import BorderedGridworld

            env = BorderedGridworld()
        inside = (state >= 0) & (state < env.num_states)
        return inside & env.real_state_mask.to(state.device)[state.clamp(0, env.num_states - 1)]
    if env_name == "cartpole":
        if state.dim() != 2 or state.shape[1] != 4:
            raise ValueError(f"cartpole states must be [B, 4] (x, x_dot, theta, theta_dot), got {tuple(state.shape)}")
        x, theta = state[:, 0].abs(), state[:, 2].abs()
        inside = (x <= CARTPOLE_X_LIMIT) & (theta <= CARTPOLE_THETA_LIMIT)
        near = (x <= CARTPOLE_X_LIMIT + CARTPOLE_TERMINAL_SLACK) & (
            theta <= CARTPOLE_THETA_LIMIT + CARTPOLE_TERMINAL_SLACK
        )
        finite = torch.isfinite(state).all(dim=1)
        if terminal is None:
            return inside & finite
        return finite & (inside | (terminal.bool() & near))
    if env_name == "puddle-world":
        if state.dim() != 2 or state.shape[1] != 2:
            raise ValueError(f"puddle-world states must be [B, 2] positions, got {tuple(state.shape)}")
        return ((state >= 0.0) & (state <= 1.0)).all(dim=1)
    raise ValueError(f"is_real_state knows bordered-gridworld, cartpole and puddle-world; got {env_name!r}")
