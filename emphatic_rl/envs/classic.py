"""Batched torch versions of Gymnasium's classic-control tasks: CartPole, MountainCar, Acrobot, Pendulum.

Each env reproduces Gymnasium 1.4's dynamics, bounds, rewards, start distributions, termination and default
time limit (``CartPole-v1``: 500, ``MountainCar-v0``: 200, ``Acrobot-v1``: 500, ``Pendulum-v1``: 200).

Precision: Gymnasium keeps these states in float64 (numpy scalars) and returns float32 observations. We do the
same: ``self.state`` is ``float64[N, state_dim]``, observations are float32, rewards float32. Every arithmetic
expression is written in the same order as Gymnasium's so that, from the same state, one step gives the same
float64 state except where torch's vectorised ``sin``/``cos`` differ from libm's by one ulp (about 0.15% of
calls on CPU). ``tests/envs/test_classic_parity.py`` checks this step for step against Gymnasium.

Start states are drawn from the env's ``torch.Generator`` with the same distributions as Gymnasium (not the
same numbers). ``set_state(state)`` puts every copy in a given state, e.g. to mirror
``gym_env.unwrapped.state``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from emphatic_rl.envs.base import BoxSpec, CompiledBackendMixin, DiscreteSpec, StepResult, TensorEnv
from emphatic_rl.envs.registry import register_env

if TYPE_CHECKING:
    from emphatic_rl.envs.vector_dynamics import VectorDynamics

__all__ = ["ClassicControlEnv", "CartPole", "MountainCar", "Acrobot", "Pendulum"]


class ClassicControlEnv(CompiledBackendMixin, TensorEnv):
    """Shared machinery: a ``float64[N, state_dim]`` physical state named ``state``, and the two backends.

    Backends (:attr:`backend`, :meth:`set_backend`): on the CPU ``step`` is one compiled call
    (:mod:`emphatic_rl.envs.kernels`, ``"numba"``, chosen automatically when numba is installed) plus, on steps
    where episodes ended, the draw of their start states from the env's generator and one more call that writes
    them; on other devices (or with ``set_backend("torch")``) it is the batched torch operations. Both draw the same
    start states from the generator (so a seed gives the same start states on either backend) and follow
    Gymnasium step for step; they may differ in the last bit where torch's vectorised ``sin``/``cos`` differ from
    libm's (the compiled kernels call libm, as Gymnasium does).

    The numba backend updates ``state`` in place (the torch backend replaces the tensor) and, because checking in
    the kernel costs nothing, always checks that discrete actions lie in the action set (``check_actions=False``
    only skips the finiteness check of Pendulum's torques there). Every ``step`` returns fresh tensors on both
    backends: nothing a caller keeps is overwritten by a later step.
    """

    state_names = ("state",)
    #: number of columns of ``self.state``; set by subclasses.
    state_dim: int = 0
    #: name of the compiled step kernel in :mod:`emphatic_rl.envs.kernels`; set by subclasses.
    step_kernel_name: str = ""
    #: name of the kernel that writes the observation of some copies (``rows, count, state, obs``).
    observe_kernel_name: str = "observe_state_rows"

    def __init__(
        self,
        num_envs: int,
        device: torch.device | str,
        max_episode_steps: int | None,
        check_actions: bool,
    ) -> None:
        super().__init__(num_envs, device, max_episode_steps, check_actions)
        #: draw start states only for the copies that ended (see ``_reset_where``)
        self.draw_only_ended = self.device.type == "cpu"
        self.state = torch.zeros(num_envs, self.state_dim, dtype=torch.float64, device=self.device)
        self._reset_where(torch.ones(num_envs, dtype=torch.bool, device=self.device))
        self.set_backend("auto")

    def set_state(self, state: torch.Tensor) -> None:
        """Put every copy in the given physical state.

        Args:
            state: ``[N, state_dim]`` (or ``[state_dim]``, broadcast to every copy), in the layout of Gymnasium's
                ``env.unwrapped.state``. Stored as float64. Step counters are left alone.
        """
        state = torch.as_tensor(state, dtype=torch.float64, device=self.device)
        if state.shape not in ((self.num_envs, self.state_dim), (self.state_dim,)):
            raise ValueError(
                f"{type(self).__name__}.set_state: state has shape {tuple(state.shape)}, expected "
                f"({self.num_envs}, {self.state_dim}) or ({self.state_dim},)"
            )
        self.state = state.expand(self.num_envs, self.state_dim).clone(memory_format=torch.contiguous_format)

    def _fresh_states(self, count: int) -> torch.Tensor:
        """``float64[count, state_dim]`` start states drawn from the env's generator."""
        raise NotImplementedError

    def _uniform(self, count: int, columns: int, low: float, high: float) -> torch.Tensor:
        """``float64[count, columns]`` uniform in ``[low, high)`` from the env's generator (one torch op)."""
        fresh = torch.empty(count, columns, dtype=torch.float64, device=self.device)
        return fresh.uniform_(low, high, generator=self.generator)

    def _reset_where(self, mask: torch.Tensor) -> None:
        """Fresh start states where ``mask``.

        On the CPU only the ended copies draw (finding them costs no device sync there, and drawing float64
        numbers for every copy at every step would be the most expensive part of a step). On an accelerator
        every copy draws and ``torch.where`` keeps the old state where ``mask`` is false: no host sync.
        """
        if self.draw_only_ended:
            index = mask.nonzero().squeeze(1)
            if index.numel() > 0:
                self.state = self.state.index_put((index,), self._fresh_states(index.numel()))
        else:
            self.state = torch.where(mask.unsqueeze(1), self._fresh_states(self.num_envs), self.state)

    def _observe_torch(self) -> torch.Tensor:
        """The torch backend's observation of every copy."""
        raise NotImplementedError

    def _observe(self) -> torch.Tensor:
        if self._backend != "numba":
            return self._observe_torch()
        obs = np.empty((1, self.num_envs, *self.observation_spec.shape), dtype=np.float32)
        self._observe_kernel(self._all_rows, self.num_envs, self._state_array(), obs, 0)
        return torch.from_numpy(obs[0])

    # ------------------------------------------------------------------ numba backend
    def _kernel_option(self) -> float | bool:
        """The env's option that its step kernel takes (reward mode, goal velocity, dynamics, gravity)."""
        raise NotImplementedError

    def _setup_kernels(self) -> None:
        from emphatic_rl.envs import kernels

        self._step_kernel = getattr(kernels, self.step_kernel_name)
        self._observe_kernel = getattr(kernels, self.observe_kernel_name)
        self._restart_rows = kernels.restart_rows
        self._ended = np.zeros(self.num_envs, dtype=np.int64)  # the copies whose episode ended, in order
        self._all_rows = np.arange(self.num_envs, dtype=np.int64)
        self._scratch = np.zeros((self.num_envs, 2), dtype=np.float64)  # per-copy scratch of the step kernels
        self._state_seen: torch.Tensor | None = None
        self._elapsed_seen: torch.Tensor | None = None

    def _state_array(self) -> np.ndarray:
        """A numpy view of ``self.state`` (made contiguous float64 first if it was replaced by something else)."""
        state = self.state
        if state is not self._state_seen:
            if (
                state.dtype != torch.float64
                or not state.is_contiguous()
                or state.shape != (self.num_envs, self.state_dim)
            ):
                self.set_state(state)
                state = self.state
            self._state_seen, self._state_np = state, state.numpy()
        return self._state_np

    def _elapsed_array(self) -> np.ndarray:
        elapsed = self.elapsed_steps
        if elapsed is not self._elapsed_seen:
            self._elapsed_seen, self._elapsed_np = elapsed, elapsed.numpy()
        return self._elapsed_np

    def step(self, action: torch.Tensor) -> StepResult:
        """Advance every copy by one step (see :meth:`TensorEnv.step`); on the numba backend in one compiled call
        (two more on steps where an episode ended). Returns fresh tensors."""
        if self._backend != "numba":
            return super().step(action)
        # the fast action check (attribute reads; CompiledBackendMixin._fast_action, inlined: this is the hot path)
        if (
            type(action) is not torch.Tensor
            or action.dtype is not self._kernel_action_dtype
            or action.shape != self._kernel_action_shape
            or not action.is_cpu
            or not action.is_contiguous()
        ):
            action = self._kernel_action(action)
        slot = self._slot
        if slot == self._block_steps:
            self._new_output_blocks()
            slot = 0
        self._slot = slot + 1
        state = self._state_array()
        count = self._run_step_kernel(action.data_ptr(), state, slot)
        if count < 0:
            self._raise_bad_action(action, -1 - count)
        if count or not self.draw_only_ended:
            # the same draws as the torch backend's _reset_where: one row per ended copy (in order), or one per copy
            fresh = self._fresh_rows(count if self.draw_only_ended else self.num_envs)
            self._restart_rows(self._ended, count, fresh, not self.draw_only_ended, state)
            self._observe_kernel(self._ended, count, state, self._blocks[1], slot)
        return self._results[slot]

    def _fresh_rows(self, rows: int) -> np.ndarray:
        """``_fresh_states(rows)`` as a numpy array of at least ``rows`` rows (the numba backend's restarts)."""
        return self._fresh_states(rows).numpy()

    def _run_step_kernel(self, action_address: int, state: np.ndarray, slot: int) -> int:
        """One call of the step kernel: the actions at ``action_address``, the outputs into row ``slot`` of the
        output blocks. Returns the kernel's count of ended copies (or ``-1 - n`` for a bad action of copy ``n``)."""
        final_obs, obs, reward, terminated, truncated = self._blocks
        return self._step_kernel(
            action_address,
            state,
            self._elapsed_array(),
            self.max_episode_steps or 0,
            self._kernel_option(),
            final_obs,
            obs,
            reward,
            terminated,
            truncated,
            slot,
            self._ended,
            self._scratch,
        )


# ====================================================================================== CartPole
@register_env("cartpole")
class CartPole(ClassicControlEnv):
    """CartPole-v1 (Barto, Sutton & Anderson 1983), as in Gymnasium: Euler integration, tau = 0.02 s.

    - state ``[x, x_dot, theta, theta_dot]`` (float64), obs the same in float32, ``obs: [N, 4]``;
    - actions ``{0: push left, 1: push right}`` with force 10 N;
    - start uniform in ``[-0.05, 0.05)^4``;
    - terminated when ``|x| > 2.4`` or ``|theta| > 12 degrees``; reward +1 every step, the terminal one
      included (``sutton_barto_reward=True``: 0 per step and -1 on the terminal step);
    - truncated after ``max_episode_steps`` (default 500).
    """

    name = "cartpole"
    state_dim = 4
    step_kernel_name = "cartpole_step"
    GRAVITY = 9.8
    MASSCART = 1.0
    MASSPOLE = 0.1
    TOTAL_MASS = MASSPOLE + MASSCART
    LENGTH = 0.5  # half the pole's length
    POLEMASS_LENGTH = MASSPOLE * LENGTH
    FORCE_MAG = 10.0
    TAU = 0.02
    THETA_THRESHOLD_RADIANS = 12 * 2 * math.pi / 360
    X_THRESHOLD = 2.4
    #: how far past its bounds the last state of a real episode can lie: one step of at most this size (tau = 0.02 s
    #: times a generous bound of 10 units/s on the velocities)
    TERMINAL_SLACK = 0.2
    has_real_state_test = True  # is_real_state(state, terminal): inside the termination bounds
    has_vector_dynamics = True  # vector_dynamics(): the Euler step, inverted exactly (Dyna with a neural Q)

    observation_spec = BoxSpec(
        (4,),
        low=(-X_THRESHOLD * 2, -math.inf, -THETA_THRESHOLD_RADIANS * 2, -math.inf),
        high=(X_THRESHOLD * 2, math.inf, THETA_THRESHOLD_RADIANS * 2, math.inf),
    )
    action_spec = DiscreteSpec(2)

    def __init__(
        self,
        num_envs: int = 1,
        device: torch.device | str = "cpu",
        max_episode_steps: int | None = 500,
        check_actions: bool = True,
        sutton_barto_reward: bool = False,
    ) -> None:
        self.sutton_barto_reward = bool(sutton_barto_reward)
        super().__init__(num_envs, device, max_episode_steps, check_actions)
        self._force_of_action = torch.tensor([-self.FORCE_MAG, self.FORCE_MAG], dtype=torch.float64, device=self.device)
        self._thresholds = torch.tensor(
            [self.X_THRESHOLD, self.THETA_THRESHOLD_RADIANS], dtype=torch.float64, device=self.device
        )

    def _fresh_states(self, count: int) -> torch.Tensor:
        return self._uniform(count, 4, -0.05, 0.05)

    def vector_dynamics(self) -> VectorDynamics:
        """The Euler step as a batched function of any states, its exact inverse, the real-state test and injected
        unreachable states (:class:`~emphatic_rl.envs.vector_dynamics.CartPoleDynamics`)."""
        from emphatic_rl.envs.vector_dynamics import CartPoleDynamics

        return CartPoleDynamics(self)

    def _setup_kernels(self) -> None:
        super()._setup_kernels()
        # the start states of a step's restarts are drawn into the first rows of this buffer (no new tensor)
        self._fresh_buffer = torch.empty(self.num_envs, 4, dtype=torch.float64)
        self._fresh_buffer_np = self._fresh_buffer.numpy()

    def _fresh_rows(self, rows: int) -> np.ndarray:
        # the same draws as _fresh_states(rows): uniform_ fills a contiguous [rows, 4] block in the same order
        self._fresh_buffer[:rows].uniform_(-0.05, 0.05, generator=self.generator)
        return self._fresh_buffer_np

    def is_real_state(self, state: torch.Tensor, terminal: torch.Tensor | None = None) -> torch.Tensor:
        """``bool[B]``: ``state [B, 4]`` ``(x, x_dot, theta, theta_dot)`` is finite and inside the termination bounds
        ``|x| <= 2.4``, ``|theta| <= 12 deg``; past them it is real only if ``terminal`` marks the transition that
        produced it as the episode's end and it lies within ``TERMINAL_SLACK`` of the bounds. (A state beyond the
        bounds that does not end the episode is the hallucination the Hallucinating Value paper names for
        CartPole.)

        Raises:
            ValueError: ``state`` is not ``[B, 4]``.
        """
        if state.dim() != 2 or state.shape[1] != 4:
            raise ValueError(f"cartpole states must be [B, 4] (x, x_dot, theta, theta_dot), got {tuple(state.shape)}")
        x, theta = state[:, 0].abs(), state[:, 2].abs()
        inside = (x <= self.X_THRESHOLD) & (theta <= self.THETA_THRESHOLD_RADIANS)
        finite = torch.isfinite(state).all(dim=1)
        if terminal is None:
            return inside & finite
        slack = self.TERMINAL_SLACK
        near = (x <= self.X_THRESHOLD + slack) & (theta <= self.THETA_THRESHOLD_RADIANS + slack)
        return finite & (inside | (terminal.bool() & near))

    def _kernel_option(self) -> bool:
        return self.sutton_barto_reward

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Hot path (see benchmarks/envs.py): few torch ops, no device sync. Each component is computed
        # as in Gymnasium, in its order; the Euler step and the bounds test run on the stacked state.
        x, x_dot, theta, theta_dot = self.state.unbind(1)
        force = self._force_of_action[action]
        costheta = torch.cos(theta)
        sintheta = torch.sin(theta)
        temp = (force + self.POLEMASS_LENGTH * theta_dot.square() * sintheta) / self.TOTAL_MASS
        thetaacc = (self.GRAVITY * sintheta - costheta * temp) / (
            self.LENGTH * (4.0 / 3.0 - self.MASSPOLE * costheta.square() / self.TOTAL_MASS)
        )
        xacc = temp - self.POLEMASS_LENGTH * thetaacc * costheta / self.TOTAL_MASS
        # x + tau * x_dot, x_dot + tau * xacc, theta + tau * theta_dot, theta_dot + tau * thetaacc
        self.state = self.state + self.TAU * torch.stack((x_dot, xacc, theta_dot, thetaacc), dim=1)
        # |x| > 2.4 or |theta| > 12 degrees
        terminated = (self.state[:, 0::2].abs() > self._thresholds).any(dim=1)
        if self.sutton_barto_reward:
            reward = -terminated.to(torch.float32)
        else:
            reward = torch.ones(self.num_envs, dtype=torch.float32, device=self.device)
        return reward, terminated

    def _observe_torch(self) -> torch.Tensor:
        return self.state.to(torch.float32)


# ====================================================================================== MountainCar
@register_env("mountain-car")
class MountainCar(ClassicControlEnv):
    """MountainCar-v0 (Moore 1990; Sutton & Barto), as in Gymnasium.

    - state ``[position, velocity]`` (float64), obs the same in float32, ``obs: [N, 2]``;
    - actions ``{0: push left, 1: no push, 2: push right}``;
    - ``v <- clip(v + 0.001 (a - 1) - 0.0025 cos(3 p), +-0.07)``, ``p <- clip(p + v, [-1.2, 0.6])``, and ``v =
      0`` when the car hits the left wall moving left;
    - start ``p ~ U[-0.6, -0.4)``, ``v = 0``; terminated when ``p >= 0.5`` and ``v >= goal_velocity``;
      reward -1 every step;
    - truncated after ``max_episode_steps`` (default 200; ``None`` is Gymnasium's ``.unwrapped`` env, as used
      by the ACE experiments).
    """

    #: the ACE experiments' tile coding: 4x4 tiles (5x5 internally), 8 tilings (plus a bias feature)
    tile_layout = ((-1.2, -0.07), (0.6, 0.07), (4, 4), 8)

    name = "mountain-car"
    state_dim = 2
    step_kernel_name = "mountain_car_step"
    MIN_POSITION = -1.2
    MAX_POSITION = 0.6
    MAX_SPEED = 0.07
    GOAL_POSITION = 0.5
    FORCE = 0.001
    GRAVITY = 0.0025

    observation_spec = BoxSpec((2,), low=(MIN_POSITION, -MAX_SPEED), high=(MAX_POSITION, MAX_SPEED))
    action_spec = DiscreteSpec(3)

    def __init__(
        self,
        num_envs: int = 1,
        device: torch.device | str = "cpu",
        max_episode_steps: int | None = 200,
        check_actions: bool = True,
        goal_velocity: float = 0.0,
    ) -> None:
        self.goal_velocity = float(goal_velocity)
        super().__init__(num_envs, device, max_episode_steps, check_actions)

    def _fresh_states(self, count: int) -> torch.Tensor:
        fresh = torch.zeros(count, 2, dtype=torch.float64, device=self.device)
        fresh[:, 0].uniform_(-0.6, -0.4, generator=self.generator)  # position; velocity 0
        return fresh

    def _kernel_option(self) -> float:
        return self.goal_velocity

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        position, velocity = self.state.unbind(1)
        push = (action - 1).to(torch.float64) * self.FORCE
        velocity = velocity + (push + torch.cos(3 * position) * (-self.GRAVITY))
        velocity = velocity.clamp(-self.MAX_SPEED, self.MAX_SPEED)
        position = (position + velocity).clamp(self.MIN_POSITION, self.MAX_POSITION)
        velocity = velocity.masked_fill((position == self.MIN_POSITION) & (velocity < 0), 0.0)
        self.state = torch.stack((position, velocity), dim=1)
        terminated = (position >= self.GOAL_POSITION) & (velocity >= self.goal_velocity)
        reward = torch.full((self.num_envs,), -1.0, dtype=torch.float32, device=self.device)
        return reward, terminated

    def _observe_torch(self) -> torch.Tensor:
        return self.state.to(torch.float32)


# ====================================================================================== Acrobot
def _wrap_angle(angle: torch.Tensor) -> torch.Tensor:
    """Gymnasium's ``wrap(x, -pi, pi)``: add or subtract ``2 pi`` until ``-pi <= x <= pi``.

    The loop is unrolled three times (one RK4 step moves an angle by less than ``3 * 2 pi``), then a remainder
    catches anything further out.
    """
    two_pi = math.pi - (-math.pi)
    for _ in range(3):
        angle = torch.where(angle > math.pi, angle - two_pi, angle)
        angle = torch.where(angle < -math.pi, angle + two_pi, angle)
    far = (angle > math.pi) | (angle < -math.pi)
    return torch.where(far, torch.remainder(angle + math.pi, two_pi) - math.pi, angle)


@register_env("acrobot")
class Acrobot(ClassicControlEnv):
    """Acrobot-v1 (Sutton 1996; Geramifard et al. RLPy), as in Gymnasium: one RK4 step of dt = 0.2 s.

    - state ``[theta1, theta2, dtheta1, dtheta2]`` (float64); ``obs: [N, 6]`` =
      ``[cos theta1, sin theta1, cos theta2, sin theta2, dtheta1, dtheta2]`` in float32;
    - actions ``{0, 1, 2}`` apply torque ``-1, 0, +1`` on the second joint;
    - dynamics ``"book"`` (Gymnasium's default, Sutton & Barto's Java version) or ``"nips"``;
    - angles wrapped to ``[-pi, pi]``, velocities bounded by ``4 pi`` and ``9 pi``;
    - start uniform in ``[-0.1, 0.1)^4`` (rounded to float32 like Gymnasium);
    - terminated when ``-cos(theta1) - cos(theta2 + theta1) > 1``; reward -1 per step, 0 on the terminal step;
    - truncated after ``max_episode_steps`` (default 500).
    """

    name = "acrobot"
    state_dim = 4
    step_kernel_name = "acrobot_step"
    observe_kernel_name = "acrobot_observe"
    DT = 0.2
    LINK_LENGTH_1 = 1.0
    LINK_LENGTH_2 = 1.0
    LINK_MASS_1 = 1.0
    LINK_MASS_2 = 1.0
    LINK_COM_POS_1 = 0.5
    LINK_COM_POS_2 = 0.5
    LINK_MOI = 1.0
    MAX_VEL_1 = 4 * math.pi
    MAX_VEL_2 = 9 * math.pi
    AVAIL_TORQUE = (-1.0, 0.0, 1.0)
    GRAVITY = 9.8

    observation_spec = BoxSpec(
        (6,),
        low=(-1.0, -1.0, -1.0, -1.0, -MAX_VEL_1, -MAX_VEL_2),
        high=(1.0, 1.0, 1.0, 1.0, MAX_VEL_1, MAX_VEL_2),
    )
    action_spec = DiscreteSpec(3)

    def __init__(
        self,
        num_envs: int = 1,
        device: torch.device | str = "cpu",
        max_episode_steps: int | None = 500,
        check_actions: bool = True,
        book_or_nips: str = "book",
    ) -> None:
        if book_or_nips not in ("book", "nips"):
            raise ValueError(f"book_or_nips must be 'book' or 'nips', got {book_or_nips!r}")
        self.book_or_nips = book_or_nips
        super().__init__(num_envs, device, max_episode_steps, check_actions)

    def _fresh_states(self, count: int) -> torch.Tensor:
        return self._uniform(count, 4, -0.1, 0.1).to(torch.float32).to(torch.float64)  # float32 like Gymnasium

    def _kernel_option(self) -> bool:
        return self.book_or_nips == "nips"

    def _derivatives(
        self,
        theta1: torch.Tensor,
        theta2: torch.Tensor,
        dtheta1: torch.Tensor,
        dtheta2: torch.Tensor,
        *,
        torque: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gymnasium's ``_dsdt`` on ``[N]`` tensors, same expression order (for bit parity)."""
        m1, m2 = self.LINK_MASS_1, self.LINK_MASS_2
        l1 = self.LINK_LENGTH_1
        lc1, lc2 = self.LINK_COM_POS_1, self.LINK_COM_POS_2
        I1 = I2 = self.LINK_MOI
        g = self.GRAVITY
        pi = math.pi
        cos_theta2 = torch.cos(theta2)
        sin_theta2 = torch.sin(theta2)
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos_theta2) + I1 + I2
        d2 = m2 * (lc2**2 + l1 * lc2 * cos_theta2) + I2
        phi2 = m2 * lc2 * g * torch.cos(theta1 + theta2 - pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * dtheta2**2 * sin_theta2
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin_theta2
            + (m1 * lc1 + m2 * l1) * g * torch.cos(theta1 - pi / 2)
            + phi2
        )
        if self.book_or_nips == "nips":
            ddtheta2 = (torque + d2 / d1 * phi1 - phi2) / (m2 * lc2**2 + I2 - d2**2 / d1)
        else:
            ddtheta2 = (torque + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * sin_theta2 - phi2) / (
                m2 * lc2**2 + I2 - d2**2 / d1
            )
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return dtheta1, dtheta2, ddtheta1, ddtheta2

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        torque = (action - 1).to(torch.float64)  # AVAIL_TORQUE[a] = a - 1
        y0 = self.state.unbind(1)
        dt = self.DT - 0
        dt2 = dt / 2.0
        k1 = self._derivatives(*y0, torque=torque)
        k2 = self._derivatives(*(y + dt2 * k for y, k in zip(y0, k1, strict=True)), torque=torque)
        k3 = self._derivatives(*(y + dt2 * k for y, k in zip(y0, k2, strict=True)), torque=torque)
        k4 = self._derivatives(*(y + dt * k for y, k in zip(y0, k3, strict=True)), torque=torque)
        theta1, theta2, dtheta1, dtheta2 = (
            y + dt / 6.0 * (a + 2 * b + 2 * c + d) for y, a, b, c, d in zip(y0, k1, k2, k3, k4, strict=True)
        )
        theta1 = _wrap_angle(theta1)
        theta2 = _wrap_angle(theta2)
        dtheta1 = dtheta1.clamp(-self.MAX_VEL_1, self.MAX_VEL_1)
        dtheta2 = dtheta2.clamp(-self.MAX_VEL_2, self.MAX_VEL_2)
        self.state = torch.stack((theta1, theta2, dtheta1, dtheta2), dim=1)
        terminated = -torch.cos(theta1) - torch.cos(theta2 + theta1) > 1.0
        reward = terminated.to(torch.float32) - 1.0
        return reward, terminated

    def _observe_torch(self) -> torch.Tensor:
        theta1, theta2, dtheta1, dtheta2 = self.state.unbind(1)
        return torch.stack(
            (torch.cos(theta1), torch.sin(theta1), torch.cos(theta2), torch.sin(theta2), dtheta1, dtheta2),
            dim=1,
        ).to(torch.float32)


# ====================================================================================== Pendulum
@register_env("pendulum")
class Pendulum(ClassicControlEnv):
    """Pendulum-v1 (inverted pendulum swing-up), as in Gymnasium.

    - state ``[theta, theta_dot]`` (float64); ``obs: [N, 3]`` = ``[cos theta, sin theta, theta_dot]`` in
      float32;
    - continuous action ``float32[N, 1]``, the torque, clipped to ``[-2, 2]`` (like Gymnasium, out-of-range
      torques are clipped, not rejected);
    - ``theta_dot <- clip(theta_dot + (3 g / 2 sin(theta) + 3 u) dt, +-8)``, ``theta <- theta + theta_dot
      dt``, ``dt = 0.05``;
    - reward ``-(normalize(theta)^2 + 0.1 theta_dot^2 + 0.001 u^2)`` on the state before the step;
    - start ``theta ~ U[-pi, pi)``, ``theta_dot ~ U[-1, 1)``; never terminates; truncated after
      ``max_episode_steps`` (default 200).
    """

    name = "pendulum"
    state_dim = 2
    step_kernel_name = "pendulum_step"
    observe_kernel_name = "pendulum_observe"
    MAX_SPEED = 8.0
    MAX_TORQUE = 2.0
    DT = 0.05
    MASS = 1.0
    LENGTH = 1.0

    observation_spec = BoxSpec((3,), low=(-1.0, -1.0, -MAX_SPEED), high=(1.0, 1.0, MAX_SPEED))
    action_spec = BoxSpec((1,), low=-MAX_TORQUE, high=MAX_TORQUE)

    def __init__(
        self,
        num_envs: int = 1,
        device: torch.device | str = "cpu",
        max_episode_steps: int | None = 200,
        check_actions: bool = True,
        g: float = 10.0,
    ) -> None:
        self.g = float(g)
        super().__init__(num_envs, device, max_episode_steps, check_actions)

    def _fresh_states(self, count: int) -> torch.Tensor:
        fresh = torch.empty(count, 2, dtype=torch.float64, device=self.device)
        fresh[:, 0].uniform_(-math.pi, math.pi, generator=self.generator)  # theta
        fresh[:, 1].uniform_(-1.0, 1.0, generator=self.generator)  # theta_dot
        return fresh

    def _kernel_option(self) -> float:
        return self.g

    def _run_step_kernel(self, action_address: int, state: np.ndarray, slot: int) -> int:
        final_obs, obs, reward, terminated, truncated = self._blocks
        return self._step_kernel(
            action_address,
            self.check_actions,
            state,
            self._elapsed_array(),
            self.max_episode_steps or 0,
            self.g,
            final_obs,
            obs,
            reward,
            terminated,
            truncated,
            slot,
            self._ended,
            self._scratch,
        )

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        th, thdot = self.state.unbind(1)
        g, m, length, dt = self.g, self.MASS, self.LENGTH, self.DT
        u = action[:, 0].clamp(-self.MAX_TORQUE, self.MAX_TORQUE)  # float32, like Gymnasium
        angle = torch.remainder(th + math.pi, 2 * math.pi) - math.pi
        costs = angle**2 + 0.1 * thdot**2 + (0.001 * (u**2)).to(torch.float64)
        newthdot = thdot + (3 * g / (2 * length) * torch.sin(th) + (3.0 / (m * length**2) * u).to(torch.float64)) * dt
        newthdot = newthdot.clamp(-self.MAX_SPEED, self.MAX_SPEED)
        newth = th + newthdot * dt
        self.state = torch.stack((newth, newthdot), dim=1)
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return (-costs).to(torch.float32), terminated

    def _observe_torch(self) -> torch.Tensor:
        th, thdot = self.state.unbind(1)
        return torch.stack((torch.cos(th), torch.sin(th), thdot), dim=1).to(torch.float32)
