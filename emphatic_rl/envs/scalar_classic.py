"""One copy of a classic-control task stepped from Python: the fast path of the single-env Gymnasium wrapper.

At ``num_envs = 1`` a batched torch env pays torch's per-operation overhead (a few microseconds per op, dozens of ops
per step) for four numbers of state. These classes hold the state as a list of Python floats and step it with one call
of the compiled scalar physics of :mod:`emphatic_rl.envs.kernels` (``cartpole_dynamics``, ``mountain_car_dynamics``,
``acrobot_dynamics``, ``pendulum_dynamics`` and the observation functions), the same functions the batched CPU kernels
run for every copy; the equations live there and only there. Those functions follow Gymnasium's order of operations in
float64 (Pendulum's torque products in float32, as Gymnasium computes them), so from the same state and action a scalar
env gives the same next state, reward and termination as the batched env.
``tests/envs/test_gymnasium_citizenship.py`` checks this step for step against the batched env and Gymnasium, resets
included.

Start states come from the batched env itself: each scalar env holds a one-copy batched env ``native`` and takes
its start states from ``native.reset(seed)``, so a scalar env and a batched env with ``num_envs=1`` seeded alike
start alike. Between resets ``native`` is not advanced; ``state`` (a list of floats) is the truth.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from emphatic_rl.envs.classic import Acrobot, CartPole, ClassicControlEnv, MountainCar, Pendulum
from emphatic_rl.envs.kernels import (
    acrobot_dynamics,
    acrobot_observation,
    cartpole_dynamics,
    cartpole_terminal,
    mountain_car_dynamics,
    pendulum_dynamics,
    pendulum_observation,
)

__all__ = ["ScalarClassicEnv", "ScalarCartPole", "ScalarMountainCar", "ScalarAcrobot", "ScalarPendulum", "SCALAR_ENVS"]


class ScalarClassicEnv:
    """One copy of a classic-control task (see the module docstring).

    Args:
        native: a one-copy batched env of the same task (its options and start-state generator are used; its
            ``max_episode_steps`` is ignored: the caller handles time limits).
    """

    #: the batched env class of the task (each subclass sets its own)
    native_class: ClassVar[type[ClassicControlEnv]]

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
        x, x_dot, theta, theta_dot = cartpole_dynamics(*self.state, action == 1)
        self.state = [x, x_dot, theta, theta_dot]
        terminated = bool(cartpole_terminal(x, theta))
        if self.sutton_barto_reward:
            reward = -1.0 if terminated else 0.0
        else:
            reward = 1.0
        return np.array(self.state, dtype=np.float32), reward, terminated


class ScalarMountainCar(ScalarClassicEnv):
    native_class = MountainCar

    def __init__(self, native: MountainCar) -> None:
        super().__init__(native)
        self.goal_velocity = float(native.goal_velocity)

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        position, velocity, terminated = mountain_car_dynamics(*self.state, action, self.goal_velocity)
        self.state = [position, velocity]
        return np.array(self.state, dtype=np.float32), -1.0, bool(terminated)


class ScalarAcrobot(ScalarClassicEnv):
    native_class = Acrobot

    def __init__(self, native: Acrobot) -> None:
        super().__init__(native)
        self.nips = native.book_or_nips == "nips"

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        theta1, theta2, dtheta1, dtheta2, terminated = acrobot_dynamics(*self.state, action, self.nips)
        self.state = [theta1, theta2, dtheta1, dtheta2]
        terminated = bool(terminated)
        return self.observe(), (0.0 if terminated else -1.0), terminated

    def observe(self) -> np.ndarray:
        return np.array(acrobot_observation(*self.state), dtype=np.float32)


class ScalarPendulum(ScalarClassicEnv):
    native_class = Pendulum

    def __init__(self, native: Pendulum) -> None:
        super().__init__(native)
        self.g = float(native.g)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool]:
        torque = np.asarray(action, dtype=np.float32).reshape(-1)[0]  # a numpy float32: the kernel's float32 path
        th, thdot, cost = pendulum_dynamics(*self.state, torque, self.g)
        self.state = [th, thdot]
        return self.observe(), float(np.float32(-cost)), False

    def observe(self) -> np.ndarray:
        return np.array(pendulum_observation(*self.state), dtype=np.float32)


#: native env name -> scalar class
SCALAR_ENVS: dict[str, type[ScalarClassicEnv]] = {
    "cartpole": ScalarCartPole,
    "mountain-car": ScalarMountainCar,
    "acrobot": ScalarAcrobot,
    "pendulum": ScalarPendulum,
}
