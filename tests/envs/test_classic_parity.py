"""Parity of the native batched classic-control envs with Gymnasium 1.4, step for step.

Method: put N native copies and N Gymnasium envs (``gymnasium.make(id)``, so with Gymnasium's ``TimeLimit``)
in the same states, step both with the same actions, compare, then copy the native float64 state into every
Gymnasium env (``env.unwrapped.state = ...``) before the next step. The copy keeps the two from drifting apart
in the chaotic systems (Acrobot), because torch's vectorised float64 ``sin``/``cos`` may differ from libm's by
one ulp. Tolerance: observations and rewards to float32 precision (``rtol = atol = 1e-6``; in practice they
are bit-identical), the float64 state to ``1e-12``, terminated and truncated exactly.

Every test runs on both backends (``backend`` fixture): the compiled numba kernels (the CPU default) and the batched
torch operations (the path for GPUs), and the two are checked against each other.
"""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from emphatic_rl.envs import make_env
from emphatic_rl.envs.classic import Acrobot, CartPole, MountainCar, Pendulum

FLOAT32_TOL = {"rtol": 1e-6, "atol": 1e-6}
NAMES = ["cartpole", "mountain-car", "acrobot", "pendulum"]


@pytest.fixture(params=["numba", "torch"])
def backend(request) -> str:
    return request.param


# Hand-picked states: near the bounds, near termination, near the angle wrap, fast.
EDGE_STATES = {
    "cartpole": [
        [2.39, 0.5, 0.0, 0.0],  # about to leave on the right
        [-2.39, -0.5, 0.0, 0.0],  # about to leave on the left
        [0.0, 0.0, 0.2094, 0.3],  # pole about to pass 12 degrees
        [0.0, 0.0, -0.2094, -0.3],
        [1.0, 3.0, -0.1, 2.5],  # fast
        [0.0, 0.0, 0.0, 0.0],
    ],
    "mountain-car": [
        [-1.2, -0.05],  # on the left wall moving left: velocity is zeroed
        [-1.19, -0.07],  # hits the wall within one step
        [0.49, 0.07],  # reaches the goal, velocity at its bound
        [0.5, 0.0],  # at the goal line standing still
        [0.45, -0.01],
        [0.48, 0.015],  # ends just short of the goal line (p ~ 0.495)
        [-0.5236, 0.0],  # bottom of the valley
    ],
    "acrobot": [
        [math.pi - 0.01, 0.0, 1.0, 0.0],  # theta1 about to wrap past pi
        [-math.pi + 0.01, 0.0, -1.0, 0.0],
        [0.0, 0.0, 4 * math.pi - 0.01, 9 * math.pi - 0.01],  # velocities at their bounds
        [2.0, 1.0, 3.0, -5.0],  # high up: close to the terminal height
        [math.pi, 0.0, 0.0, 0.0],
        [0.0, math.pi - 0.001, 0.0, 20.0],
    ],
    "pendulum": [
        [math.pi, 0.0],  # upside down (the goal is theta = 0)
        [0.0, 7.99],  # speed at its bound
        [-3.0, -8.0],
        [10.0, 1.0],  # angle far outside [-pi, pi]: normalised in the cost
        [-7.5, 0.5],
        [0.001, 0.0],
    ],
}
GYM_IDS = {
    "cartpole": "CartPole-v1",
    "mountain-car": "MountainCar-v0",
    "acrobot": "Acrobot-v1",
    "pendulum": "Pendulum-v1",
}


def random_actions(env, rng: np.random.Generator) -> np.ndarray:
    if env.name == "pendulum":
        return rng.uniform(-2.5, 2.5, size=(env.num_envs, 1)).astype(np.float32)  # beyond the bounds: clipped
    return rng.integers(0, env.action_spec.n, size=env.num_envs)


def run_parity(name: str, steps: int, backend: str, num_random: int = 6, seed: int = 0) -> dict[str, int]:
    """Step native and Gymnasium copies side by side; assert equality; return counts of what was covered."""
    num_edge = len(EDGE_STATES[name])
    env = make_env(name, num_envs=num_random + num_edge).set_backend(backend)
    assert env.backend == backend
    env.reset(seed=seed)
    start = env.state.clone()
    start[num_random:] = torch.tensor(EDGE_STATES[name], dtype=torch.float64)
    env.set_state(start)
    gym_envs = [gym.make(GYM_IDS[name]) for _ in range(env.num_envs)]
    for i, gym_env in enumerate(gym_envs):
        gym_env.reset(seed=seed + i)
        gym_env.unwrapped.state = env.state[i].numpy().copy()
    rng = np.random.default_rng(seed)
    covered = {"terminated": 0, "truncated": 0, "bit_identical_obs": 0, "transitions": 0}
    for _ in range(steps):
        actions = random_actions(env, rng)
        result = env.step(torch.as_tensor(actions))
        for i, gym_env in enumerate(gym_envs):
            gym_obs, gym_reward, gym_terminated, gym_truncated, _ = gym_env.step(actions[i])
            torch.testing.assert_close(result.final_obs[i], torch.from_numpy(gym_obs), **FLOAT32_TOL)
            torch.testing.assert_close(result.reward[i], torch.tensor(gym_reward, dtype=torch.float32), **FLOAT32_TOL)
            assert bool(result.terminated[i]) == gym_terminated
            assert bool(result.truncated[i]) == gym_truncated
            covered["terminated"] += gym_terminated
            covered["truncated"] += gym_truncated
            covered["transitions"] += 1
            covered["bit_identical_obs"] += bool(torch.equal(result.final_obs[i], torch.from_numpy(gym_obs)))
            if gym_terminated or gym_truncated:
                gym_env.reset()  # then mirror the native reset state below
            else:
                gym_state = np.asarray(gym_env.unwrapped.state, dtype=np.float64)
                torch.testing.assert_close(env.state[i], torch.from_numpy(gym_state), rtol=1e-12, atol=1e-12)
            gym_env.unwrapped.state = env.state[i].numpy().copy()
        # the observation to act on is the observation of the (possibly fresh) native state
        torch.testing.assert_close(result.obs, env._observe(), rtol=0, atol=0)
    return covered


@pytest.mark.parametrize("name", NAMES)
def test_step_for_step_parity_with_gymnasium(name, backend):
    steps = 250 if name in ("mountain-car", "pendulum") else 200  # past the 200-step limit where it is 200
    covered = run_parity(name, steps, backend)
    # the run must actually exercise the rules it claims to check
    if name == "cartpole":
        assert covered["terminated"] > 20
    if name in ("mountain-car", "pendulum"):
        assert covered["truncated"] > 0
    if name == "mountain-car":
        assert covered["terminated"] >= 2  # the two edge states at the goal
    if name == "acrobot":
        assert covered["terminated"] >= 1
    # operations are mirrored in Gymnasium's order: nearly every observation is bit-identical
    assert covered["bit_identical_obs"] >= 0.99 * covered["transitions"]


def test_acrobot_nips_dynamics_match_gymnasium(backend):
    env = make_env("acrobot", num_envs=3, book_or_nips="nips").set_backend(backend)
    env.reset(seed=3)
    env.set_state(torch.tensor(EDGE_STATES["acrobot"][3:6], dtype=torch.float64))
    gym_envs = [gym.make("Acrobot-v1") for _ in range(3)]
    for i, gym_env in enumerate(gym_envs):
        gym_env.reset(seed=i)
        gym_env.unwrapped.book_or_nips = "nips"
        gym_env.unwrapped.state = env.state[i].numpy().copy()
    actions = np.array([0, 1, 2])
    result = env.step(torch.as_tensor(actions))
    for i, gym_env in enumerate(gym_envs):
        gym_obs, *_ = gym_env.step(actions[i])
        torch.testing.assert_close(result.final_obs[i], torch.from_numpy(gym_obs), **FLOAT32_TOL)


def test_spaces_match_gymnasium():
    for name, gym_id in GYM_IDS.items():
        env = make_env(name, num_envs=2)
        gym_env = gym.make(gym_id)
        obs_space = gym_env.observation_space
        assert env.observation_spec.shape == obs_space.shape
        np.testing.assert_array_equal(env.observation_spec.low_tensor().numpy(), obs_space.low)
        np.testing.assert_array_equal(env.observation_spec.high_tensor().numpy(), obs_space.high)
        if name == "pendulum":
            assert env.action_spec.shape == gym_env.action_space.shape
            assert env.action_spec.low == float(gym_env.action_space.low[0])
        else:
            assert env.action_spec.n == gym_env.action_space.n
        assert env.max_episode_steps == gym_env.spec.max_episode_steps


@pytest.mark.parametrize(
    ("cls", "low", "high"),
    [
        (CartPole, [-0.05] * 4, [0.05] * 4),
        (MountainCar, [-0.6, 0.0], [-0.4, 0.0]),
        (Acrobot, [-0.1] * 4, [0.1] * 4),
        (Pendulum, [-math.pi, -1.0], [math.pi, 1.0]),
    ],
)
def test_start_distribution_is_gymnasiums(cls, low, high, backend):
    env = cls(num_envs=4000).set_backend(backend)
    env.reset(seed=5)
    low, high = torch.tensor(low, dtype=torch.float64), torch.tensor(high, dtype=torch.float64)
    assert bool((env.state >= low).all()) and bool((env.state <= high).all())
    mean = env.state.mean(0)
    width = high - low
    # uniform on [low, high]: mean in the middle (4000 draws: standard error of the mean = width * 0.0046)
    assert bool(((mean - (low + high) / 2).abs() <= 0.03 * width + 1e-12).all())
    spread = env.state.std(0)
    torch.testing.assert_close(spread, width / math.sqrt(12), rtol=0.05, atol=1e-12)


def test_truncated_at_the_time_limit_not_terminated(backend):
    # Hold each env in a state that never terminates by putting it back every step.
    for name, limit in [("cartpole", 500), ("acrobot", 500), ("mountain-car", 200), ("pendulum", 200)]:
        env = make_env(name, num_envs=3).set_backend(backend)
        env.reset(seed=0)
        hold = env.state.clone()
        zeros_action = torch.zeros((3, 1)) if name == "pendulum" else torch.ones(3, dtype=torch.int64)
        for t in range(1, limit + 1):
            env.set_state(hold)
            result = env.step(zeros_action)
            assert not bool(result.terminated.any())
            assert bool(result.truncated.all()) == (t == limit), (name, t)
        # the episode was cut: final_obs is the last state, obs a fresh start, the counter restarted
        assert not torch.equal(result.final_obs, result.obs)
        assert bool((env.elapsed_steps == 0).all())


def test_no_time_limit_when_none(backend):
    env = make_env("mountain-car", num_envs=4, max_episode_steps=None).set_backend(backend)
    env.reset(seed=0)
    for _ in range(300):
        result = env.step(torch.ones(4, dtype=torch.int64))  # no push: never reaches the goal
        assert not bool(result.truncated.any() or result.terminated.any())
    assert bool((env.elapsed_steps == 300).all())


def test_autoreset_final_obs_is_terminal_and_obs_is_a_fresh_start(backend):
    env = make_env("cartpole", num_envs=2).set_backend(backend)
    env.reset(seed=0)
    env.set_state(torch.tensor([[2.399, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64))
    result = env.step(torch.tensor([1, 1]))
    assert result.terminated.tolist() == [True, False]
    assert result.final_obs[0, 0] > 2.4  # the true last observation, past the edge
    assert bool((result.obs[0].abs() <= 0.05).all())  # a start state
    assert torch.equal(result.final_obs[1], result.obs[1])
    assert env.elapsed_steps.tolist() == [0, 1]


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_bit_identically(name, backend):
    env = make_env(name, num_envs=8, max_episode_steps=100).set_backend(backend)  # every env autoresets in between
    env.reset(seed=11)
    rng = np.random.default_rng(0)
    for _ in range(40):
        env.step(torch.as_tensor(random_actions(env, rng)))
    saved = copy.deepcopy(env.state_dict())
    actions = [torch.as_tensor(random_actions(env, rng)) for _ in range(180)]
    first = [env.step(a) for a in actions]
    restored = make_env(name, num_envs=8, max_episode_steps=100).set_backend(backend)
    restored.load_state_dict(saved)
    second = [restored.step(a) for a in actions]
    for a, b in zip(first, second, strict=True):
        for field_a, field_b in zip(a, b, strict=True):
            assert torch.equal(field_a, field_b)
    assert any(bool((r.terminated | r.truncated).any()) for r in first)  # an autoreset happened in between


def test_bad_actions_raise_one_clear_error(backend):
    env = make_env("cartpole", num_envs=3).set_backend(backend)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action has shape \(2,\), expected \(3,\)"):
        env.step(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"action 2 is outside the action set \{0, ..., 1\}"):
        env.step(torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="discrete actions must be integers"):
        env.step(torch.tensor([0.0, 1.0, 1.0]))
    pendulum = make_env("pendulum", num_envs=3).set_backend(backend)
    with pytest.raises(ValueError, match=r"action has shape \(3,\), expected \(3, 1\)"):
        pendulum.step(torch.zeros(3))
    with pytest.raises(ValueError, match="set_state: state has shape"):
        env.set_state(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="book_or_nips must be 'book' or 'nips'"):
        make_env("acrobot", book_or_nips="java")


def test_runs_without_action_checks_and_in_sutton_barto_mode(backend):
    env = make_env("cartpole", num_envs=4, check_actions=False, sutton_barto_reward=True).set_backend(backend)
    env.reset(seed=0)
    rewards, terminated = [], []
    for _ in range(60):
        result = env.step(torch.randint(0, 2, (4,)))
        rewards.append(result.reward)
        terminated.append(result.terminated)
    rewards, terminated = torch.stack(rewards), torch.stack(terminated)
    assert bool(terminated.any())
    assert torch.equal(rewards, -terminated.float())


@pytest.mark.parametrize("name", NAMES)
def test_accelerator_reset_path_draws_for_every_copy_without_sync(name, backend):
    # On CUDA the envs draw start states for every copy and select with torch.where (no host sync); force that
    # path on the CPU and check the autoreset rule and the start distribution hold.
    env = make_env(name, num_envs=64, max_episode_steps=3).set_backend(backend)
    env.draw_only_ended = False
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for t in range(1, 7):
        result = env.step(torch.as_tensor(random_actions(env, rng)))
        done = result.terminated | result.truncated
        assert bool(done.any()) or t % 3 != 0  # every copy's episode ends at the latest after 3 steps
        assert not bool((result.terminated & result.truncated).any())
        assert bool((env.elapsed_steps[done] == 0).all())
        assert torch.equal(result.obs[~done], result.final_obs[~done])
        assert torch.equal(result.obs, env._observe())
    assert not torch.equal(result.obs, result.final_obs)
    fresh = make_env(name, num_envs=64).set_backend(backend)
    fresh.draw_only_ended = False
    fresh.reset(seed=1)
    cpu_path = make_env(name, num_envs=64).set_backend(backend)
    cpu_path.reset(seed=1)
    # same distribution of start states from either path (the same draws, in fact, for a full reset)
    assert torch.equal(fresh.state, cpu_path.state)


# ------------------------------------------------------------------------------------- the two backends together
def _actions(name: str, num_envs: int, generator: torch.Generator) -> torch.Tensor:
    if name == "pendulum":
        return 5 * torch.rand(num_envs, 1, generator=generator) - 2.5
    return torch.randint(0, 3 if name in ("mountain-car", "acrobot") else 2, (num_envs,), generator=generator)


@pytest.mark.parametrize("name", NAMES)
def test_backends_agree_step_for_step_and_draw_the_same_start_states(name):
    envs = [make_env(name, num_envs=32, max_episode_steps=15).set_backend(b) for b in ("numba", "torch")]
    for env in envs:
        env.reset(seed=7)
    assert torch.equal(envs[0].state, envs[1].state)
    generator = torch.Generator().manual_seed(0)
    restarts = 0
    for _ in range(60):
        action = _actions(name, 32, generator)
        first, second = (env.step(action) for env in envs)
        for a, b in zip(first, second, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            if a.dtype == torch.bool:
                assert torch.equal(a, b)
            else:  # libm's and torch's sin/cos may differ in the last bit (none did in this run when written)
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        done = first.terminated | first.truncated
        restarts += int(done.sum())
        assert torch.equal(first.obs[done], second.obs[done])  # the same draws from the generator
        assert torch.equal(envs[0].elapsed_steps, envs[1].elapsed_steps)
    assert restarts >= 32
    assert torch.equal(envs[0].generator.get_state(), envs[1].generator.get_state())


def test_numba_backend_checks_every_action_before_changing_anything():
    env = make_env("mountain-car", num_envs=4, check_actions=False)
    assert env.backend == "numba"
    env.reset(seed=0)
    env.step(torch.tensor([0, 1, 2, 1]))
    state, generator_state, elapsed = env.state.clone(), env.generator.get_state(), env.elapsed_steps.clone()
    for bad, shown in (([0, 1, 3, -1], 3), ([-1, 0, 0, 0], -1)):
        with pytest.raises(ValueError, match=rf"action {shown} is outside the action set \{{0, ..., 2\}}"):
            env.step(torch.tensor(bad))
    assert torch.equal(env.state, state) and torch.equal(env.elapsed_steps, elapsed)
    assert torch.equal(env.generator.get_state(), generator_state)
    pendulum = make_env("pendulum", num_envs=2)
    with pytest.raises(ValueError, match="actions must be finite"):
        pendulum.step(torch.tensor([[0.0], [math.nan]]))
    unchecked = make_env("pendulum", num_envs=2, check_actions=False)
    assert torch.isnan(unchecked.step(torch.tensor([[0.0], [math.nan]])).reward[1])


@pytest.mark.parametrize("name", NAMES)
def test_actions_of_other_integer_dtypes_layouts_and_numpy_are_accepted(name, backend):
    env = make_env(name, num_envs=6).set_backend(backend)
    env.reset(seed=0)
    reference = make_env(name, num_envs=6).set_backend(backend)
    reference.reset(seed=0)
    action = _actions(name, 12, torch.Generator().manual_seed(1))[::2]  # not contiguous
    converted = action if name == "pendulum" else action.to(torch.int32)
    first, second = env.step(converted), reference.step(action.contiguous().numpy())
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_every_step_returns_fresh_tensors(name, backend):
    env = make_env(name, num_envs=5, max_episode_steps=2).set_backend(backend)
    env.reset(seed=0)
    generator = torch.Generator().manual_seed(0)
    kept = env.step(_actions(name, 5, generator))
    copies = [t.clone() for t in kept]
    later = env.step(_actions(name, 5, generator))
    for a, b, c in zip(kept, copies, later, strict=True):
        assert torch.equal(a, b)  # not overwritten by the next step
        assert a.data_ptr() != c.data_ptr()


def test_numba_backend_follows_a_replaced_state_tensor():
    env = make_env("cartpole", num_envs=2)
    env.reset(seed=0)
    env.step(torch.tensor([0, 1]))
    env.state = torch.tensor([[2.399, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64).t().contiguous().t()
    result = env.step(torch.tensor([1, 1]))
    assert result.terminated.tolist() == [True, False]
    assert env.state.is_contiguous() and env.state.dtype == torch.float64


def test_backend_selection():
    assert make_env("acrobot", num_envs=2).backend == "numba"  # CPU default
    env = make_env("pendulum", num_envs=2).set_backend("torch")
    assert env.backend == "torch" and env.set_backend("auto").backend == "numba"
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'torch', 'numba', got 'jax'"):
        env.set_backend("jax")
