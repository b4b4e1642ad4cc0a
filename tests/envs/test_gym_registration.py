"""Gymnasium registration of the native envs: ``gymnasium.make("emphatic_rl/...")``."""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import emphatic_rl  # noqa: F401  (registers the ids)
from emphatic_rl.envs.registration import register_gymnasium_env

IDS = {
    "emphatic_rl/CartPole-v1": ("CartPole-v1", 500),
    "emphatic_rl/MountainCar-v0": ("MountainCar-v0", 200),
    "emphatic_rl/Acrobot-v1": ("Acrobot-v1", 500),
    "emphatic_rl/Pendulum-v1": ("Pendulum-v1", 200),
    "emphatic_rl/PuddleWorld-v0": (None, 1000),
    "emphatic_rl/PuddleWorldGaussian-v0": (None, 1000),
    "emphatic_rl/BorderedGridworld-v0": (None, 100),
}


@pytest.mark.parametrize("gym_id", sorted(IDS))
def test_env_checker_passes_and_spaces_match(gym_id):
    env = gym.make(gym_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Gymnasium's own advice on infinite / asymmetric bounds
        check_env(env.unwrapped)
    reference_id, limit = IDS[gym_id]
    assert env.spec.max_episode_steps == limit
    assert env.unwrapped.native_env.max_episode_steps is None  # the limit lives in TimeLimit only
    if reference_id is not None:
        reference = gym.make(reference_id)
        assert env.observation_space == reference.observation_space
        assert env.action_space == reference.action_space


def test_seeding_is_reproducible():
    env = gym.make("emphatic_rl/CartPole-v1")
    first, _ = env.reset(seed=3)
    trajectory = [env.step(i % 2)[0] for i in range(10)]
    again, _ = env.reset(seed=3)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(trajectory, [env.step(i % 2)[0] for i in range(10)])
    other, _ = env.reset(seed=4)
    assert not np.array_equal(first, other)


def test_one_time_limit_truncates_not_terminates():
    env = gym.make("emphatic_rl/MountainCar-v0")
    env.reset(seed=0)
    for t in range(1, 201):
        obs, reward, terminated, truncated, _ = env.step(1)  # no push: never reaches the goal
        assert reward == -1.0 and not terminated
        assert truncated == (t == 200)
    short = gym.make("emphatic_rl/MountainCar-v0", max_episode_steps=10)
    short.reset(seed=0)
    assert [short.step(1)[3] for _ in range(10)] == [False] * 9 + [True]


def test_terminal_step_returns_the_true_final_observation():
    env = gym.make("emphatic_rl/CartPole-v1")
    env.reset(seed=0)
    env.unwrapped.set_state(torch.tensor([2.399, 1.0, 0.0, 0.0], dtype=torch.float64))
    obs, reward, terminated, truncated, _ = env.step(1)
    assert terminated and not truncated and reward == 1.0
    assert obs[0] > 2.4  # not the autoreset start state of the native env


def test_register_gymnasium_env_helper():
    gym_id = "emphatic_rl_test/CartPoleSuttonBarto-v0"
    try:
        register_gymnasium_env(gym_id, "cartpole", max_episode_steps=7, sutton_barto_reward=True)
        env = gym.make(gym_id)
        env.reset(seed=0)
        steps = [env.step(0) for _ in range(7)]
        assert [s[1] for s in steps] == [0.0] * 7  # the option reached the native env
        assert [s[3] for s in steps] == [False] * 6 + [True]
    finally:
        gym.registry.pop(gym_id, None)
    with pytest.raises(ValueError, match="unknown env 'no-such-env'; allowed:"):
        register_gymnasium_env("emphatic_rl_test/X-v0", "no-such-env")
    with pytest.raises(ValueError, match="unknown option.* colour for env 'cartpole'; allowed:"):
        register_gymnasium_env("emphatic_rl_test/X-v0", "cartpole", colour="red")
    assert "emphatic_rl_test/X-v0" not in gym.registry


def test_bad_actions_raise_value_error():
    env = gym.make("emphatic_rl/Acrobot-v1").unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action 3 is outside the action set \{0, ..., 2\}"):
        env.step(3)
    pendulum = gym.make("emphatic_rl/Pendulum-v1").unwrapped
    pendulum.reset(seed=0)
    with pytest.raises(ValueError, match=r"action has shape \(2,\), expected \(1,\)"):
        pendulum.step(np.zeros(2, dtype=np.float32))


def test_import_emphatic_rl_is_enough():
    code = "import emphatic_rl, gymnasium; print(gymnasium.make('emphatic_rl/PuddleWorld-v0').reset(seed=0))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr


def test_set_state_is_declared_not_probed():
    """``TensorEnv.set_state`` is declared on every env (``NotImplementedError`` where it does not apply); the
    Gymnasium bridge forwards it and turns the refusal into one ``TypeError`` naming the env."""
    env = gym.make("emphatic_rl/BorderedGridworld-v0")
    env.reset(seed=0)
    with pytest.raises(TypeError, match="env 'bordered-gridworld' has no set_state"):
        env.unwrapped.set_state(torch.tensor([0]))
    env.close()
