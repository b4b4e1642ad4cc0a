"""Puddle World, batched, as in the ACE experiments (the authors' ``pw.py`` version; see docs/environments.md).

The agent moves in the unit square towards the top-right corner while avoiding two capsule-shaped puddles.

- State and observation ``[x, y]`` in ``[0, 1]^2`` (float32), ``obs: [N, 2]``.
- Actions ``0: up (+y)``, ``1: down (-y)``, ``2: right (+x)``, ``3: left (-x)``; each moves 0.05 along its
  axis, then ``N(0, 0.01^2)`` noise is added to *both* coordinates and the position is clipped to ``[0, 1]``.
- Goal (terminal): ``x >= 0.95 and y >= 0.95`` after the move.
- Reward: -1 on the terminal step; otherwise ``-1 - 400 * sum_p max(0, 0.1 - dist_p)`` where ``dist_p`` is the
  distance of the new position to the segment of puddle ``p``: P1 from (0.1, 0.75) to (0.45, 0.75) and P2 from
  (0.45, 0.4) to (0.45, 0.8), both of radius 0.1. The penalty is at most 40 per puddle (on the segment).
- Start: ``x ~ U[0.3, 0.4)``, ``y ~ U[0.7, 0.8)``, i.e. inside puddle 1.

Backends: :class:`PuddleWorld` steps on the CPU with one compiled call (``backend == "numba"``, the default there
when numba is installed; :mod:`emphatic_rl.envs.kernels`) and with batched torch operations elsewhere
(``set_backend("torch")``). Both draw the same numbers from the env's generator in the same order (the noise of
every copy, then a start position for every copy, as the torch backend does) and compute in float32 in the same
order, so a seed gives the same positions on both; rewards agree to a float32 ulp (the puddle distance's norm).

Time limit: ``max_episode_steps=1000`` by default. The paper's environment has no limit (its behaviour data is
one long stream, pass ``max_episode_steps=None`` for that, as for Mountain Car), but its evaluation of the
target policy caps episodes at 1000 steps, and a user who builds the env to train or evaluate a policy expects
episodes to end: a uniform random policy, which starts inside a puddle, can wander for thousands of steps
before reaching the goal corner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from emphatic_rl.envs.base import BoxSpec, CompiledBackendMixin, DiscreteSpec, StepResult, TensorEnv
from emphatic_rl.envs.registry import register_env

if TYPE_CHECKING:
    from emphatic_rl.envs.vector_dynamics import VectorDynamics

__all__ = [
    "PuddleWorld",
    "GaussianPuddleWorld",
    "GAUSSIAN_PUDDLES",
    "distance_to_segment",
    "PUDDLE_SEGMENTS",
    "PUDDLE_RADIUS",
]

#: ``((x0, y0), (x1, y1))`` of each puddle's centre segment.
PUDDLE_SEGMENTS: tuple[tuple[tuple[float, float], tuple[float, float]], ...] = (
    ((0.1, 0.75), (0.45, 0.75)),
    ((0.45, 0.4), (0.45, 0.8)),
)
PUDDLE_RADIUS = 0.1
PUDDLE_PENALTY = 400.0
STEP_SIZE = 0.05
NOISE_STD = 0.01
GOAL = 0.95


def distance_to_segment(points: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Euclidean distance from each point to the segment ``[start, end]``.

    Args:
        points: ``[N, 2]``.
        start: ``[2]`` (or broadcastable to ``[..., 2]``), the segment's first end point.
        end: the segment's other end point, same shape (``start != end``).

    Returns:
        ``[N]``: distance to the nearest point of the segment (the projection clamped to the segment).
    """
    direction = end - start
    along = ((points - start) * direction).sum(-1) / (direction * direction).sum(-1)
    nearest = start + along.clamp(0.0, 1.0).unsqueeze(-1) * direction
    return torch.linalg.vector_norm(points - nearest, dim=-1)


@register_env("puddle-world")
class PuddleWorld(CompiledBackendMixin, TensorEnv):
    """Puddle World of the ACE experiments (see the module docstring for the exact rules and the backends).

    On the numba backend ``step`` updates ``position`` in place (the torch backend replaces the tensor), always
    checks that actions lie in ``0..3`` (in the kernel, before anything is drawn or changed) and, as the torch
    backend, returns fresh tensors.
    """

    name = "puddle-world"
    state_names = ("position",)
    #: the ACE experiments' tile coding: 2x2 tiles, 2 tilings (plus a bias feature)
    tile_layout = ((0.0, 0.0), (1.0, 1.0), (2, 2), 2)
    observation_spec = BoxSpec((2,), low=0.0, high=1.0)
    action_spec = DiscreteSpec(4)
    has_real_state_test = True  # is_real_state(position): inside the unit square
    has_vector_dynamics = True  # vector_dynamics(): the noisy moves and their inverse (Dyna with a neural Q)

    def vector_dynamics(self) -> VectorDynamics:
        """The moves as a batched function of any positions, their inverse, the real-state test and injected
        unreachable positions (:class:`~emphatic_rl.envs.vector_dynamics.PuddleWorldDynamics`)."""
        from emphatic_rl.envs.vector_dynamics import PuddleWorldDynamics

        return PuddleWorldDynamics(self)

    def is_real_state(self, state: torch.Tensor, terminal: torch.Tensor | None = None) -> torch.Tensor:
        """``bool[B]``: each position of ``state [B, 2]`` lies in the unit square (every move is clamped to it).

        Raises:
            ValueError: ``state`` is not ``[B, 2]``.
        """
        if state.dim() != 2 or state.shape[1] != 2:
            raise ValueError(f"puddle-world states must be [B, 2] positions, got {tuple(state.shape)}")
        return ((state >= 0.0) & (state <= 1.0)).all(dim=1)

    def __init__(
        self,
        num_envs: int = 1,
        device: torch.device | str = "cpu",
        max_episode_steps: int | None = 1000,
        check_actions: bool = True,
    ) -> None:
        super().__init__(num_envs, device, max_episode_steps, check_actions)
        #: ``[4, 2]`` displacement of each action: up, down, right, left.
        self.moves = torch.tensor(
            [[0.0, STEP_SIZE], [0.0, -STEP_SIZE], [STEP_SIZE, 0.0], [-STEP_SIZE, 0.0]],
            dtype=torch.float32,
            device=self.device,
        )
        segments = torch.tensor(PUDDLE_SEGMENTS, dtype=torch.float32, device=self.device)  # [P, 2 ends, 2]
        self.segment_starts = segments[:, 0]  # [P, 2]
        self.segment_ends = segments[:, 1]
        self.position = torch.zeros(num_envs, 2, dtype=torch.float32, device=self.device)
        self._reset_where(torch.ones(num_envs, dtype=torch.bool, device=self.device))
        self.set_backend("auto")

    def set_state(self, position: torch.Tensor) -> None:
        """Put every copy at ``position`` (``[N, 2]`` or ``[2]``, float32). Step counters are left alone."""
        position = torch.as_tensor(position, dtype=torch.float32, device=self.device)
        if position.shape not in ((self.num_envs, 2), (2,)):
            raise ValueError(
                f"PuddleWorld.set_state: position has shape {tuple(position.shape)}, "
                f"expected ({self.num_envs}, 2) or (2,)"
            )
        self.position = position.expand(self.num_envs, 2).clone(memory_format=torch.contiguous_format)

    def puddle_penalty(self, position: torch.Tensor) -> torch.Tensor:
        """``400 * sum_p max(0, 0.1 - dist_p)`` for ``position: [N, 2]``; returns ``[N]`` (>= 0)."""
        # [N, 1, 2] against [P, 2] -> [N, P]
        distances = distance_to_segment(position.unsqueeze(1), self.segment_starts, self.segment_ends)
        return PUDDLE_PENALTY * (PUDDLE_RADIUS - distances).clamp(min=0.0).sum(-1)

    def _reset_where(self, mask: torch.Tensor) -> None:
        fresh = self.uniform(self.num_envs, 2, low=0.0, high=0.1)
        fresh = fresh + torch.tensor([0.3, 0.7], dtype=torch.float32, device=self.device)
        self.position = torch.where(mask.unsqueeze(1), fresh, self.position)

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = self.normal(self.num_envs, 2, std=NOISE_STD)
        self.position = (self.position + self.moves[action] + noise).clamp(0.0, 1.0)
        terminated = (self.position >= GOAL).all(dim=1)
        reward = torch.where(terminated, -1.0, -1.0 - self.puddle_penalty(self.position))
        return reward, terminated

    def _observe(self) -> torch.Tensor:
        return self.position.clone()

    # ------------------------------------------------------------------ numba backend
    def _setup_kernels(self) -> None:
        from emphatic_rl.envs import kernels

        self._kernels = kernels
        segments = torch.cat([self.segment_starts, self.segment_ends], dim=1)
        self._segments = np.ascontiguousarray(segments.numpy(), dtype=np.float32)
        self._noise = torch.empty(self.num_envs, 2)  # standard normal draws of a step
        self._fresh = torch.empty(self.num_envs, 2)  # uniform draws of a step's restarts
        self._noise_np, self._fresh_np = self._noise.numpy(), self._fresh.numpy()
        self._ended = np.zeros(self.num_envs, dtype=np.int64)
        self._position_seen: torch.Tensor | None = None
        self._elapsed_seen: torch.Tensor | None = None

    def _position_array(self) -> np.ndarray:
        position = self.position
        if position is not self._position_seen:
            if position.dtype != torch.float32 or not position.is_contiguous() or position.shape != (self.num_envs, 2):
                self.set_state(position)
                position = self.position
            self._position_seen, self._position_np = position, position.numpy()
        return self._position_np

    def step(self, action: torch.Tensor) -> StepResult:
        """Advance every copy by one step (see :meth:`TensorEnv.step`); on the numba backend one check, the two
        draws of the torch backend, and one compiled call. Returns fresh tensors."""
        if self._backend != "numba":
            return super().step(action)
        action = self._fast_action(action)
        address = action.data_ptr()
        bad = self._kernels.first_bad_action_at(address, self.num_envs, 4)
        if bad:
            self._raise_bad_action(action, -1 - bad)
        # the torch backend's draws, in its order: the noise (normal), then a start position for every copy
        self._noise.normal_(generator=self.generator)
        self._fresh.uniform_(generator=self.generator)
        slot = self._slot
        if slot == self._block_steps:
            self._new_output_blocks()
            slot = 0
        self._slot = slot + 1
        elapsed = self.elapsed_steps
        if elapsed is not self._elapsed_seen:
            self._elapsed_seen, self._elapsed_np = elapsed, elapsed.numpy()
        final_obs, obs, reward, terminated, truncated = self._blocks
        self._kernels.puddle_world_step(
            address,
            self._position_array(),
            self._noise_np,
            self._fresh_np,
            self._elapsed_np,
            self.max_episode_steps or 0,
            self._segments,
            final_obs,
            obs,
            reward,
            terminated,
            truncated,
            slot,
            self._ended,
        )
        return self._results[slot]


#: The Gaussian puddles of the earlier ``gym_puddle`` environment: ``(centre x, centre y, width x, width y)``.
GAUSSIAN_PUDDLES: tuple[tuple[float, float, float, float], ...] = (
    (0.3, 0.6, 0.1, 0.03),
    (0.4, 0.5, 0.03, 0.1),
    (0.8, 0.9, 0.03, 0.1),
)


@register_env("puddle-world-gaussian")
class GaussianPuddleWorld(TensorEnv):
    """The *earlier* Puddle World of the ACE code base: ``gym_puddle``'s ``PuddleWorld-v0``.

    The ACE repository's earlier sweeps used this environment (EhsanEI/gym-puddle, version
    ``1aa537f``) and that which of the two J23's Puddle World figures come from cannot be confirmed; it is here so
    that both can be run with the same agents. The rules, written from that version's description:

    - State and observation ``[x, y]`` in ``[0, 1]^2`` (float32), ``obs: [N, 2]``; start fixed at ``(0.2, 0.4)``
      (outside every puddle).
    - 5 actions: ``0: left (-x)``, ``1: right (+x)``, ``2: down (-y)``, ``3: up (+y)``, ``4: no move``; a move of
      0.05 along its axis, plus noise ``U(-0.025, 0.025)`` on both coordinates; the position is clipped to
      ``[0, 1]``.
    - Reward at the new position: ``-1 - 2 * sum_p N(x; cx_p, wx_p) * N(y; cy_p, wy_p)`` with the Gaussian densities
      of :data:`GAUSSIAN_PUDDLES` (about -107 at a puddle's centre), also on the terminal step.
    - Terminal when ``|x - 1| + |y - 1| < 0.1``.

    Time limit ``max_episode_steps=1000`` by default, as :class:`PuddleWorld` (the original has none).
    """

    #: the same tile coding as ``puddle-world``
    tile_layout = ((0.0, 0.0), (1.0, 1.0), (2, 2), 2)

    name = "puddle-world-gaussian"
    state_names = ("position",)
    observation_spec = BoxSpec((2,), low=0.0, high=1.0)
    action_spec = DiscreteSpec(5)

    def __init__(
        self,
        num_envs: int = 1,
        device: torch.device | str = "cpu",
        max_episode_steps: int | None = 1000,
        check_actions: bool = True,
    ) -> None:
        super().__init__(num_envs, device, max_episode_steps, check_actions)
        #: ``[5, 2]`` displacement of each action: left, right, down, up, none.
        self.moves = torch.tensor(
            [[-STEP_SIZE, 0.0], [STEP_SIZE, 0.0], [0.0, -STEP_SIZE], [0.0, STEP_SIZE], [0.0, 0.0]],
            dtype=torch.float32,
            device=self.device,
        )
        puddles = torch.tensor(GAUSSIAN_PUDDLES, dtype=torch.float32, device=self.device)  # [P, 4]
        self.puddle_centres = puddles[:, :2]
        self.puddle_widths = puddles[:, 2:]
        self.start = torch.tensor([0.2, 0.4], dtype=torch.float32, device=self.device)
        self.position = torch.zeros(num_envs, 2, dtype=torch.float32, device=self.device)
        self._reset_where(torch.ones(num_envs, dtype=torch.bool, device=self.device))

    def puddle_penalty(self, position: torch.Tensor) -> torch.Tensor:
        """``2 * sum_p N(x; cx, wx) N(y; cy, wy)`` for ``position: [N, 2]``; returns ``[N]`` (>= 0)."""
        scaled = (position.unsqueeze(1) - self.puddle_centres) / self.puddle_widths  # [N, P, 2]
        density = torch.exp(-0.5 * scaled.square()) / (self.puddle_widths * (2.0 * torch.pi) ** 0.5)
        return 2.0 * density.prod(dim=-1).sum(dim=-1)

    def _reset_where(self, mask: torch.Tensor) -> None:
        self.position = torch.where(mask.unsqueeze(1), self.start, self.position)

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = self.uniform(self.num_envs, 2, low=-0.025, high=0.025)
        self.position = (self.position + self.moves[action] + noise).clamp(0.0, 1.0)
        reward = -1.0 - self.puddle_penalty(self.position)
        terminated = (1.0 - self.position).abs().sum(dim=1) < 0.1
        return reward, terminated

    def _observe(self) -> torch.Tensor:
        return self.position.clone()
