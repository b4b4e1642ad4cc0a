"""Catcher, batched: the Pygame Learning Environment (PLE) game, without pygame and without pixels by default.

A paddle slides along the bottom of a ``width x height`` screen and catches fruit that falls from above the top.
The rules are PLE's ``ple/games/catcher.py`` (default 64 x 64 screen, 30 frames per second) as its source shows
them; where PLE's behaviour depends on pygame details we chose a continuous equivalent, marked **ours** below.

Geometry (PLE's constants, in pixels for a 64 x 64 screen):

- fruit: a square of side ``fruit_size = round(0.06 height) = 4``; falls ``0.00095 height * dt`` per step with
  ``dt = 1000 / 30`` ms (PLE's ``force_fps`` step), about 2.03 px;
- paddle: ``round(0.2 width) = 13`` wide, ``round(0.04 height) = 3`` high, its centre at ``y = height - 3 - 3``;
  the action adds ``dx = -0.021 width`` (left), ``+0.021 width`` (right) or 0 (no-op) to its velocity, then
  ``vel <- 0.9 vel``, ``x <- x + vel``; at a wall (``x <= 0`` or ``x + paddle_width >= width``) ``vel = 0`` and ``x``
  is clamped to ``[0, width - paddle_width]``. As in PLE, ``x`` is the paddle rectangle's *centre*, clamped as if it
  were its left edge (so the paddle can reach half a paddle past the left wall and stops short of the right one);
- a new fruit appears at ``x`` drawn uniformly from ``range(2 fs, width - 2 fs, fs)`` (12 columns) and ``y`` from
  ``-range(fs, height / 2, fs)`` (7 heights above the screen); the first one at reset, then after each catch or miss.

Step order (PLE's ``Catcher.step``), from the state at time ``t``:

1. if the fruit's centre is at or below the bottom (``fruit_y >= height``): reward ``-1`` (miss), one life lost, a new
   fruit;
2. if the paddle and fruit rectangles overlap: reward ``+1`` (catch), a new fruit;
3. the paddle moves (action), the fruit falls;
4. when no life is left the episode terminates, with PLE's extra ``loss`` reward (``loss_reward=-5``).

**Ours**: positions are continuous (pygame rounds rectangles to whole pixels); "overlap" is
``|paddle_x - fruit_x| < (paddle_width + fruit_size) / 2`` and ``|paddle_y - fruit_y| < (paddle_height +
fruit_size) / 2`` (pygame's strict ``colliderect``); the paddle starts at PLE's ``width / 2 - paddle_width / 2``
with ``vel = 0``; episodes are cut at ``max_episode_steps=1000`` (PLE has no time limit). Action order: ``0: no-op,
1: left, 2: right``.

Observations (``observation="vector"``, default; PLE's ``getGameState`` plus the lives, scaled), ``float32[N, 5]``:
``(paddle_x / width, paddle_vel / max_speed, fruit_x / width, fruit_y / height, lives / init_lives)`` where
``max_speed = 0.9 * 0.021 width / (1 - 0.9)`` is the paddle's terminal speed (so the velocity lies in ``[-1, 1]``).
The lives are part of the state because the episode's end depends on them (PLE keeps them outside its game state).
``observation="image"``: a small channel-last ``bool[N, image_size, image_size, 2]`` picture (channel 0: paddle,
channel 1: fruit), a cell set when the object's rectangle overlaps it; a fruit above the screen is not drawn.

The game is deterministic given the fruit draws, which come from the env's generator. :func:`catcher_step` is the
same transition as a pure function of any batch of states, used by simulators (a model that *is* the game).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from emphatic_rl.envs.base import BoxSpec, DiscreteSpec, TensorEnv
from emphatic_rl.envs.registry import register_env

if TYPE_CHECKING:
    from emphatic_rl.envs.vector_dynamics import VectorDynamics

__all__ = ["Catcher", "CatcherGeometry", "catcher_step", "catcher_observe", "catcher_state_from_obs"]

FPS = 30
PADDLE_FRICTION = 0.9


@dataclass(frozen=True)
class CatcherGeometry:
    """PLE's constants for a ``width x height`` screen (pixels); see the module docstring."""

    width: int = 64
    height: int = 64
    init_lives: int = 3
    loss_reward: float = -5.0

    @property
    def fruit_size(self) -> int:
        return int(round(0.06 * self.height))

    @property
    def fruit_speed(self) -> float:
        return 0.00095 * self.height * (1000.0 / FPS)

    @property
    def player_speed(self) -> float:
        return 0.021 * self.width

    @property
    def max_speed(self) -> float:
        """Terminal paddle speed ``0.9 dx / (1 - 0.9)`` under a held key."""
        return PADDLE_FRICTION * self.player_speed / (1.0 - PADDLE_FRICTION)

    @property
    def paddle_width(self) -> int:
        return int(round(0.2 * self.width))

    @property
    def paddle_height(self) -> int:
        return int(round(0.04 * self.height))

    @property
    def paddle_y(self) -> float:
        return float(self.height - self.paddle_height - 3)

    @property
    def paddle_start(self) -> float:
        return self.width / 2 - self.paddle_width / 2

    @property
    def spawn_columns(self) -> list[int]:
        fs = self.fruit_size
        return list(range(2 * fs, self.width - 2 * fs, fs))

    @property
    def spawn_heights(self) -> list[int]:
        """Negative ``y`` of a new fruit (above the screen)."""
        fs = self.fruit_size
        return [-y for y in range(fs, int(self.height / 2), fs)]

    def scale(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``float32[5]``: the divisors from the state to the vector observation."""
        return torch.tensor(
            [self.width, self.max_speed, self.width, self.height, self.init_lives], dtype=torch.float32, device=device
        )


def _respawn(geometry: CatcherGeometry, columns: torch.Tensor, heights: torch.Tensor, u_x, u_y) -> torch.Tensor:
    """``[..., 2]`` fresh fruit ``(x, y)`` from uniform draws ``u_x, u_y`` in ``[0, 1)``."""
    ix = (u_x * columns.numel()).long().clamp(max=columns.numel() - 1)
    iy = (u_y * heights.numel()).long().clamp(max=heights.numel() - 1)
    return torch.stack((columns[ix], heights[iy]), dim=-1)


def catcher_step(
    geometry: CatcherGeometry, state: torch.Tensor, action: torch.Tensor, u_x: torch.Tensor, u_y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Catcher step of any batch of raw states (pure function; the env's transition).

    Args:
        geometry: the screen's constants.
        state: ``float32[..., 5]`` raw ``(paddle_x, paddle_vel, fruit_x, fruit_y, lives)`` in pixels / lives.
        action: ``int64[...]``, ``0`` no-op, ``1`` left, ``2`` right.
        u_x: ``[...]`` uniform draws in ``[0, 1)`` for a new fruit's column (used where one is needed).
        u_y: ``[...]`` uniform draws in ``[0, 1)`` for a new fruit's height.

    Returns:
        ``(next_state [..., 5], reward float32[...], terminated bool[...])``.
    """
    device = state.device
    columns = torch.tensor(geometry.spawn_columns, dtype=state.dtype, device=device)
    heights = torch.tensor(geometry.spawn_heights, dtype=state.dtype, device=device)
    paddle_x, vel, fruit_x, fruit_y, lives = state.unbind(-1)
    fresh = _respawn(geometry, columns, heights, u_x, u_y)
    # 1. miss: the fruit reached the bottom
    missed = fruit_y >= geometry.height
    reward = torch.where(missed, -1.0, 0.0).to(torch.float32)
    lives = lives - missed.to(state.dtype)
    fruit_x = torch.where(missed, fresh[..., 0], fruit_x)
    fruit_y = torch.where(missed, fresh[..., 1], fruit_y)
    # 2. catch: the rectangles overlap (strictly)
    fs = geometry.fruit_size
    caught = ((paddle_x - fruit_x).abs() < (geometry.paddle_width + fs) / 2) & (
        (geometry.paddle_y - fruit_y).abs() < (geometry.paddle_height + fs) / 2
    )
    reward = reward + caught.to(torch.float32)
    fruit_x = torch.where(caught, fresh[..., 0], fruit_x)
    fruit_y = torch.where(caught, fresh[..., 1], fruit_y)
    # 3. the paddle moves, the fruit falls
    dx = torch.tensor([0.0, -1.0, 1.0], dtype=state.dtype, device=device)[action]
    vel = (vel + dx * geometry.player_speed) * PADDLE_FRICTION
    paddle_x = paddle_x + vel
    at_left = paddle_x <= 0
    at_right = paddle_x + geometry.paddle_width >= geometry.width
    vel = torch.where(at_left | at_right, torch.zeros_like(vel), vel)
    paddle_x = paddle_x.clamp(0.0, float(geometry.width - geometry.paddle_width))
    fruit_y = fruit_y + geometry.fruit_speed
    # 4. game over
    terminated = lives <= 0
    reward = reward + torch.where(terminated, geometry.loss_reward, 0.0).to(torch.float32)
    return torch.stack((paddle_x, vel, fruit_x, fruit_y, lives), dim=-1), reward, terminated


def catcher_observe(geometry: CatcherGeometry, state: torch.Tensor) -> torch.Tensor:
    """Raw states ``[..., 5]`` -> vector observations ``float32[..., 5]`` (see the module docstring)."""
    return (state / geometry.scale(state.device)).to(torch.float32)


def catcher_state_from_obs(geometry: CatcherGeometry, obs: torch.Tensor) -> torch.Tensor:
    """Vector observations ``[..., 5]`` -> raw states (the inverse of :func:`catcher_observe`)."""
    return obs.to(torch.float32) * geometry.scale(obs.device)


@register_env("catcher")
class Catcher(TensorEnv):
    """Catcher of the Pygame Learning Environment (see the module docstring for the exact rules).

    Args:
        num_envs: as for every ``TensorEnv``.
        device: as for every ``TensorEnv``.
        max_episode_steps: as for every ``TensorEnv``.
        check_actions: as for every ``TensorEnv``.
        width: screen width in pixels (PLE default 64).
        height: screen height in pixels (PLE default 64).
        lives: lives at the start of an episode (PLE's ``init_lives``, default 3).
        loss_reward: extra reward on the step that loses the last life (PLE's default ``-5``).
        observation: ``"vector"`` (``float32[N, 5]``) or ``"image"`` (``bool[N, image_size, image_size, 2]``).
        image_size: side of the image observation in cells (4 .. min(width, height); default 16, 4 px per cell).
    """

    name = "catcher"
    state_names = ("state",)
    action_spec = DiscreteSpec(3)
    observation_depends_only_on_state = True
    has_vector_dynamics = True  # vector_dynamics(), with observation="vector" (an instance with images sets False)

    def __init__(
        self,
        num_envs: int = 1,
        device: torch.device | str = "cpu",
        max_episode_steps: int | None = 1000,
        check_actions: bool = True,
        width: int = 64,
        height: int = 64,
        lives: int = 3,
        loss_reward: float = -5.0,
        observation: str = "vector",
        image_size: int = 16,
    ) -> None:
        for key, value, low in (("width", width, 32), ("height", height, 32), ("lives", lives, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"catcher: {key} must be an integer >= {low}, got {value!r}")
        if observation not in ("vector", "image"):
            raise ValueError(f"catcher: observation must be 'vector' or 'image', got {observation!r}")
        if not isinstance(image_size, int) or isinstance(image_size, bool) or not 4 <= image_size <= min(width, height):
            raise ValueError(f"catcher: image_size must be an integer in [4, {min(width, height)}], got {image_size!r}")
        if not math.isfinite(loss_reward):
            raise ValueError(f"catcher: loss_reward must be finite, got {loss_reward!r}")
        super().__init__(num_envs, device, max_episode_steps, check_actions)
        self.geometry = CatcherGeometry(width, height, lives, float(loss_reward))
        self.observation = observation
        self.image_size = image_size
        #: the game's rules on vector states (Dyna's perfect model and detector); not for image observations
        self.has_vector_dynamics = observation == "vector"
        g = self.geometry
        if observation == "vector":
            self.observation_spec = BoxSpec(
                (5,),
                low=(0.0, -1.0, 0.0, min(g.spawn_heights) / g.height, 0.0),
                high=(1.0, 1.0, 1.0, (g.height + g.fruit_speed) / g.height, 1.0),
            )
        else:
            self.observation_spec = BoxSpec((image_size, image_size, 2), low=0.0, high=1.0, dtype=torch.bool)
        self.state = torch.zeros(num_envs, 5, dtype=torch.float32, device=self.device)
        self._reset_where(torch.ones(num_envs, dtype=torch.bool, device=self.device))

    def vector_dynamics(self) -> VectorDynamics:
        """The game's step on vector observations, its inverse, the reachable-state test and injected unreachable
        states (:class:`~emphatic_rl.envs.vector_dynamics.CatcherDynamics`); only with ``observation="vector"``."""
        if not self.has_vector_dynamics:
            raise NotImplementedError("catcher gives vector dynamics only with observation='vector'")
        from emphatic_rl.envs.vector_dynamics import CatcherDynamics

        return CatcherDynamics(self.geometry)

    def set_state(self, state: torch.Tensor) -> None:
        """Put every copy in the raw state ``[N, 5]`` or ``[5]`` (pixels, see :func:`catcher_step`)."""
        state = torch.as_tensor(state, dtype=torch.float32, device=self.device)
        if state.shape not in ((self.num_envs, 5), (5,)):
            raise ValueError(f"Catcher.set_state: state has shape {tuple(state.shape)}, expected ({self.num_envs}, 5)")
        self.state = state.expand(self.num_envs, 5).clone()

    def _reset_where(self, mask: torch.Tensor) -> None:
        g = self.geometry
        u = self.uniform(self.num_envs, 2)
        columns = torch.tensor(g.spawn_columns, dtype=torch.float32, device=self.device)
        heights = torch.tensor(g.spawn_heights, dtype=torch.float32, device=self.device)
        fruit = _respawn(g, columns, heights, u[:, 0], u[:, 1])
        fresh = torch.cat(
            (
                torch.tensor([g.paddle_start, 0.0], device=self.device).expand(self.num_envs, 2),
                fruit,
                torch.full((self.num_envs, 1), float(g.init_lives), device=self.device),
            ),
            dim=1,
        )
        self.state = torch.where(mask.unsqueeze(1), fresh, self.state)

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.uniform(self.num_envs, 2)
        self.state, reward, terminated = catcher_step(self.geometry, self.state, action, u[:, 0], u[:, 1])
        return reward, terminated

    def _observe(self) -> torch.Tensor:
        if self.observation == "vector":
            return catcher_observe(self.geometry, self.state)
        return self.render_image(self.state)

    def render_image(self, state: torch.Tensor) -> torch.Tensor:
        """Raw states ``[N, 5]`` -> ``bool[N, image_size, image_size, 2]`` (paddle, fruit) occupancy pictures."""
        g, k = self.geometry, self.image_size
        cell_w, cell_h = g.width / k, g.height / k
        edges_x = torch.arange(k, dtype=torch.float32, device=self.device) * cell_w
        edges_y = torch.arange(k, dtype=torch.float32, device=self.device) * cell_h

        def paint(cx, cy, w, h):  # [N] centres -> [N, k, k] cells overlapped by the rectangle
            left, right = (cx - w / 2).unsqueeze(1), (cx + w / 2).unsqueeze(1)
            top, bottom = (cy - h / 2).unsqueeze(1), (cy + h / 2).unsqueeze(1)
            cols = (edges_x < right) & (edges_x + cell_w > left)
            rows = (edges_y < bottom) & (edges_y + cell_h > top)
            return rows.unsqueeze(2) & cols.unsqueeze(1)

        paddle_y = torch.full_like(state[:, 0], g.paddle_y)
        paddle = paint(state[:, 0], paddle_y, g.paddle_width, g.paddle_height)
        fruit = paint(state[:, 2], state[:, 3], g.fruit_size, g.fruit_size)
        return torch.stack((paddle, fruit), dim=-1)
