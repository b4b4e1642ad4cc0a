"""Puddle World (Graves et al. 2023; docs/environments.md): rewards at known points, segment distance, noise,
termination.

The env's tests run on both backends (``backend`` fixture: the compiled numba kernel, the CPU default, and the batched
torch operations), and the two are checked against each other.
"""

from __future__ import annotations

import math

import pytest
import torch

from emphatic_rl.envs import make_env
from emphatic_rl.envs.puddle_world import GaussianPuddleWorld, PuddleWorld, distance_to_segment


@pytest.fixture(params=["numba", "torch"])
def backend(request) -> str:
    return request.param


def test_distance_to_segment_known_points():
    start, end = torch.tensor([0.1, 0.75]), torch.tensor([0.45, 0.75])
    points = torch.tensor(
        [
            [0.3, 0.75],  # on the segment
            [0.3, 0.80],  # above its middle
            [0.0, 0.75],  # beyond the start, on the line
            [0.45 + 0.03, 0.75 + 0.04],  # beyond the end, off the line: distance to the end point = 0.05
            [0.1, 0.65],  # below the start point
        ]
    )
    expected = torch.tensor([0.0, 0.05, 0.1, 0.05, 0.1])
    torch.testing.assert_close(distance_to_segment(points, start, end), expected, rtol=0, atol=1e-6)


def test_reward_at_known_points():
    env = PuddleWorld(num_envs=1)
    cases = [
        ((0.2, 0.2), -1.0),  # far from both puddles
        ((0.3, 0.75), -1.0 - 40.0),  # on puddle 1's segment only (0.15 from puddle 2)
        ((0.45, 0.6), -1.0 - 40.0),  # on puddle 2's segment only
        ((0.45, 0.75), -1.0 - 80.0),  # where the segments cross: both puddles at full depth
        ((0.3, 0.80), -1.0 - 400.0 * 0.05),  # half-way into puddle 1
        ((0.3, 0.85), -1.0),  # on puddle 1's rim: no penalty
    ]
    for (x, y), expected in cases:
        penalty = env.puddle_penalty(torch.tensor([[x, y]]))
        torch.testing.assert_close(-1.0 - penalty, torch.tensor([expected]), rtol=0, atol=1e-3)


def test_step_reward_uses_the_new_position_and_goal_is_minus_one(backend):
    env = make_env("puddle-world", num_envs=3).set_backend(backend)
    env.reset(seed=0)
    # Move right from (0.22, 0.75) into the puddle centre line; up into the goal from (0.97, 0.92); far away.
    env.set_state(torch.tensor([[0.25, 0.75], [0.97, 0.92], [0.1, 0.1]]))
    result = env.step(torch.tensor([2, 0, 0]))
    assert result.terminated.tolist() == [False, True, False]
    assert result.reward[1].item() == -1.0
    assert result.reward[2].item() == -1.0
    # at (0.30 +- noise, 0.75 +- noise): penalty 400 * (0.1 - |dy|) with |dy| ~ 0.01
    assert -41.0 <= result.reward[0].item() <= -1.0 - 400 * (0.1 - 0.04)
    expected = -1.0 - env.puddle_penalty(result.final_obs[0:1])
    torch.testing.assert_close(result.reward[0:1], expected)


def test_goal_needs_both_coordinates(backend):
    env = make_env("puddle-world", num_envs=4).set_backend(backend)
    env.reset(seed=1)
    # x far in the goal column but y too low; y in the goal row but x too low; both at the corner; the corner.
    env.set_state(torch.tensor([[0.99, 0.5], [0.5, 0.99], [0.99, 0.99], [1.0, 1.0]]))
    result = env.step(torch.tensor([2, 0, 2, 0]))  # right, up, right, up: clipped at 1
    assert result.terminated.tolist() == [False, False, True, True]
    assert bool((result.final_obs[2:] >= 0.95).all())
    # the ended copies restart inside puddle 1
    assert bool(((result.obs[2:, 0] >= 0.3) & (result.obs[2:, 0] < 0.4)).all())
    assert bool(((result.obs[2:, 1] >= 0.7) & (result.obs[2:, 1] < 0.8)).all())


def test_moves_and_noise_statistics(backend):
    n = 20000
    env = make_env("puddle-world", num_envs=n).set_backend(backend)
    env.reset(seed=2)
    start = torch.tensor([0.5, 0.3])
    moves = {0: (0.0, 0.05), 1: (0.0, -0.05), 2: (0.05, 0.0), 3: (-0.05, 0.0)}
    for action, move in moves.items():
        env.set_state(start)
        result = env.step(torch.full((n,), action))
        displacement = result.final_obs - start
        # mean: the move (standard error 0.01 / sqrt(20000) = 7e-5); std: 0.01 on both axes
        torch.testing.assert_close(displacement.mean(0), torch.tensor(move), rtol=0, atol=4e-4)
        torch.testing.assert_close(displacement.std(0), torch.tensor([0.01, 0.01]), rtol=0.03, atol=0)
        # the two coordinates' noises are independent
        assert abs(torch.corrcoef(displacement.T)[0, 1].item()) < 0.03


def test_clipped_to_unit_square(backend):
    env = make_env("puddle-world", num_envs=1000).set_backend(backend)
    env.reset(seed=3)
    env.set_state(torch.tensor([0.0, 0.01]))
    result = env.step(torch.full((1000,), 3))  # left, into the wall
    assert bool((result.final_obs >= 0).all()) and bool((result.final_obs <= 1).all())
    assert (result.final_obs[:, 0] == 0.0).float().mean() > 0.99  # 0 - 0.05 + noise is always clipped to 0


def test_start_distribution(backend):
    env = make_env("puddle-world", num_envs=10000).set_backend(backend)
    obs = env.reset(seed=4)
    assert bool(((obs[:, 0] >= 0.3) & (obs[:, 0] < 0.4) & (obs[:, 1] >= 0.7) & (obs[:, 1] < 0.8)).all())
    torch.testing.assert_close(obs.mean(0), torch.tensor([0.35, 0.75]), rtol=0, atol=0.003)
    torch.testing.assert_close(obs.std(0), torch.tensor([0.1 / math.sqrt(12)] * 2), rtol=0.03, atol=0)


def test_time_limit_default_and_none(backend):
    env = make_env("puddle-world", num_envs=2).set_backend(backend)
    assert env.max_episode_steps == 1000
    env = make_env("puddle-world", num_envs=2, max_episode_steps=5).set_backend(backend)
    env.reset(seed=0)
    env.set_state(torch.tensor([0.1, 0.1]))
    truncated = [env.step(torch.tensor([1, 3])).truncated.tolist() for _ in range(5)]
    assert truncated == [[False, False]] * 4 + [[True, True]]
    env = make_env("puddle-world", num_envs=2, max_episode_steps=None).set_backend(backend)
    env.reset(seed=0)
    for _ in range(1100):
        result = env.step(torch.tensor([1, 3]))  # down, left: away from the goal
        assert not bool(result.truncated.any() or result.terminated.any())


def test_state_dict_round_trip_and_bad_input(backend):
    env = make_env("puddle-world", num_envs=4, max_episode_steps=20).set_backend(backend)
    env.reset(seed=5)
    for _ in range(7):
        env.step(torch.randint(0, 4, (4,)))
    saved = env.state_dict()
    actions = torch.randint(0, 4, (30, 4))
    first = [env.step(a) for a in actions]
    restored = make_env("puddle-world", num_envs=4, max_episode_steps=20).set_backend(backend)
    restored.load_state_dict(saved)
    for a, r in zip(actions, first, strict=True):
        for x, y in zip(restored.step(a), r, strict=True):
            assert torch.equal(x, y)
    with pytest.raises(ValueError, match=r"action 4 is outside the action set \{0, ..., 3\}"):
        env.step(torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match=r"action has shape \(4, 1\), expected \(4,\)"):
        env.step(torch.zeros(4, 1, dtype=torch.int64))


def test_backends_agree_step_for_step():
    envs = [make_env("puddle-world", num_envs=64, max_episode_steps=25).set_backend(b) for b in ("numba", "torch")]
    for env in envs:
        env.reset(seed=3)
    generator = torch.Generator().manual_seed(0)
    ended = 0
    for _ in range(80):
        action = torch.randint(0, 4, (64,), generator=generator)
        first, second = (env.step(action) for env in envs)
        # float32 in the same order from the same draws: positions equal; rewards within an ulp (the distance norm)
        assert torch.equal(first.obs, second.obs) and torch.equal(first.final_obs, second.final_obs)
        torch.testing.assert_close(first.reward, second.reward, rtol=0, atol=1e-5)
        assert torch.equal(first.terminated, second.terminated) and torch.equal(first.truncated, second.truncated)
        ended += int((first.terminated | first.truncated).sum())
    assert ended >= 64 and torch.equal(envs[0].position, envs[1].position)
    assert torch.equal(envs[0].generator.get_state(), envs[1].generator.get_state())


def test_numba_backend_rejects_a_bad_action_before_drawing():
    env = make_env("puddle-world", num_envs=3, check_actions=False)
    assert env.backend == "numba"
    env.reset(seed=0)
    position, generator_state = env.position.clone(), env.generator.get_state()
    with pytest.raises(ValueError, match=r"action -2 is outside the action set \{0, ..., 3\}"):
        env.step(torch.tensor([0, -2, 1]))
    assert torch.equal(env.position, position) and torch.equal(env.generator.get_state(), generator_state)
    kept = env.step(torch.tensor([0, 1, 2], dtype=torch.int16))
    copies = [t.clone() for t in kept]
    env.step(torch.tensor([3, 3, 3]))
    assert all(torch.equal(a, b) for a, b in zip(kept, copies, strict=True))  # fresh tensors every step


# ---------------------------------------------------------------- the earlier gym_puddle world (Gaussian puddles)


def _gaussian_reward(x: float, y: float) -> float:
    """The Gaussian-puddle reward written out with ``math`` (an independent check of the batched version)."""
    penalty = 0.0
    for cx, cy, wx, wy in ((0.3, 0.6, 0.1, 0.03), (0.4, 0.5, 0.03, 0.1), (0.8, 0.9, 0.03, 0.1)):
        gx = math.exp(-((x - cx) ** 2) / (2 * wx**2)) / (wx * math.sqrt(2 * math.pi))
        gy = math.exp(-((y - cy) ** 2) / (2 * wy**2)) / (wy * math.sqrt(2 * math.pi))
        penalty += 2.0 * gx * gy
    return -1.0 - penalty


def test_gaussian_puddle_world_rules():
    env = GaussianPuddleWorld(num_envs=5, max_episode_steps=None)
    assert torch.equal(env.reset(seed=0), torch.tensor([[0.2, 0.4]] * 5))
    assert env.action_spec.n == 5
    # each action moves 0.05 along its axis, plus noise of at most 0.025 per coordinate
    result = env.step(torch.arange(5))
    expected = torch.tensor([[0.15, 0.4], [0.25, 0.4], [0.2, 0.35], [0.2, 0.45], [0.2, 0.4]])
    assert (result.obs - expected).abs().max() <= 0.025 + 1e-6
    for n in range(5):
        x, y = result.obs[n].tolist()
        assert result.reward[n].item() == pytest.approx(_gaussian_reward(x, y), rel=1e-5)
    assert not result.terminated.any()


def test_gaussian_puddle_rewards_and_goal():
    env = GaussianPuddleWorld(num_envs=1)
    # about -107 at the first puddle's centre (2 / (2 pi 0.1 0.03) = 106.1, plus a little of the second puddle)
    assert env.puddle_penalty(torch.tensor([[0.3, 0.6]])).item() == pytest.approx(-1.0 - _gaussian_reward(0.3, 0.6))
    assert -1.0 - _gaussian_reward(0.3, 0.6) == pytest.approx(106.35, abs=0.05)
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(50, 2, generator=generator)
    penalties = env.puddle_penalty(points)
    for point, penalty in zip(points.tolist(), penalties.tolist(), strict=True):
        assert -1.0 - penalty == pytest.approx(_gaussian_reward(*point), rel=1e-5, abs=1e-6)
    # the goal: L1 distance to (1, 1) below 0.1 after the move
    env.position = torch.tensor([[0.93, 0.97]])
    result = env.step(torch.tensor([4]))  # no move; noise of at most 0.025 keeps the L1 distance below 0.1
    assert result.terminated.item()
    env.position = torch.tensor([[0.8, 0.8]])
    assert not env.step(torch.tensor([4])).terminated.item()


def test_gaussian_puddle_world_runs_with_the_ace_agents(tmp_path):
    from emphatic_rl.config import TrainConfig
    from emphatic_rl.train import train

    config = TrainConfig(
        agent="ace-direct",
        env="puddle-world-gaussian",
        steps=200,
        population_size=2,
        eval_every=100,
        eval_episodes=2,
        eval_max_steps=50,
        progress=False,
        checkpoint_every=0,
        log_every=100,
    )
    result = train(config, tmp_path / "run")
    assert torch.isfinite(result.final_eval_return).all()
