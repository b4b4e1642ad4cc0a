"""Virtual Office (Graves et al. 2023; docs/environments.md): layout, dynamics, MiniGrid views written out by hand,
aliasing, the behaviour's goal frequencies against an exact absorbing-chain computation, checkpointing and bad input."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import emphatic_rl  # noqa: F401  (registers the Gymnasium ids)
from emphatic_rl.envs import make_env
from emphatic_rl.envs.office import (
    BEHAVIOUR_CANDIDATES,
    LAYOUT,
    VirtualOffice,
    aliased_room_views,
    minigrid_view,
)

N, E, S, W = 0, 1, 2, 3
# MiniGrid codes (object, colour, state).
WALL = (2, 5, 0)  # grey wall
BLUE = (3, 2, 0)  # blue floor (hallway)
GREEN = (3, 1, 0)  # green floor (rooms, doorways, hidden goals)
AGENT = (1, 0, 0)  # the agent's own cell: "empty" (it carries nothing)
UNSEEN = (0, 0, 0)


def view_from_rows(rows):
    """Expected view written as the agent sees it: three rows, far to near, each left to right.
    Returns MiniGrid's layout ``[column][row] -> code``."""
    return [[rows[r][c] for r in range(3)] for c in range(3)]


def flat(view):
    """Ravel a ``[column][row][channel]`` view in C order (MiniGrid's ``image.ravel()``)."""
    return [v for column in view for code in column for v in code]


# (x, y, facing) -> the 3 x 3 view worked out by hand from MiniGrid's rules (slice, rotate, process_vis, encode).
HAND_VIEWS = {
    # start, facing east: hallway all round, all visible
    (1, 4, E): [[BLUE, BLUE, BLUE], [BLUE, BLUE, BLUE], [BLUE, AGENT, BLUE]],
    # in the top doorway facing into the room: wall on both sides, the room ahead
    (4, 2, E): [[GREEN, GREEN, GREEN], [GREEN, GREEN, GREEN], [WALL, AGENT, WALL]],
    # facing the east wall: the wall row hides the row behind it (outside the grid)
    (7, 2, E): [[UNSEEN, UNSEEN, UNSEEN], [WALL, WALL, WALL], [GREEN, AGENT, GREEN]],
    # next to the centre wall facing east: only the doorway is open in the near row; the far row is still all
    # visible (the doorway opens the far right cells, and the far middle floor cell passes visibility leftwards)
    (3, 1, E): [[WALL, GREEN, GREEN], [WALL, WALL, GREEN], [WALL, AGENT, BLUE]],
    # in the room facing west through the doorway: the hallway beyond, and the top wall at (3, 0)
    (5, 1, W): [[BLUE, BLUE, WALL], [GREEN, WALL, WALL], [GREEN, AGENT, WALL]],
    # facing south into the wall between the rooms
    (5, 3, S): [[UNSEEN, UNSEEN, UNSEEN], [WALL, WALL, WALL], [GREEN, AGENT, WALL]],
    # top-left hallway corner facing north
    (1, 1, N): [[UNSEEN, UNSEEN, UNSEEN], [WALL, WALL, WALL], [WALL, AGENT, BLUE]],
}


def test_hand_computed_views_match_minigrid_view_and_the_env():
    cases = sorted(HAND_VIEWS)
    env = VirtualOffice(num_envs=len(cases), normalize_observation=False)
    env.set_state([[x, y] for x, y, _ in cases], [f for _, _, f in cases])
    raw = env.raw_image()  # [N, column, row, channel]
    obs = env._observe()
    for n, (x, y, facing) in enumerate(cases):
        expected = view_from_rows(HAND_VIEWS[(x, y, facing)])
        assert minigrid_view(x, y, facing) == expected, (x, y, facing)
        assert raw[n].tolist() == [[list(code) for code in column] for column in expected], (x, y, facing)
        assert obs[n].tolist() == [float(v) for v in flat(expected)], (x, y, facing)


def test_start_observation_is_normalised_in_minigrid_ravel_order():
    env = make_env("virtual-office", num_envs=3)
    obs = env.reset()
    assert obs.shape == (3, 27) and obs.dtype == torch.float32
    # eight blue floor cells (3, 2, 0) and the agent's cell (1, 0, 0): squared norm 8 * 13 + 1 = 105
    expected = torch.tensor(flat(view_from_rows(HAND_VIEWS[(1, 4, E)])), dtype=torch.float32) / math.sqrt(105.0)
    torch.testing.assert_close(obs, expected.expand(3, 27))
    # index = 9 * column + 3 * row + channel: the agent sits at column 1, row 2
    assert obs[0, 9 * 1 + 3 * 2].item() == pytest.approx(1 / math.sqrt(105.0))
    torch.testing.assert_close(obs.norm(dim=1), torch.ones(3))
    assert env.position.tolist() == [[1, 4]] * 3 and env.facing.tolist() == [E] * 3


def test_walls_block_moves_doorways_pass_and_facing_follows_the_action():
    #            start     action   expected (x, y)
    cases = [
        ((1, 1), N, (1, 1)),  # outer wall
        ((1, 4), W, (1, 4)),  # outer wall
        ((3, 3), E, (3, 3)),  # centre wall
        ((5, 3), S, (5, 3)),  # wall between the rooms
        ((5, 5), N, (5, 5)),
        ((3, 2), E, (4, 2)),  # into the top doorway
        ((4, 6), E, (5, 6)),  # through the bottom doorway into the room
        ((4, 2), W, (3, 2)),
        ((4, 2), N, (4, 2)),  # doorway: walls north and south
        ((4, 6), S, (4, 6)),
        ((2, 5), S, (2, 6)),
    ]
    env = VirtualOffice(num_envs=len(cases))
    env.set_state([list(c[0]) for c in cases], 0)
    result = env.step(torch.tensor([c[1] for c in cases]))
    assert not result.terminated.any() and not result.truncated.any()
    assert (result.reward == 0).all()
    assert env.position.tolist() == [list(c[2]) for c in cases]
    assert env.facing.tolist() == [c[1] for c in cases]


def test_entering_each_goal_ends_the_episode_with_its_reward():
    cases = [((6, 1), E, 1.0), ((7, 2), N, 1.0), ((6, 3), E, 0.0), ((7, 2), S, 0.0), ((6, 5), E, 0.0),
             ((7, 6), N, 0.0), ((6, 7), E, 0.5), ((7, 6), S, 0.5), ((6, 6), E, 0.0)]
    env = VirtualOffice(num_envs=len(cases))
    env.reset()
    env.set_state([list(c[0]) for c in cases], 0)
    result = env.step(torch.tensor([c[1] for c in cases]))
    assert result.reward.tolist() == [c[2] for c in cases]
    assert result.terminated.tolist() == [True] * 8 + [False]
    assert not result.truncated.any()
    # the ended copies restart at (1, 4) facing east; the final observation is the goal cell's view (green floor)
    assert env.position[:8].tolist() == [[1, 4]] * 8 and env.facing[:8].tolist() == [E] * 8
    start = env.observation_table[env.start_cell, E]
    torch.testing.assert_close(result.obs[:8], start.expand(8, 27))
    goal_view = torch.tensor(flat(minigrid_view(7, 1, E)), dtype=torch.float32)
    torch.testing.assert_close(result.final_obs[0], goal_view / goal_view.norm())


def test_timeout_truncates_at_100_steps_and_a_goal_on_the_last_step_terminates():
    env = VirtualOffice(num_envs=2)
    env.reset()
    for t in range(1, 101):
        result = env.step(torch.tensor([W, N]))  # bump into walls forever
        assert not result.terminated.any()
        assert result.truncated.tolist() == [t == 100] * 2
    assert env.elapsed_steps.tolist() == [0, 0] and env.position.tolist() == [[1, 4], [1, 4]]

    short = VirtualOffice(num_envs=1, max_episode_steps=3)
    short.set_state([6, 1], E)
    for action in (W, E):
        assert not short.step(torch.tensor([action])).truncated.any()
    last = short.step(torch.tensor([E]))  # enters (7, 1) on the third step
    assert last.terminated.tolist() == [True] and last.truncated.tolist() == [False] and last.reward.item() == 1.0


def test_the_two_rooms_are_aliased_except_views_through_the_doorway_column():
    aliased = aliased_room_views()
    exceptions = {key for key, same in aliased.items() if not same}
    # from the room column next to the centre wall facing west, and from the doorways facing north/south, the view
    # reaches row 0 / 8 (wall) in one room and row 4 (hallway floor) in the other
    assert exceptions == {(5, 1, W), (5, 3, W), (4, 2, N), (4, 2, S)}
    keys = sorted(key for key, same in aliased.items() if same)
    assert len(keys) == 36
    env = VirtualOffice(num_envs=2 * len(keys))
    positions = [[x, y] for x, y, _ in keys] + [[x, y + 4] for x, y, _ in keys]
    facings = [f for *_, f in keys] * 2
    # goal cells are never occupied; compare their views through the table instead
    table = env.observation_table.view(9, 9, 4, 27)
    obs = torch.stack([table[y, x, f] for (x, y), f in zip(positions, facings, strict=True)])
    top, bottom = obs[: len(keys)], obs[len(keys):]
    assert torch.equal(top, bottom)
    # and the hallway is not aliased with the rooms: the start view is blue, a room view green
    assert not torch.equal(table[4, 1, E], table[2, 5, E])


def exact_goal_probabilities(mu, horizon=100):
    """Probability that an episode under the state-independent ``mu`` ends in each goal, by an independent
    finite-horizon absorbing-chain computation straight from ``LAYOUT`` (float64)."""
    offsets = ((0, -1), (1, 0), (0, 1), (-1, 0))
    goals = {(7, 1): 0, (7, 3): 1, (7, 5): 2, (7, 7): 3}
    distribution = {(1, 4): 1.0}
    absorbed = [0.0] * 4
    for _ in range(horizon):
        nxt = {}
        for (x, y), p in distribution.items():
            for a, (dx, dy) in enumerate(offsets):
                target = (x + dx, y + dy) if LAYOUT[y + dy][x + dx] != "W" else (x, y)
                if target in goals:
                    absorbed[goals[target]] += p * mu[a]
                else:
                    nxt[target] = nxt.get(target, 0.0) + p * mu[a]
        distribution = nxt
    return absorbed


def test_behaviour_goal_frequencies_match_the_exact_chain():
    env = VirtualOffice(num_envs=4096)
    assert env.behaviour_probabilities == BEHAVIOUR_CANDIDATES["notebook"] == (0.2, 0.45, 0.3, 0.05)
    env.reset(seed=0)
    generator = torch.Generator().manual_seed(1)
    probabilities = torch.tensor(env.behaviour_probabilities).expand(env.num_envs, 4)
    outcome = torch.full((env.num_envs,), -1)  # first episode: 0..3 goal index, 4 time-out
    outcome_of_cell = torch.full((81,), 4)  # cell y * 9 + x -> goal index, 4 elsewhere (time-out)
    outcome_of_cell[torch.tensor([16, 34, 52, 70])] = torch.arange(4)
    for _ in range(100):  # every first episode has ended after 100 steps
        action = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
        cell_before = env.cell.clone()
        result = env.step(action)
        entered = env.next_cell_table[cell_before, action]
        code = outcome_of_cell[entered]
        newly = (outcome < 0) & (result.terminated | result.truncated)
        outcome = torch.where(newly, code, outcome)
    assert (outcome >= 0).all()
    frequencies = torch.bincount(outcome, minlength=5).double() / env.num_envs
    exact = exact_goal_probabilities(env.behaviour_probabilities)
    exact_top, exact_bottom = exact[0] + exact[1], exact[2] + exact[3]
    # the south-biased behaviour ends in the bottom room about three times as often as in the top room
    assert exact_top / (exact_top + exact_bottom) == pytest.approx(0.256, abs=0.001)
    for k in range(4):
        assert frequencies[k].item() == pytest.approx(exact[k], abs=0.03)  # > 4 standard errors
    top, bottom = frequencies[:2].sum().item(), frequencies[2:4].sum().item()
    assert top / (top + bottom) == pytest.approx(exact_top / (exact_top + exact_bottom), abs=0.03)


def test_state_dict_round_trip_continues_identically():
    env = VirtualOffice(num_envs=8)
    env.reset(seed=3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        env.step(torch.randint(0, 4, (8,), generator=generator))
    saved = env.state_dict()
    actions = [torch.randint(0, 4, (8,), generator=generator) for _ in range(120)]
    first = [env.step(a) for a in actions]
    other = VirtualOffice(num_envs=8)
    other.load_state_dict(saved)
    second = [other.step(a) for a in actions]
    for a, b in zip(first, second, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
    assert any(r.terminated.any() or r.truncated.any() for r in first)  # the replay crossed episode ends


def test_raw_option_and_behaviour_option():
    raw_env = make_env("virtual-office", num_envs=1, normalize_observation=False, behaviour_probabilities="vo4")
    norm_env = make_env("virtual-office", num_envs=1)
    raw, norm = raw_env.reset(), norm_env.reset()
    torch.testing.assert_close(norm, raw / raw.norm(dim=1, keepdim=True))
    assert raw.max().item() == 3.0 and raw_env.observation_spec.high == 10.0
    assert raw_env.behaviour_probabilities == (0.235, 0.3, 0.265, 0.2)
    custom = VirtualOffice(behaviour_probabilities=[0.25, 0.25, 0.25, 0.25])
    assert custom.behaviour_probabilities == (0.25, 0.25, 0.25, 0.25)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"behaviour_probabilities": "south"}, "unknown behaviour_probabilities 'south'"),
        ({"behaviour_probabilities": (0.5, 0.5, 0.5, 0.5)}, "summing to 1"),
        ({"behaviour_probabilities": (0.5, 0.5)}, "4 non-negative"),
        ({"behaviour_probabilities": (1.2, -0.2, 0.0, 0.0)}, "non-negative"),
        ({"behaviour_probabilities": 0.25}, "behaviour_probabilities must be"),
        ({"normalize_observation": 1}, "normalize_observation must be True or False"),
        ({"num_envs": 0}, "num_envs"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
        ({"view_size": 5}, "unknown option"),
    ],
)
def test_bad_options_raise_one_clear_error(options, message):
    with pytest.raises(ValueError, match=message):
        make_env("virtual-office", **options)


def test_bad_actions_and_states_raise():
    env = VirtualOffice(num_envs=2)
    with pytest.raises(ValueError, match="outside the action set"):
        env.step(torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="shape"):
        env.step(torch.tensor([0]))
    with pytest.raises(ValueError, match="discrete actions must be integers"):
        env.step(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="floor cell that is not a goal"):
        env.set_state([4, 4], 0)  # a wall
    with pytest.raises(ValueError, match="floor cell that is not a goal"):
        env.set_state([7, 1], 0)  # a goal
    with pytest.raises(ValueError, match="facing"):
        env.set_state([1, 1], 4)
    with pytest.raises(ValueError, match="expected"):
        env.set_state([[1, 1, 1]], 0)


def test_gymnasium_id():
    env = gym.make("emphatic_rl/VirtualOffice-v0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env.unwrapped)
    assert env.spec.max_episode_steps == 100
    obs, _ = env.reset(seed=0)
    assert obs.shape == (27,)
    for t in range(1, 101):
        obs, reward, terminated, truncated, _ = env.step(W)
        assert not terminated and truncated == (t == 100)
