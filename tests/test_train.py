"""The training loop and the `emphatic-rl train` command: bad input, resume exactness, divergence handling."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from emphatic_rl.agents.base import ActionOutput, Agent
from emphatic_rl.agents.registry import AGENT_REGISTRY, register_agent
from emphatic_rl.checkpoints import load_checkpoint
from emphatic_rl.cli import main
from emphatic_rl.config import TrainConfig
from emphatic_rl.logging import read_metrics
from emphatic_rl.train import build_run, train

SMALL = ["--agent", "dqn", "--env", "cartpole", "--steps", "60", "--no-progress", "--set", "eval_every=30",
         "--set", "eval_episodes=2", "--set", "log_every=30", "--set", "agent.learning_starts=20",
         "--set", "agent.batch_size=8"]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--agent", "nope"], "unknown agent 'nope'; allowed: "),
        (["--env", "nope"], "unknown env 'nope'; allowed: "),
        (["--set", "stepz=5"], "unknown config key 'stepz'; allowed: "),
        (["--steps", "0"], "steps must be an integer >= 1"),
        (["--steps", "-5"], "steps must be an integer >= 1"),
        (["--agent", "dqn", "--set", "agent.learning_rate=0"], "learning_rate must be > 0"),
        (["--agent", "dqn", "--set", "agent.learning_rate=-1e-3"], "learning_rate must be > 0"),
        (["--agent", "dqn", "--set", "agent.nope=1"], "unknown option(s) nope for agent 'dqn'; allowed: "),
        (["--agent", "dqn", "--env", "pendulum"], "agent 'dqn' needs a discrete action space"),
        (["--agent", "dqn", "--set", "env.nope=3"], "unknown option(s) nope for env 'cartpole'"),
        (["--agent", "dqn", "--set", "eval_env.nope=3"], "unknown option(s) nope for env 'cartpole'"),
        (["--agent", "ace", "--set", "agent.eta=1.5"], "eta"),
        (["--agent", "ace", "--set", "agent.critic_lambda=-0.1"], "critic_lambda"),
        (["--agent", "ace", "--set", 'agent.actor_update="all_actions"'], "needs critic 'gq'"),
    ],
)
def test_train_bad_input_is_one_line_and_writes_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--out", str(out), *args], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0]
    assert "Traceback" not in err
    assert not out.exists()


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(["train", "--out", str(blocker / "run"), *SMALL], capsys)
    assert code == 2 and "is not writable" in err and len(err.strip().splitlines()) == 1


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    code, _, err = run_cli(["train", "--resume", str(tmp_path)], capsys)
    assert code == 2 and "is not a run folder" in err


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["train", "--out", str(out), *SMALL], capsys)[0] == 0
    code, _, err = run_cli(["train", "--out", str(out), *SMALL], capsys)
    assert code == 2 and "already holds a run" in err


def test_run_folder_contents(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(["train", "--out", str(out), *SMALL], capsys)
    assert code == 0
    assert str(out) in stdout
    assert (out / "config.json").is_file() and (out / "checkpoint.pt").is_file()
    assert any((out / "tensorboard").iterdir())
    metrics = read_metrics(out / "metrics.csv")
    names = {name for _, name, _, _ in metrics}
    # SB3's names; every agent scalar under train/, none at the root
    assert {"eval/return", "rollout/ep_rew_mean", "rollout/ep_len_mean", "train/loss", "train/q_mean",
            "rollout/exploration_rate", "time/fps", "train/diverged"} <= names
    assert all("/" in name for name in names)


def _metric_rows(path: Path) -> list[tuple]:
    return [row for row in read_metrics(path) if not row[1].startswith("time/")]


def test_resume_is_bit_identical(tmp_path, capsys):
    """A run killed after its step-40 checkpoint and resumed ends exactly like an uninterrupted run."""
    args = ["--agent", "dqn", "--env", "cartpole", "--steps", "80", "--no-progress", "--set", "eval_every=20",
            "--set", "eval_episodes=2",
            "--set", "log_every=10", "--set", "checkpoint_every=20", "--set", "agent.learning_starts=10",
            "--set", "agent.batch_size=8", "--set", "agent.target_update_every=15", "--num-envs", "3"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run_cli(["train", "--out", str(whole), *args], capsys)[0] == 0

    # The interrupted run: killed at step 55, after the step-40 checkpoint and the step-50 log rows.
    from emphatic_rl.agents.deep import dqn

    original_update = dqn.DQN.update

    class Killed(BaseException):  # stands for kill -9: nothing after it runs
        pass

    def killing_update(self, buffer, env_step):
        if env_step == 55:
            raise Killed
        return original_update(self, buffer, env_step)

    dqn.DQN.update = killing_update
    try:
        with pytest.raises(Killed):
            main(["train", "--out", str(part), *args])
    finally:
        dqn.DQN.update = original_update
    assert max(step for step, *_ in read_metrics(part / "metrics.csv")) == 50
    assert run_cli(["train", "--resume", str(part), "--no-progress"], capsys)[0] == 0

    assert _metric_rows(part / "metrics.csv") == _metric_rows(whole / "metrics.csv")
    a = load_checkpoint(whole / "checkpoint.pt")
    b = load_checkpoint(part / "checkpoint.pt")
    for key, tensor in a["agent"]["q_network"].items():
        assert torch.equal(tensor, b["agent"]["q_network"][key]), key
    assert torch.equal(a["obs"], b["obs"])


# ---------------------------------------------------------- divergence: a stand-in agent whose member 1 blows up
@dataclass(frozen=True)
class _BlowUpOptions:
    blow_up_step: int = 20


class _BlowUpAgent(Agent):
    """Member p adds 1 to its single parameter each update; member 1's becomes NaN at ``blow_up_step``."""

    name = "test-blow-up"
    acts_in_env = True
    buffer_capacity = 4

    def __init__(self, context, options):
        self.population_size = context.population_size
        self.options = options
        self.weights = torch.zeros(self.population_size)
        self.frozen = torch.zeros(self.population_size, dtype=torch.bool)

    def act(self, obs, env_step):
        action = torch.zeros(obs.shape[:2], dtype=torch.int64)
        return ActionOutput(action, torch.zeros(obs.shape[:2]))

    def evaluation_action(self, obs):
        return torch.zeros(obs.shape[:2], dtype=torch.int64)

    def update(self, buffer, env_step):
        self.weights += (~self.frozen).float()
        if env_step == self.options.blow_up_step:
            self.weights[1] = float("nan")
        return {"weight": self.weights.clone()}

    def parameters_finite(self):
        return torch.isfinite(self.weights)

    def freeze(self, members):
        self.frozen |= members

    def state_dict(self):
        return {"weights": self.weights.clone(), "frozen": self.frozen.clone()}

    def load_state_dict(self, state):
        self.weights, self.frozen = state["weights"].clone(), state["frozen"].clone()


def test_diverged_member_is_frozen_and_the_rest_go_on(tmp_path, capsys):
    if "test-blow-up" not in AGENT_REGISTRY:
        register_agent("test-blow-up", _BlowUpOptions)(lambda context, options: _BlowUpAgent(context, options))
    config = TrainConfig(agent="test-blow-up", env="cartpole", steps=60, population_size=3, log_every=10,
                         eval_every=30, eval_episodes=1, progress=False)
    result = train(config, tmp_path / "run", run=build_run(config))
    assert result.diverged.tolist() == [False, True, False]
    assert torch.isnan(result.final_eval_return[1]) and torch.isfinite(result.final_eval_return[[0, 2]]).all()
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    final_weights = {member: value for step, name, member, value in rows if name == "train/weight" and step == 60}
    assert final_weights[0] == final_weights[2] == 60.0
    diverged_log = [(step, value) for step, name, member, value in rows if name == "train/diverged" and member == 1]
    assert (20, 1.0) in diverged_log and (10, 0.0) in diverged_log
    assert "members [1] diverged" in capsys.readouterr().out


def test_console_script_runs_without_a_traceback(tmp_path):
    """The installed command reports a user mistake in one line (exercises the real entry point)."""
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-m", "emphatic_rl.cli", "train", "--agent", "nope", "--out", str(tmp_path / "x")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("emphatic-rl: error: unknown agent 'nope'")


def test_metrics_csv_is_tidy(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["train", "--out", str(out), *SMALL, "--population", "2"], capsys)[0] == 0
    with (out / "metrics.csv").open() as f:
        header = next(csv.reader(f))
    assert header == ["step", "metric", "member", "value"]
    members = {member for _, name, member, _ in read_metrics(out / "metrics.csv") if name == "eval/return"}
    assert members == {0, 1}


def test_default_run_pits_ace_against_offpac(tmp_path, capsys):
    """`emphatic-rl train` with no agent/env/config runs the demo; here shortened, it still prints the verdict."""
    out = tmp_path / "demo"
    code, stdout, _ = run_cli(["train", "--out", str(out), "--steps", "600", "--no-progress"], capsys)
    assert code == 0
    verdict = [line for line in stdout.splitlines() if "ACE (eta = 1) reached exact J_mu" in line]
    assert len(verdict) == 1 and verdict[0].startswith("emphatic-rl: ACE wins")
    assert any(line.startswith("emphatic-rl: why: OffPAC") for line in stdout.splitlines())


def test_eval_env_options_apply_to_the_evaluation_env_only():
    config = TrainConfig(
        agent="offpac", env="virtual-office", steps=10, progress=False, checkpoint_every=0,
        eval_env_options={"normalize_observation": False},
    )
    run = build_run(config)
    assert run.env.normalize_observation is True
    assert run.eval_env.normalize_observation is False
    with pytest.raises(ValueError, match="normalize_observation"):
        build_run(TrainConfig(agent="offpac", env="virtual-office", eval_env_options={"normalize_observation": 3}))


def test_set_eval_env_option():
    from emphatic_rl.config import apply_overrides

    config = apply_overrides(TrainConfig(), {"eval_env.max_episode_steps": 50, "env.max_episode_steps": 200})
    assert config.evaluation_env_options() == {"max_episode_steps": 50}
    assert config.env_options == {"max_episode_steps": 200}
