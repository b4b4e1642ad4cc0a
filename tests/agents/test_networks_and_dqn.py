"""Population networks (members independent, batched) and DQN's pieces."""

import pytest
import torch

from emphatic_rl.agents.deep.dqn import DQN, DQNOptions
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


def _filled_buffer(num_streams, obs_shape=(4,), steps=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    buffer = TrajectoryBuffer(capacity=50, num_streams=num_streams, obs_shape=obs_shape, obs_dtype=torch.float32)
    for _ in range(steps):
        buffer.add(torch.randn(num_streams, *obs_shape, generator=generator),
                   torch.randint(0, 2, (num_streams,), generator=generator),
                   torch.randn(num_streams, generator=generator),
                   torch.rand(num_streams, generator=generator) < 0.2, torch.zeros(num_streams, dtype=torch.bool),
                   torch.randn(num_streams, *obs_shape, generator=generator))
    return buffer


@pytest.mark.parametrize("double_q", [False, True])
def test_dqn_written_out_backward_equals_autograd(double_q):
    """The MLP fast path (hand-written backward, flat parameters, fused Adam) takes the same steps as autograd."""
    options = DQNOptions(learning_starts=0, batch_size=16, hidden=(8, 8), double_q=double_q, target_update_every=3,
                         max_grad_norm=0.05)  # small norm: the per-member clipping is active
    fast, reference = DQN(_context(), options), DQN(_context(), options)
    reference._mlp = reference._target_mlp = None  # the autograd path
    buffer = _filled_buffer(6)
    assert torch.equal(fast.flat_parameters, reference.flat_parameters)
    for step in range(1, 8):
        out_fast, out_reference = fast.update(buffer, step), reference.update(buffer, step)
        for key in ("loss", "q_mean"):
            assert torch.allclose(out_fast[key], out_reference[key], atol=1e-6), key
    assert torch.allclose(fast.flat_parameters, reference.flat_parameters, atol=1e-6)
    assert torch.allclose(fast.target_flat_parameters, reference.target_flat_parameters, atol=1e-6)
    assert not torch.equal(fast.flat_parameters, DQN(_context(), options).flat_parameters)  # it did learn


def test_dqn_parameters_are_views_of_the_flat_tensor_and_checkpoints_restore_them():
    agent = DQN(_context(), DQNOptions(learning_starts=0, batch_size=8, hidden=(8,)))
    buffer = _filled_buffer(6)
    for step in range(1, 4):
        agent.update(buffer, step)
    with torch.no_grad():
        agent.flat_parameters.add_(1.0)  # visible through the module's parameters
    obs = torch.randn(2, 5, 4)
    assert torch.allclose(agent.q_network(obs), agent._q_values(obs))
    state = agent.state_dict()
    other = DQN(_context(), DQNOptions(learning_starts=0, batch_size=8, hidden=(8,)))
    other.load_state_dict(state)
    assert torch.equal(other.flat_parameters, agent.flat_parameters)
    assert torch.equal(other.q_network(obs), agent.q_network(obs))


def test_dqn_frozen_member_keeps_its_parameters():
    agent = DQN(_context(population=3, envs=2), DQNOptions(learning_starts=0, batch_size=8, hidden=(8,)))
    buffer = _filled_buffer(6)
    agent.update(buffer, 1)
    with torch.no_grad():
        agent.flat_parameters[1, 0] = float("nan")
    agent.freeze(~agent.parameters_finite())
    before = agent.flat_parameters.clone()
    for step in range(2, 6):
        agent.update(buffer, step)
    assert torch.equal(before[1, 1:], agent.flat_parameters[1, 1:])
    assert not torch.equal(before[0], agent.flat_parameters[0]) and not torch.equal(before[2], agent.flat_parameters[2])
