"""The Bordered Gridworld: true dynamics, unreachable border, given-model tables, registry and bad input."""

import pytest
import torch

from emphatic_rl.envs import make_env
from emphatic_rl.envs.gridworld import BorderedGridworld

UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3


def test_shortest_path_reaches_goal_with_return_minus_path_length_and_autoresets():
    env = BorderedGridworld(num_envs=1, height=6, width=6)
    obs = env.reset(seed=0)
    assert int(obs) == env.index_of(6, 1)
    total = 0.0
    for step, action in enumerate([UP] * 5 + [RIGHT] * 5):
        result = env.step(torch.tensor([action]))
        total += float(result.reward)
        assert bool(result.terminated) == (step == 9)
    assert total == -10.0
    assert int(result.final_obs) == env.goal_state == env.index_of(1, 6)
    assert int(result.obs) == env.start_state


def test_moves_into_the_border_bump_and_the_border_is_never_observed():
    env = BorderedGridworld(num_envs=64, height=4, width=5)
    env.reset(seed=1)
    # From the start (bottom-left) moving left or down bumps.
    for action in (LEFT, DOWN):
        result = BorderedGridworld(num_envs=1, height=4, width=5).step(torch.tensor([action]))
        assert int(result.obs) == env.start_state and float(result.reward) == -1.0
    generator = torch.Generator().manual_seed(0)
    seen = torch.zeros(env.num_states, dtype=torch.bool)
    for _ in range(400):
        result = env.step(torch.randint(4, (64,), generator=generator))
        seen[result.final_obs] = True
        seen[result.obs] = True
    assert seen[env.real_state_mask].all(), "a random walk visits every interior cell"
    assert not seen[~env.real_state_mask].any(), "border cells are unreachable"
    assert int(env.real_state_mask.sum()) == 4 * 5 and env.num_states == 6 * 7


def test_given_tables_keep_real_states_real_and_hallucinated_states_hallucinated():
    env = BorderedGridworld(height=5, width=3)
    real = env.real_state_mask
    next_real = real[env.next_state_table]  # [S, A]
    assert next_real[real].all()
    assert not next_real[~real].any()
    # The border ring is connected under the extended physics (a hallucinated state can wander along it).
    corner = env.index_of(0, 0)
    assert int(env.next_state_table[corner, RIGHT]) == env.index_of(0, 1)
    assert int(env.next_state_table[corner, UP]) == corner
    assert env.terminal_table.sum() == 2  # the two interior neighbours of the top-right goal
    assert (env.reward_table == -1).all()


def test_registry_and_state_dict_round_trip():
    env = make_env("bordered-gridworld", num_envs=3, height=3, width=4)
    assert isinstance(env, BorderedGridworld) and env.num_states == 5 * 6
    env.reset(seed=2)
    env.step(torch.tensor([UP, RIGHT, UP]))
    saved = env.state_dict()
    first = env.step(torch.tensor([RIGHT, RIGHT, UP]))
    env.load_state_dict(saved)
    again = env.step(torch.tensor([RIGHT, RIGHT, UP]))
    assert torch.equal(first.obs, again.obs) and torch.equal(env.elapsed_steps, torch.tensor([2, 2, 2]))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"height": 1}, "height must be an integer >= 2"),
        ({"goal": (0, 3)}, "goal must be an interior"),
        ({"start": (1, 6)}, "start and goal must differ"),
    ],
)
def test_bad_options_raise_one_clear_error(options, message):
    with pytest.raises(ValueError, match=message):
        BorderedGridworld(**options)


@pytest.mark.parametrize("border_physics", ["closed", "open"])
def test_model_transitions_agree_with_the_true_dynamics_on_every_real_state(border_physics):
    env = BorderedGridworld(height=4, width=3)
    real = env.real_state_mask
    forward, (source, action, target) = env.model_transitions(border_physics)
    assert torch.equal(forward[real], env.next_state_table[real])
    # Predecessor pairs of every real state: exactly the true ones (real sources, goal excluded).
    true_pairs = {
        (s, a, int(env.next_state_table[s, a]))
        for s in range(env.num_states)
        for a in range(4)
        if s != env.goal_state and real[s]
    }
    model_real_pairs = {
        (s, a, t) for s, a, t in zip(source.tolist(), action.tolist(), target.tolist(), strict=True) if real[t]
    }
    assert model_real_pairs == true_pairs
    border_pairs = [(s, t) for s, t in zip(source.tolist(), target.tolist(), strict=True) if not real[t]]
    corner_start = env.index_of(4, 1)  # bottom-left interior cell, next to the border below and to the left
    below = env.index_of(5, 1)
    if border_physics == "closed":
        assert all(not real[s] for s, _ in border_pairs)
        assert not real[forward[~real]].any()
    else:
        assert (corner_start, below) in border_pairs, "open: an interior cell precedes the border cell next to it"
        assert int(forward[below, UP]) == corner_start, "open: from the border the model walks back inside"
    with pytest.raises(ValueError, match="border_physics must be 'closed' or 'open'"):
        env.model_transitions("porous")
