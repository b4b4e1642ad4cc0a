"""The compiled evaluation rollouts (``emphatic_rl.agents.linear.rollouts``) against the torch envs, the tile coder
and the torch evaluators: dynamics step for step, tile indices, greedy evaluations exactly, sampled ones within
statistical error; frozen members cost nothing; the work is the sum of the episode lengths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emphatic_rl.agents.linear import rollouts as lr
from emphatic_rl.agents.linear.ace import TILE_LAYOUTS
from emphatic_rl.config import TrainConfig
from emphatic_rl.envs.classic import MountainCar
from emphatic_rl.envs.puddle_world import PuddleWorld
from emphatic_rl.features import TileCoder
from emphatic_rl.studies.sweep import evaluate_excursions
from emphatic_rl.train import build_run, evaluate


def coder_for(env_name: str) -> TileCoder:
    low, high, tiles, tilings = TILE_LAYOUTS[env_name]
    return TileCoder(low, high, tiles, tilings, bias=True)


def velocity_theta(coder: TileCoder, members: int, scale: float, noise: float, seed: int) -> torch.Tensor:
    """A Mountain Car policy that pushes along the velocity (by the tiles' centres), plus Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    theta = torch.zeros(members, 3, coder.num_features)
    low, width, offsets = coder.low.double(), coder.width.double(), coder.offsets.double()
    for k in range(coder.num_tilings):
        for c0 in range(int(coder.grid[0])):
            for c1 in range(int(coder.grid[1])):
                index = int(coder.tiling_base[k] + c0 * coder.strides[0] + c1 * coder.strides[1])
                velocity = float(low[1] + (c1 + 0.5) * width[1] - offsets[k, 1]) / 0.07
                theta[:, 2, index] = scale * velocity
                theta[:, 0, index] = -scale * velocity
    return theta + noise * torch.randn(theta.shape, generator=generator)


def make_run(env: str, members: int, episodes: int, evaluation: str, eval_max_steps: int = 1000, seed: int = 3,
             env_options: dict | None = None):
    config = TrainConfig(agent="offpac", env=env, population_size=members, num_envs=1, eval_episodes=episodes,
                         eval_max_steps=eval_max_steps, seed=seed, progress=False, env_options=env_options or {},
                         agent_options={"evaluation": evaluation})
    return build_run(config)


# ------------------------------------------------------------------------------------------------ (f) tile indices
@pytest.mark.parametrize("env_name", ["mountain-car", "puddle-world"])
def test_tile_indices_equal_the_tile_coder(env_name):
    coder = coder_for(env_name)
    generator = torch.Generator().manual_seed(0)
    low, high = coder.low, coder.high
    span = high - low
    obs = low - 0.2 * span + 1.4 * span * torch.rand(20_000, 2, generator=generator)  # also outside the box
    # exactly on tile edges of every tiling, and the box's corners
    edges = (low + torch.arange(-1, coder.tiles_per_dim[0] + 2)[:, None] * coder.width
             - coder.offsets[:, None, :]).reshape(-1, 2)
    obs = torch.cat([obs, edges, low[None], high[None]])
    np.testing.assert_array_equal(lr.tile_indices(coder, obs), coder(obs).numpy())


# ------------------------------------------------------------------------------------------------ (a) dynamics
def test_mountain_car_transitions_equal_the_env_step_for_step():
    count, steps = 64, 300
    generator = torch.Generator().manual_seed(1)
    starts = torch.stack([-1.2 + 1.8 * torch.rand(count, generator=generator, dtype=torch.float64),
                          0.14 * torch.rand(count, generator=generator, dtype=torch.float64) - 0.07], dim=1)
    starts[0] = torch.tensor([-1.2, -0.05], dtype=torch.float64)  # at the left wall, moving left
    starts[1] = torch.tensor([0.49, 0.02], dtype=torch.float64)  # about to reach the goal
    actions = torch.randint(0, 3, (steps, count), generator=generator)
    env = MountainCar(num_envs=count, max_episode_steps=None, goal_velocity=0.01)
    env.set_state(starts)
    states, rewards, terminated = [], [], []
    for t in range(steps):  # the env's transition hook: no autoreset, no time limit
        reward, done = env._transition(actions[t])
        states.append(env.state.clone())
        rewards.append(reward)
        terminated.append(done)
    kernel_states, kernel_rewards, kernel_terminated = lr.transition_trajectory(env, starts, actions)
    torch_states = torch.stack(states).numpy()
    # float64 throughout; libm's cos and torch's vectorised cos may differ by one ulp: 1e-12 absolute
    np.testing.assert_allclose(kernel_states, torch_states, rtol=0, atol=1e-12)
    assert (kernel_states == torch_states).mean() > 0.9
    np.testing.assert_array_equal(kernel_rewards, torch.stack(rewards).numpy())
    np.testing.assert_array_equal(kernel_terminated, torch.stack(terminated).numpy())
    assert kernel_terminated.any() and (kernel_states[:, :, 0] == -1.2).any()


def test_puddle_world_transitions_equal_the_env_step_for_step(monkeypatch):
    count, steps = 256, 60
    generator = torch.Generator().manual_seed(2)
    starts = torch.rand(count, 2, generator=generator)
    starts[0] = torch.tensor([0.93, 0.93])  # next to the goal
    actions = torch.randint(0, 4, (steps, count), generator=generator)
    noise = 0.01 * torch.randn(steps, count, 2, generator=generator)  # as env.normal(N, 2, std=0.01) computes it
    env = PuddleWorld(num_envs=count, max_episode_steps=None)
    env.set_state(starts)
    draws = iter(noise)
    monkeypatch.setattr(env, "normal", lambda *shape, **kwargs: next(draws))
    positions, rewards, terminated = [], [], []
    for t in range(steps):
        reward, done = env._transition(actions[t])
        positions.append(env.position.clone())
        rewards.append(reward)
        terminated.append(done)
    kernel_states, kernel_rewards, kernel_terminated = lr.transition_trajectory(env, starts, actions, noise)
    # float32 throughout, in the env's order of operations: equal
    np.testing.assert_array_equal(kernel_states, torch.stack(positions).double().numpy())
    np.testing.assert_array_equal(kernel_terminated, torch.stack(terminated).numpy())
    torch_rewards = torch.stack(rewards).numpy()
    # the puddle distance's norm is torch's CPU vector_norm (an fma); equal, or within a float32 ulp of 40 where a
    # torch build computes it otherwise
    np.testing.assert_allclose(kernel_rewards, torch_rewards, rtol=0, atol=1e-5)
    assert kernel_terminated.any() and (torch_rewards < -1.5).any()


# ------------------------------------------------------------------------------------------------ (b) greedy: exact
def test_greedy_mountain_car_equals_the_torch_evaluators_exactly():
    run = make_run("mountain-car", members=6, episodes=8, evaluation="greedy", eval_max_steps=250,
                   env_options={"max_episode_steps": 400})
    run.agent.policy.theta.copy_(velocity_theta(run.agent.features, 6, scale=1.0, noise=0.6, seed=0))
    fused = evaluate(run, 40, backend="numba")
    torch_result = evaluate(run, 40, backend="torch")
    assert torch.equal(fused["return"], torch_result["return"])
    assert torch.equal(fused["length"], torch_result["length"])
    lengths = fused["length"]
    assert (lengths < 250).any() and lengths.min() < lengths.max()  # members differ, some episodes end early
    # excursions: one rollout from each given start state
    starts = {"state": torch.stack([torch.linspace(-1.1, 0.4, 7, dtype=torch.float64),
                                    torch.linspace(-0.05, 0.05, 7, dtype=torch.float64)], dim=1)}
    fused_exc = evaluate_excursions(run, starts, 40, backend="numba")
    torch_exc = evaluate_excursions(run, starts, 40, backend="torch")
    assert torch.equal(fused_exc, torch_exc)
    # the env's time limit cuts too (max_episode_steps 30 < eval_max_steps 250)
    short = make_run("mountain-car", members=6, episodes=8, evaluation="greedy", eval_max_steps=250,
                     env_options={"max_episode_steps": 30})
    short.agent.policy.theta.copy_(run.agent.policy.theta)
    fused, torch_result = evaluate(short, 40, backend="numba"), evaluate(short, 40, backend="torch")
    assert torch.equal(fused["length"], torch_result["length"]) and float(fused["length"].max()) == 30.0


# ------------------------------------------------------------------------------------------------ (c) sampled
@pytest.mark.parametrize("env_name", ["mountain-car", "puddle-world"])
def test_sampled_returns_match_the_torch_evaluator_statistically(env_name):
    members, episodes = 2, 1000
    run = make_run(env_name, members=members, episodes=episodes, evaluation="sample", eval_max_steps=1000)
    coder = run.agent.features
    if env_name == "mountain-car":
        theta = velocity_theta(coder, members, scale=0.4, noise=0.1, seed=1)
        theta[1] *= 0.5  # a noisier policy
    else:
        theta = 0.3 * torch.randn(members, 4, coder.num_features, generator=torch.Generator().manual_seed(1))
        theta[:, 0, -1] += 1.0  # up and right through the bias feature
        theta[:, 2, -1] += torch.tensor([1.0, 0.5])
    run.agent.policy.theta.copy_(theta)
    fused = evaluate(run, 100, backend="numba")["return"]
    reference = evaluate(run, 100, backend="torch")["return"]
    # the spread of one episode's return, from the kernel's own rollouts
    run.eval_env.reset(seed=5)
    starts = run.eval_env.state if env_name == "mountain-car" else run.eval_env.position
    spread = lr.linear_rollouts(theta, coder, run.eval_env, starts.view(members, episodes, 2), seed=5,
                                max_steps=1000).returns.std(axis=1)
    standard_error = torch.from_numpy(spread).float() * math.sqrt(2.0 / episodes)
    assert (standard_error > 0).all()
    assert ((fused - reference).abs() < 5 * standard_error).all(), (fused, reference, standard_error)


def test_fast_path_is_automatic_deterministic_and_leaves_the_agent_generator_alone():
    run = make_run("puddle-world", members=3, episodes=5, evaluation="sample")
    run.agent.policy.theta.normal_(generator=torch.Generator().manual_seed(0))
    generator_state = run.agent.generator.get_state()
    first = evaluate(run, 7)
    assert torch.equal(run.agent.generator.get_state(), generator_state)
    assert torch.equal(first["return"], evaluate(run, 7, backend="numba")["return"])
    assert not torch.equal(first["return"], evaluate(run, 8)["return"])  # another step, other random numbers
    with pytest.raises(ValueError, match="unknown evaluation backend"):
        evaluate(run, 7, backend="fast")
    cartpole = build_run(TrainConfig(agent="dqn", env="cartpole", progress=False))
    assert lr.unsupported_reason(cartpole.agent, cartpole.eval_env, "cpu") is not None
    with pytest.raises(ValueError, match="backend 'numba' cannot run here"):
        evaluate(cartpole, 1, backend="numba")


# ------------------------------------------------------------------------------------------------ (d), (e)
def test_frozen_members_cost_nothing_and_the_work_is_the_sum_of_episode_lengths():
    coder = coder_for("mountain-car")
    env = MountainCar(num_envs=1, max_episode_steps=None)
    members, episodes = 4, 30
    theta = velocity_theta(coder, members, scale=0.5, noise=0.3, seed=2)
    starts = torch.zeros(episodes, 2, dtype=torch.float64)
    starts[:, 0] = torch.linspace(-0.6, -0.4, episodes, dtype=torch.float64)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # two numba threads (numba's OpenMP layer shares the runtime with torch: torch's count must not change)
        everyone = lr.linear_rollouts(theta, coder, env, starts, seed=11, max_steps=600, num_threads=2)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(torch_threads)
    assert everyone.steps == int(everyone.lengths.sum()) == int(everyone.member_steps.sum())
    assert 0 < everyone.lengths.min() < everyone.lengths.max() <= 600  # episodes of different lengths
    np.testing.assert_array_equal(everyone.returns, -everyone.lengths)
    frozen = torch.tensor([False, True, False, True])
    some = lr.linear_rollouts(theta, coder, env, starts, seed=11, max_steps=600, frozen=frozen, num_threads=1)
    assert np.isnan(some.returns[[1, 3]]).all() and (some.lengths[[1, 3]] == 0).all()
    assert (some.member_steps[[1, 3]] == 0).all() and some.steps == int(some.lengths.sum())
    # the others do exactly what they did (no dependence on other rollouts or on the number of threads)
    np.testing.assert_array_equal(some.returns[[0, 2]], everyone.returns[[0, 2]])
    # the training loop's frozen (diverged) members: NaN return and length
    run = make_run("mountain-car", members=3, episodes=4, evaluation="sample", eval_max_steps=50)
    run.agent.policy.theta[1] = float("nan")
    run.agent.freeze(torch.tensor([False, True, False]))
    result = evaluate(run, 3)
    assert torch.isnan(result["return"][1]) and torch.isnan(result["length"][1])
    assert torch.isfinite(result["return"][[0, 2]]).all()


def test_float64_theta_gives_the_float32_greedy_rollouts():
    coder = coder_for("puddle-world")
    env = PuddleWorld(num_envs=1)
    theta = torch.randn(3, 4, coder.num_features, generator=torch.Generator().manual_seed(4))
    theta[:, 0, -1] += 2.0
    starts = torch.rand(3, 10, 2, generator=torch.Generator().manual_seed(5))
    single = lr.linear_rollouts(theta, coder, env, starts, seed=1, max_steps=100, greedy=True)
    double = lr.linear_rollouts(theta.double(), coder, env, starts, seed=1, max_steps=100, greedy=True)
    np.testing.assert_array_equal(single.lengths, double.lengths)
    np.testing.assert_allclose(single.returns, double.returns, rtol=1e-12)


def test_training_loop_evaluates_with_the_kernel_and_resumes_bit_identically(tmp_path, monkeypatch):
    from emphatic_rl.logging import read_metrics
    from emphatic_rl.train import train

    calls = []
    original = lr.linear_rollouts
    monkeypatch.setattr(lr, "linear_rollouts", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    config = TrainConfig(agent="offpac", env="mountain-car", steps=200, population_size=3, num_envs=2, eval_every=100,
                         eval_episodes=4, eval_max_steps=100, log_every=50, checkpoint_every=100, progress=False,
                         agent_options={"alpha_actor": 1.0, "alpha_critic": 0.5})
    train(config, tmp_path / "one", run=build_run(config))
    assert len(calls) == 2
    half = TrainConfig(**{**config.to_dict(), "steps": 100})
    train(half, tmp_path / "two", run=build_run(half))
    train(config, tmp_path / "two", resume=True, run=build_run(config))

    def evaluations(folder):
        return sorted(row for row in read_metrics(tmp_path / folder / "metrics.csv") if row[1].startswith("eval/"))

    assert evaluations("one") == evaluations("two") and len(evaluations("one")) == 12
