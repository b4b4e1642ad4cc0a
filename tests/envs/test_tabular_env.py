"""TabularEnv / its Gymnasium ids / ContinuousActionEnv: sampling follows the MDP, termination."""

import gymnasium
import pytest
import torch

import emphatic_rl.envs  # noqa: F401  (registers the Gymnasium ids)
from emphatic_rl.envs.counterexamples import dpg_counterexample_mdp, long_counterexample_mdp
from emphatic_rl.envs.registration import NativeGymEnv
from emphatic_rl.envs.tabular import ContinuousActionEnv, TabularEnv
from emphatic_rl.exact import DiscreteLab


def test_sampled_transitions_and_visits_follow_the_mdp():
    mdp = long_counterexample_mdp(2)
    env = TabularEnv(mdp, num_envs=4000, observation="state")
    env.reset(seed=0)
    behaviour = mdp.behaviour.float()
    counts = torch.zeros(mdp.num_states, mdp.num_actions, mdp.num_states)
    visits = torch.zeros(mdp.num_states)
    for _ in range(60):
        state = env.state.clone()
        action = torch.multinomial(behaviour[state], 1, generator=env.generator).squeeze(1)
        result = env.step(action)
        counts.index_put_((state, action, env.state), torch.ones(4000), accumulate=True)
        visits += torch.bincount(state, minlength=mdp.num_states)
        # terminal transitions: zero final observation, obs is the restart state s0
        assert bool((result.final_obs[result.terminated] == 0).all())
        assert bool((env.state[result.terminated] == 0).all())
    frequencies = counts / counts.sum(-1, keepdim=True).clamp_min(1)
    assert torch.allclose(frequencies, mdp.transition.float(), atol=0.03)
    d_mu = DiscreteLab(mdp).d_mu.float()
    assert torch.allclose(visits / visits.sum(), d_mu, atol=0.02)  # starts at d0, mixes within a few steps


def test_rewards_and_termination_of_three_state_counterexample():
    env = TabularEnv(long_counterexample_mdp(1), num_envs=2)
    obs = env.reset(seed=1)
    assert obs.tolist() == [[1.0, 0.0], [1.0, 0.0]]
    env.step(torch.tensor([0, 1]))
    result = env.step(torch.tensor([0, 1]))
    assert result.reward.tolist() == [2.0, 1.0] and result.terminated.all()
    assert result.obs.tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_state_dict_resume_is_bit_identical():
    env = TabularEnv(long_counterexample_mdp(3), num_envs=8)
    env.reset(seed=3)
    actions = torch.randint(2, (20, 8), generator=torch.Generator().manual_seed(0))
    for t in range(5):
        env.step(actions[t])
    state = env.state_dict()
    first = [env.step(actions[t]) for t in range(5, 20)]
    env.load_state_dict(state)
    second = [env.step(actions[t]) for t in range(5, 20)]
    for a, b in zip(first, second, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_gymnasium_envs():
    """The tabular envs reach Gymnasium through the one bridge of every native env (``NativeGymEnv``)."""
    env = gymnasium.make("emphatic_rl/CounterexampleLong-v0", middle_steps=1)
    assert isinstance(env.unwrapped, NativeGymEnv)
    obs, info = env.reset(seed=0)
    assert obs.tolist() == [1.0, 0.0]
    env.step(1)
    obs, reward, terminated, truncated, info = env.step(1)
    assert (reward, terminated, truncated) == (1.0, True, False) and obs.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="outside the action set"):
        env.step(5)
    made = gymnasium.make("emphatic_rl/CounterexampleThreeState-v0")
    made.reset(seed=0)
    assert made.step(0)[0].tolist() == [0.0, 1.0]
    for gym_id in (
        "emphatic_rl/CounterexampleLong-v0",
        "emphatic_rl/Collision-v0",
        "emphatic_rl/Baird-v0",
        "emphatic_rl/CounterexampleDPG-v0",
    ):
        gymnasium.make(gym_id).reset(seed=0)


def test_continuous_action_env_transition_probability():
    env = ContinuousActionEnv(dpg_counterexample_mdp(), num_envs=20000)
    env.reset(seed=0)
    result = env.step(torch.full((20000, 1), 1.0))
    to_s1 = (env.state == 1).float().mean()
    assert abs(float(to_s1) - float(torch.sigmoid(torch.tensor(-1.0)))) < 0.015
    assert not result.terminated.any()
    # s1 pays 2 sigmoid(-a), s2 pays sigmoid(a), then terminate
    in_s1 = env.state == 1
    result = env.step(torch.zeros(20000, 1))
    assert torch.allclose(result.reward[in_s1], torch.ones(int(in_s1.sum())))
    assert torch.allclose(result.reward[~in_s1], torch.full((int((~in_s1).sum()),), 0.5))
    assert result.terminated.all()
