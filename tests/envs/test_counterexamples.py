"""Counterexample MDP descriptions and their registry names."""

import pytest
import torch

from emphatic_rl.envs import ENV_REGISTRY, make_env
from emphatic_rl.envs.counterexamples import collision_mdp, long_counterexample_mdp, make_mdp

NAMES = ("counterexample-three-state", "counterexample-long", "counterexample-dpg", "collision", "baird")


@pytest.mark.parametrize("name", NAMES)
def test_registered_and_steppable(name):
    assert name in ENV_REGISTRY
    env = make_env(name, num_envs=3)
    env.reset(seed=0)
    if name == "counterexample-dpg":
        action = torch.zeros(3, 1)
    else:
        action = torch.zeros(3, dtype=torch.int64)
    result = env.step(action)
    assert result.obs.shape[0] == 3
    make_mdp(name)


def test_long_counterexample_layout():
    mdp = long_counterexample_mdp(5)
    assert mdp.num_states == 11 and mdp.actor_features.shape == (11, 10)
    assert torch.equal(mdp.actor_features[9], mdp.actor_features[10])  # L5, R5 aliased
    assert mdp.transition[0, 0, 1] == 1 and mdp.transition[0, 1, 2] == 1  # s0 -> L1 / R1
    assert mdp.transition[1, 1, 0] == 1 and mdp.transition[2, 0, 0] == 1  # back to s0
    assert mdp.transition[3, 0, 5] == 1 and mdp.transition[4, 1, 6] == 1  # deeper
    assert mdp.expected_reward[9, 0] == 2 and mdp.expected_reward[10, 1] == 1
    assert bool((mdp.discount[9:] == 0).all())
    with pytest.raises(ValueError, match="middle_steps must be an integer >= 1"):
        long_counterexample_mdp(0)


def test_collision_features_are_distinct_three_of_six():
    features = collision_mdp(feature_seed=4).critic_features
    assert features.shape == (8, 6) and bool((features.sum(1) == 3).all())
    assert len({tuple(row.tolist()) for row in features}) == 8


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="unknown tabular env 'nope'; allowed: counterexample-three-state"):
        make_mdp("nope")
