"""Any Gymnasium env as a :class:`~emphatic_rl.envs.base.TensorEnv` (``make_env("gym:<id>")``).

``GymnasiumAdapter`` runs ``N`` copies in a Gymnasium ``SyncVectorEnv`` with ``autoreset_mode=SAME_STEP``
and returns torch tensors on ``device`` with this library's same-step autoreset rule: ``final_obs`` is the
true last observation of an episode that ended (Gymnasium's ``info["final_obs"]``), ``obs`` the first
observation of the next one, ``terminated`` and ``truncated`` are Gymnasium's. There is never a cross-reset
pseudo-transition.

Spaces: ``Discrete(n, start)`` actions become ``DiscreteSpec(n)`` (actions ``0..n-1``, shifted by ``start``
for Gymnasium); ``Box`` actions ``BoxSpec`` (float32). ``Box`` observations keep their dtype (MinAtar's bool
observations stay bool, ``uint8`` images stay ``uint8``) except float64, which becomes float32; ``Discrete``
observations become ``int64[N]``. Other spaces raise ``ValueError``.

Time limits come from the Gymnasium registration (``TimeLimit`` inside each copy); pass
``max_episode_steps=...`` to override it like ``gymnasium.make``. Ids under ``MinAtar/`` are registered on
first use (the ``minatar`` package registers them only when ``minatar.gym.register_envs()`` is called).

Seeding: ``reset(seed=s)`` seeds copy ``i`` with ``s + i`` (Gymnasium's vector convention). The first
``reset()`` without a seed uses seed 0, so runs are reproducible by default.

Checkpointing: Gymnasium envs cannot be snapshotted in general, so ``state_dict`` / ``load_state_dict`` raise
``NotImplementedError``; resume a run that uses the adapter by starting fresh episodes.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from emphatic_rl.envs.base import BoxSpec, DiscreteSpec, Spec, StepResult, TensorEnv

__all__ = ["GymnasiumAdapter", "spec_from_space"]


def _ensure_registered(env_id: str) -> None:
    """Register third-party ids that need an explicit call (MinAtar); raise ``ValueError`` for unknown ids."""
    if env_id in gym.registry:
        return
    if env_id.startswith("MinAtar/"):
        from minatar.gym import register_envs

        register_envs()
    if env_id not in gym.registry:
        similar = sorted(
            name for name in gym.registry if env_id.split("/")[-1].split("-")[0].lower() in name.lower()
        )
        hint = f"; similar ids: {', '.join(similar[:10])}" if similar else ""
        raise ValueError(f"unknown Gymnasium env id {env_id!r}{hint}")


def _bounds(array: np.ndarray, name: str) -> float | tuple[float, ...]:
    """A Box's low/high as BoxSpec wants them: one float if uniform, else a tuple for a 1-d box."""
    flat = np.asarray(array, dtype=np.float64).reshape(-1)
    if flat.size == 0 or np.all(flat == flat[0]):
        return float(flat[0]) if flat.size else 0.0
    if np.asarray(array).ndim == 1:
        return tuple(float(v) for v in flat)
    raise ValueError(
        f"Box {name} bounds that vary across a {np.asarray(array).ndim}-d shape are not supported"
    )


@overload
def spec_from_space(space: spaces.Space, role: Literal["observation"]) -> BoxSpec: ...
@overload
def spec_from_space(space: spaces.Space, role: str) -> Spec: ...
def spec_from_space(space: spaces.Space, role: str) -> Spec:
    """Translate a Gymnasium space (``role``: ``"observation"`` or ``"action"``) into our spec."""
    if isinstance(space, spaces.Discrete):
        if role == "action":
            return DiscreteSpec(int(space.n))
        return BoxSpec((), low=float(space.start), high=float(space.start + space.n - 1), dtype=torch.int64)
    if isinstance(space, spaces.Box):
        if role == "action":
            dtype = torch.float32
        elif space.dtype == np.float64:
            dtype = torch.float32
        else:
            dtype = torch.from_numpy(np.zeros(0, dtype=space.dtype)).dtype
        return BoxSpec(
            tuple(space.shape), low=_bounds(space.low, role), high=_bounds(space.high, role), dtype=dtype
        )
    raise ValueError(f"Gymnasium {role} space {space} is not supported; allowed: Discrete, Box")


class GymnasiumAdapter(TensorEnv):
    """``N`` copies of a Gymnasium env as a batched ``TensorEnv`` (see the module docstring).

    Args:
        env_id: a Gymnasium id, e.g. ``"CartPole-v1"`` or ``"MinAtar/Breakout-v1"``.
        num_envs: number of copies ``N``.
        device: torch device of the returned tensors (the envs themselves run on the CPU).
        check_actions: validate discrete action ranges (a device sync per step).
        **make_kwargs: keyword arguments of ``gymnasium.make`` (``max_episode_steps``, env options).

    Shapes: ``obs: [N, *obs_shape]``, ``action: [N]`` (discrete) or ``[N, *action_shape]`` (box).
    """

    name = "gym"

    def __init__(
        self,
        env_id: str,
        num_envs: int = 1,
        device: torch.device | str = "cpu",
        check_actions: bool = True,
        **make_kwargs: Any,
    ) -> None:
        super().__init__(num_envs, device, None, check_actions)
        _ensure_registered(env_id)
        self.env_id = env_id
        self.name = f"gym:{env_id}"
        self.vector_env = SyncVectorEnv(
            [lambda: gym.make(env_id, **make_kwargs) for _ in range(num_envs)],
            autoreset_mode=AutoresetMode.SAME_STEP,
        )
        single = self.vector_env.envs[0]
        self.max_episode_steps = make_kwargs.get(
            "max_episode_steps", single.spec.max_episode_steps if single.spec is not None else None
        )
        self.observation_spec = spec_from_space(self.vector_env.single_observation_space, "observation")
        self.action_spec = spec_from_space(self.vector_env.single_action_space, "action")
        action_space = self.vector_env.single_action_space
        self._action_offset = int(action_space.start) if isinstance(action_space, spaces.Discrete) else 0
        self._seeded = False

    # ---------------------------------------------------------------- conversions
    def _to_tensor(self, obs: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.asarray(obs))
        if tensor.dtype == torch.float64:
            tensor = tensor.to(torch.float32)
        return tensor.to(self.device)

    # ---------------------------------------------------------------- public API
    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Start a new episode in every copy (copy ``i`` seeded with ``seed + i``); returns ``obs``."""
        if seed is None and not self._seeded:
            seed = 0
        self._seeded = True
        obs, _ = self.vector_env.reset(seed=None if seed is None else int(seed))
        self.elapsed_steps.zero_()
        return self._to_tensor(obs)

    def step(self, action: torch.Tensor) -> StepResult:
        """Step every copy; Gymnasium resets ended copies in the same call (see the module docstring)."""
        if not self._seeded:
            raise RuntimeError(f"{type(self).__name__}({self.env_id!r}): call reset() before step()")
        action = self.validate_action(action)
        actions = action.cpu().numpy()
        if self._action_offset:
            actions = actions + self._action_offset
        obs, reward, terminated, truncated, infos = self.vector_env.step(actions)
        final_obs = np.array(obs, copy=True)
        if "_final_obs" in infos:
            ended = np.flatnonzero(infos["_final_obs"])
            for index in ended:  # only the copies that ended this step
                final_obs[index] = infos["final_obs"][index]
        terminated_t = torch.from_numpy(np.asarray(terminated, dtype=bool)).to(self.device)
        truncated_t = torch.from_numpy(np.asarray(truncated, dtype=bool)).to(self.device)
        self.elapsed_steps += 1
        self.elapsed_steps.masked_fill_(terminated_t | truncated_t, 0)
        return StepResult(
            self._to_tensor(obs),
            torch.from_numpy(np.asarray(reward, dtype=np.float32)).to(self.device),
            terminated_t,
            truncated_t,
            self._to_tensor(final_obs),
        )

    def close(self) -> None:
        """Close the Gymnasium envs."""
        self.vector_env.close()

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError(
            f"GymnasiumAdapter({self.env_id!r}) cannot be checkpointed: Gymnasium envs have no general "
            "way to snapshot their state. Use a native env (make_env names without 'gym:') for "
            "bit-identical resume."
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state_dict()  # raises the same explanation

    # The batched hooks are not used: reset and step talk to the vector env directly.
    def _reset_where(self, mask: torch.Tensor) -> None:
        raise NotImplementedError("GymnasiumAdapter resets through its Gymnasium vector env")

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("GymnasiumAdapter steps through its Gymnasium vector env")

    def _observe(self) -> torch.Tensor:
        raise NotImplementedError("GymnasiumAdapter observes through its Gymnasium vector env")

    def __repr__(self) -> str:
        return f"GymnasiumAdapter({self.env_id!r}, num_envs={self.num_envs}, device={self.device})"
