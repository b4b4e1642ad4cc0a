"""Population networks (members independent, batched) and DQN's pieces."""

import pytest
import torch

from emphatic_rl.agents.dqn import DQN, DQNOptions
from emphatic_rl.agents.networks import finite_members, make_population_network
from emphatic_rl.agents.registry import AgentContext
from emphatic_rl.buffers import TrajectoryBuffer
from emphatic_rl.envs.base import BoxSpec, DiscreteSpec


def _copy_member(source, target, member):
    for (_name, p_source), (_, p_target) in zip(source.named_parameters(), target.named_parameters(), strict=True):
        with torch.no_grad():
            p_target[0] = p_source[member]


@pytest.mark.parametrize("obs_shape", [(4,), (10, 10, 4)])
def test_population_members_are_independent_networks(obs_shape):
    torch.manual_seed(0)
    population = make_population_network(3, obs_shape, 5, (16, 16))
    single = make_population_network(1, obs_shape, 5, (16, 16))
    obs = torch.rand(3, 7, *obs_shape)
    out = population(obs)
    assert out.shape == (3, 7, 5)
    for member in range(3):
        _copy_member(population, single, member)
        assert torch.allclose(single(obs[member : member + 1])[0], out[member], atol=1e-5)
    # The gradient of member 1's loss touches only member 1's parameters.
    population(obs)[1].sum().backward()
    for p in population.parameters():
        assert p.grad[[0, 2]].abs().sum() == 0 and p.grad[1].abs().sum() > 0


def test_finite_members_flags_the_member_with_a_nan():
    net = make_population_network(4, (3,), 2, (8,))
    with torch.no_grad():
        next(net.parameters())[2, 0, 0] = float("nan")
    assert finite_members(net).tolist() == [True, True, False, True]


def _context(population=2, envs=3, obs_shape=(4,), actions=2):
    return AgentContext(BoxSpec(obs_shape, -1.0, 1.0), DiscreteSpec(actions), population, envs, envs,
                        torch.device("cpu"), seed=0, total_steps=100)


def test_dqn_behaviour_log_prob_is_epsilon_greedy():
    agent = DQN(_context(), DQNOptions(epsilon_start=0.3, epsilon_end=0.3))
    out = agent.act(torch.rand(2, 3, 4), env_step=0)
    greedy = agent.q_network(torch.rand(2, 3, 4)).argmax(-1)
    assert out.action.shape == greedy.shape == (2, 3)
    allowed = {round(float(torch.tensor(0.3 / 2 + 0.7).log()), 5), round(float(torch.tensor(0.3 / 2).log()), 5)}
    assert {round(v, 5) for v in out.log_prob.flatten().tolist()} <= allowed


def test_dqn_members_learn_only_from_their_own_streams():
    """Member 0's env copies give reward 0, member 1's reward 1: each member's Q tracks its own data only."""
    agent = DQN(_context(population=2, envs=3, actions=1),
                DQNOptions(learning_starts=0, gamma=0.0, learning_rate=1e-2, batch_size=16, hidden=(16,)))
    buffer = TrajectoryBuffer(capacity=50, num_streams=6, obs_shape=(4,), obs_dtype=torch.float32)
    reward = torch.tensor([0.0, 0, 0, 1, 1, 1])
    for step in range(1, 301):
        obs = torch.rand(6, 4)
        buffer.add(obs, torch.zeros(6, dtype=torch.int64), reward, torch.zeros(6, dtype=torch.bool),
                   torch.zeros(6, dtype=torch.bool), torch.rand(6, 4))
        agent.update(buffer, step)
    q = agent.q_network(torch.rand(2, 64, 4)).detach().squeeze(-1).mean(dim=1)
    assert abs(float(q[0])) < 0.1 and abs(float(q[1]) - 1.0) < 0.1


def test_dqn_rejects_continuous_actions():
    context = AgentContext(BoxSpec((3,), -1.0, 1.0), BoxSpec((1,), -2.0, 2.0), 1, 1, 1, torch.device("cpu"), 0, 10)
    with pytest.raises(ValueError, match="needs a discrete action space"):
        DQN(context, DQNOptions())
