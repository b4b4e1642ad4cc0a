"""The compiled step's fast paths: output tensors made in blocks, actions read through their address, ``sincos``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emphatic_rl.envs import make_env
from emphatic_rl.envs.base import OUTPUT_BLOCK_STEPS, StepResult

NAMES = ("cartpole", "mountain-car", "acrobot", "pendulum", "puddle-world")


def _actions(name: str, num_envs: int, generator: torch.Generator) -> torch.Tensor:
    if name == "pendulum":
        return torch.rand(num_envs, 1, generator=generator) * 4 - 2
    n = {"cartpole": 2, "mountain-car": 3, "acrobot": 3, "puddle-world": 4}[name]
    return torch.randint(0, n, (num_envs,), generator=generator)


@pytest.mark.parametrize("name", NAMES)
def test_outputs_made_in_blocks_are_never_overwritten_and_match_the_torch_backend(name):
    # N = 3 fits many steps in one block: step across two block boundaries, keep every result, compare at the end
    env = make_env(name, num_envs=3, max_episode_steps=7)
    assert env.backend == "numba" and env._block_steps == OUTPUT_BLOCK_STEPS
    reference = make_env(name, num_envs=3, max_episode_steps=7).set_backend("torch")
    env.reset(seed=3)
    reference.reset(seed=3)
    generator = torch.Generator().manual_seed(0)
    kept, copies, pointers, ends = [], [], set(), 0
    for _ in range(2 * OUTPUT_BLOCK_STEPS + 5):
        action = _actions(name, 3, generator)
        result, expected = env.step(action), reference.step(action)
        for got, want in zip(result, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # libm vs torch sin/cos: last bit at most
            assert got.is_contiguous() and got.shape == want.shape and got.dtype == want.dtype
            pointers.add(got.data_ptr())
        ends += int((result.terminated | result.truncated).sum())  # final_obs checked where episodes ended too
        kept.append(result)
        copies.append([t.clone() for t in result])
    assert ends >= 3 * 2 * OUTPUT_BLOCK_STEPS // 7
    assert len(pointers) == 5 * len(kept)  # every tensor of every step has its own memory
    for result, copy in zip(kept, copies, strict=True):
        for a, b in zip(result, copy, strict=True):
            assert torch.equal(a, b)


def test_bad_actions_are_rejected_with_one_line_on_the_fast_path():
    env = make_env("cartpole", num_envs=4)
    env.reset(seed=0)
    state, elapsed = env.state.clone(), env.elapsed_steps.clone()
    cases = [
        (torch.tensor([0, 1, 2, 0]), r"^CartPole.step: action 2 is outside the action set \{0, ..., 1\}$"),
        (torch.tensor([0, 1]), r"^CartPole.step: action has shape \(2,\), expected \(4,\)$"),
        (torch.zeros(4), r"^CartPole.step: discrete actions must be integers, got torch.float32$"),
        (torch.zeros(4, dtype=torch.bool), r"^CartPole.step: discrete actions must be integers, got torch.bool$"),
    ]
    for action, message in cases:
        with pytest.raises(ValueError, match=message):
            env.step(action)
    assert torch.equal(env.state, state) and torch.equal(env.elapsed_steps, elapsed)
    # int32, numpy, non-contiguous and lists take the slow path and give the same step as int64
    twin = make_env("cartpole", num_envs=4)
    twin.reset(seed=0)
    a = env.step(torch.tensor([0, 1, 1, 0], dtype=torch.int32))
    b = twin.step(torch.tensor([[0, 9], [1, 9], [1, 9], [0, 9]])[:, 0])
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    for action in (np.array([1, 0, 0, 1]), [1, 0, 0, 1]):
        for x, y in zip(env.step(action), twin.step(torch.tensor([1, 0, 0, 1])), strict=True):
            assert torch.equal(x, y)


def test_sincos_gives_the_bits_of_libm_sin_and_cos():
    from numba import njit

    from emphatic_rl.envs.kernels import sincos

    @njit
    def both(x, sine, cosine):
        for i in range(x.shape[0]):
            sine[i], cosine[i] = sincos(x[i])

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-0.3, 0.3, 2000), rng.uniform(-10, 10, 2000), [0.0, -0.0, 1e-300, math.pi]])
    sine, cosine = np.empty_like(x), np.empty_like(x)
    both(x, sine, cosine)
    assert all(math.sin(v) == s and math.cos(v) == c for v, s, c in zip(x.tolist(), sine, cosine, strict=True))


@pytest.mark.parametrize("num_envs", [3, 8192])  # many steps per block; one step per block (large N)
def test_output_memory_is_reused_only_when_nothing_refers_to_it(num_envs):
    env = make_env("cartpole", num_envs=num_envs, max_episode_steps=9)
    assert (env._block_steps == 1) == (num_envs == 8192)
    env.reset(seed=1)
    generator = torch.Generator().manual_seed(1)
    # a loop that drops its results steps on a few sets of blocks, not on fresh memory every time
    pointers = {
        env.step(_actions("cartpole", num_envs, generator)).obs.data_ptr() for _ in range(6 * OUTPUT_BLOCK_STEPS)
    }
    assert len(pointers) <= 2 * env._block_steps
    # every way of keeping a step's outputs alive keeps them from being overwritten
    weight = torch.ones(4, requires_grad=True)
    held, expected, gradient = [], [], torch.zeros(4)
    for step in range(3 * OUTPUT_BLOCK_STEPS):
        result = env.step(_actions("cartpole", num_envs, generator))
        kind = step % 5
        if kind == 0:
            held.append(result)  # the whole result
            expected.append([t.clone() for t in result])
        elif kind == 1:
            held.append(result.obs[:, 1:3])  # a view only
            expected.append(result.obs[:, 1:3].clone())
        elif kind == 2:
            held.append(result.final_obs.numpy())  # a numpy array over it
            expected.append(result.final_obs.clone().numpy())
        elif kind == 3:
            held.append((result.reward * 1).sum() + (result.obs @ weight).sum())  # kept by autograd only
            gradient += result.obs.sum(0)
        else:
            held.append(torch.utils.dlpack.from_dlpack(torch.utils.dlpack.to_dlpack(result.terminated)))
            expected.append(result.terminated.clone())
        del result
    sum(loss for loss in held[3::5]).backward()
    torch.testing.assert_close(weight.grad, gradient, rtol=1e-5, atol=1e-3)
    kept = [h for i, h in enumerate(held) if i % 5 != 3]
    for got, want in zip(kept, expected, strict=True):
        if isinstance(got, StepResult):
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        elif isinstance(got, np.ndarray):
            assert np.array_equal(got, want)
        else:
            assert torch.equal(got, want)


@pytest.mark.parametrize("sutton_barto", [False, True])
def test_cartpole_kernel_four_copies_at_a_time_gives_the_bits_of_the_scalar_physics(sutton_barto):
    """The vector Euler step, the vector termination test, the branch-free force and reward and the float32x4
    observation stores give the scalar physics' bits."""
    from emphatic_rl.envs.kernels import cartpole_dynamics

    rng = np.random.default_rng(5)
    n = 4 * 1000 + 3  # groups of four and a remainder stepped one by one
    low, high = [-2.4, -3.0, -0.21, -3.0], [2.4, 3.0, 0.21, 3.0]
    start = rng.uniform(low, high, size=(n, 4))
    actions = rng.integers(0, 2, n)
    env = make_env("cartpole", num_envs=n, sutton_barto_reward=sutton_barto)
    env.set_state(torch.from_numpy(start))
    result = env.step(torch.from_numpy(actions))
    expected = np.array([cartpole_dynamics(*start[i], bool(actions[i] == 1)) for i in range(n)])
    assert np.array_equal(result.final_obs.numpy(), expected.astype(np.float32))
    done = (result.terminated | result.truncated).numpy()
    assert 0 < done.sum() < n
    assert np.array_equal(env.state.numpy()[~done], expected[~done])  # float64, bit for bit
    terminal = (np.abs(expected[:, 0]) > 2.4) | (np.abs(expected[:, 2]) > 12 * 2 * math.pi / 360)
    assert np.array_equal(result.terminated.numpy(), terminal)
    reward = -terminal.astype(np.float32) if sutton_barto else np.ones(n, np.float32)
    assert np.array_equal(result.reward.numpy(), reward)
    assert not np.signbit(result.reward.numpy()[~terminal]).any()  # +0 (Gymnasium's 0.0), never -0


@pytest.mark.parametrize("name", ["cartpole", "pendulum", "puddle-world"])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_compiled_env_steps_as_the_original(name, how):
    """A deep copy (or an unpickled copy) of an env on the numba backend rebuilds its kernels' views and output blocks:
    it steps exactly as the original from there on, and neither writes the other's memory."""
    import copy
    import pickle

    env = make_env(name, num_envs=5)
    env.reset(seed=0)
    generator = torch.Generator().manual_seed(1)

    def action() -> torch.Tensor:
        if hasattr(env.action_spec, "n"):
            return torch.randint(0, env.action_spec.n, (5,), generator=generator)
        return torch.rand(5, *env.action_spec.shape, generator=generator) * 2 - 1

    for _ in range(3):
        env.step(action())
    copied = copy.deepcopy(env) if how == "deepcopy" else pickle.loads(pickle.dumps(env))
    assert copied.backend == "numba"
    for _ in range(60):
        a = action()
        ours, theirs = env.step(a), copied.step(a)
        assert all(torch.equal(x, y) for x, y in zip(ours, theirs, strict=True))
