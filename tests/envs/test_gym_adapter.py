"""GymnasiumAdapter: same-step autoreset semantics over Gymnasium's vector API, specs, errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from emphatic_rl.envs import BoxSpec, DiscreteSpec, make_env
from emphatic_rl.envs.gym_adapter import GymnasiumAdapter


def gym_states(adapter: GymnasiumAdapter) -> torch.Tensor:
    return torch.tensor(
        np.stack([np.asarray(e.unwrapped.state, dtype=np.float64) for e in adapter.vector_env.envs])
    )


def test_cartpole_through_the_adapter_matches_the_native_env():
    num_envs = 8
    adapter = make_env("gym:CartPole-v1", num_envs=num_envs)
    native = make_env("cartpole", num_envs=num_envs)
    assert isinstance(adapter, GymnasiumAdapter)
    assert adapter.action_spec == native.action_spec
    assert adapter.observation_spec.shape == (4,) and adapter.observation_spec.dtype == torch.float32
    assert adapter.max_episode_steps == 500
    obs = adapter.reset(seed=0)
    native.reset(seed=0)
    native.set_state(gym_states(adapter))
    torch.testing.assert_close(obs, native._observe(), rtol=0, atol=0)
    generator = torch.Generator().manual_seed(0)
    ended = 0
    for _ in range(150):
        action = torch.randint(0, 2, (num_envs,), generator=generator)
        a, n = adapter.step(action), native.step(action)
        torch.testing.assert_close(a.final_obs, n.final_obs, rtol=1e-6, atol=1e-6)
        assert torch.equal(a.reward, n.reward)
        assert torch.equal(a.terminated, n.terminated) and torch.equal(a.truncated, n.truncated)
        done = a.terminated | a.truncated
        ended += int(done.sum())
        # the obs to act on is the reset observation of the ended copies, else the final observation
        assert torch.equal(a.obs[~done], a.final_obs[~done])
        assert bool((a.obs[done].abs() <= 0.05).all())
        assert torch.equal(a.obs, gym_states(adapter).float())
        native.set_state(gym_states(adapter))  # mirror Gymnasium's reset states (and drop ulp differences)
    assert ended > 10
    assert torch.equal(adapter.elapsed_steps, native.elapsed_steps)


def test_minatar_breakout_runs_with_autoreset_and_true_final_obs():
    num_envs, seed = 4, 7
    adapter = make_env("gym:MinAtar/Breakout-v1", num_envs=num_envs)
    assert adapter.observation_spec.dtype == torch.bool
    assert adapter.observation_spec.shape == (10, 10, 4)
    assert adapter.action_spec == DiscreteSpec(3)
    # reference: one plain Gymnasium env per copy, same seeds (vector convention seed + i), reset by hand
    references = [gym.make("MinAtar/Breakout-v1") for _ in range(num_envs)]
    reference_obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(references)]
    obs = adapter.reset(seed=seed)
    assert obs.dtype == torch.bool and obs.shape == (num_envs, 10, 10, 4)
    assert torch.equal(obs, torch.from_numpy(np.stack(reference_obs)))
    generator = torch.Generator().manual_seed(1)
    episodes_ended = 0
    for _ in range(200):
        action = torch.randint(0, 3, (num_envs,), generator=generator)
        result = adapter.step(action)
        for i, env in enumerate(references):
            final_obs, reward, terminated, truncated, _ = env.step(int(action[i]))
            assert torch.equal(result.final_obs[i], torch.from_numpy(final_obs))
            assert result.reward[i].item() == reward
            assert bool(result.terminated[i]) == terminated and bool(result.truncated[i]) == truncated
            if terminated or truncated:
                episodes_ended += 1
                next_obs, _ = env.reset()
                # obs is the next episode's first observation, not the terminal one
                assert torch.equal(result.obs[i], torch.from_numpy(next_obs))
                assert not torch.equal(result.obs[i], result.final_obs[i])
            else:
                assert torch.equal(result.obs[i], result.final_obs[i])
    assert episodes_ended >= 2


def test_spaces_other_than_discrete_actions_and_box_observations():
    pendulum = make_env("gym:Pendulum-v1", num_envs=2)
    assert pendulum.action_spec == BoxSpec((1,), low=-2.0, high=2.0)
    pendulum.reset(seed=0)
    result = pendulum.step(torch.zeros(2, 1))
    assert result.obs.shape == (2, 3) and result.obs.dtype == torch.float32
    assert result.reward.dtype == torch.float32
    frozen_lake = make_env("gym:FrozenLake-v1", num_envs=3)
    assert frozen_lake.observation_spec.shape == () and frozen_lake.observation_spec.dtype == torch.int64
    obs = frozen_lake.reset(seed=0)
    assert obs.dtype == torch.int64 and obs.tolist() == [0, 0, 0]


def test_time_limit_override_truncates_not_terminates():
    adapter = make_env("gym:CartPole-v1", num_envs=3, max_episode_steps=5)
    assert adapter.max_episode_steps == 5
    adapter.reset(seed=0)
    for t in range(1, 6):
        result = adapter.step(torch.tensor([0, 1, 0]))
        assert not bool(result.terminated.any())
        assert bool(result.truncated.all()) == (t == 5)
    assert not torch.equal(result.obs, result.final_obs)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown Gymnasium env id 'CartPol-v1'"):
        make_env("gym:CartPol-v1")
    adapter = make_env("gym:CartPole-v1", num_envs=2)
    with pytest.raises(RuntimeError, match="call reset"):
        adapter.step(torch.tensor([0, 1]))
    adapter.reset()
    with pytest.raises(ValueError, match=r"action has shape \(3,\), expected \(2,\)"):
        adapter.step(torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="outside the action set"):
        adapter.step(torch.tensor([0, 2]))
    with pytest.raises(NotImplementedError, match="cannot be checkpointed"):
        adapter.state_dict()
    adapter.close()
