"""Models of vector-state envs for Dyna with function approximation: the true simulator (forward and inverse),
learned neural models, injected hallucinations, and the per-env hallucination detector.

All queries are batched ``[P, B, ...]`` (``P`` population members, ``B`` planning starts each) and work in the env's
*observation* units (what the agent sees). Envs: ``cartpole``, ``catcher`` (vector observation), ``puddle-world``.

Perfect models (``SimulatorModel``, the "perfect-model control"):

- forward: the env's own transition applied to the queried states (CartPole in float64, Puddle World's noise and
  Catcher's new fruit drawn from the caller's generator);
- backward (the predecessor ``s --a--> s'`` of a queried ``s'``): the action is drawn uniformly among the actions that
  give a valid predecessor (our choice: the true predecessor distribution depends on the behaviour policy, which
  a model of the env cannot know), then the dynamics are inverted:

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

from typing import NamedTuple

import torch

from emphatic_rl.agents.dyna.learned_models import LearnedVectorModel, _categorical
from emphatic_rl.agents.dyna.models import is_real_state
from emphatic_rl.envs.catcher import CatcherGeometry, catcher_observe, catcher_state_from_obs, catcher_step
from emphatic_rl.envs.classic import CartPole

#: envs whose states the detector judges, the simulator can run backward, and the injection knows how to corrupt.
VECTOR_ENVS: tuple[str, ...] = ("cartpole", "catcher", "puddle-world")
MODEL_KINDS: tuple[str, ...] = ("perfect", "learned")
_TOL = 1e-4


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


def check_env_supported(env_name: str, what: str) -> None:
    """One clear error when ``env_name`` is not a vector env these models know."""
    if env_name not in VECTOR_ENVS:
        raise ValueError(f"{what} is available for {', '.join(VECTOR_ENVS)} only; env {env_name!r} cannot give it")


def catcher_geometry_of(env) -> CatcherGeometry:
    return getattr(env, "geometry", None) or CatcherGeometry()


def is_reachable(
    env_name: str, state: torch.Tensor, terminal: torch.Tensor | None = None, geometry: CatcherGeometry | None = None
) -> torch.Tensor:
    """``bool[...]``: the hallucination detector, ``False`` where ``state [..., D]`` (observation units) is a state the
    real dynamics of ``env_name`` cannot produce (see the module docstring)."""
    check_env_supported(env_name, "a hallucination detector")
    lead = state.shape[:-1]
    flat = state.reshape(-1, state.shape[-1])
    if env_name == "catcher":
        g = geometry or CatcherGeometry()
        if flat.shape[1] != 5:
            raise ValueError(f"catcher states must be [..., 5] vector observations, got {tuple(state.shape)}")
        finite = torch.isfinite(flat).all(dim=1)
        low = torch.tensor(
            [0.0, -1.0, min(g.spawn_columns) / g.width, min(g.spawn_heights) / g.height, 0.0], device=flat.device
        )
        high = torch.tensor(
            [
                (g.width - g.paddle_width) / g.width,
                1.0,
                max(g.spawn_columns) / g.width,
                (g.height + g.fruit_speed) / g.height,
                1.0,
            ],
            device=flat.device,
        )
        inside = ((flat >= low - _TOL) & (flat <= high + _TOL)).all(dim=1)
        return (finite & inside).reshape(lead)
    flat_terminal = None if terminal is None else terminal.reshape(-1)
    return is_real_state(env_name, flat, flat_terminal).reshape(lead)


def inject_hallucinations(
    env_name: str, state: torch.Tensor, dose: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each state of ``state [P, B, D]`` with probability ``dose[p]`` by an unreachable one.

    Returns ``(state [P, B, D], injected bool[P, B])``.
    """
    check_env_supported(env_name, "injected model error")
    p, b, d = state.shape
    device = state.device
    injected = torch.rand(p, b, generator=generator, device=device) < dose.view(p, 1)
    side = torch.where(torch.rand(p, b, generator=generator, device=device) < 0.5, -1.0, 1.0)
    pick = torch.rand(p, b, generator=generator, device=device) < 0.5
    u = torch.rand(p, b, generator=generator, device=device)
    out = state.clone()
    if env_name == "cartpole":
        x = side * (CartPole.X_THRESHOLD + 0.3 + 0.7 * u)
        theta = side * (CartPole.THETA_THRESHOLD_RADIANS + 0.3 + 0.7 * u)
        out[..., 0] = torch.where(injected & pick, x, out[..., 0])
        out[..., 2] = torch.where(injected & ~pick, theta, out[..., 2])
    elif env_name == "catcher":
        fruit_x = torch.where(side < 0, -(0.1 + 0.4 * u), 1.1 + 0.4 * u)
        out[..., 2] = torch.where(injected, fruit_x, out[..., 2])
    else:  # puddle-world
        coordinate = torch.where(side < 0, -(0.05 + 0.45 * u), 1.05 + 0.45 * u)
        out[..., 0] = torch.where(injected & pick, coordinate, out[..., 0])
        out[..., 1] = torch.where(injected & ~pick, coordinate, out[..., 1])
    return out, injected


# ---------------------------------------------------------------------------------------------- perfect models
def _inside_cartpole_bounds(state: torch.Tensor) -> torch.Tensor:
    return (state[..., 0].abs() <= CartPole.X_THRESHOLD) & (state[..., 2].abs() <= CartPole.THETA_THRESHOLD_RADIANS)


def _cartpole_accelerations(theta, theta_dot, force):
    """CartPole's ``(x_acc, theta_acc)`` as in :class:`~emphatic_rl.envs.classic.CartPole` (float64)."""
    c = CartPole
    costheta, sintheta = torch.cos(theta), torch.sin(theta)
    temp = (force + c.POLEMASS_LENGTH * theta_dot.square() * sintheta) / c.TOTAL_MASS
    thetaacc = (c.GRAVITY * sintheta - costheta * temp) / (
        c.LENGTH * (4.0 / 3.0 - c.MASSPOLE * costheta.square() / c.TOTAL_MASS)
    )
    xacc = temp - c.POLEMASS_LENGTH * thetaacc * costheta / c.TOTAL_MASS
    return xacc, thetaacc


def cartpole_forward(state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``state [..., 4]``, ``action [...]`` -> ``(next_state float64, terminated)``: one Euler step."""
    s = state.double()
    x, x_dot, theta, theta_dot = s.unbind(-1)
    force = torch.where(action == 1, CartPole.FORCE_MAG, -CartPole.FORCE_MAG).double()
    xacc, thetaacc = _cartpole_accelerations(theta, theta_dot, force)
    tau = CartPole.TAU
    nxt = torch.stack((x + tau * x_dot, x_dot + tau * xacc, theta + tau * theta_dot, theta_dot + tau * thetaacc), -1)
    terminated = (nxt[..., 0].abs() > CartPole.X_THRESHOLD) | (nxt[..., 2].abs() > CartPole.THETA_THRESHOLD_RADIANS)
    return nxt, terminated


def cartpole_inverse(next_state: torch.Tensor, action: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """The state ``s`` with ``cartpole_forward(s, action) == next_state`` (float64, see the module docstring)."""
    s = next_state.double()
    x1, x_dot1, theta1, theta_dot1 = s.unbind(-1)
    force = torch.where(action == 1, CartPole.FORCE_MAG, -CartPole.FORCE_MAG).double()
    tau = CartPole.TAU
    theta_dot = theta_dot1
    for _ in range(iterations):
        theta = theta1 - tau * theta_dot
        _, thetaacc = _cartpole_accelerations(theta, theta_dot, force)
        theta_dot = theta_dot1 - tau * thetaacc
    theta = theta1 - tau * theta_dot
    xacc, _ = _cartpole_accelerations(theta, theta_dot, force)
    x_dot = x_dot1 - tau * xacc
    return torch.stack((x1 - tau * x_dot, x_dot, theta, theta_dot), -1)


class SimulatorModel:
    """The true dynamics of a vector env as a Dyna model (forward and inverse), in observation units.

    Args:
        env_name: one of ``VECTOR_ENVS``.
        env: an instance of the env (its options: CartPole's reward convention, Catcher's geometry); ``None``
            builds the default one.
    """

    def __init__(self, env_name: str, env=None) -> None:
        check_env_supported(env_name, "a perfect (simulator) model")
        if env_name == "catcher" and getattr(env, "observation", "vector") != "vector":
            raise ValueError("a perfect (simulator) model of catcher needs observation='vector'")
        self.env_name = env_name
        if env is None:
            from emphatic_rl.envs import make_env

            env = make_env(env_name)
        self.env = env
        self.geometry = catcher_geometry_of(env) if env_name == "catcher" else None
        self.sutton_barto_reward = bool(getattr(env, "sutton_barto_reward", False))
        self.num_actions = int(env.action_spec.n)

    # ---------------------------------------------------------------- forward
    def forward(self, state: torch.Tensor, action: torch.Tensor, generator: torch.Generator) -> VectorForward:
        """``state [P, B, D]``, ``action int64[P, B]`` -> one true step of each."""
        if self.env_name == "cartpole":
            nxt, terminated = cartpole_forward(state, action)
            terminated = terminated & _inside_cartpole_bounds(state)  # no termination from beyond the bounds
            reward = (
                -terminated.float() if self.sutton_barto_reward else torch.ones_like(terminated, dtype=torch.float32)
            )
            return VectorForward(nxt.float(), reward, terminated)
        if self.env_name == "puddle-world":
            noise = 0.01 * torch.randn(state.shape, generator=generator, device=state.device)
            moved = state + self.env.moves.to(state.device)[action] + noise
            inside = ((state >= 0.0) & (state <= 1.0)).all(dim=-1, keepdim=True)
            nxt = torch.where(inside, moved.clamp(0.0, 1.0), moved)  # no walls outside the square
            terminated = (nxt >= 0.95).all(dim=-1) & (nxt <= 1.0).all(dim=-1)
            penalty = self.env.puddle_penalty(nxt.reshape(-1, 2)).reshape(nxt.shape[:-1])
            return VectorForward(nxt, torch.where(terminated, -1.0, -1.0 - penalty), terminated)
        g = self.geometry
        u = torch.rand(*state.shape[:-1], 2, generator=generator, device=state.device)
        raw, reward, terminated = catcher_step(g, catcher_state_from_obs(g, state), action, u[..., 0], u[..., 1])
        return VectorForward(catcher_observe(g, raw), reward, terminated)

    # ---------------------------------------------------------------- backward
    def _candidates(self, state: torch.Tensor, generator: torch.Generator):
        """``(previous [A, P, B, D], reward [A, P, B], valid bool[A, P, B])`` for every action."""
        a = self.num_actions
        actions = torch.arange(a, device=state.device).view(a, 1, 1).expand(a, *state.shape[:-1])
        stacked = state.unsqueeze(0).expand(a, *state.shape)
        if self.env_name == "cartpole":
            previous = cartpole_inverse(stacked, actions)
            valid = (previous[..., 0].abs() <= CartPole.X_THRESHOLD) & (
                previous[..., 2].abs() <= CartPole.THETA_THRESHOLD_RADIANS
            )
            terminal = self.terminal_state(state)
            step_reward = (
                -terminal.float() if self.sutton_barto_reward else torch.ones_like(terminal, dtype=torch.float32)
            )
            return previous.float(), step_reward.expand(a, *state.shape[:-1]), valid
        if self.env_name == "puddle-world":
            noise = 0.01 * torch.randn(stacked.shape, generator=generator, device=state.device)
            previous = (stacked - self.env.moves.to(state.device)[actions] - noise).clamp(0.0, 1.0)
            valid = ~(previous >= 0.95).all(dim=-1)
            terminal = self.terminal_state(state)
            penalty = self.env.puddle_penalty(state.reshape(-1, 2)).reshape(state.shape[:-1])
            reward = torch.where(terminal, -1.0, -1.0 - penalty)
            return previous, reward.expand(a, *state.shape[:-1]), valid
        g = self.geometry
        raw = catcher_state_from_obs(g, stacked)
        paddle_x, vel1, fruit_x, fruit_y, lives = raw.unbind(-1)
        dx = torch.tensor([0.0, -1.0, 1.0], device=state.device)[actions] * g.player_speed
        vel = vel1 / 0.9 - dx
        x = paddle_x - vel1
        fruit_prev = fruit_y - g.fruit_speed
        spawned = fruit_prev < min(g.spawn_heights) - _TOL
        # A fruit that just appeared: the old one was caught on the paddle (reward +1).
        # (at a spawn column: the nearest one to the paddle, which overlaps it)
        catch_x = x.clamp(min(g.spawn_columns), max(g.spawn_columns))
        fruit_x_prev = torch.where(spawned, catch_x, fruit_x)
        fruit_y_prev = torch.where(spawned, torch.full_like(fruit_prev, g.paddle_y), fruit_prev)
        previous = torch.stack((x, vel, fruit_x_prev, fruit_y_prev, lives), dim=-1)
        valid = (vel.abs() <= g.max_speed + _TOL) & (x >= -_TOL) & (x <= g.width - g.paddle_width + _TOL)
        reward = spawned.float()
        return catcher_observe(g, previous), reward, valid

    def backward(self, state: torch.Tensor, generator: torch.Generator) -> VectorBackward:
        """``state [P, B, D]`` -> one predecessor transition of each (action uniform among the valid ones)."""
        previous, reward, valid = self._candidates(state, generator)
        weights = valid.float().permute(1, 2, 0)  # [P, B, A]
        has_predecessor = weights.sum(-1) > 0
        weights = torch.where(has_predecessor.unsqueeze(-1), weights, torch.ones_like(weights))
        action = _categorical(weights / weights.sum(-1, keepdim=True), generator)  # [P, B]
        index = action.unsqueeze(0)
        chosen = previous.gather(0, index.unsqueeze(-1).expand(1, *previous.shape[1:])).squeeze(0)
        chosen_reward = reward.gather(0, index).squeeze(0)
        terminal = self.terminal_state(state)
        return VectorBackward(chosen, action, chosen_reward, terminal, has_predecessor)

    def terminal_state(self, state: torch.Tensor) -> torch.Tensor:
        """``bool[P, B]``: whether the queried states are terminal states the real dynamics produce (entered by an
        episode-ending transition); a hallucinated state is never terminal."""
        if self.env_name == "cartpole":
            beyond = ~_inside_cartpole_bounds(state)
            return beyond & is_reachable("cartpole", state, torch.ones_like(beyond))
        if self.env_name == "puddle-world":
            return (state >= 0.95).all(dim=-1) & (state <= 1.0).all(dim=-1)
        return (state[..., 4] <= _TOL) & is_reachable("catcher", state, geometry=self.geometry)


# ---------------------------------------------------------------------------------------------- learned models
class LearnedModel:
    """A :class:`~emphatic_rl.agents.dyna.learned_models.LearnedVectorModel` queried on ``[P, B, D]`` batches."""

    def __init__(self, network: LearnedVectorModel) -> None:
        self.network = network

    def forward(self, state: torch.Tensor, action: torch.Tensor, generator: torch.Generator) -> VectorForward:
        with torch.no_grad():
            nxt, reward, terminal_logit = self.network.forward_heads(state, action)
        return VectorForward(nxt, reward, terminal_logit > 0)

    def backward(self, state: torch.Tensor, generator: torch.Generator) -> VectorBackward:
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

    def backward(self, state: torch.Tensor, generator: torch.Generator) -> VectorBackward:
        perfect = self.perfect.backward(state, generator)
        learned = self.learned.backward(state, generator)
        return self._pick(
            tuple(perfect), tuple(x.to(y.dtype) for x, y in zip(learned, perfect, strict=True)), VectorBackward
        )
