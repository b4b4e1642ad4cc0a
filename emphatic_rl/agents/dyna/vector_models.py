"""Models of vector-state envs for Dyna with function approximation: the true simulator (forward and inverse),
learned neural models, injected hallucinations, and the per-env hallucination detector.

All queries are batched ``[P, B, ...]`` (``P`` population members, ``B`` planning starts each) and work in the env's
*observation* units (what the agent sees). The env gives its true dynamics: an env that declares
``has_vector_dynamics`` returns a :class:`~emphatic_rl.envs.vector_dynamics.VectorDynamics` from
``vector_dynamics()`` (forward, inverse, reachable states, unreachable ones), and every model, detector and injection
here is built from it, so a user's env that declares it works too. The library's: ``cartpole``, ``catcher`` (vector
observation), ``puddle-world``; the rules below are theirs.

Perfect models (``SimulatorModel``, the "perfect-model control"):

- forward: the env's own transition applied to the queried states (CartPole in float64, Puddle World's noise and
  Catcher's new fruit drawn from the caller's generator);
- backward (the predecessor ``s --a--> s'`` of a queried ``s'``): the action is drawn uniformly among the actions that
  give a valid predecessor (our choice: the true predecessor distribution depends on the behaviour policy, which
  a model of the env cannot know; a caller may weight the actions, e.g. by that policy, with ``action_weights``),
  then the dynamics are inverted:

  * CartPole: exact inversion of the Euler step. ``x = x' - tau x_dot``, ``theta = theta' - tau theta_dot`` and
    ``(x_dot, theta_dot) = (x_dot', theta_dot') - tau (x_acc, theta_acc)(theta, theta_dot, a)``; the accelerations
    depend on ``(theta, theta_dot)`` only, so the pair is the fixed point of a contraction (``tau = 0.02``), solved
    by 6 iterations in float64 (each shrinks the error about 150-fold; ``forward(backward(s')) == s'`` to about
    1e-12). Valid: the predecessor is inside
    the termination bounds.
  * Puddle World: ``s = clip(s' - move(a) - noise, 0, 1)`` with fresh noise ``N(0, 0.01^2)``: exact in the interior
    under a flat prior over predecessors (the noise is symmetric); at the walls the clipping loses information and
    we clip again (an approximation). The reward ``-1 - penalty(s')`` is exact.
  * A queried state none of whose candidate predecessors is valid has no predecessor (``valid = False``): going
    backward from a real CartPole state, the reversed dynamics soon leave the bounds, and a state whose every
    predecessor lies beyond them was never reachable; the agent makes no update from such a query.
  * Catcher: the paddle is inverted exactly (``vel = vel' / 0.9 - dx``, ``x = x' - vel'``; valid when ``|vel| <=``
    the terminal speed); a falling fruit moves back up by its speed. When that would put the fruit above the highest
    spawn height, the fruit must have just appeared: the predecessor is then a *catch* (the old fruit on the paddle,
    at the spawn column nearest to it, reward +1), our choice among the catch / miss predecessors the game allows
    (which fruit was there is unknowable).

From a hallucinated state (one the real dynamics cannot produce, e.g. injected) the simulator applies the same
equations without what only a real state has (our choice, the "closed" physics of the tabular study): no CartPole
termination beyond the bounds, no Puddle World walls or goal outside the unit square; and a hallucinated state
queried backward is never terminal. A Catcher fruit off screen still falls and is missed at the bottom (the game's
own rule), so Catcher's hallucinations lead back to real states.

``MixedModel`` holds a perfect and a learned model and answers each member from one of them (``use_learned[p]``),
so one population can hold the perfect-model, injected-error and learned-model conditions.

Injected error (``dose`` in ``[0, 1]``, one value per member): each model output state is, with probability
``dose``, replaced by a state the real dynamics cannot produce, and never marked terminal:

- CartPole: ``x`` or ``theta`` (equally often) pushed beyond its termination bound by ``U(0.3, 1.0)`` (in m or rad);
- Catcher: the fruit moved off screen sideways (``fruit_x / width`` in ``-U(0.1, 0.5)`` or ``1 + U(0.1, 0.5)``);
- Puddle World: one coordinate moved outside the unit square by ``U(0.05, 0.5)``.

Hallucination detector (``is_reachable``): a state the real dynamics cannot produce.

- CartPole: outside ``|x| <= 2.4``, ``|theta| <= 12 deg`` unless the transition is terminal and the state within one
  step's slack of the bound (:func:`emphatic_rl.agents.dyna.models.is_real_state`).
- Puddle World: outside the unit square.
- Catcher: outside the box of reachable game states (paddle within its clamp range, ``|vel|`` at most the terminal
  speed, fruit column within the spawn columns, fruit height from the highest spawn to one fall below the bottom,
  lives in ``[0, 1]`` of the start). The lattice of spawn columns is *not* checked: a learned model's fruit at a
  column between two lattice columns is counted as real (a lattice test would flag every learned output).

Learned models: :class:`~emphatic_rl.agents.dyna.learned_models.LearnedVectorModel` (deterministic regression of the
state change, ``p(a | s')`` for the backward direction), queried here on ``[P, B, D]`` batches.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from emphatic_rl.agents.dyna.learned_models import LearnedVectorModel, _categorical
from emphatic_rl.envs.base import TensorEnv
from emphatic_rl.envs.vector_dynamics import VectorDynamics, cartpole_forward, cartpole_inverse

__all__ = [
    "MODEL_KINDS",
    "VectorForward",
    "VectorBackward",
    "SimulatorModel",
    "LearnedModel",
    "MixedModel",
    "vector_dynamics_of",
    "vector_dynamics_envs",
    "is_reachable",
    "inject_hallucinations",
    "cartpole_forward",
    "cartpole_inverse",
]

MODEL_KINDS: tuple[str, ...] = ("perfect", "learned")

#: ``previous [A, P, B, D]`` (the candidate predecessor of each action) -> weights ``[P, B, A]`` of the actions
ActionWeights = Callable[[torch.Tensor], torch.Tensor]


class VectorForward(NamedTuple):
    """``next_state [P, B, D]``, ``reward [P, B]``, ``terminal bool[P, B]``."""

    next_state: torch.Tensor
    reward: torch.Tensor
    terminal: torch.Tensor


class VectorBackward(NamedTuple):
    """One predecessor ``previous_state --action, reward--> state``: ``previous_state [P, B, D]``, the rest
    ``[P, B]``; ``terminal``: the transition ends the episode (the queried state is terminal); ``valid``: the
    queried state has a predecessor at all (a perfect model can tell that it has none, e.g. a CartPole state that
    every action would have reached from beyond the bounds; the agent skips those updates)."""

    previous_state: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    terminal: torch.Tensor
    valid: torch.Tensor


def vector_dynamics_envs() -> list[str]:
    """The registered envs whose class declares vector dynamics (``has_vector_dynamics``)."""
    from emphatic_rl.envs import ENV_REGISTRY

    return sorted(
        name
        for name, entry in ENV_REGISTRY.items()
        if isinstance(entry.factory, type)
        and issubclass(entry.factory, TensorEnv)
        and entry.factory.has_vector_dynamics
    )


def vector_dynamics_of(env: Any, needed_by: str) -> VectorDynamics:
    """The env's :class:`~emphatic_rl.envs.vector_dynamics.VectorDynamics`, or one clear ``ValueError`` naming
    ``needed_by`` when the env does not declare the capability (``has_vector_dynamics``)."""
    if not (isinstance(env, TensorEnv) and env.has_vector_dynamics):
        name = getattr(env, "name", type(env).__name__)
        detail = " with observation='image'" if getattr(env, "observation", "vector") != "vector" else ""
        raise ValueError(
            f"{needed_by} needs an env that declares vector dynamics (has_vector_dynamics, e.g. "
            f"{', '.join(vector_dynamics_envs())}); env {name!r}{detail} does not"
        )
    return env.vector_dynamics()


@functools.cache
def _default_dynamics(env_name: str) -> VectorDynamics:
    from emphatic_rl.envs import make_env

    return vector_dynamics_of(make_env(env_name, num_envs=1), "a hallucination detector")


def _dynamics(env: str | TensorEnv | VectorDynamics) -> VectorDynamics:
    if isinstance(env, VectorDynamics):
        return env
    if isinstance(env, str):
        from emphatic_rl.envs import ENV_REGISTRY

        if env not in ENV_REGISTRY:
            raise ValueError(f"unknown env {env!r}; envs with vector dynamics: {', '.join(vector_dynamics_envs())}")
        return _default_dynamics(env)
    return vector_dynamics_of(env, "a hallucination detector")


def is_reachable(
    env: str | TensorEnv | VectorDynamics, state: torch.Tensor, terminal: torch.Tensor | None = None
) -> torch.Tensor:
    """``bool[...]``: the hallucination detector, ``False`` where ``state [..., D]`` (observation units) is a state the
    real dynamics of ``env`` cannot produce (see the module docstring). ``env``: an env that declares vector
    dynamics, its dynamics, or a registered env's name (its default options)."""
    return _dynamics(env).is_reachable(state, terminal)


def inject_hallucinations(
    env: str | TensorEnv | VectorDynamics, state: torch.Tensor, dose: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each state of ``state [P, B, D]`` with probability ``dose[p]`` by an unreachable one (the env's
    ``VectorDynamics.unreachable``).

    Returns ``(state [P, B, D], injected bool[P, B])``.
    """
    dynamics = _dynamics(env)
    p, b, _ = state.shape
    device = state.device
    injected = torch.rand(p, b, generator=generator, device=device) < dose.view(p, 1)
    side = torch.where(torch.rand(p, b, generator=generator, device=device) < 0.5, -1.0, 1.0)
    pick = torch.rand(p, b, generator=generator, device=device) < 0.5
    u = torch.rand(p, b, generator=generator, device=device)
    return dynamics.unreachable(state, injected, side, pick, u), injected


# ---------------------------------------------------------------------------------------------- perfect models
class SimulatorModel:
    """The true dynamics of a vector env as a Dyna model (forward and inverse), in observation units.

    Args:
        env: an env that declares vector dynamics (``has_vector_dynamics``), or its ``VectorDynamics``.

    Raises:
        ValueError: an env that does not declare vector dynamics (e.g. Catcher with image observations).
    """

    def __init__(self, env: TensorEnv | VectorDynamics) -> None:
        self.dynamics = (
            env if isinstance(env, VectorDynamics) else vector_dynamics_of(env, "a perfect (simulator) model")
        )
        self.num_actions = self.dynamics.num_actions

    def forward(self, state: torch.Tensor, action: torch.Tensor, generator: torch.Generator) -> VectorForward:
        """``state [P, B, D]``, ``action int64[P, B]`` -> one true step of each."""
        return VectorForward(*self.dynamics.forward(state, action, generator))

    def backward(
        self, state: torch.Tensor, generator: torch.Generator, action_weights: ActionWeights | None = None
    ) -> VectorBackward:
        """``state [P, B, D]`` -> one predecessor transition of each: the action uniform among the valid ones, or
        (``action_weights``) drawn with the weights it gives the candidate predecessors, among the valid ones."""
        previous, reward, valid = self.dynamics.predecessors(state, generator)
        weights = valid.float().permute(1, 2, 0)  # [P, B, A]
        if action_weights is not None:
            weights = weights * action_weights(previous)
        has_predecessor = weights.sum(-1) > 0
        weights = torch.where(has_predecessor.unsqueeze(-1), weights, torch.ones_like(weights))
        action = _categorical(weights / weights.sum(-1, keepdim=True), generator)  # [P, B]
        index = action.unsqueeze(0)
        chosen = previous.gather(0, index.unsqueeze(-1).expand(1, *previous.shape[1:])).squeeze(0)
        chosen_reward = reward.gather(0, index).squeeze(0)
        terminal = self.dynamics.terminal_state(state)
        return VectorBackward(chosen, action, chosen_reward, terminal, has_predecessor)

    def terminal_state(self, state: torch.Tensor) -> torch.Tensor:
        """``bool[P, B]``: whether the queried states are terminal states the real dynamics produce (entered by an
        episode-ending transition); a hallucinated state is never terminal."""
        return self.dynamics.terminal_state(state)


# ---------------------------------------------------------------------------------------------- learned models
class LearnedModel:
    """A :class:`~emphatic_rl.agents.dyna.learned_models.LearnedVectorModel` queried on ``[P, B, D]`` batches."""

    def __init__(self, network: LearnedVectorModel) -> None:
        self.network = network

    def forward(self, state: torch.Tensor, action: torch.Tensor, generator: torch.Generator) -> VectorForward:
        with torch.no_grad():
            nxt, reward, terminal_logit = self.network.forward_heads(state, action)
        return VectorForward(nxt, reward, terminal_logit > 0)

    def backward(
        self, state: torch.Tensor, generator: torch.Generator, action_weights: ActionWeights | None = None
    ) -> VectorBackward:
        """The learned ``p(a | s')`` picks the action (``action_weights`` is not used: it is learned from the data)."""
        with torch.no_grad():
            action_logits, previous, reward, terminal_logit = self.network.backward_heads(state)
        action = _categorical(torch.softmax(action_logits, dim=-1), generator)  # [P, B]
        d = previous.shape[-1]
        chosen = previous.gather(2, action[..., None, None].expand(*action.shape, 1, d)).squeeze(2)
        reward = reward.gather(2, action.unsqueeze(-1)).squeeze(-1)
        return VectorBackward(chosen, action, reward, terminal_logit > 0, torch.ones_like(action, dtype=torch.bool))


class MixedModel:
    """Per member, the learned model (``use_learned[p]``) or the perfect one; both are queried, one is kept."""

    def __init__(self, perfect: SimulatorModel, learned: LearnedModel, use_learned: torch.Tensor) -> None:
        self.perfect, self.learned = perfect, learned
        self.network = learned.network
        self.use_learned = use_learned.bool()

    def _pick(self, a: tuple, b: tuple, cls):
        mask = self.use_learned.to(a[0].device)
        out = []
        for x, y in zip(a, b, strict=True):
            m = mask.view(-1, *([1] * (x.dim() - 1)))
            out.append(torch.where(m, y, x))
        return cls(*out)

    def forward(self, state: torch.Tensor, action: torch.Tensor, generator: torch.Generator) -> VectorForward:
        perfect = self.perfect.forward(state, action, generator)
        learned = self.learned.forward(state, action, generator)
        return self._pick(
            tuple(perfect), tuple(x.to(y.dtype) for x, y in zip(learned, perfect, strict=True)), VectorForward
        )

    def backward(
        self, state: torch.Tensor, generator: torch.Generator, action_weights: ActionWeights | None = None
    ) -> VectorBackward:
        perfect = self.perfect.backward(state, generator, action_weights)
        learned = self.learned.backward(state, generator)
        return self._pick(
            tuple(perfect), tuple(x.to(y.dtype) for x, y in zip(learned, perfect, strict=True)), VectorBackward
        )
