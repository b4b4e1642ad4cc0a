"""One copy of a classic-control task in plain Python floats: the fast path of the single-env Gymnasium wrapper.

At ``num_envs = 1`` a batched torch env pays torch's per-operation overhead (a few microseconds per op, dozens of ops
per step) for four numbers of state. These classes step one copy with Python's ``math`` on ``float`` (IEEE double, the
same as the batched env's float64 tensors), in the same expression order as :mod:`emphatic_rl.envs.classic` (itself
Gymnasium's order), so that from the same state and action they give the same next state, reward and termination as the
batched env. ``tests/envs/test_gymnasium_citizenship.py`` checks this step for step against the batched env, resets
included.

Start states come from the batched env itself: each scalar env holds a one-copy batched env ``native`` and takes
its start states from ``native.reset(seed)``, so a scalar env and a batched env with ``num_envs=1`` seeded alike
start alike. Between resets ``native`` is not advanced; ``state`` (a list of floats) is the truth.

Float32 steps: Pendulum's torque is float32 as in Gymnasium; its float32 products are rounded with
``numpy.float32`` exactly as torch and numpy round them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from emphatic_rl.envs.classic import Acrobot, CartPole, ClassicControlEnv, MountainCar, Pendulum

__all__ = ["ScalarClassicEnv", "ScalarCartPole", "ScalarMountainCar", "ScalarAcrobot", "ScalarPendulum", "SCALAR_ENVS"]

_f32 = np.float32


class ScalarClassicEnv:
    """One copy of a classic-control task (see the module docstring).

    Args:
        native: a one-copy batched env of the same task (its options and start-state generator are used; its
            ``max_episode_steps`` is ignored: the caller handles time limits).
    """

    native_class: type[ClassicControlEnv] = ClassicControlEnv

    def __init__(self, native: ClassicControlEnv) -> None:
        if not isinstance(native, self.native_class) or native.num_envs != 1:
            raise ValueError(f"{type(self).__name__} needs a one-copy {self.native_class.__name__}, got {native!r}")
        self.native = native
        self.state: list[float] = native.state[0].tolist()

    def reset(self, seed: int | None = None) -> np.ndarray:
        """New start state (from ``native``'s generator, reseeded with ``seed`` if given); returns the observation."""
        self.native.reset(seed=seed)
        self.state = self.native.state[0].tolist()
        return self.observe()

    def set_state(self, state: list[float]) -> None:
        """Put the copy in a given physical state (the layout of ``native.state[0]``)."""
        self.state = [float(v) for v in state]

    def observe(self) -> np.ndarray:
        """The float32 observation of ``state``."""
        return np.array(self.state, dtype=np.float32)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool]:
        """One step; returns ``(observation float32[obs_dim], reward, terminated)``. No autoreset."""
        raise NotImplementedError


class ScalarCartPole(ScalarClassicEnv):
    native_class = CartPole

    def __init__(self, native: CartPole) -> None:
        super().__init__(native)
        self.sutton_barto_reward = native.sutton_barto_reward

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        c = CartPole
        x, x_dot, theta, theta_dot = self.state
        force = c.FORCE_MAG if action == 1 else -c.FORCE_MAG
        costheta = math.cos(theta)
        sintheta = math.sin(theta)
        temp = (force + c.POLEMASS_LENGTH * (theta_dot * theta_dot) * sintheta) / c.TOTAL_MASS
        thetaacc = (c.GRAVITY * sintheta - costheta * temp) / (
            c.LENGTH * (4.0 / 3.0 - c.MASSPOLE * (costheta * costheta) / c.TOTAL_MASS)
        )
        xacc = temp - c.POLEMASS_LENGTH * thetaacc * costheta / c.TOTAL_MASS
        x = x + c.TAU * x_dot
        x_dot = x_dot + c.TAU * xacc
        theta = theta + c.TAU * theta_dot
        theta_dot = theta_dot + c.TAU * thetaacc
        self.state = [x, x_dot, theta, theta_dot]
        terminated = abs(x) > c.X_THRESHOLD or abs(theta) > c.THETA_THRESHOLD_RADIANS
        if self.sutton_barto_reward:
            reward = -1.0 if terminated else 0.0
        else:
            reward = 1.0
        return np.array(self.state, dtype=np.float32), reward, terminated


class ScalarMountainCar(ScalarClassicEnv):
    native_class = MountainCar

    def __init__(self, native: MountainCar) -> None:
        super().__init__(native)
        self.goal_velocity = native.goal_velocity

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        c = MountainCar
        position, velocity = self.state
        push = float(action - 1) * c.FORCE
        velocity = velocity + (push + math.cos(3 * position) * (-c.GRAVITY))
        velocity = min(max(velocity, -c.MAX_SPEED), c.MAX_SPEED)
        position = min(max(position + velocity, c.MIN_POSITION), c.MAX_POSITION)
        if position == c.MIN_POSITION and velocity < 0:
            velocity = 0.0
        self.state = [position, velocity]
        terminated = position >= c.GOAL_POSITION and velocity >= self.goal_velocity
        return np.array(self.state, dtype=np.float32), -1.0, terminated


def _wrap(angle: float) -> float:
    """Gymnasium's ``wrap(x, -pi, pi)``."""
    two_pi = math.pi - (-math.pi)
    while angle > math.pi:
        angle = angle - two_pi
    while angle < -math.pi:
        angle = angle + two_pi
    return angle


class ScalarAcrobot(ScalarClassicEnv):
    native_class = Acrobot

    def __init__(self, native: Acrobot) -> None:
        super().__init__(native)
        self.nips = native.book_or_nips == "nips"

    def _derivatives(
        self, theta1: float, theta2: float, dtheta1: float, dtheta2: float, torque: float
    ) -> tuple[float, float, float, float]:
        # tensors' ``x**2`` is ``x * x`` in torch; Python's ``x**2`` is libm's ``pow``: written out as products
        c = Acrobot
        m1, m2 = c.LINK_MASS_1, c.LINK_MASS_2
        l1 = c.LINK_LENGTH_1
        lc1, lc2 = c.LINK_COM_POS_1, c.LINK_COM_POS_2
        I1 = I2 = c.LINK_MOI
        g = c.GRAVITY
        pi = math.pi
        cos_theta2 = math.cos(theta2)
        sin_theta2 = math.sin(theta2)
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos_theta2) + I1 + I2
        d2 = m2 * (lc2**2 + l1 * lc2 * cos_theta2) + I2
        phi2 = m2 * lc2 * g * math.cos(theta1 + theta2 - pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * (dtheta2 * dtheta2) * sin_theta2
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin_theta2
            + (m1 * lc1 + m2 * l1) * g * math.cos(theta1 - pi / 2)
            + phi2
        )
        if self.nips:
            ddtheta2 = (torque + d2 / d1 * phi1 - phi2) / (m2 * lc2**2 + I2 - (d2 * d2) / d1)
        else:
            ddtheta2 = (torque + d2 / d1 * phi1 - m2 * l1 * lc2 * (dtheta1 * dtheta1) * sin_theta2 - phi2) / (
                m2 * lc2**2 + I2 - (d2 * d2) / d1
            )
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return dtheta1, dtheta2, ddtheta1, ddtheta2

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        c = Acrobot
        torque = float(action - 1)
        y0 = self.state
        dt = c.DT - 0
        dt2 = dt / 2.0
        k1 = self._derivatives(*y0, torque)
        k2 = self._derivatives(*(y + dt2 * k for y, k in zip(y0, k1, strict=True)), torque)
        k3 = self._derivatives(*(y + dt2 * k for y, k in zip(y0, k2, strict=True)), torque)
        k4 = self._derivatives(*(y + dt * k for y, k in zip(y0, k3, strict=True)), torque)
        theta1, theta2, dtheta1, dtheta2 = (
            y + dt / 6.0 * (a + 2 * b + 2 * c_ + d) for y, a, b, c_, d in zip(y0, k1, k2, k3, k4, strict=True)
        )
        theta1 = _wrap(theta1)
        theta2 = _wrap(theta2)
        dtheta1 = min(max(dtheta1, -c.MAX_VEL_1), c.MAX_VEL_1)
        dtheta2 = min(max(dtheta2, -c.MAX_VEL_2), c.MAX_VEL_2)
        self.state = [theta1, theta2, dtheta1, dtheta2]
        terminated = -math.cos(theta1) - math.cos(theta2 + theta1) > 1.0
        return self.observe(), (0.0 if terminated else -1.0), terminated

    def observe(self) -> np.ndarray:
        theta1, theta2, dtheta1, dtheta2 = self.state
        return np.array(
            [math.cos(theta1), math.sin(theta1), math.cos(theta2), math.sin(theta2), dtheta1, dtheta2],
            dtype=np.float32,
        )


class ScalarPendulum(ScalarClassicEnv):
    native_class = Pendulum

    def __init__(self, native: Pendulum) -> None:
        super().__init__(native)
        self.g = native.g

    def step(self, action: Any) -> tuple[np.ndarray, float, bool]:
        c = Pendulum
        th, thdot = self.state
        g, m, length, dt = self.g, c.MASS, c.LENGTH, c.DT
        u = float(
            _f32(min(max(float(np.asarray(action, dtype=np.float32).reshape(-1)[0]), -c.MAX_TORQUE), c.MAX_TORQUE))
        )
        angle = (th + math.pi) % (2 * math.pi) - math.pi
        u_squared = float(_f32(u * u))  # float32 products, rounded as torch rounds them
        costs = angle * angle + 0.1 * (thdot * thdot) + float(_f32(float(_f32(0.001)) * u_squared))
        newthdot = thdot + (3 * g / (2 * length) * math.sin(th) + float(_f32(3.0 / (m * length**2) * u))) * dt
        newthdot = min(max(newthdot, -c.MAX_SPEED), c.MAX_SPEED)
        newth = th + newthdot * dt
        self.state = [newth, newthdot]
        return self.observe(), float(_f32(-costs)), False

    def observe(self) -> np.ndarray:
        th, thdot = self.state
        return np.array([math.cos(th), math.sin(th), thdot], dtype=np.float32)


#: native env name -> scalar class
SCALAR_ENVS: dict[str, type[ScalarClassicEnv]] = {
    "cartpole": ScalarCartPole,
    "mountain-car": ScalarMountainCar,
    "acrobot": ScalarAcrobot,
    "pendulum": ScalarPendulum,
}
