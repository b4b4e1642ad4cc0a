"""The deep MinAtar study script (experiments/deep_minatar.py): its configs build through the loop's validation, the
regimes set who acts, the full protocol is the paper's scale, and the CI helper is a Student-t interval."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from emphatic_rl.train import build_run

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "deep_minatar.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("deep_minatar_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_study_run_builds_and_the_regime_decides_who_acts(study):
    b = study.budget(False)
    built = list(study.runs(study.GAMES, study.REGIMES, study.AGENTS))
    assert ("breakout", "uniform", "dqn") not in built and len(built) == 10
    for game, regime, agent in built:
        run = build_run(study.run_config(game, regime, agent, 2, b))
        assert run.agent.population_size == 2
        assert run.agent.acts_in_env == (regime == "epsilon-greedy")
        assert run.env.num_envs == (2 * b["num_envs"] if run.agent.acts_in_env else b["num_envs"])
        assert run.env.action_spec.n == 3  # the minimal action sets of Breakout and Freeway


def test_full_protocol_is_five_million_frames_per_member(study):
    b = study.budget(True)
    assert b["steps"] * b["num_envs"] == 5_000_000 and not b["minimal_action_set"]


def test_mean_ci_is_the_student_t_interval(study):
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]])
    mean, half = study.mean_ci(values)
    assert torch.allclose(mean, torch.tensor([2.0, 4.0]))
    assert torch.allclose(half, torch.tensor([4.302653 * 1.0 / math.sqrt(3), 0.0]))


def test_every_minatar_game_builds_for_the_study(study):
    b = study.budget(False, steps=100)
    minimal = {"asterix": 5, "breakout": 3, "freeway": 3, "seaquest": 6, "space_invaders": 4}
    for game in study.ALL_GAMES:
        run = build_run(study.run_config(game, "epsilon-greedy", "deep-ace", 2, b))
        assert run.env.action_spec.n == minimal[game]
