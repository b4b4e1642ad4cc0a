"""Our ids as Gymnasium citizens: rendering, RecordVideo, make_vec, Stable-Baselines3, and the scalar fast path."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import emphatic_rl  # noqa: F401  (registers the ids)
from emphatic_rl.envs import make_env
from emphatic_rl.envs.registration import NativeGymEnv, NativeVectorEnv
from emphatic_rl.envs.scalar_classic import SCALAR_ENVS

RENDERABLE_IDS = {
    "emphatic_rl/CartPole-v1": (400, 600),
    "emphatic_rl/MountainCar-v0": (400, 600),
    "emphatic_rl/Acrobot-v1": (500, 500),
    "emphatic_rl/Pendulum-v1": (500, 500),
    "emphatic_rl/PuddleWorld-v0": (400, 400),
    "emphatic_rl/PuddleWorldGaussian-v0": (400, 400),
    "emphatic_rl/Catcher-v0": (256, 256),
    "emphatic_rl/BorderedGridworld-v0": (320, 320),
    "emphatic_rl/VirtualOffice-v0": (360, 360),
    "emphatic_rl/MinAtar-Breakout-v1": (160, 160),
    "emphatic_rl/MinAtar-Seaquest-v0": (160, 160),
}


# ---------------------------------------------------------------------------------------------- scalar fast path
def _random_actions(env_name: str, count: int, rng: np.random.Generator) -> list:
    if env_name == "pendulum":
        return [rng.uniform(-2.5, 2.5, size=1).astype(np.float32) for _ in range(count)]
    n = {"cartpole": 2, "mountain-car": 3, "acrobot": 3}[env_name]
    return [int(a) for a in rng.integers(0, n, size=count)]


GYM_IDS = {
    "cartpole": "CartPole-v1",
    "mountain-car": "MountainCar-v0",
    "acrobot": "Acrobot-v1",
    "pendulum": "Pendulum-v1",
}
EDGE_STATES = {
    "cartpole": [[2.39, 0.5, 0.0, 0.0], [0.0, 0.0, -0.2094, -0.3], [1.0, 3.0, -0.1, 2.5]],
    "mountain-car": [[-1.2, -0.05], [-1.19, -0.07], [0.49, 0.07], [0.48, 0.015]],
    "acrobot": [
        [math.pi - 0.01, 0.0, 1.0, 0.0],
        [0.0, 0.0, 4 * math.pi - 0.01, 9 * math.pi - 0.01],
        [2.0, 1.0, 3.0, -5.0],
    ],
    "pendulum": [[math.pi, 0.0], [0.0, 7.99], [10.0, 1.0]],
}


@pytest.mark.parametrize("env_name", sorted(SCALAR_ENVS))
def test_scalar_copy_matches_the_batched_env_and_gymnasium_step_for_step(env_name):
    """From the same state with the same action, the scalar copy, the batched env (num_envs=1) and Gymnasium give
    the same step. Method of ``test_classic_parity.py``: compare, then put all three in the batched env's state
    before the next step. Tolerances: float64 state 1e-12 against the batched env (torch's vectorised sin/cos may
    differ from libm's by one ulp, numpy's from Python's ``math`` likewise), the same against Gymnasium; observations
    and rewards to float32 precision; terminations exactly. Start states: as the batched env's, seed for seed."""
    batched = make_env(env_name, num_envs=1, max_episode_steps=None)
    scalar = SCALAR_ENVS[env_name](make_env(env_name, num_envs=1, max_episode_steps=None))
    reference = gym.make(GYM_IDS[env_name]).unwrapped
    reference.reset(seed=0)
    np.testing.assert_array_equal(scalar.reset(seed=11), batched.reset(seed=11)[0].numpy())
    rng = np.random.default_rng(0)
    edge = [list(state) for state in EDGE_STATES[env_name]]
    terminations = 0
    for t, action in enumerate(_random_actions(env_name, 500, rng)):
        if t % 100 < len(edge):  # visit the hand-picked states now and then
            batched.set_state(torch.tensor(edge[t % 100], dtype=torch.float64))
        state = batched.state[0].tolist()
        scalar.set_state(state)
        reference.state = np.array(state, dtype=np.float64)
        reference.steps_beyond_terminated = None  # CartPole: a fresh episode as far as Gymnasium knows
        action_tensor = torch.from_numpy(action)[None] if env_name == "pendulum" else torch.tensor([action])
        result = batched.step(action_tensor)
        obs, reward, terminated = scalar.step(action)
        ref_obs, ref_reward, ref_terminated, _, _ = reference.step(action)
        assert terminated == bool(result.terminated[0]) == ref_terminated
        np.testing.assert_allclose(obs, result.final_obs[0].numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(reward, float(result.reward[0]), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(obs, ref_obs, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(reward, ref_reward, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(scalar.state, np.asarray(reference.state, dtype=np.float64), rtol=1e-12, atol=1e-12)
        if terminated:
            terminations += 1
            np.testing.assert_array_equal(scalar.reset(), result.obs[0].numpy())  # the same next start state
        else:
            np.testing.assert_allclose(scalar.state, batched.state[0].tolist(), rtol=1e-12, atol=1e-12)
    assert terminations > 0 or env_name == "pendulum"


def test_gym_cartpole_rides_the_scalar_copy_and_matches_the_batched_env():
    env = gym.make("emphatic_rl/CartPole-v1")
    assert env.unwrapped.scalar is not None
    batched = make_env("cartpole", num_envs=1, max_episode_steps=None)
    np.testing.assert_array_equal(env.reset(seed=5)[0], batched.reset(seed=5)[0].numpy())
    for t in range(300):
        obs, reward, terminated, truncated, _ = env.step(t % 3 % 2)
        result = batched.step(torch.tensor([t % 3 % 2]))
        np.testing.assert_array_equal(obs, result.final_obs[0].numpy())
        assert not truncated
        if terminated:
            np.testing.assert_array_equal(env.reset()[0], result.obs[0].numpy())


# ---------------------------------------------------------------------------------------------- rendering
@pytest.mark.parametrize("gym_id", sorted(RENDERABLE_IDS))
def test_rgb_array_frames(gym_id):
    env = gym.make(gym_id, render_mode="rgb_array")
    env.reset(seed=0)
    first = env.render()
    assert first.dtype == np.uint8 and first.shape == (*RENDERABLE_IDS[gym_id], 3)
    frames = [first]
    for _ in range(15):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        frames.append(env.render())
        if terminated or truncated:
            env.reset()
    assert len({frame.shape for frame in frames}) == 1
    assert any(not np.array_equal(frames[0], frame) for frame in frames[1:])  # the picture follows the state
    assert env.metadata["render_fps"] > 0


def test_every_id_has_the_vector_entry_point_and_renderable_ones_pass_the_env_checker():
    from gymnasium.utils.env_checker import check_env

    ours = [gym_id for gym_id in gym.registry if gym_id.startswith("emphatic_rl/")]
    assert set(RENDERABLE_IDS) <= set(ours)
    for gym_id in ours:
        assert gym.spec(gym_id).vector_entry_point == "emphatic_rl.envs.registration:NativeVectorEnv"
    for gym_id in ("emphatic_rl/CartPole-v1", "emphatic_rl/MinAtar-Breakout-v1"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_env(gym.make(gym_id, render_mode="rgb_array").unwrapped)


def test_render_after_a_terminal_step_shows_the_final_state():
    env = gym.make("emphatic_rl/BorderedGridworld-v0", render_mode="rgb_array", height=2, width=2)
    env.reset(seed=0)
    start_frame = env.render()
    _, _, terminated, _, _ = env.step(1)  # right: (2, 1) -> (2, 2)
    assert not terminated
    _, _, terminated, _, _ = env.step(0)  # up: (2, 2) -> (1, 2), the goal
    assert terminated
    final_frame = env.render()
    assert not np.array_equal(final_frame, start_frame)  # not the autoreset start state
    native = env.unwrapped.native_env
    assert int(native.cell[0]) == native.start_state  # the native env did reset
    goal_row, goal_col = divmod(native.goal_state, native.grid_cols)
    centre = final_frame[goal_row * 40 + 20, goal_col * 40 + 20]
    assert tuple(centre) == (204, 0, 0)  # the agent's red disc on the goal cell


def test_human_mode_draws_without_a_display(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    env = gym.make("emphatic_rl/CartPole-v1", render_mode="human")
    env.reset(seed=0)
    env.step(0)
    assert env.render() is None
    env.close()


def test_unrenderable_env_and_unknown_mode_are_refused():
    with pytest.raises(ValueError, match="has no picture"):
        NativeGymEnv("counterexample-three-state", render_mode="rgb_array")
    with pytest.raises(ValueError, match="render_mode 'ansi' is not supported; allowed: None, human, rgb_array"):
        NativeGymEnv("cartpole", render_mode="ansi")


def test_record_video_of_cartpole_and_minatar(tmp_path):
    pytest.importorskip("moviepy")
    from gymnasium.wrappers import RecordVideo

    for gym_id, prefix in (("emphatic_rl/CartPole-v1", "cartpole"), ("emphatic_rl/MinAtar-Breakout-v1", "breakout")):
        env = RecordVideo(
            gym.make(gym_id, render_mode="rgb_array"),
            video_folder=str(tmp_path),
            name_prefix=prefix,
            episode_trigger=lambda episode: True,
            disable_logger=True,
        )
        env.reset(seed=0)
        for _ in range(40):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                break
        env.close()
        videos = sorted(tmp_path.glob(f"{prefix}-episode-0.mp4"))
        assert videos and videos[0].stat().st_size > 1000


# ---------------------------------------------------------------------------------------------- make_vec
def test_make_vec_reaches_the_native_batched_env():
    envs = gym.make_vec("emphatic_rl/CartPole-v1", num_envs=4, vectorization_mode="vector_entry_point")
    assert isinstance(envs, NativeVectorEnv) and envs.num_envs == 4
    assert envs.native_env.max_episode_steps == 500  # the registration's time limit
    assert envs.single_observation_space == gym.make("CartPole-v1").observation_space
    assert envs.action_space.shape == (4,)
    native = make_env("cartpole", num_envs=4, max_episode_steps=500)
    obs, info = envs.reset(seed=3)
    np.testing.assert_array_equal(obs, native.reset(seed=3).numpy())
    saw_final = False
    for t in range(120):
        actions = np.array([(t + i) % 2 for i in range(4)])
        obs, reward, terminated, truncated, info = envs.step(actions)
        result = native.step(torch.from_numpy(actions))
        np.testing.assert_array_equal(obs, result.obs.numpy())
        np.testing.assert_array_equal(terminated, result.terminated.numpy())
        assert obs.dtype == np.float32 and reward.shape == (4,)
        if terminated.any():
            saw_final = True
            np.testing.assert_array_equal(info["_final_obs"], terminated | truncated)
            for i in np.flatnonzero(terminated):
                np.testing.assert_array_equal(info["final_obs"][i], result.final_obs[i].numpy())
    assert saw_final
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    envs.close()
    # Gymnasium's own vectorisation of the single env still works
    sync = gym.make_vec("emphatic_rl/CartPole-v1", num_envs=2, vectorization_mode="sync")
    assert sync.reset(seed=0)[0].shape == (2, 4)


def test_make_vec_minatar_renders_every_copy():
    envs = gym.make_vec("emphatic_rl/MinAtar-Breakout-v1", num_envs=3, render_mode="rgb_array")
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (3, 10, 10, 4) and obs.dtype == np.bool_
    envs.step(np.zeros(3, dtype=np.int64))
    frames = envs.render()
    assert len(frames) == 3 and frames[0].shape == (160, 160, 3)


# ---------------------------------------------------------------------------------------------- Stable-Baselines3
def test_sb3_make_vec_env_and_dqn_learn_on_our_cartpole():
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import DQN
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    vec_env = make_vec_env("emphatic_rl/CartPole-v1", n_envs=2, seed=0)
    assert vec_env.render_mode == "rgb_array"  # make_vec_env asks every id for rgb_array
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DQN(
            "MlpPolicy",
            vec_env,
            learning_starts=50,
            buffer_size=1000,
            train_freq=4,
            seed=0,
            policy_kwargs={"net_arch": [32]},
            device="cpu",
        )
        model.learn(total_timesteps=400)
    assert model.num_timesteps >= 400
    action, _ = model.predict(vec_env.reset(), deterministic=True)
    assert action.shape == (2,)
    assert vec_env.render().ndim == 3  # SB3's tiled frame of both copies
    vec_env.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_make_vec_on_cuda_returns_numpy():
    envs = gym.make_vec("emphatic_rl/MinAtar-Breakout-v1", num_envs=8, device="cuda")
    obs, _ = envs.reset(seed=0)
    assert isinstance(obs, np.ndarray) and obs.shape == (8, 10, 10, 4)
    for _ in range(20):
        obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
    assert isinstance(reward, np.ndarray) and reward.dtype == np.float32
