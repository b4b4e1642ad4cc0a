"""DQN end to end: on MinAtar through the Gymnasium adapter (fast), and learning CartPole (slow)."""

import pytest

from emphatic_rl.config import TrainConfig
from emphatic_rl.logging import read_metrics
from emphatic_rl.train import build_run, train


def test_dqn_runs_on_minatar_breakout_through_the_gymnasium_adapter(tmp_path):
    config = TrainConfig(agent="dqn", env="gym:MinAtar/Breakout-v1", steps=120, num_envs=2, eval_every=60,
                         eval_episodes=1, eval_max_steps=50, log_every=60, progress=False,
                         agent_options={"learning_starts": 40, "batch_size": 16})
    run = build_run(config)
    assert run.env.observation_spec.shape == (10, 10, 4)
    result = train(config, tmp_path / "run", run=run)
    losses = [value for _, name, _, value in read_metrics(tmp_path / "run" / "metrics.csv") if name == "train/loss"]
    assert result.steps == 120 and losses and all(v == v for v in losses)


@pytest.mark.slow
def test_dqn_reaches_475_on_native_cartpole_within_100k_steps(tmp_path):
    """The issue's bar: a mean evaluation return >= 475 (10 episodes) at some evaluation within 100k steps."""
    config = TrainConfig(agent="dqn", env="cartpole", steps=100_000, seed=0, eval_every=5_000, eval_episodes=10,
                         progress=False)
    train(config, tmp_path / "run", run=build_run(config))
    returns = [value for _, name, _, value in read_metrics(tmp_path / "run" / "metrics.csv") if name == "eval/return"]
    assert max(returns) >= 475, returns
