"""The compiled step's fast paths: output tensors made in blocks, actions read through their address, ``sincos``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emphatic_rl.envs import make_env
from emphatic_rl.envs.base import OUTPUT_BLOCK_STEPS

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
