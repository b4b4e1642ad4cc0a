"""The open run loop: ``train`` is the ``Runner`` with its default callbacks; callbacks; named random streams."""

from __future__ import annotations

import math

import pytest
import torch

from emphatic_rl.config import TrainConfig
from emphatic_rl.logging import read_metrics
from emphatic_rl.runner import (
    Callback,
    DivergenceGuard,
    EarlyStopping,
    Evaluate,
    Lambda,
    LogMetrics,
    MemoryLog,
    Runner,
)
from emphatic_rl.seeding import stream_generator, stream_seed
from emphatic_rl.train import build_run, train


def small_config(**changes) -> TrainConfig:
    config = TrainConfig(agent="ace", env="counterexample-three-state", steps=60, num_envs=2, population_size=4,
                         eval_every=20, eval_episodes=2, eval_max_steps=5, log_every=10, checkpoint_every=30,
                         progress=False, env_options={"observation": "state"},
                         agent_options={"critic": "oracle", "alpha_actor": [0.1, 0.2, 0.3, 0.4]})
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def test_runner_in_memory_logs_exactly_what_train_writes(tmp_path):
    config = small_config()
    result = train(config, tmp_path / "run", run=build_run(config))
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    written = [(s, n, m, repr(v)) for s, n, m, v in rows if not n.startswith("time/")]

    runner = Runner(build_run(config), logger=MemoryLog(config.population_size))
    runner.reset()
    runner.run(config.steps, [DivergenceGuard(10), LogMetrics(10), Evaluate(20)])
    in_memory = [(s, n, m, repr(v)) for s, n, m, v in runner.logger.rows if not n.startswith("time/")]
    assert in_memory == written
    assert torch.equal(runner.last_eval, result.final_eval_return)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]  # the in-memory runner wrote nothing


def test_runner_without_logger_and_continuing_runs_are_bit_identical():
    config = small_config()
    whole = Runner(build_run(config))
    whole.reset()
    whole.run(60)
    parts = Runner(build_run(config))
    parts.reset()
    parts.run(25)
    parts.run(60)  # continues from step 25
    assert parts.step == whole.step == 60
    assert torch.equal(whole.agent.state_dict()["theta"], parts.agent.state_dict()["theta"])
    assert torch.equal(whole.obs, parts.obs)


def test_callbacks_run_in_order_and_can_stop():
    config = small_config()
    seen: list[tuple[str, int]] = []

    class Recorder(Callback):
        def on_start(self, runner):
            seen.append(("start", runner.step))

        def on_end(self, runner):
            seen.append(("end", runner.step))

    runner = Runner(build_run(config))
    stop_at_15 = Lambda(lambda r: r.stop() if r.step == 15 else None, every=5)
    every_five = Lambda(lambda r: seen.append(("five", r.step)), every=5)
    assert runner.run(60, [Recorder(), every_five, stop_at_15]) == 15
    assert seen == [("start", 0), ("five", 5), ("five", 10), ("five", 15), ("end", 15)]


def test_early_stopping_with_patience():
    config = small_config(population_size=1, agent_options={"critic": "oracle", "alpha_actor": 1e-9})
    runner = Runner(build_run(config))
    stopper = EarlyStopping(patience=2)  # a tiny step size: the policy barely changes, the return stops improving
    runner.run(200, [Evaluate(10), stopper])
    assert stopper.stopped_at is not None and stopper.stopped_at <= 200
    assert stopper.since_best >= 2
    with pytest.raises(ValueError, match="EarlyStopping needs a target, a patience or both"):
        EarlyStopping()


def test_named_streams_keep_the_historical_seeds():
    assert stream_seed(7, "init") == 7
    assert stream_seed(7, "agent") == 8
    assert stream_seed(7, "behaviour") == 9
    assert stream_seed(7, "agent_eval") == 10
    assert stream_seed(7, "model") == 7 + 7919
    assert stream_seed(7, "excursion_data") == 7 + 7_777_777
    assert stream_seed(7, "evaluation", step=40) == (7 * 1_000_003 + 40) % 2**63
    assert stream_seed(7, "excursions", step=40) == (7 * 1_000_003 + 40 + 12_345) % 2**63
    assert torch.equal(stream_generator(7, "behaviour").get_state(), torch.Generator().manual_seed(9).get_state())
    with pytest.raises(ValueError, match="unknown random stream 'bogus'; allowed: init, agent"):
        stream_seed(0, "bogus")
    with pytest.raises(ValueError, match="stream 'evaluation' is per evaluation; give the step"):
        stream_seed(0, "evaluation")
    assert stream_seed(7, "population", index=3) == 7 + 3000
    assert stream_seed(7, "resume", index=40) == 7 + 40
    assert torch.equal(
        stream_generator(7, "population", index=2).get_state(), torch.Generator().manual_seed(2007).get_state()
    )
    with pytest.raises(ValueError, match="stream 'population' is per index; give the index"):
        stream_seed(0, "population")
    with pytest.raises(ValueError, match="stream 'agent' takes no index"):
        stream_seed(0, "agent", index=1)
    with pytest.raises(ValueError, match="index must be an integer >= 0"):
        stream_seed(0, "population", index=-1)


def test_evaluate_at_start_gives_a_curve_its_first_point():
    config = small_config()
    points: list[tuple[int, torch.Tensor]] = []
    record = Lambda(lambda r: points.append((r.step, r.last_eval.clone())), every=20)

    class First(Callback):
        def on_start(self, runner):
            points.append((runner.step, runner.last_eval.clone()))

    runner = Runner(build_run(config))
    runner.run(40, [Evaluate(20, at_start=True), First(), record])
    assert [step for step, _ in points] == [0, 20, 40]
    assert torch.isfinite(points[0][1]).all()  # evaluated before the first step
    runner.run(60, [Evaluate(20, at_start=True), First()])  # a continuing run: no second step-0 evaluation
    assert points[-1][0] == 40 and torch.equal(points[-1][1], points[2][1])


def test_runner_diverged_members_are_nan_in_evaluation():
    config = small_config()
    runner = Runner(build_run(config))
    runner.reset()
    runner.diverged[1] = True
    runner.run(20, [Evaluate(20)])
    assert math.isnan(float(runner.last_eval[1])) and torch.isfinite(runner.last_eval[[0, 2, 3]]).all()


def test_rollout_returns_runs_a_hand_written_policy_function():
    from emphatic_rl.envs.gridworld import BorderedGridworld
    from emphatic_rl.runner import PolicyFunction, rollout_returns

    env = BorderedGridworld(num_envs=3, height=3, width=3, max_episode_steps=10)
    right_then_up = PolicyFunction(lambda obs, _: torch.where(obs % env.grid_cols < 3, 1, 0))  # the shortest path
    returns, lengths = rollout_returns(right_then_up, env, env.reset(seed=0), 1, 3, 10)
    assert returns.tolist() == [[-4.0] * 3] and lengths.tolist() == [[4] * 3]
    always_left = PolicyFunction(lambda obs, _: torch.full_like(obs, 3))  # bumps into the wall until truncated
    returns, lengths = rollout_returns(always_left, env, env.reset(seed=0), 1, 3, 50)
    assert returns.tolist() == [[-10.0] * 3] and lengths.tolist() == [[10] * 3]
