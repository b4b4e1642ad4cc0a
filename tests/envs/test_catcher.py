"""Catcher: PLE's rules checked on hand-computed trajectories (64 x 64 screen, see emphatic_rl/envs/catcher.py)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import emphatic_rl.envs  # noqa: F401  (registers the Gymnasium ids)
from emphatic_rl.envs import make_env
from emphatic_rl.envs.catcher import Catcher, CatcherGeometry, catcher_step

G = CatcherGeometry()
SPEED = 0.00095 * 64 * 1000 / 30  # fruit fall per step, ~2.0267 px
DX = 0.021 * 64  # 1.344


def step(state, action, u_x=0.0, u_y=0.0):
    s = torch.tensor([state], dtype=torch.float32)
    a = torch.tensor([action])
    nxt, reward, terminated = catcher_step(G, s, a, torch.tensor([u_x]), torch.tensor([u_y]))
    return nxt[0].tolist(), float(reward[0]), bool(terminated[0])


def test_geometry_is_ples():
    assert (G.fruit_size, G.paddle_width, G.paddle_height) == (4, 13, 3)
    assert G.paddle_y == 58.0 and G.paddle_start == 25.5
    assert G.spawn_columns == list(range(8, 56, 4)) and G.spawn_heights == [-4, -8, -12, -16, -20, -24, -28]
    assert G.fruit_speed == pytest.approx(SPEED)
    assert G.max_speed == pytest.approx(0.9 * DX / 0.1)


def test_paddle_accelerates_with_friction_and_fruit_falls():
    state = [25.5, 0.0, 24.0, -4.0, 3.0]
    state, reward, done = step(state, 2)  # right
    assert state == pytest.approx([25.5 + 0.9 * DX, 0.9 * DX, 24.0, -4.0 + SPEED, 3.0], abs=1e-5)
    assert reward == 0.0 and not done
    v2 = (0.9 * DX + DX) * 0.9
    state, _, _ = step(state, 2)
    assert state[:2] == pytest.approx([25.5 + 0.9 * DX + v2, v2], abs=1e-5)
    state, _, _ = step(state, 0)  # no-op: friction only
    assert state[1] == pytest.approx(0.9 * v2, abs=1e-5)
    state, _, _ = step([30.0, 0.0, 24.0, 0.0, 3.0], 1)  # left
    assert state[:2] == pytest.approx([30.0 - 0.9 * DX, -0.9 * DX], abs=1e-5)


def test_walls_stop_the_paddle():
    state, _, _ = step([1.0, -2.0, 24.0, 0.0, 3.0], 1)
    assert state[:2] == [0.0, 0.0]
    state, _, _ = step([50.0, 1.0, 24.0, 0.0, 3.0], 2)  # 50 + 2.1096 + 13 >= 64
    assert state[:2] == [51.0, 0.0]


def test_catch_scores_and_respawns():
    # |58 - 56| = 2 < (3 + 4) / 2 and |30 - 35| = 5 < (13 + 4) / 2: a catch; u = (0, 0) -> column 8, height -4.
    state, reward, done = step([30.0, 0.0, 35.0, 56.0, 3.0], 0, u_x=0.0, u_y=0.0)
    assert reward == 1.0 and not done
    assert state == pytest.approx([30.0, 0.0, 8.0, -4.0 + SPEED, 3.0], abs=1e-5)
    # 8.5 apart horizontally: no overlap (strict)
    _, reward, _ = step([30.0, 0.0, 38.5, 56.0, 3.0], 0)
    assert reward == 0.0
    # last draw in [0, 1): the last column (52) and the highest spawn (-28)
    state, _, _ = step([30.0, 0.0, 35.0, 56.0, 3.0], 0, u_x=0.999, u_y=0.999)
    assert state[2:4] == pytest.approx([52.0, -28.0 + SPEED], abs=1e-5)


def test_miss_costs_a_life_and_the_last_life_ends_the_game():
    state, reward, done = step([10.0, 0.0, 40.0, 64.0, 3.0], 0, u_x=0.5, u_y=0.0)
    assert reward == -1.0 and not done
    assert state == pytest.approx([10.0, 0.0, 32.0, -4.0 + SPEED, 2.0], abs=1e-5)
    _, reward, done = step([10.0, 0.0, 40.0, 64.5, 1.0], 0)
    assert reward == -1.0 - 5.0 and done


def test_env_episode_autoreset_and_seeding():
    env = Catcher(num_envs=3, lives=1)
    obs = env.reset(seed=3)
    assert obs.shape == (3, 5) and obs.dtype == torch.float32
    assert torch.allclose(obs[:, 0], torch.full((3,), 25.5 / 64)) and bool((obs[:, 4] == 1).all())
    again = Catcher(num_envs=3, lives=1).reset(seed=3)
    assert torch.equal(obs, again)
    # Stand still: every fruit whose column is not under the paddle is missed; with one life that ends the game.
    ended = torch.zeros(3, dtype=torch.bool)
    for _ in range(60):
        result = env.step(torch.zeros(3, dtype=torch.int64))
        ended |= result.terminated
        done = result.terminated
        if bool(done.any()):
            assert bool((result.final_obs[done, 4] == 0).all())  # true final state: no life left
            assert bool((result.obs[done, 4] == 1).all()) and bool((result.obs[done, 0] == 25.5 / 64).all())
            assert bool((result.reward[done] == -6.0).all())
    assert bool(ended.any())


def test_image_observation_paints_paddle_and_fruit():
    env = Catcher(num_envs=1, observation="image", image_size=16)
    env.reset(seed=0)
    env.set_state(torch.tensor([30.0, 0.0, 10.0, 20.0, 3.0]))
    image = env._observe()[0]
    assert image.shape == (16, 16, 2) and image.dtype == torch.bool
    paddle_rows, paddle_cols = image[..., 0].nonzero(as_tuple=True)
    # paddle spans x in (23.5, 36.5), y in (56.5, 59.5): cells of 4 px -> columns 5..9, rows 14
    assert set(paddle_rows.tolist()) == {14} and set(paddle_cols.tolist()) == {5, 6, 7, 8, 9}
    fruit_rows, fruit_cols = image[..., 1].nonzero(as_tuple=True)
    assert set(fruit_rows.tolist()) == {4, 5} and set(fruit_cols.tolist()) == {2}  # x (8, 12), y (18, 22)
    env.set_state(torch.tensor([30.0, 0.0, 10.0, -12.0, 3.0]))
    assert not bool(env._observe()[0][..., 1].any())  # above the screen: not drawn


def test_rgb_array_frame_draws_paddle_fruit_and_lives():
    from emphatic_rl.envs.rendering import render_frame

    env = make_env("catcher", num_envs=1)
    env.set_state(torch.tensor([30.0, 0.0, 10.0, 20.0, 2.0]))
    frame = render_frame(env)
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    white = (frame == 255).all(axis=-1)
    rows, cols = white.nonzero()
    # paddle: centre x 30, 13 wide -> x in (23.5, 36.5); y in (56.5, 59.5); 4 px per game pixel
    assert rows.min() == 226 and rows.max() == 237 and cols.min() == 94 and cols.max() == 145
    red = (frame == (255, 120, 120)).all(axis=-1)
    rows, cols = red.nonzero()
    assert rows.min() == 72 and rows.max() == 87 and cols.min() == 32 and cols.max() == 47  # x (8, 12), y (18, 22)
    grey = (frame == 128).all(axis=-1)
    assert grey.sum() == 2 * 8 * 8  # two lives left, 2 x 2 game pixels each
    env.set_state(torch.tensor([30.0, 0.0, 10.0, -12.0, 3.0]))
    frame = render_frame(env)
    assert not (frame == (255, 120, 120)).all(axis=-1).any()  # a fruit above the screen is not drawn
    assert (frame == 128).all(axis=-1).sum() == 3 * 8 * 8
    gym_env = gym.make("emphatic_rl/Catcher-v0", render_mode="rgb_array")
    gym_env.reset(seed=0)
    assert gym_env.render().shape == (256, 256, 3) and gym_env.metadata["render_fps"] == 30


def test_human_mode_draws_without_a_display():
    import matplotlib

    matplotlib.use("Agg")
    env = gym.make("emphatic_rl/Catcher-v0", render_mode="human")
    env.reset(seed=0)
    env.step(2)
    assert env.render() is None
    env.close()


def test_registry_gymnasium_id_and_bad_options():
    env = make_env("catcher", num_envs=2, lives=2)
    assert env.geometry.init_lives == 2
    gym_env = gym.make("emphatic_rl/Catcher-v0")
    obs, _ = gym_env.reset(seed=1)
    assert obs.shape == (5,) and gym_env.action_space.n == 3
    obs, reward, terminated, truncated, _ = gym_env.step(2)
    assert obs.shape == (5,)
    for options in ({"observation": "pixels"}, {"lives": 0}, {"image_size": 2}):
        with pytest.raises(ValueError, match="catcher"):
            make_env("catcher", **options)
