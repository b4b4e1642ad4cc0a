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
``emphatic_rl/Catcher-v0``              ``catcher``                1000
======================================  =========================  ==========

:class:`NativeGymEnv` runs the native ``TensorEnv`` with ``num_envs=1`` on the CPU and converts to numpy.

Time limit: handled by Gymnasium's ``TimeLimit`` wrapper only (the registration's ``max_episode_steps``, which
``gymnasium.make(id, max_episode_steps=k)`` overrides). The wrapped native env is built with
``max_episode_steps=None``, so there is never a double limit. The native env's own same-step autoreset is
invisible here: ``step`` returns the true final observation, and the caller resets as usual with Gymnasium.

Other modules register their envs with :func:`register_gymnasium_env`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

import emphatic_rl.envs.catcher  # noqa: F401  (registers the native names used below)
import emphatic_rl.envs.classic  # noqa: F401
import emphatic_rl.envs.puddle_world  # noqa: F401
from emphatic_rl.envs.base import DiscreteSpec, Spec, TensorEnv
from emphatic_rl.envs.registry import ENV_REGISTRY, make_env

__all__ = ["NativeGymEnv", "register_gymnasium_env", "space_from_spec"]

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


class NativeGymEnv(gym.Env):
    """A native ``TensorEnv`` (``num_envs=1``, CPU) behind the single-env Gymnasium API.

    Args:
        env_name: a name registered with ``register_env`` (see ``emphatic_rl.envs.env_names()``).
        render_mode: only ``None`` (no rendering).
        **options: the native env's options (its ``max_episode_steps`` is forced to ``None``: Gymnasium's
            ``TimeLimit`` does the limit).

    ``reset(seed=s)`` seeds the native env's generator with ``s``; ``step`` returns
    ``(obs, reward: float, terminated: bool, truncated: False, info: {})``.
    """

    metadata = {"render_modes": []}

    def __init__(self, env_name: str, render_mode: str | None = None, **options: Any) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode {render_mode!r} is not supported; allowed: None")
        options = {**options, "max_episode_steps": None}
        self.render_mode = None
        self.native_env: TensorEnv = make_env(env_name, num_envs=1, device="cpu", **options)
        self.observation_space = space_from_spec(self.native_env.observation_spec)
        self.action_space = space_from_spec(self.native_env.action_spec)
        self._action_dtype = self.native_env.action_spec.dtype

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        obs = self.native_env.reset(seed=seed)
        return obs[0].numpy(), {}

    def step(self, action):
        if isinstance(self.action_space, spaces.Discrete):
            if not self.action_space.contains(action):
                raise ValueError(
                    f"action {action!r} is outside the action set {{0, ..., {self.action_space.n - 1}}}"
                )
            action_tensor = torch.tensor([int(action)], dtype=torch.int64)
        else:
            action_array = np.asarray(action, dtype=np.float32)
            if action_array.shape != self.action_space.shape:
                raise ValueError(f"action has shape {action_array.shape}, expected {self.action_space.shape}")
            action_tensor = torch.from_numpy(action_array).unsqueeze(0).to(self._action_dtype)
        result = self.native_env.step(action_tensor)
        return (
            result.final_obs[0].numpy(),
            float(result.reward[0]),
            bool(result.terminated[0]),
            bool(result.truncated[0]),
            {},
        )


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
            f"unknown option(s) {', '.join(unknown)} for env {env_name!r}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    if max_episode_steps is _USE_NATIVE_DEFAULT:
        max_episode_steps = allowed.get("max_episode_steps")
    if gym_id in gym.registry:
        return
    gym.register(
        id=gym_id,
        entry_point="emphatic_rl.envs.registration:NativeGymEnv",
        max_episode_steps=max_episode_steps,
        kwargs={"env_name": env_name, **options},
    )


register_gymnasium_env("emphatic_rl/CartPole-v1", "cartpole")
register_gymnasium_env("emphatic_rl/MountainCar-v0", "mountain-car")
register_gymnasium_env("emphatic_rl/Acrobot-v1", "acrobot")
register_gymnasium_env("emphatic_rl/Pendulum-v1", "pendulum")
register_gymnasium_env("emphatic_rl/PuddleWorld-v0", "puddle-world")
register_gymnasium_env("emphatic_rl/PuddleWorldGaussian-v0", "puddle-world-gaussian")
register_gymnasium_env("emphatic_rl/Catcher-v0", "catcher")
