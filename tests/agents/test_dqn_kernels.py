"""DQN's compiled CPU backend (``backend="numba"``) against the torch backend: the same actions, the same updates
to float32 rounding, interchangeable checkpoints."""

import math

import pytest
import torch

from emphatic_rl.agents.deep.dqn import DQN, DQNOptions
from emphatic_rl.agents.registry import AgentContext
from emphatic_rl.buffers import TrajectoryBuffer
from emphatic_rl.envs.base import BoxSpec, DiscreteSpec


def _context(population=3, envs=2, obs_shape=(4,), actions=3, seed=0):
    return AgentContext(
        BoxSpec(obs_shape, -1.0, 1.0),
        DiscreteSpec(actions),
        population,
        envs,
        envs,
        torch.device("cpu"),
        seed=seed,
        total_steps=100,
    )


def _buffer(num_streams, actions=3, steps=60, seed=0):
    generator = torch.Generator().manual_seed(seed)
    buffer = TrajectoryBuffer(capacity=80, num_streams=num_streams, obs_shape=(4,), obs_dtype=torch.float32)
    for _ in range(steps):
        buffer.add(
            torch.randn(num_streams, 4, generator=generator),
            torch.randint(0, actions, (num_streams,), generator=generator),
            torch.randn(num_streams, generator=generator),
            torch.rand(num_streams, generator=generator) < 0.2,
            torch.rand(num_streams, generator=generator) < 0.05,
            torch.randn(num_streams, 4, generator=generator),
        )
    return buffer


def _pair(**options):
    return tuple(DQN(_context(), DQNOptions(**options, backend=backend)) for backend in ("numba", "torch"))


@pytest.mark.parametrize("hidden", [(16, 8), (8, 8, 8)])
@pytest.mark.parametrize("double_q", [False, True])
def test_numba_gradient_step_equals_the_torch_step(double_q, hidden):
    """Population of 3 members, 2 env copies each, clipping active on some steps, target copies in between."""
    numba_agent, torch_agent = _pair(
        learning_starts=0,
        batch_size=16,
        hidden=hidden,
        double_q=double_q,
        target_update_every=3,
        max_grad_norm=0.3,
        learning_rate=3e-3,
    )
    assert (numba_agent.backend, torch_agent.backend) == ("numba", "torch")
    buffer = _buffer(6)
    clipped = []
    for step in range(1, 10):
        out_numba, out_torch = numba_agent.update(buffer, step), torch_agent.update(buffer, step)
        for key in ("loss", "q_mean", "rollout/exploration_rate"):
            assert out_numba[key].shape == (3,)
            torch.testing.assert_close(out_numba[key], out_torch[key], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            numba_agent.flat_parameters.grad, torch_agent.flat_parameters.grad, atol=1e-6, rtol=1e-4
        )
        clipped += torch.isclose(numba_agent.flat_parameters.grad.norm(dim=1), torch.tensor(0.3), atol=1e-5).tolist()
    assert any(clipped) and not all(clipped)  # the clipping was active for some members and steps, not for all
    torch.testing.assert_close(numba_agent.flat_parameters, torch_agent.flat_parameters, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        numba_agent.target_flat_parameters, torch_agent.target_flat_parameters, atol=1e-6, rtol=1e-5
    )
    # the optimiser's state is the torch optimiser's own (step count and moments)
    state_numba = numba_agent.optimizer.state[numba_agent.flat_parameters]
    state_torch = torch_agent.optimizer.state[torch_agent.flat_parameters]
    assert float(state_numba["step"]) == float(state_torch["step"]) == 9.0
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(state_numba[key], state_torch[key], atol=1e-7, rtol=1e-4)
    assert not torch.equal(numba_agent.flat_parameters, DQN(_context(), DQNOptions(hidden=hidden)).flat_parameters)


@pytest.mark.parametrize("epsilon", [0.0, 0.3, 1.0])
def test_numba_acting_equals_torch_acting(epsilon):
    numba_agent, torch_agent = _pair(hidden=(16, 16))
    for envs in (2, 5, 1):  # the training env's copies, then an evaluation env's
        obs = torch.randn(3, envs, 4)
        out_numba, out_torch = numba_agent._epsilon_greedy(obs, epsilon), torch_agent._epsilon_greedy(obs, epsilon)
        assert out_numba.action.dtype == out_torch.action.dtype == torch.int64
        assert torch.equal(out_numba.action, out_torch.action)
        assert torch.equal(out_numba.log_prob, out_torch.log_prob)
    greedy = numba_agent.evaluation_action(obs)
    assert torch.equal(greedy, torch_agent.q_network(obs).argmax(-1))


def test_checkpoints_move_between_backends():
    """A checkpoint written by one backend resumes on the other and both then take the same steps."""
    numba_agent, torch_agent = _pair(learning_starts=0, batch_size=16, hidden=(16,))
    buffer = _buffer(6)
    for step in range(1, 4):
        numba_agent.update(buffer, step)
    resumed = DQN(_context(), DQNOptions(learning_starts=0, batch_size=16, hidden=(16,), backend="torch"))
    resumed.load_state_dict(numba_agent.state_dict())
    torch_agent.load_state_dict(numba_agent.state_dict())
    back = DQN(_context(), DQNOptions(learning_starts=0, batch_size=16, hidden=(16,), backend="numba"))
    back.load_state_dict(torch_agent.state_dict())
    for step in range(4, 7):
        for agent in (numba_agent, resumed, back):
            agent.update(buffer, step)
    torch.testing.assert_close(resumed.flat_parameters, numba_agent.flat_parameters, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(back.flat_parameters, numba_agent.flat_parameters, atol=1e-6, rtol=1e-5)


def test_numba_frozen_member_and_non_finite_values():
    """A member with a NaN parameter is frozen: its parameters stay, its loss is not finite, the others learn."""
    agent = DQN(_context(), DQNOptions(learning_starts=0, batch_size=8, hidden=(8,), backend="numba"))
    buffer = _buffer(6)
    agent.update(buffer, 1)
    with torch.no_grad():
        agent.flat_parameters[1, 0] = math.nan
    agent.freeze(~agent.parameters_finite())
    before = agent.flat_parameters.clone()
    metrics = agent.update(buffer, 2)
    assert not math.isfinite(float(metrics["loss"][1])) and bool(torch.isfinite(metrics["loss"][[0, 2]]).all())
    assert torch.equal(before[1, 1:], agent.flat_parameters[1, 1:])
    assert bool((agent.flat_parameters.grad[1] == 0).all())
    assert not torch.equal(before[0], agent.flat_parameters[0])


def test_backend_choice():
    assert DQN(_context(), DQNOptions()).backend == "numba"  # auto on the CPU with an MLP
    image = _context(obs_shape=(10, 10, 4))
    assert DQN(image, DQNOptions()).backend == "torch"  # the convnet has no kernel
    with pytest.raises(ValueError, match="backend 'numba' cannot run here: the kernels cover MLP"):
        DQN(image, DQNOptions(backend="numba"))
    with pytest.raises(ValueError, match="unknown backend 'jax'; allowed: auto, torch, numba"):
        DQNOptions(backend="jax")
