"""Plugins: an agent written in one file of a user's own package runs from ``emphatic-rl train`` and ``sweep``
without editing the library; import errors are one line and exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from emphatic_rl.cli import main
from emphatic_rl.logging import read_metrics

#: A complete user agent in one file: a population of linear softmax actors trained off-policy by one-step
#: importance-sampled REINFORCE on the reward (no critic), with a per-member step size and a member -> stream map.
AGENT_FILE = '''
from dataclasses import dataclass
from typing import Any

import torch

from emphatic_rl.agents import ActionOutput, Agent, register_agent
from emphatic_rl.agents.registry import per_member


@dataclass(frozen=True)
class BanditOptions:
    alpha: Any = per_member(0.1, low=0.0, low_open=True)  # one value, or a list of P values
    stream_of: list[int] | None = None


class BanditActor(Agent):
    name = "user-bandit"
    acts_in_env = False  # learns from the run's fixed behaviour policy

    def __init__(self, context, options):
        P = context.population_size
        self.population_size = P
        self.alpha = torch.as_tensor(options.alpha, dtype=torch.float32).expand(P).clone()
        self.stream_of = torch.tensor(options.stream_of or [p % context.num_streams for p in range(P)])
        self.num_actions = context.action_spec.n
        self.theta = torch.zeros(P, context.observation_spec.shape[0], self.num_actions)
        self.generator = torch.Generator().manual_seed(context.seed + 1)

    def logits(self, obs):  # obs [P, E, d] -> [P, E, A]
        return torch.einsum("ped,pda->pea", obs.float(), self.theta)

    def act(self, obs, env_step):
        raise RuntimeError("learns from a fixed behaviour")

    def evaluation_action(self, obs):
        probs = torch.softmax(self.logits(obs), -1)
        return torch.multinomial(probs.flatten(0, 1), 1, generator=self.generator).view(probs.shape[:2])

    def update(self, buffer, env_step):
        batch = buffer.latest()  # fields [R, ...]
        obs, action = batch.obs[self.stream_of].float(), batch.action[self.stream_of]  # [P, d], [P]
        log_pi = torch.log_softmax(torch.einsum("pd,pda->pa", obs, self.theta), -1)
        rho = (log_pi.gather(1, action[:, None]).squeeze(1) - batch.behaviour_log_prob[self.stream_of]).exp()
        grad = torch.nn.functional.one_hot(action, self.num_actions).float() - log_pi.exp()  # [P, A]
        step = (self.alpha * rho * batch.reward[self.stream_of])[:, None, None]
        self.theta += step * obs[:, :, None] * grad[:, None, :]
        return {"rho": rho}

    def state_dict(self):
        return {"theta": self.theta.clone(), "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.theta.copy_(state["theta"])
        self.generator.set_state(state["generator"])


@register_agent("user-bandit", BanditOptions, "a user's agent, from its own package")
def make_bandit(context, options):
    return BanditActor(context, options)
'''

STUDY = """
name = "user"
runs = 2
[base]
env = "counterexample-three-state"
steps = 30
eval_every = 15
eval_episodes = 2
eval_max_steps = 5
log_every = 15
checkpoint_every = 30
progress = false
[base.env_options]
observation = "state"
[grid]
alpha = [0.5, 0.1]
[[variants]]
name = "bandit"
agent = "user-bandit"
"""


@pytest.fixture()
def user_package(tmp_path, monkeypatch):
    """A package ``user_pkg_<id>`` with one module ``agent.py``, importable in this process and in subprocesses."""
    name = f"user_pkg_{abs(hash(str(tmp_path))) % 10**8}"
    package = tmp_path / "site" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "agent.py").write_text(textwrap.dedent(AGENT_FILE))
    (package / "broken.py").write_text("import a_module_that_does_not_exist_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return name, tmp_path / "site"


def test_user_agent_trains_from_the_installed_command(tmp_path, user_package):
    name, site = user_package
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = tmp_path / "run"
    command = [sys.executable, "-m", "emphatic_rl.cli", "train", "--import", f"{name}.agent", "--agent",
               "user-bandit", "--env", "counterexample-three-state", "--set", 'env.observation="state"',
               "--steps", "40", "--population", "3", "--num-envs", "2", "--set", "agent.alpha=[0.1, 0.2, 0.3]",
               "--set", "eval_every=20", "--set", "log_every=20", "--no-progress", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = read_metrics(out / "metrics.csv")
    assert {member for step, metric, member, _ in rows if metric == "eval/return" and step == 40} == {0, 1, 2}
    # without --import the agent is unknown: one line, exit 2
    without = command[:4] + command[6:-1] + [str(tmp_path / "run2")]
    result = subprocess.run(without, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and "unknown agent 'user-bandit'" in result.stderr
    # and `list` shows it with --import
    listed = subprocess.run([sys.executable, "-m", "emphatic_rl.cli", "list", "--import", f"{name}.agent"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert "user-bandit" in listed.stdout


def test_user_agent_sweeps_with_a_per_member_grid(tmp_path, user_package, capsys):
    name, _ = user_package
    study = tmp_path / "study.toml"
    study.write_text(STUDY)
    out = tmp_path / "sweep"
    assert main(["sweep", str(study), "--import", f"{name}.agent", "--out", str(out)]) == 0
    rows = read_metrics(out / "bandit" / "metrics.csv")
    # 2 settings x 2 runs = 4 members, each evaluated at the end
    assert {member for step, metric, member, _ in rows if metric == "eval/return" and step == 30} == {0, 1, 2, 3}
    assert (out / "bandit" / "done.json").is_file()
    # a grid key that is not one of the agent's per-member options is one clear error naming the allowed ones
    study.write_text(STUDY.replace("alpha = [0.5, 0.1]", "gamma = [0.5]"))
    assert main(["sweep", str(study), "--import", f"{name}.agent", "--dry-run"]) == 2
    assert "'gamma' is not a per-member hyperparameter; allowed: alpha (agent 'user-bandit')" in capsys.readouterr().err


def test_import_errors_are_one_line_and_exit_2(tmp_path, user_package, capsys):
    name, _ = user_package
    assert main(["train", "--import", f"{name}.broken", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"--import '{name}.broken' failed: ModuleNotFoundError" in err[0]
    assert main(["list", "--import", "no_such_module_xyz"]) == 2
    assert "--import 'no_such_module_xyz' failed" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_entry_points_are_loaded(tmp_path, user_package, monkeypatch, capsys):
    import importlib.metadata

    name, _ = user_package

    class FakeEntryPoint:
        def __init__(self, value):
            self.name, self.value = "user", value

        def load(self):
            import importlib

            return importlib.import_module(self.value)

    def entry_points(group):
        assert group == "emphatic_rl.plugins"
        return [FakeEntryPoint(f"{name}.agent")]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert main(["list"]) == 0
    assert "user-bandit" in capsys.readouterr().out

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [FakeEntryPoint(f"{name}.broken")])
    assert main(["list"]) == 2
    assert "plugin 'user' (" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _forget_user_agent():
    yield
    from emphatic_rl.agents.registry import AGENT_REGISTRY

    AGENT_REGISTRY.pop("user-bandit", None)
