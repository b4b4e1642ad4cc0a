"""The native MinAtar envs as ``TensorEnv``s: options, errors, checkpoints, batching, Gymnasium ids."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

import emphatic_rl.envs  # noqa: F401  (registers the envs and the Gymnasium ids)
from emphatic_rl.envs import make_env
from emphatic_rl.envs.minatar import make_minatar_env

BACKENDS = ("torch", "numba")

NAMES = {
    "minatar-asterix": (4, 5),
    "minatar-breakout": (4, 3),
    "minatar-freeway": (7, 3),
    "minatar-space-invaders": (6, 4),
    "minatar-seaquest": (10, 6),
}


@pytest.mark.parametrize("name", sorted(NAMES))
@pytest.mark.parametrize("minimal", [False, True])
def test_specs_and_shapes(name, minimal):
    channels, num_minimal = NAMES[name]
    env = make_env(name, 5, minimal_action_set=minimal)
    assert env.observation_spec.shape == (10, 10, channels)
    assert env.action_spec.n == (num_minimal if minimal else 6)
    obs = env.reset(seed=3)
    assert obs.shape == (5, 10, 10, channels) and obs.dtype == torch.bool
    result = env.step(torch.zeros(5, dtype=torch.int64))
    assert result.reward.dtype == torch.float32 and result.terminated.dtype == torch.bool
    assert result.final_obs.shape == obs.shape


def test_bad_input_raises_one_clear_error():
    with pytest.raises(ValueError, match="unknown MinAtar game 'pong'.*breakout"):
        make_minatar_env("pong")
    for bad in (-0.1, 1.5, "0.1", True, float("nan")):
        with pytest.raises(ValueError, match="sticky_action_prob"):
            make_env("minatar-breakout", 2, sticky_action_prob=bad)
    env = make_env("minatar-breakout", 2, minimal_action_set=True)
    with pytest.raises(ValueError, match="outside the action set"):
        env.step(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="outside the action set"):
        make_env("minatar-freeway", 2).step(torch.tensor([6, 0]))
    with pytest.raises(ValueError, match="unknown option"):
        make_env("minatar-asterix", 2, sticky=0.1)
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'torch', 'numba', got 'jax'"):
        make_env("minatar-breakout", 2, backend="jax")
    with pytest.raises(ValueError, match="backend 'numba' runs on CPU only"):
        make_env("minatar-breakout", 2, backend="numba", device="cuda")


def test_auto_backend_is_numba_on_cpu():
    assert make_env("minatar-breakout", 2).backend == "numba"
    assert make_env("minatar-breakout", 2, backend="torch").backend == "torch"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(NAMES))
def test_state_dict_round_trip_continues_bit_identically(name, backend):
    env = make_env(name, 6, sticky_action_prob=0.25, max_episode_steps=40, backend=backend)
    env.reset(seed=11)
    actions = torch.randint(0, 6, (200, 6), generator=torch.Generator().manual_seed(0))
    for t in range(60):
        env.step(actions[t])
    saved = env.state_dict()
    first = [env.step(actions[t]) for t in range(60, 200)]
    restored = make_env(name, 6, sticky_action_prob=0.25, max_episode_steps=40, backend=backend)
    restored.reset(seed=999)
    restored.load_state_dict(saved)
    second = [restored.step(actions[t]) for t in range(60, 200)]
    for a, b in zip(first, second, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
    assert sum(int(r.terminated.sum() + r.truncated.sum()) for r in first) > 0  # the resets were exercised


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(NAMES))
def test_copies_differ_and_reset_seed_reproduces(name, backend):
    runs = []
    for _ in range(2):
        env = make_env(name, 8, backend=backend)
        env.reset(seed=5)
        gen = torch.Generator().manual_seed(1)
        runs.append([env.step(torch.randint(0, 6, (8,), generator=gen)).obs for _ in range(80)])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    last = runs[0][-1]
    assert any(not torch.equal(last[0], last[i]) for i in range(1, 8))  # copies evolve independently


@pytest.mark.parametrize("backend", BACKENDS)
def test_time_limit_is_truncation_and_freeway_limit_is_termination(backend):
    env = make_env("minatar-space-invaders", 3, sticky_action_prob=0.0, max_episode_steps=5, backend=backend)
    env.reset(seed=0)
    results = [env.step(torch.zeros(3, dtype=torch.int64)) for _ in range(5)]
    assert results[-1].truncated.all() and not results[-1].terminated.any()
    assert not any(r.truncated.any() for r in results[:-1])
    # default: no truncation limit; the game ends itself at 2501
    freeway = make_env("minatar-freeway", 2, backend=backend)
    freeway.reset(seed=0)
    ends = [freeway.step(torch.zeros(2, dtype=torch.int64)) for _ in range(2501)]
    assert ends[-1].terminated.all() and not any(r.terminated.any() for r in ends[:-1])
    assert not any(r.truncated.any() for r in ends)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sticky_probability_one_repeats_the_first_action_forever(backend):
    env = make_env("minatar-breakout", 4, sticky_action_prob=1.0, backend=backend)
    env.reset(seed=0)
    for _ in range(3):
        env.step(torch.full((4,), 3))  # right is always replaced by the remembered noop
    assert torch.equal(env.paddle_x, torch.full((4,), 4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_reset_draws_have_the_reference_distribution(backend):
    # Freeway: speeds uniform on 1..5, directions 50/50 (reference: randint(1, 6, 8), sign(rand(8) - 0.5))
    env = make_env("minatar-freeway", 4000, backend=backend)
    env.reset(seed=2)
    counts = torch.bincount(env.car_speed.abs().flatten(), minlength=6)[1:].float() / env.car_speed.numel()
    assert torch.allclose(counts, torch.full((5,), 0.2), atol=0.01)
    assert abs((env.car_speed > 0).float().mean().item() - 0.5) < 0.01
    # Breakout: the ball starts on either side with probability 1/2
    breakout = make_env("minatar-breakout", 4000, backend=backend)
    breakout.reset(seed=2)
    assert abs((breakout.ball_x == 9).float().mean().item() - 0.5) < 0.03


@pytest.mark.parametrize("backend", BACKENDS)
def test_asterix_spawns_gold_one_third_of_the_time(backend):
    env = make_env("minatar-asterix", 3000, sticky_action_prob=0.0, backend=backend)
    env.reset(seed=4)
    for _ in range(11):  # the first spawn happens on step 11
        env.step(torch.zeros(3000, dtype=torch.int64))
    assert torch.equal(env.entity_alive.sum(1), torch.ones(3000, dtype=torch.int64))
    gold = (env.entity_gold & env.entity_alive).any(1).float().mean().item()
    assert abs(gold - 1 / 3) < 0.03
    slots = env.entity_alive.float().mean(0)
    assert torch.allclose(slots, torch.full((8,), 1 / 8), atol=0.025)


@pytest.mark.parametrize(
    "game, num_minimal", [("Breakout", 3), ("Asterix", 5), ("Freeway", 3), ("SpaceInvaders", 4), ("Seaquest", 6)]
)
def test_gymnasium_ids(game, num_minimal):
    full = gym.make(f"emphatic_rl/MinAtar-{game}-v0")
    minimal = gym.make(f"emphatic_rl/MinAtar-{game}-v1")
    assert full.action_space.n == 6 and minimal.action_space.n == num_minimal
    obs, _ = full.reset(seed=0)
    assert obs.shape[:2] == (10, 10) and obs.dtype == bool
    obs, reward, terminated, truncated, _ = full.step(0)
    assert isinstance(reward, float) and truncated is False


@pytest.mark.parametrize("game", ["asterix", "breakout", "freeway", "seaquest", "space_invaders"])
def test_kernel_constants_match_the_torch_game(game):
    """The numba kernels keep their own copies of the game's constants (numba's cache only watches the kernel's own
    file, so an imported constant could go stale in a cached kernel); they must equal the torch module's."""
    import importlib

    torch_module = importlib.import_module(f"emphatic_rl.envs.minatar.{game}")
    kernel_module = importlib.import_module(f"emphatic_rl.envs.minatar.kernels.{game}")
    shared = [
        name
        for name in vars(kernel_module)
        if name.lstrip("_").isupper() and name in vars(torch_module) and not isinstance(vars(kernel_module)[name], type)
    ]
    assert shared, f"no shared constants found for {game}"
    for name in shared:
        assert getattr(kernel_module, name) == getattr(torch_module, name), name
