"""Our native envs under Gymnasium ids, so that ``gymnasium.make("emphatic_rl/CartPole-v1")`` works.

``import emphatic_rl`` (or ``import emphatic_rl.envs``) registers:

======================================  =========================  ==========
Gymnasium id                            native env                 time limit
======================================  =========================  ==========
``emphatic_rl/CartPole-v1``             ``cartpole``               500
``emphatic_rl/MountainCar-v0``          ``mountain-car``           200
``emphatic_rl/Acrobot-v1``              ``acrobot``                500
``emphatic_rl/Pendulum-v1``             ``pendulum``               200
``emphatic_rl/PuddleWorld-v0``          ``puddle-world``           1000
``emphatic_rl/PuddleWorldGaussian-v0``  ``puddle-world-gaussian``  1000
``emphatic_rl/BorderedGridworld-v0``    ``bordered-gridworld``     100
``emphatic_rl/Catcher-v0``              ``catcher``                1000
======================================  =========================  ==========

and the modules of the other envs add ``emphatic_rl/VirtualOffice-v0``, ``emphatic_rl/MinAtar-<Game>-v0/v1`` and
the tabular counterexamples.

- ``gymnasium.make(id)``: :class:`NativeGymEnv`, one copy with numpy in and out. The classic-control tasks step
  a scalar copy (Python floats through the compiled scalar physics the batched kernels use) that matches the
  batched env step for step (:mod:`emphatic_rl.envs.scalar_classic`); the others run the native ``TensorEnv``
  with ``num_envs=1`` on the CPU.
- ``gymnasium.make_vec(id, num_envs=N)``: :class:`NativeVectorEnv`, the native batched env behind Gymnasium's
  ``VectorEnv`` API (the ids' ``vector_entry_point``, Gymnasium's default for ids that have one).
- ``render_mode="rgb_array"`` or ``"human"`` on every env with a picture (classic control, Puddle World, Catcher, the
  gridworlds, MinAtar; see :mod:`emphatic_rl.envs.rendering`), so ``gymnasium.wrappers.RecordVideo`` and
  Stable-Baselines3's ``make_vec_env`` work on these ids.

Time limit: handled by Gymnasium's ``TimeLimit`` wrapper only (the registration's ``max_episode_steps``, which
``gymnasium.make(id, max_episode_steps=k)`` overrides). The wrapped native env is built with
``max_episode_steps=None``, so there is never a double limit. The native env's own same-step autoreset is
invisible here: ``step`` returns the true final observation, and the caller resets as usual with Gymnasium.

Other modules register their envs with :func:`register_gymnasium_env`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

import emphatic_rl.envs.catcher  # noqa: F401  (registers the native names used below)
import emphatic_rl.envs.classic  # noqa: F401
import emphatic_rl.envs.gridworld  # noqa: F401
import emphatic_rl.envs.puddle_world  # noqa: F401
from emphatic_rl.envs.base import DiscreteSpec, Spec, TensorEnv
from emphatic_rl.envs.registry import ENV_REGISTRY, make_env
from emphatic_rl.envs.rendering import SCALAR_RENDERERS, minatar_frame, render_fps, render_frame, renderable

if TYPE_CHECKING:
    from emphatic_rl.envs.classic import ClassicControlEnv
    from emphatic_rl.envs.scalar_classic import ScalarClassicEnv

__all__ = ["NativeGymEnv", "NativeVectorEnv", "RENDER_MODES", "register_gymnasium_env", "space_from_spec"]

_USE_NATIVE_DEFAULT = object()


def space_from_spec(spec: Spec) -> spaces.Space:
    """The Gymnasium space of one copy for our spec (``DiscreteSpec -> Discrete``, ``BoxSpec -> Box``)."""
    if isinstance(spec, DiscreteSpec):
        return spaces.Discrete(spec.n)
    dtype = torch.empty(0, dtype=spec.dtype).numpy().dtype
    if dtype == np.bool_:
        return spaces.Box(low=0, high=1, shape=spec.shape, dtype=np.bool_)
    low = spec.low_tensor().numpy().astype(dtype)
    high = spec.high_tensor().numpy().astype(dtype)
    return spaces.Box(low=low, high=high, shape=spec.shape, dtype=dtype)


class _HumanWindow:
    """A Matplotlib window that shows frames at ``fps`` (``render_mode="human"``; needs a display, or shows
    nothing under a non-interactive backend such as ``Agg``)."""

    def __init__(self, title: str, fps: int) -> None:
        self.title, self.fps = title, fps
        self.figure: Any = None
        self.image: Any = None

    def show(self, frame: np.ndarray) -> None:
        import matplotlib.pyplot as plt

        if self.figure is None or not plt.fignum_exists(self.figure.number):
            self.figure, axes = plt.subplots(num=self.title)
            axes.set_axis_off()
            self.image = axes.imshow(frame)
            plt.show(block=False)
        else:
            self.image.set_data(frame)
        self.figure.canvas.draw_idle()
        plt.pause(1.0 / self.fps)

    def close(self) -> None:
        if self.figure is not None:
            import matplotlib.pyplot as plt

            plt.close(self.figure)
            self.figure = None


def _check_render_mode(env_name: str, render_mode: str | None) -> None:
    if render_mode is None:
        return
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode {render_mode!r} is not supported; allowed: None, {', '.join(RENDER_MODES)}")
    if not renderable(env_name):
        raise ValueError(f"env {env_name!r} has no picture; render_mode must be None")


#: the render modes of every drawable env (see :mod:`emphatic_rl.envs.rendering`)
RENDER_MODES = ("human", "rgb_array")


class NativeGymEnv(gym.Env):
    """A native env as one Gymnasium env (``gymnasium.make("emphatic_rl/CartPole-v1")``).

    Args:
        env_name: a name registered with ``register_env`` (see ``emphatic_rl.envs.env_names()``).
        render_mode: ``None``, ``"rgb_array"`` (``render()`` returns ``uint8[H, W, 3]``) or ``"human"`` (a
            Matplotlib window, redrawn at every ``reset`` and ``step``); envs without a picture (the tabular
            counterexamples) take only ``None``. See :mod:`emphatic_rl.envs.rendering` for the pictures.
        **options: the native env's options (its ``max_episode_steps`` is forced to ``None``: Gymnasium's
            ``TimeLimit`` does the limit).

    Fast path: CartPole, MountainCar, Acrobot and Pendulum step one copy through the compiled scalar physics
    (:mod:`emphatic_rl.envs.scalar_classic`) that gives the batched env's numbers step for step without torch's
    per-op overhead; ``scalar`` holds it (``None`` for the other envs, which run the batched env with
    ``num_envs=1`` on the CPU, ``native_env``). On the fast path ``native_env`` only supplies start states.

    ``reset(seed=s)`` seeds the native env's generator with ``s``; ``step`` returns
    ``(obs, reward: float, terminated: bool, truncated: False, info: {})``. After a terminal step ``render()``
    draws the episode's last state (not the next episode's first).
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 30}

    def __init__(self, env_name: str, render_mode: str | None = None, **options: Any) -> None:
        _check_render_mode(env_name, render_mode)
        options = {**options, "max_episode_steps": None}
        self.render_mode = render_mode
        self.metadata = {
            "render_modes": list(RENDER_MODES) if renderable(env_name) else [],
            "render_fps": render_fps(env_name),
        }
        self.native_env: TensorEnv = make_env(env_name, num_envs=1, device="cpu", **options)
        from emphatic_rl.envs.scalar_classic import SCALAR_ENVS  # imports numba: only when an env is made

        self.scalar: ScalarClassicEnv | None = (
            SCALAR_ENVS[env_name](cast("ClassicControlEnv", self.native_env)) if env_name in SCALAR_ENVS else None
        )
        self.observation_space = space_from_spec(self.native_env.observation_spec)
        self.action_space = space_from_spec(self.native_env.action_spec)
        self._discrete = isinstance(self.action_space, spaces.Discrete)
        self._action_dtype = self.native_env.action_spec.dtype
        self._final_frame: np.ndarray | None = None
        self._window: _HumanWindow | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._final_frame = None
        if self.scalar is not None:
            obs = self.scalar.reset(seed=seed)
        else:
            obs = self.native_env.reset(seed=seed)[0].numpy()
        if self.render_mode == "human":
            self.render()
        return obs, {}

    def set_state(self, *args: Any, **kwargs: Any) -> None:
        """Put the env in a given state: the native env's ``set_state`` (e.g. CartPole's
        ``[x, x_dot, theta, theta_dot]``), kept in step with the scalar copy on the fast path."""
        try:
            self.native_env.set_state(*args, **kwargs)
        except NotImplementedError as error:  # the TensorEnv default: this env declares no set_state
            raise TypeError(str(error)) from None
        if self.scalar is not None:  # the scalar copy's native env is native_env
            self.scalar.set_state(self.scalar.native.state[0].tolist())
        self._final_frame = None

    def _check_action(self, action: Any) -> Any:
        if self._discrete:
            if not self.action_space.contains(action):
                n = cast(spaces.Discrete, self.action_space).n
                raise ValueError(f"action {action!r} is outside the action set {{0, ..., {n - 1}}}")
            return int(action)
        action_array = np.asarray(action, dtype=np.float32)
        if action_array.shape != self.action_space.shape:
            raise ValueError(f"action has shape {action_array.shape}, expected {self.action_space.shape}")
        return action_array

    def step(self, action):
        action = self._check_action(action)
        if self.scalar is not None:
            obs, reward, terminated = self.scalar.step(action)
            if self.render_mode == "human":
                self.render()
            return obs, reward, terminated, False, {}
        if self._discrete:
            action_tensor = torch.tensor([action], dtype=torch.int64)
        else:
            action_tensor = torch.from_numpy(action).unsqueeze(0).to(self._action_dtype)
        before = self.native_env.state_dict() if self.render_mode is not None else None
        result = self.native_env.step(action_tensor)
        terminated = bool(result.terminated[0])
        self._final_frame = None
        if before is not None and terminated:
            self._final_frame = self._frame_of_final_state(before, action_tensor, result.final_obs)
        if self.render_mode == "human":
            self.render()
        return result.final_obs[0].numpy(), float(result.reward[0]), terminated, False, {}

    def _frame_of_final_state(self, before: dict[str, Any], action: torch.Tensor, final_obs: torch.Tensor):
        """The picture of the state an episode ended in (the native env has already reset that copy)."""
        env = self.native_env
        if env.name.startswith("minatar-"):
            return minatar_frame(final_obs[0].numpy())
        after = env.state_dict()
        env.load_state_dict(before)
        env._transition(env.validate_action(action))  # the same step again, from the same generator state
        frame = render_frame(env)
        env.load_state_dict(after)
        return frame

    def render(self):
        """``uint8[H, W, 3]`` for ``"rgb_array"``; shows the frame (returns ``None``) for ``"human"``."""
        if self.render_mode is None:
            return None
        if self._final_frame is not None:
            frame = self._final_frame
        elif self.scalar is not None:
            frame = SCALAR_RENDERERS[self.native_env.name](self.scalar.state)
        else:
            frame = render_frame(self.native_env)
        if self.render_mode == "rgb_array":
            return frame
        if self._window is None:
            self._window = _HumanWindow(
                self.spec.id if self.spec is not None else self.native_env.name, self.metadata["render_fps"]
            )
        self._window.show(frame)
        return None

    def close(self) -> None:
        if self._window is not None:
            self._window.close()
            self._window = None


class NativeVectorEnv(VectorEnv):
    """A native batched env behind Gymnasium's ``VectorEnv`` API (numpy in and out).

    ``gymnasium.make_vec("emphatic_rl/CartPole-v1", num_envs=N)`` returns this (the ids' ``vector_entry_point``;
    ``vectorization_mode="sync"`` gives Gymnasium's ``SyncVectorEnv`` of single envs instead).

    Args:
        env_name: a registered native env name.
        num_envs: copies ``N``.
        max_episode_steps: the time limit (``truncated``), set by ``make_vec`` from the id's registration.
        render_mode: ``None``, ``"rgb_array"`` (``render()`` returns a tuple of ``N`` frames) or ``"human"`` (the
            first copy in a Matplotlib window).
        device: torch device the native env runs on (observations come back as numpy on the CPU).
        **options: the native env's options.

    Autoreset: same-step (``metadata["autoreset_mode"] = AutoresetMode.SAME_STEP``): where a copy ends,
    ``obs`` is already the next episode's first observation and ``info["final_obs"][i]`` (with
    ``info["_final_obs"][i]`` true) the true last observation, as in ``SyncVectorEnv(...,
    autoreset_mode=SAME_STEP)``. Seeding: ``reset(seed=s)`` seeds the batched env's one generator with ``s``
    (all copies draw from it), not copy ``i`` with ``s + i``.
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 30, "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        env_name: str,
        num_envs: int = 1,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        device: torch.device | str = "cpu",
        **options: Any,
    ) -> None:
        _check_render_mode(env_name, render_mode)
        self.native_env: TensorEnv = make_env(
            env_name, num_envs=num_envs, device=device, max_episode_steps=max_episode_steps, **options
        )
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.metadata = {
            "render_modes": list(RENDER_MODES) if renderable(env_name) else [],
            "render_fps": render_fps(env_name),
            "autoreset_mode": AutoresetMode.SAME_STEP,
        }
        self.single_observation_space = space_from_spec(self.native_env.observation_spec)
        self.single_action_space = space_from_spec(self.native_env.action_spec)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._window: _HumanWindow | None = None

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        if isinstance(seed, (list, tuple)):
            raise ValueError("seed must be an int or None: every copy draws from the batched env's one generator")
        super().reset(seed=seed)
        obs = self.native_env.reset(seed=seed).cpu().numpy()
        if self.render_mode == "human":
            self.render()
        return obs, {}

    def step(self, actions):
        action = torch.as_tensor(np.asarray(actions), device=self.native_env.device)
        if not isinstance(self.single_action_space, spaces.Discrete):
            action = action.to(self.native_env.action_spec.dtype)
        result = self.native_env.step(action)
        obs = result.obs.cpu().numpy()
        terminated = result.terminated.cpu().numpy()
        truncated = result.truncated.cpu().numpy()
        infos: dict[str, Any] = {}
        ended = terminated | truncated
        if ended.any():
            final_obs = result.final_obs.cpu().numpy()
            infos["final_obs"] = np.empty(self.num_envs, dtype=object)
            infos["final_info"] = np.empty(self.num_envs, dtype=object)
            for index in np.flatnonzero(ended):  # only the copies that ended this step
                infos["final_obs"][index] = final_obs[index]
                infos["final_info"][index] = {}
            infos["_final_obs"] = ended.copy()
            infos["_final_info"] = ended.copy()
        if self.render_mode == "human":
            self.render()
        return obs, result.reward.cpu().numpy(), terminated, truncated, infos

    def render(self):
        """A tuple of ``N`` frames ``uint8[H, W, 3]`` for ``"rgb_array"``; the first copy in a window for
        ``"human"``."""
        if self.render_mode is None:
            return None
        if self.render_mode == "rgb_array":
            return tuple(render_frame(self.native_env, index) for index in range(self.num_envs))
        if self._window is None:
            self._window = _HumanWindow(self.native_env.name, self.metadata["render_fps"])
        self._window.show(render_frame(self.native_env, 0))
        return None

    def close_extras(self, **kwargs: Any) -> None:
        if self._window is not None:
            self._window.close()
            self._window = None


def register_gymnasium_env(
    gym_id: str,
    env_name: str,
    max_episode_steps: int | None | object = _USE_NATIVE_DEFAULT,
    **options: Any,
) -> None:
    """Register a native env with Gymnasium so that ``gymnasium.make(gym_id)`` builds it.

    Args:
        gym_id: the Gymnasium id, e.g. ``"emphatic_rl/Breakout-v1"``.
        env_name: a name already registered with ``register_env``.
        max_episode_steps: Gymnasium's ``TimeLimit``; by default the native env's own default limit;
            ``None``: no limit.
        **options: fixed options of the native env for this id (checked now against its allowed options).

    Registering an id that already exists is a no-op (so re-imports are harmless).
    """
    if env_name not in ENV_REGISTRY:
        raise ValueError(f"unknown env {env_name!r}; allowed: {', '.join(sorted(ENV_REGISTRY))}")
    allowed = ENV_REGISTRY[env_name].options()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for env {env_name!r}; allowed: {', '.join(sorted(allowed))}"
        )
    if max_episode_steps is _USE_NATIVE_DEFAULT:
        max_episode_steps = allowed.get("max_episode_steps")
    if gym_id in gym.registry:
        return
    gym.register(
        id=gym_id,
        entry_point="emphatic_rl.envs.registration:NativeGymEnv",
        vector_entry_point="emphatic_rl.envs.registration:NativeVectorEnv",
        max_episode_steps=cast("int | None", max_episode_steps),  # the sentinel is replaced above
        kwargs={"env_name": env_name, **options},
    )


register_gymnasium_env("emphatic_rl/CartPole-v1", "cartpole")
register_gymnasium_env("emphatic_rl/MountainCar-v0", "mountain-car")
register_gymnasium_env("emphatic_rl/Acrobot-v1", "acrobot")
register_gymnasium_env("emphatic_rl/Pendulum-v1", "pendulum")
register_gymnasium_env("emphatic_rl/PuddleWorld-v0", "puddle-world")
register_gymnasium_env("emphatic_rl/PuddleWorldGaussian-v0", "puddle-world-gaussian")
register_gymnasium_env("emphatic_rl/BorderedGridworld-v0", "bordered-gridworld")
register_gymnasium_env("emphatic_rl/Catcher-v0", "catcher")
