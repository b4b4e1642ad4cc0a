"""A diverged member (NaN parameters) of every deep agent family is frozen while the others go on unchanged.

Member 1's parameters are set to NaN in the middle of a short run (through the real training loop); the run must
finish, mark member 1 as diverged, report NaN for it, and leave members 0 and 2 bit-identical to a run where
nothing diverged (every tensor of the agent's state, the optimiser's moments included).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from emphatic_rl.config import TrainConfig
from emphatic_rl.train import build_run, train

FAMILIES = {
    "dqn": "cartpole",
    "deep-ace": "cartpole",
    "deep-offpac": "cartpole",
    "dpg": "pendulum",
    "gaussian-ace": "pendulum",
    "gaussian-offpac": "pendulum",
    "ace": "counterexample-three-state",
    "offpac": "counterexample-three-state",
}
POISON_STEP = 15
POPULATION = 3


def _train(agent: str, out, poison: bool):
    linear = FAMILIES[agent] == "counterexample-three-state"  # the linear actor-critic, from 3 behaviour streams
    config = TrainConfig(
        agent=agent, env=FAMILIES[agent], steps=40, population_size=POPULATION, num_envs=3 if linear else 1,
        eval_every=20, eval_episodes=2, eval_max_steps=30, log_every=10, checkpoint_every=0, progress=False,
        agent_options={"critic": "oracle"} if linear else {"learning_starts": 5, "batch_size": 8},
        env_options={"observation": "state"} if linear else {},
    )
    run = build_run(config)
    update = run.agent.update

    def poisoning_update(buffer, step):
        metrics = update(buffer, step)
        if poison and step == POISON_STEP:
            with torch.no_grad():
                tensors = [p for m in vars(run.agent).values() if isinstance(m, nn.Module) for p in m.parameters()]
                for tensor in tensors or [run.agent.policy.theta]:  # linear agents: theta [P, ...]
                    tensor[1] = math.nan
        return metrics

    run.agent.update = poisoning_update
    result = train(config, out, run=run)
    return result, run.agent.state_dict()


def _member_rows(state, members, path=""):
    """Every tensor of ``state`` with a leading population axis, restricted to ``members``."""
    if isinstance(state, dict):
        for key, value in state.items():
            yield from _member_rows(value, members, f"{path}/{key}")
    elif isinstance(state, (list, tuple)):
        for index, value in enumerate(state):
            yield from _member_rows(value, members, f"{path}/{index}")
    elif isinstance(state, torch.Tensor) and state.dim() >= 1 and state.shape[0] == POPULATION:
        yield path, state[members]


@pytest.mark.parametrize("agent", list(FAMILIES))
def test_a_diverged_member_is_frozen_and_the_others_go_on_unchanged(agent, tmp_path):
    torch.manual_seed(0)
    poisoned, poisoned_state = _train(agent, tmp_path / "poisoned", poison=True)
    clean, clean_state = _train(agent, tmp_path / "clean", poison=False)

    assert poisoned.diverged.tolist() == [False, True, False]
    assert not bool(clean.diverged.any())
    assert math.isnan(float(poisoned.final_eval_return[1]))
    others = [0, 2]
    assert torch.equal(poisoned.final_eval_return[others], clean.final_eval_return[others])
    compared = 0
    clean_rows = dict(_member_rows(clean_state, others))
    for path, rows in _member_rows(poisoned_state, others):
        assert torch.equal(rows, clean_rows[path]), path
        compared += 1
    assert compared > 4
