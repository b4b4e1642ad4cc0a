"""Hallucination flags per env (``is_real_state``) and the given tabular model's error injection."""

import math

import pytest
import torch

from emphatic_rl.agents.dyna.models import GivenTabularModel, given_model_of, is_real_state, real_state_envs
from emphatic_rl.envs import make_env
from emphatic_rl.envs.gridworld import BorderedGridworld


def test_cartpole_states_past_the_bounds_are_hallucinated_unless_the_model_signals_termination():
    states = torch.tensor(
        [
            [0.0, 0.5, 0.05, -0.3],  # inside
            [2.5, 1.0, 0.0, 0.0],  # past |x| = 2.4
            [0.0, 0.0, 0.25, 0.0],  # past 12 degrees
            [5.0, 0.0, 0.0, 0.0],  # far outside
            [0.0, float("nan"), 0.0, 0.0],
        ]
    )
    assert is_real_state("cartpole", states).tolist() == [True, False, False, False, False]
    terminal = torch.tensor([False, True, True, True, True])
    assert is_real_state("cartpole", states, terminal).tolist() == [True, True, True, False, False]
    assert 12 * math.pi / 180 == pytest.approx(0.20944, abs=1e-5)


def test_cartpole_trajectories_of_the_native_env_are_always_real():
    pytest.importorskip("emphatic_rl.envs.classic")
    from emphatic_rl.envs import make_env

    env = make_env("cartpole", num_envs=16)
    env.reset(seed=0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        result = env.step(torch.randint(2, (16,), generator=generator))
        assert is_real_state("cartpole", result.final_obs, result.terminated).all()
        assert is_real_state("cartpole", result.obs).all()


def test_puddle_world_and_gridworld_flags():
    positions = torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.01, 0.2], [-0.1, 0.3]])
    assert is_real_state("puddle-world", positions).tolist() == [True, True, False, False]
    env = BorderedGridworld(height=3, width=3)
    cells = torch.tensor([0, env.start_state, env.goal_state, env.num_states - 1, env.num_states + 5])
    assert is_real_state(env, cells).tolist() == [False, True, True, False, False]
    default = torch.tensor([0, BorderedGridworld().start_state])
    assert is_real_state("bordered-gridworld", default).tolist() == [False, True]  # a name: the default layout
    with pytest.raises(ValueError, match="declares no test of which states are real.*bordered-gridworld, cartpole"):
        is_real_state("catcher", positions)
    with pytest.raises(ValueError, match="declares no test of which states are real"):
        is_real_state(make_env("mountain-car"), positions)
    with pytest.raises(ValueError, match="unknown env 'no-such-env'"):
        is_real_state("no-such-env", positions)
    with pytest.raises(ValueError, match=r"cartpole states must be \[B, 4\]"):
        is_real_state("cartpole", positions)


def test_envs_declare_their_model_capabilities_and_the_dyna_agent_names_the_missing_one():
    from emphatic_rl.agents.dyna.tabular import DynaOptions, learned_model_of, make_dyna_for_env
    from emphatic_rl.agents.registry import AgentContext, make_agent
    from emphatic_rl.envs.base import TabularDynamics

    assert real_state_envs()[:3] == ["bordered-gridworld", "cartpole", "puddle-world"]
    grid = BorderedGridworld(height=3, width=3)
    dynamics = grid.tabular_dynamics()
    assert isinstance(dynamics, TabularDynamics) and grid.has_tabular_dynamics
    assert dynamics.num_states == grid.num_states and dynamics.num_actions == 4
    assert torch.equal(dynamics.next_state, grid.next_state_table)
    assert dynamics.terminal_states.tolist() == [grid.goal_state]
    assert dynamics.state_coordinates.shape == (grid.num_states, 2)
    assert dynamics.state_coordinates.min() == -1 and dynamics.state_coordinates.max() == 1
    cartpole = make_env("cartpole")
    assert not cartpole.has_tabular_dynamics
    with pytest.raises(NotImplementedError, match="declares no tabular dynamics"):
        cartpole.tabular_dynamics()
    with pytest.raises(
        ValueError,
        match=r"a given tabular model \(model='given'\) needs an env that declares "
        r"tabular dynamics \(has_tabular_dynamics.*env 'cartpole' does not",
    ):
        given_model_of(cartpole, 0.0, 2)
    with pytest.raises(ValueError, match=r"tabular Dyna \(model='learned'\) needs an env that declares tabular"):
        make_dyna_for_env(cartpole, 2, DynaOptions(model="learned"))
    with pytest.raises(ValueError, match="tabular Dyna with a learned model needs"):
        learned_model_of(cartpole, 2, DynaOptions(model="learned"))
    context = AgentContext(
        observation_spec=cartpole.observation_spec, action_spec=cartpole.action_spec, population_size=1,
        envs_per_member=1, num_streams=1, device=torch.device("cpu"), seed=0, total_steps=10, env_name="cartpole",
        env=cartpole,
    )  # fmt: skip
    with pytest.raises(ValueError, match="agent 'dyna' is tabular and needs an env that declares tabular dynamics"):
        make_agent("dyna", context)
    with pytest.raises(ValueError, match="border_physics must be 'closed' or 'open'"):
        given_model_of(grid, 0.0, 2, border_physics="ajar")


def test_given_model_hallucinates_at_rate_p_h_into_unreachable_states_only():
    population = 2000
    env = BorderedGridworld(height=4, width=4)
    p_h = torch.where(torch.arange(population) < population // 2, 0.0, 0.3)
    model = given_model_of(env, p_h, population)
    assert isinstance(model, GivenTabularModel)
    generator = torch.Generator().manual_seed(0)
    state = torch.full((population,), env.index_of(2, 2))
    action = torch.ones(population, dtype=torch.long)
    forward = model.sample_forward(state, action, generator)
    hallucinated = ~env.real_state_mask[forward.next_state]
    assert not hallucinated[: population // 2].any()
    assert hallucinated[population // 2 :].float().mean().item() == pytest.approx(0.3, abs=0.05)
    assert (forward.next_state[~hallucinated] == env.next_state_table[state, action][~hallucinated]).all()
    backward = model.sample_backward(state, generator)
    real_predecessor = env.real_state_mask[backward.previous_state]
    assert real_predecessor[: population // 2].all()
    # Every real predecessor is a true one: one step from it by its action lands on the queried state.
    ok = real_predecessor
    assert (env.next_state_table[backward.previous_state[ok], backward.action[ok]] == state[ok]).all()
    assert (~real_predecessor[population // 2 :]).float().mean().item() == pytest.approx(0.3, abs=0.05)
