"""The true dynamics of vector-state envs as a batched function of any states: forward, inverse, the test of which
states the real dynamics can produce, and unreachable states for injected model error.

An env offers this capability by declaring ``has_vector_dynamics = True`` and returning a :class:`VectorDynamics`
from ``vector_dynamics()`` (CartPole, Catcher with vector observations and Puddle World do); Dyna with function
approximation (``emphatic_rl.agents.dyna``) builds its perfect model, its hallucination detector and its injected
error from it, so a user's env that declares it gets all three. Every method works on batches ``[..., D]`` in the
env's *observation* units (what an agent sees). The rules, and which choices are ours, are documented in
``emphatic_rl.agents.dyna.vector_models``.
"""

from __future__ import annotations

import torch

from emphatic_rl.envs.catcher import CatcherGeometry, catcher_observe, catcher_state_from_obs, catcher_step
from emphatic_rl.envs.classic import CartPole

__all__ = [
    "VectorDynamics",
    "CartPoleDynamics",
    "CatcherDynamics",
    "PuddleWorldDynamics",
    "cartpole_forward",
    "cartpole_inverse",
]

_TOL = 1e-4


class VectorDynamics:
    """The interface an env's ``vector_dynamics()`` returns (subclass it for your own env).

    Attributes:
        num_actions: ``A``.
    """

    num_actions: int

    def forward(
        self, state: torch.Tensor, action: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One true step of each ``state [..., D]`` under ``action int64[...]``: ``(next_state float32[..., D],
        reward float32[...], terminated bool[...])``; random parts drawn from ``generator``. From a state the real
        dynamics cannot produce (an injected one) the same equations run without what only a real state has
        (termination, walls)."""
        raise NotImplementedError

    def predecessors(
        self, state: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For every action ``a``, a state ``s`` with ``s --a--> state``: ``(previous [A, ..., D], reward [A, ...],
        valid bool[A, ...])`` (``valid``: such a real predecessor exists)."""
        raise NotImplementedError

    def terminal_state(self, state: torch.Tensor) -> torch.Tensor:
        """``bool[...]``: the states are terminal states the real dynamics produce (a hallucinated state never is)."""
        raise NotImplementedError

    def is_reachable(self, state: torch.Tensor, terminal: torch.Tensor | None = None) -> torch.Tensor:
        """``bool[...]``: the hallucination detector, ``False`` where ``state [..., D]`` is a state the real dynamics
        cannot produce (``terminal``: the transition that produced it ended the episode; ``None``: unknown)."""
        raise NotImplementedError

    def unreachable(
        self, state: torch.Tensor, injected: torch.Tensor, side: torch.Tensor, pick: torch.Tensor, u: torch.Tensor
    ) -> torch.Tensor:
        """``state [P, B, D]`` with each entry where ``injected`` replaced by a state the real dynamics cannot
        produce, from the draws ``side`` (``+-1``), ``pick`` (bool) and ``u`` (``U(0, 1)``), all ``[P, B]``."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------- CartPole
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
    """The state ``s`` with ``cartpole_forward(s, action) == next_state`` (float64; a fixed-point iteration of the
    contraction the Euler step's accelerations give, each iteration shrinks the error about 150-fold)."""
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


def _env_real_state_test(env, state: torch.Tensor, terminal: torch.Tensor | None) -> torch.Tensor:
    """``env.is_real_state`` (which takes flat ``[B, D]`` states) on ``state [..., D]``: ``bool[...]``."""
    flat = state.reshape(-1, state.shape[-1])
    flat_terminal = None if terminal is None else terminal.reshape(-1)
    return env.is_real_state(flat, flat_terminal).reshape(state.shape[:-1])


class CartPoleDynamics(VectorDynamics):
    """CartPole-v1's Euler step, inverted exactly; real states lie inside the termination bounds (or just past them
    on an episode's last step); injected states have ``x`` or ``theta`` beyond its bound by ``U(0.3, 1.0)``."""

    num_actions = 2

    def __init__(self, env: CartPole) -> None:
        self.env = env
        self.sutton_barto_reward = bool(getattr(env, "sutton_barto_reward", False))

    def forward(self, state, action, generator):
        nxt, terminated = cartpole_forward(state, action)
        terminated = terminated & _inside_cartpole_bounds(state)  # no termination from beyond the bounds
        reward = -terminated.float() if self.sutton_barto_reward else torch.ones_like(terminated, dtype=torch.float32)
        return nxt.float(), reward, terminated

    def predecessors(self, state, generator):
        a = self.num_actions
        actions = torch.arange(a, device=state.device).view(a, *([1] * (state.dim() - 1))).expand(a, *state.shape[:-1])
        previous = cartpole_inverse(state.unsqueeze(0).expand(a, *state.shape), actions)
        valid = _inside_cartpole_bounds(previous)
        terminal = self.terminal_state(state)
        step_reward = -terminal.float() if self.sutton_barto_reward else torch.ones_like(terminal, dtype=torch.float32)
        return previous.float(), step_reward.expand(a, *state.shape[:-1]), valid

    def terminal_state(self, state):
        beyond = ~_inside_cartpole_bounds(state)
        return beyond & self.is_reachable(state, torch.ones_like(beyond))

    def is_reachable(self, state, terminal=None):
        return _env_real_state_test(self.env, state, terminal)

    def unreachable(self, state, injected, side, pick, u):
        out = state.clone()
        x = side * (CartPole.X_THRESHOLD + 0.3 + 0.7 * u)
        theta = side * (CartPole.THETA_THRESHOLD_RADIANS + 0.3 + 0.7 * u)
        out[..., 0] = torch.where(injected & pick, x, out[..., 0])
        out[..., 2] = torch.where(injected & ~pick, theta, out[..., 2])
        return out


# ------------------------------------------------------------------------------------------------ Puddle World
class PuddleWorldDynamics(VectorDynamics):
    """Puddle World's noisy moves; the inverse subtracts the move and fresh noise (clipped at the walls); real states
    lie in the unit square; injected states have one coordinate outside it by ``U(0.05, 0.5)``."""

    def __init__(self, env) -> None:
        self.env = env
        self.num_actions = int(env.action_spec.n)

    def forward(self, state, action, generator):
        noise = 0.01 * torch.randn(state.shape, generator=generator, device=state.device)
        moved = state + self.env.moves.to(state.device)[action] + noise
        inside = ((state >= 0.0) & (state <= 1.0)).all(dim=-1, keepdim=True)
        nxt = torch.where(inside, moved.clamp(0.0, 1.0), moved)  # no walls outside the square
        terminated = (nxt >= 0.95).all(dim=-1) & (nxt <= 1.0).all(dim=-1)
        penalty = self.env.puddle_penalty(nxt.reshape(-1, 2)).reshape(nxt.shape[:-1])
        return nxt, torch.where(terminated, -1.0, -1.0 - penalty), terminated

    def predecessors(self, state, generator):
        a = self.num_actions
        actions = torch.arange(a, device=state.device).view(a, *([1] * (state.dim() - 1))).expand(a, *state.shape[:-1])
        stacked = state.unsqueeze(0).expand(a, *state.shape)
        noise = 0.01 * torch.randn(stacked.shape, generator=generator, device=state.device)
        previous = (stacked - self.env.moves.to(state.device)[actions] - noise).clamp(0.0, 1.0)
        valid = ~(previous >= 0.95).all(dim=-1)
        terminal = self.terminal_state(state)
        penalty = self.env.puddle_penalty(state.reshape(-1, 2)).reshape(state.shape[:-1])
        reward = torch.where(terminal, -1.0, -1.0 - penalty)
        return previous, reward.expand(a, *state.shape[:-1]), valid

    def terminal_state(self, state):
        return (state >= 0.95).all(dim=-1) & (state <= 1.0).all(dim=-1)

    def is_reachable(self, state, terminal=None):
        return _env_real_state_test(self.env, state, terminal)

    def unreachable(self, state, injected, side, pick, u):
        out = state.clone()
        coordinate = torch.where(side < 0, -(0.05 + 0.45 * u), 1.05 + 0.45 * u)
        out[..., 0] = torch.where(injected & pick, coordinate, out[..., 0])
        out[..., 1] = torch.where(injected & ~pick, coordinate, out[..., 1])
        return out


# ----------------------------------------------------------------------------------------------------- Catcher
class CatcherDynamics(VectorDynamics):
    """Catcher's game step on vector observations; the paddle inverted exactly, a just-spawned fruit's predecessor a
    catch at the nearest spawn column; real states lie in the box of reachable game states; injected states have
    the fruit off screen sideways (``fruit_x / width`` in ``-U(0.1, 0.5)`` or ``1 + U(0.1, 0.5)``)."""

    num_actions = 3

    def __init__(self, geometry: CatcherGeometry) -> None:
        self.geometry = g = geometry
        self._low = torch.tensor([0.0, -1.0, min(g.spawn_columns) / g.width, min(g.spawn_heights) / g.height, 0.0])
        self._high = torch.tensor(
            [
                (g.width - g.paddle_width) / g.width,
                1.0,
                max(g.spawn_columns) / g.width,
                (g.height + g.fruit_speed) / g.height,
                1.0,
            ]
        )

    def forward(self, state, action, generator):
        g = self.geometry
        u = torch.rand(*state.shape[:-1], 2, generator=generator, device=state.device)
        raw, reward, terminated = catcher_step(g, catcher_state_from_obs(g, state), action, u[..., 0], u[..., 1])
        return catcher_observe(g, raw), reward, terminated

    def predecessors(self, state, generator):
        g = self.geometry
        a = self.num_actions
        actions = torch.arange(a, device=state.device).view(a, *([1] * (state.dim() - 1))).expand(a, *state.shape[:-1])
        raw = catcher_state_from_obs(g, state.unsqueeze(0).expand(a, *state.shape))
        paddle_x, vel1, fruit_x, fruit_y, lives = raw.unbind(-1)
        dx = torch.tensor([0.0, -1.0, 1.0], device=state.device)[actions] * g.player_speed
        vel = vel1 / 0.9 - dx
        x = paddle_x - vel1
        fruit_prev = fruit_y - g.fruit_speed
        spawned = fruit_prev < min(g.spawn_heights) - _TOL
        # A fruit that just appeared: the old one was caught on the paddle (reward +1), at the spawn column nearest
        # to the paddle (which overlaps it).
        catch_x = x.clamp(min(g.spawn_columns), max(g.spawn_columns))
        fruit_x_prev = torch.where(spawned, catch_x, fruit_x)
        fruit_y_prev = torch.where(spawned, torch.full_like(fruit_prev, g.paddle_y), fruit_prev)
        previous = torch.stack((x, vel, fruit_x_prev, fruit_y_prev, lives), dim=-1)
        valid = (vel.abs() <= g.max_speed + _TOL) & (x >= -_TOL) & (x <= g.width - g.paddle_width + _TOL)
        return catcher_observe(g, previous), spawned.float(), valid

    def terminal_state(self, state):
        return (state[..., 4] <= _TOL) & self.is_reachable(state)

    def is_reachable(self, state, terminal=None):
        if state.shape[-1] != 5:
            raise ValueError(f"catcher states must be [..., 5] vector observations, got {tuple(state.shape)}")
        low, high = self._low.to(state.device), self._high.to(state.device)
        inside = ((state >= low - _TOL) & (state <= high + _TOL)).all(dim=-1)
        return inside & torch.isfinite(state).all(dim=-1)

    def unreachable(self, state, injected, side, pick, u):
        out = state.clone()
        fruit_x = torch.where(side < 0, -(0.1 + 0.4 * u), 1.1 + 0.4 * u)
        out[..., 2] = torch.where(injected, fruit_x, out[..., 2])
        return out
