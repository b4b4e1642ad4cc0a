"""``experiments/puddle_world_critics.py`` batches every target policy and step size of a critic into one
population and its ground truth into one env: batching must not change any member's result."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "puddle_world_critics.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("puddle_world_critics", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("critic", ["td", "etd"])
def test_one_population_for_all_policies_gives_each_policy_its_own_errors(script, critic):
    torch.manual_seed(0)
    policies = torch.tensor(list(script.POLICIES.values()), dtype=torch.float64)
    states = script.behaviour_states(4, 20, seed=1)
    assert states.shape == (4, 2) and bool(((states >= 0) & (states <= 1)).all())
    values = -torch.rand(len(policies), 4, dtype=torch.float64) * 50  # any targets: the comparison is exact
    alphas, runs, checkpoints = [0.5, 0.125], 2, [30, 60]
    together = script.critic_errors(critic, policies, alphas, runs, 60, checkpoints, states, values)
    assert set(together) == {(q, a, c) for q in range(len(policies)) for a in alphas for c in checkpoints}
    for q in range(len(policies)):
        one = slice(q, q + 1)
        alone = script.critic_errors(critic, policies[one], alphas, runs, 60, checkpoints, states, values[one])
        for (_, alpha, checkpoint), errors in alone.items():
            assert errors == together[(q, alpha, checkpoint)]


def test_true_values_batch_every_policy_and_state(script):
    policies = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    goal = torch.tensor([[0.99, 0.99], [0.3, 0.7]])  # next to the goal, and at the start
    values = script.true_values(policies, goal, rollouts=50, seed=0, horizon=50)
    assert values.shape == (2, 2)
    assert bool((values < 0).all())  # every step costs at least 1
    assert float(values[0, 0]) > float(values[0, 1])  # closer to the goal is worth more
