"""Tabular Dyna, four variants: exact updates, the hallucination invariant, perfect-model learning, bad input."""

import pytest
import torch

from emphatic_rl.agents.dyna.models import BackwardModel, BackwardSample, ForwardSample, given_model_of
from emphatic_rl.agents.dyna.tabular import VARIANTS, DynaAgent, DynaOptions, make_dyna_for_env
from emphatic_rl.envs.gridworld import BorderedGridworld


def train(agent: DynaAgent, env: BorderedGridworld, steps: int) -> torch.Tensor:
    """Run ``steps`` real steps; return the reward each member collected, ``[P]``."""
    p = agent.population_size
    obs = env.reset(seed=0)
    collected = torch.zeros(p)
    for step in range(steps):
        action, _ = agent.act(obs.view(p, 1), step)
        result = env.step(action.view(p))
        agent.observe(
            obs.view(p, 1),
            action,
            result.reward.view(p, 1),
            result.final_obs.view(p, 1),
            result.terminated.view(p, 1),
        )
        collected += result.reward
        obs = result.obs
    return collected


def greedy_return(env: BorderedGridworld, q: torch.Tensor, horizon: int = 60) -> torch.Tensor:
    members = torch.arange(q.shape[0])
    state = torch.full((q.shape[0],), env.start_state)
    total, alive = torch.zeros(q.shape[0]), torch.ones(q.shape[0], dtype=torch.bool)
    for _ in range(horizon):
        action = q[members, state].argmax(-1)
        total += alive.float() * env.reward_table[state, action]
        alive &= ~env.terminal_table[state, action]
        state = env.next_state_table[state, action]
    return total


def test_planning_steps_zero_is_q_learning_and_one_step_successor_adds_the_dyna_q_update():
    env = BorderedGridworld(num_envs=1, height=3, width=3)
    s, a = env.start_state, 0
    s_next = int(env.next_state_table[s, a])
    transition = (
        torch.tensor([[s]]),
        torch.tensor([[a]]),
        torch.tensor([[-1.0]]),
        torch.tensor([[s_next]]),
        torch.tensor([[False]]),
    )
    base = make_dyna_for_env(env, 1, DynaOptions(planning_steps=0, step_size=0.5, gamma=0.9))
    base.q[0, s_next] = torch.tensor([-2.0, -4.0, -3.0, -5.0])
    base.observe(*transition)
    assert base.q[0, s, a].item() == pytest.approx(0.5 * (-1.0 + 0.9 * -2.0))
    # One planning step: the only visited pair is (s, a); the perfect model gives s_next again.
    dyna = make_dyna_for_env(env, 1, DynaOptions(planning_steps=1, step_size=0.5, gamma=0.9))
    dyna.q[0, s_next] = torch.tensor([-2.0, -4.0, -3.0, -5.0])
    dyna.observe(*transition)
    after_direct = 0.5 * (-1.0 + 0.9 * -2.0)
    assert dyna.q[0, s, a].item() == pytest.approx(after_direct + 0.5 * (-1.0 + 0.9 * -2.0 - after_direct))


class ChainModel(BackwardModel):
    """Deterministic backward chain 3 -> 2 -> 1 -> 0 (state k's predecessor is k + 1 via action 1, reward -1)."""

    def __init__(self, hallucinate: bool = False) -> None:
        self.hallucinate = hallucinate

    def sample_backward(self, state, generator):
        previous = state + 1
        return BackwardSample(
            previous,
            torch.ones_like(state),
            torch.full(state.shape, -1.0),
            torch.zeros_like(state, dtype=torch.bool),
        )


def test_multi_step_predecessor_targets_bootstrap_from_the_real_state_and_truncate_at_non_greedy_actions():
    options = DynaOptions(
        variant="multi-step-predecessor",
        planning_steps=1,
        rollout_length=3,
        step_size=1.0,
        gamma=0.5,
        priority_threshold=0.0,
    )
    agent = DynaAgent(6, 2, 1, options, backward_model=ChainModel())
    # The real step 0 --0--> 5 (terminal): its update pushes state 0, whose chain is 1, 2, 3.
    agent.q[0, 2] = torch.tensor([5.0, 0.0])  # after Q(2, 1) is set to G_2 = -1.5, action 1 is not greedy at 2
    agent.observe(
        torch.tensor([[0]]),
        torch.tensor([[0]]),
        torch.tensor([[4.0]]),
        torch.tensor([[5]]),
        torch.tensor([[True]]),
    )
    value_0 = 4.0  # Q(0, 0) after the direct update (alpha = 1); max_b Q(0, b) = 4
    assert agent.q[0, 1, 1].item() == pytest.approx(-1.0 + 0.5 * value_0)
    assert agent.q[0, 2, 1].item() == pytest.approx(-1.0 + 0.5 * (-1.0 + 0.5 * value_0))
    assert agent.q[0, 3, 1].item() == 0.0, "the chain is truncated: a_2 = 1 is not greedy at state 2"
    stats = agent.planning_statistics()
    assert stats["planning_updates"].item() == 2
    assert stats["fraction_bootstrap_simulated"].item() == 0.0


class RecordingModel:
    """Wraps the given model; remembers every state it output (so the test checks provenance independently)."""

    def __init__(self, model):
        self.model = model
        self.outputs: set[int] = set()

    def sample_forward(self, state, action, generator):
        sample = self.model.sample_forward(state, action, generator)
        self.outputs.update(sample.next_state.tolist())
        return sample

    def sample_backward(self, state, generator):
        sample = self.model.sample_backward(state, generator)
        self.outputs.update(sample.previous_state.tolist())
        return sample


@pytest.mark.parametrize("variant", VARIANTS)
def test_invariant_only_multi_step_predecessor_never_bootstraps_from_simulated_states(variant):
    population = 4
    env = BorderedGridworld(num_envs=population, height=4, width=4)
    model = RecordingModel(given_model_of(env, 0.2, population))
    options = DynaOptions(variant=variant, planning_steps=3, rollout_length=3, step_size=0.5)
    agent = DynaAgent(
        env.num_states,
        env.num_actions,
        population,
        options,
        forward_model=model,
        backward_model=model,
        real_state_mask=env.real_state_mask,
        seed=3,
    )
    # Independent record of every state a planning target bootstrapped from.
    bootstrapped: list[torch.Tensor] = []
    original_max_q = agent._max_q

    def recording_max_q(state):
        bootstrapped.append(state.clone())
        return original_max_q(state)

    agent._max_q = recording_max_q
    train(agent, env, 150)
    stats = agent.planning_statistics()
    assert (stats["planning_updates"] > 0).all()
    bootstrap_states = torch.cat(bootstrapped)
    border = ~env.real_state_mask[bootstrap_states]
    if variant == "multi-step-predecessor":
        assert (stats["fraction_bootstrap_simulated"] == 0).all()
        assert (stats["fraction_bootstrap_hallucinated"] == 0).all()
        assert not border.any(), "a multi-step predecessor target bootstrapped from an unreachable state"
        # Closed border physics: a chain that hallucinates stays in the border, so no real entry is reached.
        assert (stats["fraction_real_via_hallucinated"] == 0).all()
        assert (stats["fraction_updated_hallucinated"] > 0).all(), "the model did hallucinate predecessors"
    else:
        assert (stats["fraction_bootstrap_simulated"] > 0).all()
        assert (stats["fraction_bootstrap_hallucinated"] > 0).all()
        assert border.any() and set(bootstrap_states[border].tolist()) <= model.outputs
    if "successor" in variant:
        # Real entries are updated toward hallucinated values at about the rate the model hallucinates.
        assert (stats["fraction_real_toward_hallucinated"] > 0.05).all()


@pytest.mark.parametrize("variant", ["one-step-predecessor", "multi-step-predecessor"])
def test_open_border_physics_lets_one_step_predecessor_update_real_states_toward_hallucinated_ones(variant):
    population = 8
    env = BorderedGridworld(num_envs=population, height=4, width=4)
    options = DynaOptions(variant=variant, planning_steps=5, step_size=0.5, border_physics="open")
    agent = make_dyna_for_env(env, population, options, seed=2, hallucination_probability=0.2)
    train(agent, env, 150)
    stats = agent.planning_statistics()
    if variant == "one-step-predecessor":
        # A hallucinated border cell is popped, and its predecessor is a real edge cell: real -> hallucinated.
        assert (stats["fraction_real_toward_hallucinated"] > 0).all()
    else:
        assert (stats["fraction_bootstrap_simulated"] == 0).all()
        assert (stats["fraction_real_toward_hallucinated"] == 0).all()
        # It never bootstraps from a hallucinated state, but a backward chain can pass through one (s <- border
        # <- real edge cell) and update a real entry along a path that does not exist.
        # Rare (the chain must pass the greedy check at the hallucinated state), so over the population.
        assert (stats["fraction_real_via_hallucinated"] > 0).any()


@pytest.mark.parametrize("variant", VARIANTS)
def test_with_a_perfect_model_every_variant_learns_the_shortest_path_at_least_as_fast_as_model_free(variant):
    population, steps = 8, 400
    returns = {}
    for name, planning_steps in ((variant, 5), ("model-free", 0)):
        env = BorderedGridworld(num_envs=population, height=4, width=4, max_episode_steps=50)
        agent = make_dyna_for_env(
            env,
            population,
            DynaOptions(variant=variant, planning_steps=planning_steps, step_size=0.5),
            seed=1,
        )
        reward_sum = train(agent, env, steps)
        returns[name] = (reward_sum, greedy_return(env, agent.q))
        if planning_steps:
            stats = agent.planning_statistics()
            assert (stats["fraction_bootstrap_hallucinated"] == 0).all()
            assert (stats["fraction_updated_hallucinated"] == 0).all()
    planned_reward, planned_greedy = returns[variant]
    free_reward, _ = returns["model-free"]
    assert (planned_greedy == -6).all(), f"{variant} with a perfect model: greedy returns {planned_greedy.tolist()}"
    # Total reward collected while learning (a higher sum = fewer steps wasted): planning is at least as fast.
    assert planned_reward.mean() >= free_reward.mean()


def test_state_dict_resume_is_bit_identical():
    env = BorderedGridworld(num_envs=3, height=3, width=3)
    agent = make_dyna_for_env(
        env,
        3,
        DynaOptions(variant="one-step-predecessor", planning_steps=2),
        seed=5,
        hallucination_probability=0.3,
    )
    train(agent, env, 30)
    saved, env_saved = agent.state_dict(), env.state_dict()
    obs = env.reset(seed=None)

    def continue_run():
        nonlocal obs
        env.load_state_dict(env_saved)
        agent.load_state_dict(saved)
        generator_state = agent.generator.get_state()
        for step in range(20):
            action, _ = agent.act(obs.view(3, 1), step)
            result = env.step(action.view(3))
            agent.observe(
                obs.view(3, 1),
                action,
                result.reward.view(3, 1),
                result.final_obs.view(3, 1),
                result.terminated.view(3, 1),
            )
        return agent.q.clone(), generator_state

    first, _ = continue_run()
    second, _ = continue_run()
    # The given model draws from the agent's generator, so a restored agent replays the same planning.
    assert torch.equal(first, second)


def test_per_member_p_h_and_step_size_and_act_log_prob():
    env = BorderedGridworld(num_envs=4)
    agent = make_dyna_for_env(
        env,
        4,
        DynaOptions(epsilon=0.2),
        hallucination_probability=[0.0, 0.1, 0.2, 1.0],
        step_size=torch.tensor([0.1, 0.2, 0.3, 0.4]),
    )
    obs = env.reset().view(4, 1)
    output = agent.act(obs, 0)
    assert output.action.shape == (4, 1)
    # All Q are equal at the start: every action is greedy, so mu(a|s) = 1/4.
    assert torch.allclose(output.log_prob.exp(), torch.full((4, 1), 0.25))
    forward = agent.forward_model.sample_forward(
        torch.full((4,), env.start_state), torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(0)
    )
    assert not env.real_state_mask[forward.next_state[3]], "p_h = 1 always hallucinates"
    assert env.real_state_mask[forward.next_state[0]], "p_h = 0 never hallucinates"


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "options, message",
    [
        ({"planning_steps": -1}, "planning_steps must be >= 0"),
        ({"rollout_length": 0}, r"rollout_length \(n\) must be >= 1"),
        ({"hallucination_probability": 1.5}, r"hallucination_probability \(p_h\) must be in \[0.0, 1.0\]"),
        ({"hallucination_probability": -0.1}, r"hallucination_probability \(p_h\) must be in \[0.0, 1.0\]"),
        ({"variant": "two-step-sideways"}, "variant must be one of one-step-successor"),
        ({"step_size": 0.0}, r"step_size must be in \(0.0, 1.0\]"),
        ({"search_control": "priority"}, "predecessor variants only"),
        ({"border_physics": "leaky"}, "border_physics must be 'closed' or 'open'"),
        ({"value_function": "cnn"}, "value_function must be one of tabular, mlp"),
        ({"hidden": 0}, "hidden must be an integer >= 1"),
    ],
)
def test_bad_options_raise_one_clear_error(options, message):
    with pytest.raises(ValueError, match=message):
        DynaOptions(**options)


def test_options_may_hold_one_rate_per_member():
    env = BorderedGridworld(num_envs=3)
    options = DynaOptions(hallucination_probability=[0.0, 0.5, 1.0], step_size=[0.1, 0.2, 0.3])
    agent = make_dyna_for_env(env, 3, options)
    assert agent.forward_model.hallucination_probability.tolist() == [0.0, 0.5, 1.0]
    assert torch.allclose(agent.step_size, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"p_h\) must be in \[0.0, 1.0\]"):
        DynaOptions(hallucination_probability=[0.1, 2.0])
    with pytest.raises(ValueError, match="one value per member"):
        make_dyna_for_env(BorderedGridworld(num_envs=2), 2, options)


def test_per_member_p_h_outside_unit_interval_or_of_wrong_length_is_rejected():
    env = BorderedGridworld(num_envs=2)
    with pytest.raises(ValueError, match=r"p_h\) must be in \[0, 1\]"):
        make_dyna_for_env(env, 2, DynaOptions(), hallucination_probability=[0.1, 1.2])
    with pytest.raises(ValueError, match="one value per member"):
        make_dyna_for_env(env, 2, DynaOptions(), hallucination_probability=[0.1, 0.2, 0.3])


class WrongShapeModel(BackwardModel):
    def sample_backward(self, state, generator):
        return BackwardSample(
            state.unsqueeze(1).repeat(1, 2),
            state,
            torch.zeros(state.shape),
            torch.zeros(state.shape, dtype=torch.bool),
        )


class WrongShapeForward:
    def sample_forward(self, state, action, generator):
        return ForwardSample(
            torch.zeros(3, 3, dtype=torch.int64),
            torch.zeros(state.shape),
            torch.zeros(state.shape, dtype=torch.bool),
        )


def test_a_model_returning_states_of_the_wrong_shape_fails_at_construction():
    with pytest.raises(ValueError, match=r"returned previous_state of shape \(4, 2\); expected \(4,\)"):
        DynaAgent(10, 4, 4, DynaOptions(variant="one-step-predecessor"), backward_model=WrongShapeModel())
    with pytest.raises(ValueError, match=r"returned next_state of shape \(3, 3\); expected \(4,\)"):
        DynaAgent(10, 4, 4, DynaOptions(variant="one-step-successor"), forward_model=WrongShapeForward())


def test_registry_builds_dyna_for_the_bordered_gridworld_and_rejects_non_tabular_envs():
    from emphatic_rl.agents.registry import AgentContext, make_agent

    env = BorderedGridworld()
    context = AgentContext(
        env.observation_spec,
        env.action_spec,
        2,
        1,
        2,
        torch.device("cpu"),
        0,
        100,
        env_name="bordered-gridworld",
    )
    agent = make_agent("dyna", context, variant="multi-step-predecessor", hallucination_probability=0.1)
    assert isinstance(agent, DynaAgent) and agent.q.shape == (2, env.num_states, 4)
    with pytest.raises(ValueError, match="unknown option"):
        make_agent("dyna", context, planning=3)


def test_dyna_runs_in_the_generic_training_loop_with_env_options_and_two_envs_per_member(tmp_path):
    from emphatic_rl.train import TrainConfig, build_run, train

    config = TrainConfig(
        agent="dyna",
        env="bordered-gridworld",
        steps=400,
        population_size=2,
        num_envs=2,
        log_every=200,
        eval_every=200,
        eval_episodes=1,
        progress=False,
        agent_options={"variant": "multi-step-predecessor", "hallucination_probability": 0.1},
        env_options={"height": 3, "width": 3},
    )
    run = build_run(config)
    assert isinstance(run.agent, DynaAgent) and run.agent.q.shape == (2, 5 * 5, 4)
    result = train(config, tmp_path / "run", run=run)
    assert (result.final_eval_return == -4).all(), "greedy policy of the 3x3 grid: 4 steps to the goal"


# ---------------------------------------------------------------------------------------------- MLP value function
def test_mlp_value_updates_are_gradient_steps_toward_the_target_and_generalise_over_coordinates():
    env = BorderedGridworld(num_envs=2, height=3, width=3)
    options = DynaOptions(value_function="mlp", learning_rate=1e-2, planning_steps=0, hidden=16)
    agent = make_dyna_for_env(env, 2, options, seed=0)
    assert agent.features.shape == (env.num_states, 2)
    state = torch.tensor([env.start_state, env.goal_state - 1])
    action = torch.tensor([1, 2])
    target = torch.tensor([-3.0, 2.0])
    neighbour_before = agent.q[0, env.start_state + 1, 1].item()
    for _ in range(150):
        agent._apply(state, action, target)
    assert torch.allclose(agent.q[agent.members, state, action], target, atol=0.05)
    # A neighbouring cell moved with it (shared weights), unlike a table.
    assert abs(agent.q[0, env.start_state + 1, 1].item() - neighbour_before) > 0.5


def test_mlp_dyna_learns_the_small_grid_with_replay_from_the_trajectory_buffer_and_resumes_exactly():
    from emphatic_rl.buffers.trajectory import TrajectoryBuffer

    population = 4
    env = BorderedGridworld(num_envs=population, height=3, width=3, max_episode_steps=30)
    options = DynaOptions(
        variant="multi-step-predecessor", value_function="mlp", learning_rate=3e-3, planning_steps=2,
        hidden=32, replay_batch=8,
    )  # fmt: skip
    agent = make_dyna_for_env(env, population, options, seed=0)
    buffer = TrajectoryBuffer(400, population, (), torch.int64)
    obs = env.reset(seed=0)

    def run(steps):
        nonlocal obs
        for step in range(steps):
            action, log_prob = agent.act(obs.view(population, 1), step)
            result = env.step(action.view(population))
            buffer.add(
                obs,
                action.view(-1),
                result.reward,
                result.terminated,
                result.truncated,
                result.final_obs,
                log_prob.view(-1),
            )
            agent.update(buffer, step)
            obs = result.obs

    run(300)
    assert (greedy_return(env, agent.q) == -4).all()
    assert agent.parameters_finite().all()
    saved = agent.state_dict()
    generator = agent.generator.get_state()
    state = torch.full((population,), env.start_state)
    agent._apply(state, torch.zeros(population, dtype=torch.long), torch.full((population,), 5.0))
    after_first = agent.q.clone()
    agent.load_state_dict(saved)
    agent.generator.set_state(generator)
    agent._apply(state, torch.zeros(population, dtype=torch.long), torch.full((population,), 5.0))
    assert torch.equal(agent.q, after_first)
