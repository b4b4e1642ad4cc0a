"""Step-by-step parity of the native batched MinAtar games with the reference ``minatar`` package (1.0.15).

How: ``N`` reference ``minatar.Environment``s (different seeds) and one native env with ``N`` copies start
from the same state and take the same actions. The reference's numpy ``RandomState`` is wrapped to record
every draw, in order, per copy; the native env gets a :class:`ReplaySource` that hands those same numbers back
(checking that the native env asks for the same kind of draw, with the same bounds, for the same copies, in
the same order). With the draws matched, observation, reward and termination must agree exactly at every step,
including the autoreset.

Both backends of the native games (``torch``, ``numba``) run every test (the ``backend`` fixture); the numba
kernels take the replayed draws as a per-copy pool and report what they drew (see :class:`ReplaySource`).

Starting states: either both reset (the reset draws are replayed too), or :func:`set_state_from_reference`
copies the reference's internal state into the native tensors after the reference has been played forward on
its own.
"""

from __future__ import annotations

from collections import deque

import minatar
import numpy as np
import pytest
import torch

from emphatic_rl.envs import make_env

# ----------------------------------------------------------------------------------------------------
# Recording the reference's draws and replaying them


class RecordingRandom:
    """Stands in for the reference RandomState; logs ``(kind, bounds, value)`` of every draw."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.RandomState(seed)
        self.log: list[tuple[str, tuple, np.ndarray | float | int]] = []

    def rand(self, *size):
        value = self.rng.rand(*size)
        self.log.append(("rand", (), np.copy(value)))  # copies: the reference edits arrays in place
        return value

    def randint(self, low, high=None, size=None):
        value = self.rng.randint(low, high, size)
        bounds = (0, low) if high is None else (low, high)
        self.log.append(("randint", bounds, np.copy(value)))
        return value


class ReplaySource:
    """A native ``RandomSource`` that returns the recorded reference draws, copy by copy.

    Torch backend: each masked draw pops the next recorded draw of each copy. Numba backend: :meth:`pool` hands
    each copy all its queued draws at once, an integer ``k`` in ``[low, high)`` encoded as the uniform number
    ``(k - low + 0.5) / (high - low)`` that the kernels decode back to ``k``; :meth:`assert_consumed` then checks
    the kernel's record of what it drew (count and bounds) against the reference's.
    """

    def __init__(self, num_envs: int) -> None:
        self.queues: list[deque] = [deque() for _ in range(num_envs)]
        self.pooled: list[list[tuple[int, int]]] | None = None  # bounds handed out by the last pool() per copy

    def _pop(self, n: int, kind: str):
        assert self.queues[n], f"copy {n}: native drew a {kind} the reference did not draw"
        recorded_kind, bounds, value = self.queues[n].popleft()
        assert recorded_kind == kind, f"copy {n}: native drew {kind}, reference drew {recorded_kind}"
        return bounds, value

    def uniform(self, shape, mask):
        out = torch.zeros(shape, dtype=torch.float64)
        for n in torch.nonzero(mask).flatten().tolist():
            _, value = self._pop(n, "rand")
            out[n] = torch.as_tensor(value, dtype=torch.float64).reshape(shape[1:])
        return out

    def integers(self, low, high, shape, mask):
        out = torch.zeros(shape, dtype=torch.int64)
        for n in torch.nonzero(mask).flatten().tolist():
            bounds, value = self._pop(n, "randint")
            native_high = int(high[n]) if isinstance(high, torch.Tensor) else high
            assert bounds == (low, native_high), f"copy {n}: randint bounds {(low, native_high)} vs {bounds}"
            out[n] = torch.as_tensor(value, dtype=torch.int64).reshape(shape[1:])
        return out

    def pool(self, num_envs, width):
        out = torch.zeros((num_envs, width), dtype=torch.float64)
        self.pooled = []
        for n, queue in enumerate(self.queues):
            bounds_used = []
            while queue:
                kind, bounds, value = queue.popleft()
                for v in np.asarray(value).flatten().tolist():
                    assert len(bounds_used) < width, f"copy {n}: the reference drew more than the pool width {width}"
                    if kind == "rand":
                        out[n, len(bounds_used)] = v
                        bounds_used.append((0, 0))
                    else:
                        low, high = bounds
                        out[n, len(bounds_used)] = (v - low + 0.5) / (high - low)
                        bounds_used.append((low, high))
            self.pooled.append(bounds_used)
        return out

    def assert_consumed(self, env=None) -> None:
        left = [(n, list(q)) for n, q in enumerate(self.queues) if q]
        assert not left, f"the reference drew numbers the native env did not use: {left[:2]}"
        if self.pooled is not None:
            for n, expected in enumerate(self.pooled):
                used = int(env.last_draws_used[n])
                drawn = [tuple(b) for b in env.last_draw_bounds[n, :used].tolist()]
                assert drawn == expected, f"copy {n}: the kernel drew {drawn}, the reference {expected}"
            self.pooled = None


# ----------------------------------------------------------------------------------------------------
# Copying reference state into the native env


def _cars(ref):
    return ref.env.cars


def set_state_from_reference(env, refs: list) -> None:
    """Copy the internal state of the reference envs ``refs[n]`` into copy ``n`` of the native ``env``."""
    for n, ref in enumerate(refs):
        game = ref.env
        env.last_action[n] = ref.last_action
        if env.game == "breakout":
            env.ball_x[n], env.ball_y[n], env.ball_dir[n] = game.ball_x, game.ball_y, game.ball_dir
            env.paddle_x[n], env.last_x[n], env.last_y[n] = game.pos, game.last_x, game.last_y
            env.strike[n] = game.strike
            assert not game.brick_map[0].any() and not game.brick_map[4:].any()
            env.bricks[n] = torch.as_tensor(game.brick_map[1:4] != 0).flatten()
        elif env.game == "freeway":
            env.chicken_y[n], env.move_timer[n], env.terminate_timer[n] = (
                game.pos,
                game.move_timer,
                game.terminate_timer,
            )
            env.car_x[n] = torch.tensor([c[0] for c in game.cars])
            env.car_timer[n] = torch.tensor([c[2] for c in game.cars])
            env.car_speed[n] = torch.tensor([c[3] for c in game.cars])
        elif env.game == "asterix":
            env.player_x[n], env.player_y[n] = game.player_x, game.player_y
            for name in (
                "spawn_speed",
                "spawn_timer",
                "move_speed",
                "move_timer",
                "ramp_timer",
                "ramp_index",
            ):
                getattr(env, name)[n] = getattr(game, name)
            for slot, entity in enumerate(game.entities):
                env.entity_alive[n, slot] = entity is not None
                if entity is not None:
                    assert entity[1] == slot + 1
                    env.entity_x[n, slot], env.entity_right[n, slot], env.entity_gold[n, slot] = (
                        entity[0],
                        bool(entity[2]),
                        bool(entity[3]),
                    )
        elif env.game == "space_invaders":
            env.cannon_x[n], env.alien_dir[n], env.move_interval[n] = (
                game.pos,
                game.alien_dir,
                game.enemy_move_interval,
            )
            env.alien_move_timer[n], env.alien_shot_timer[n] = game.alien_move_timer, game.alien_shot_timer
            env.shot_timer[n], env.ramp_index[n] = game.shot_timer, game.ramp_index
            env.aliens[n] = torch.as_tensor(game.alien_map != 0)
            env.friendly_bullets[n] = torch.as_tensor(game.f_bullet_map != 0)
            env.enemy_bullets[n] = torch.as_tensor(game.e_bullet_map != 0)
        elif env.game == "seaquest":
            scalars = {
                "oxygen": game.oxygen,
                "diver_count": game.diver_count,
                "sub_x": game.sub_x,
                "sub_y": game.sub_y,
                "sub_right": bool(game.sub_or),
                "enemy_spawn_speed": game.e_spawn_speed,
                "enemy_spawn_timer": game.e_spawn_timer,
                "diver_spawn_timer": game.d_spawn_timer,
                "move_speed": game.move_speed,
                "ramp_index": game.ramp_index,
                "shot_timer": game.shot_timer,
                "surfaced": bool(game.surface),
            }
            for name, value in scalars.items():
                getattr(env, name)[n] = value
            reference_lists = {
                "friendly_bullets": game.f_bullets,
                "enemy_bullets": game.e_bullets,
                "fish": game.e_fish,
                "subs": game.e_subs,
                "divers": game.divers,
            }
            for name, entries in reference_lists.items():
                slot_list = env.lists[name]
                assert len(entries) <= slot_list.capacity
                slot_list.length[n] = len(entries)
                for k, entry in enumerate(entries):
                    slot_list.data[n, k] = torch.tensor([int(v) for v in entry])
        else:
            raise NotImplementedError(env.game)


# ----------------------------------------------------------------------------------------------------
# The harness

GAME_OF = {
    "minatar-breakout": "breakout",
    "minatar-freeway": "freeway",
    "minatar-asterix": "asterix",
    "minatar-space-invaders": "space_invaders",
    "minatar-seaquest": "seaquest",
}


def _reference_envs(game, seeds, sticky, ramping):
    refs = []
    for seed in seeds:
        ref = minatar.Environment(game, sticky_action_prob=sticky, difficulty_ramping=ramping)
        recorder = RecordingRandom(seed)
        ref.random = recorder
        ref.env.random = recorder
        refs.append(ref)
    return refs


def _policy(name: str, obs: torch.Tensor, rng: np.random.Generator, action_set: list[int]) -> np.ndarray:
    """Indices into ``action_set``: uniform random, mixed with a game-aware choice for longer games."""
    n = obs.shape[0]
    actions = rng.integers(0, len(action_set), n)
    preferred = None  # full-set actions per copy
    if name == "track_ball":  # Breakout: follow the ball
        ball_x = obs[:, :, :, 1].any(1).float().argmax(1).numpy()
        paddle_x = obs[:, 9, :, 0].float().argmax(1).numpy()
        preferred = np.where(ball_x < paddle_x, 1, np.where(ball_x > paddle_x, 3, 0))
    elif name == "mostly_up":  # Freeway: cross often (triggers re-drawn car speeds)
        preferred = np.full(n, 2)
    elif name == "aim_fire":  # Space Invaders: get under the nearest alien column and fire
        cannon_x = obs[:, 9, :, 0].float().argmax(1).numpy()
        occupied = obs[:, :, :, 1].any(1).numpy()
        distance = np.where(occupied, np.abs(np.arange(10) - cannon_x[:, None]), 99)
        target = distance.argmin(1)
        preferred = np.where(target < cannon_x, 1, np.where(target > cannon_x, 3, 5))
    elif name == "mostly_fire":  # Space Invaders: kill aliens (triggers speed-ups and new waves)
        preferred = np.full(n, 5)
    elif name == "surface_often":  # Seaquest: mostly up (surfacing, with and without divers)
        preferred = np.full(n, 2)
    elif name == "stay_down":  # Seaquest: dive and shoot, never surface (the oxygen runs out)
        preferred = np.where(
            rng.random(n) < 0.5, 5, np.where(rng.random(n) < 0.5, 4, np.where(rng.random(n) < 0.5, 1, 3))
        )
    if preferred is not None:
        index = np.array([action_set.index(a) if a in action_set else -1 for a in preferred])
        actions = np.where((rng.random(n) < 0.7) & (index >= 0), index, actions)
    return actions


def run_parity(
    env_name: str,
    seeds: list[int],
    steps: int,
    sticky: float = 0.0,
    ramping: bool = True,
    minimal: bool = False,
    policy: str = "uniform",
    warmup_steps: int = 0,
    ref_setup=None,
    backend: str = "torch",
) -> dict[str, int]:
    """Drive reference and native side by side for ``steps`` steps; assert equality at every step.

    ``warmup_steps > 0`` or ``ref_setup``: play the references alone first (random actions) and/or edit their
    state with ``ref_setup(ref)`` (e.g. jump to a late difficulty level), then copy their state into the
    native env with :func:`set_state_from_reference`. Returns counts (episodes ended, total reward) for
    coverage checks.
    """
    game = GAME_OF[env_name]
    num_envs = len(seeds)
    if backend == "numba" and make_env(env_name, 1, backend="torch").kernel_module is None:
        pytest.skip(f"{env_name} has no compiled kernel")
    refs = _reference_envs(game, seeds, sticky, ramping)
    env = make_env(
        env_name,
        num_envs,
        sticky_action_prob=sticky,
        difficulty_ramping=ramping,
        minimal_action_set=minimal,
        backend=backend,
    )
    source = ReplaySource(num_envs)
    env.random_source = source
    action_set = refs[0].minimal_action_set() if minimal else list(range(refs[0].num_actions()))
    assert env.action_spec.n == len(action_set)
    policy_rng = np.random.default_rng(seeds[0] + 1000)

    for n, ref in enumerate(refs):
        ref.random.log.clear()
        ref.reset()
        source.queues[n].extend(ref.random.log)
    obs = env.reset()
    source.assert_consumed(env)
    if warmup_steps or ref_setup:
        warm_rng = np.random.default_rng(seeds[0] + 2000)
        for ref in refs:
            for _ in range(warmup_steps):
                _, done = ref.act(action_set[warm_rng.integers(len(action_set))])
                if done:
                    ref.reset()
            if ref_setup is not None:
                ref_setup(ref)
        set_state_from_reference(env, refs)
        obs = env._observe()
    expected = torch.as_tensor(np.stack([ref.state() for ref in refs]))
    assert torch.equal(obs, expected)

    episodes, total_reward, max_ramp = 0, 0.0, 0
    for t in range(steps):
        actions = _policy(policy, obs, policy_rng, action_set)
        final_ref, reward_ref, term_ref, next_ref = [], [], [], []
        for n, ref in enumerate(refs):
            ref.random.log.clear()
            reward, done = ref.act(action_set[actions[n]])
            final_ref.append(ref.state())
            max_ramp = max(max_ramp, ref.env.difficulty_ramp() or 0)
            if done:
                ref.reset()
            next_ref.append(ref.state())
            reward_ref.append(reward)
            term_ref.append(done)
            source.queues[n].extend(ref.random.log)
        result = env.step(torch.as_tensor(actions))
        source.assert_consumed(env)
        where = f"{env_name} step {t}"
        final_ref = torch.as_tensor(np.stack(final_ref))
        if not torch.equal(result.final_obs, final_ref):
            bad = (result.final_obs != final_ref).nonzero()[:5].tolist()
            raise AssertionError(f"{where}: observation differs at [copy, row, col, channel] {bad}")
        assert torch.equal(result.reward, torch.tensor(reward_ref, dtype=torch.float32)), where
        assert torch.equal(result.terminated, torch.tensor(term_ref)), where
        assert not result.truncated.any(), where
        assert torch.equal(result.obs, torch.as_tensor(np.stack(next_ref))), f"{where} (after autoreset)"
        assert torch.equal(env.last_action, torch.tensor([ref.last_action for ref in refs])), where
        obs = result.obs
        episodes += int(result.terminated.sum())
        total_reward += float(result.reward.sum())
    return {"episodes": episodes, "reward": total_reward, "max_ramp": max_ramp}


# ----------------------------------------------------------------------------------------------------
# Tests


@pytest.fixture(params=["torch", "numba"])
def backend(request):
    """Every parity test runs against both backends of the native games."""
    return request.param


@pytest.mark.parametrize("sticky", [0.0, 0.1])
@pytest.mark.parametrize("minimal", [False, True])
def test_breakout_parity_random_policy(sticky, minimal, backend):
    counts = run_parity(
        "minatar-breakout", backend=backend, seeds=[0, 1, 2, 3], steps=400, sticky=sticky, minimal=minimal
    )
    assert counts["episodes"] >= 4


def test_breakout_parity_long_episodes_clear_the_wall(backend):
    counts = run_parity("minatar-breakout", backend=backend, seeds=[5, 6, 7], steps=1500, policy="track_ball")
    assert counts["reward"] >= 60, counts  # at least one full wall (30 bricks) cleared and refilled somewhere


def test_breakout_parity_from_reference_state(backend):
    run_parity("minatar-breakout", backend=backend, seeds=[11, 12, 13], steps=300, warmup_steps=37, sticky=0.1)


@pytest.mark.parametrize("sticky", [0.0, 0.1])
@pytest.mark.parametrize("minimal", [False, True])
def test_freeway_parity(sticky, minimal, backend):
    counts = run_parity(
        "minatar-freeway",
        backend=backend,
        seeds=[0, 1, 2],
        steps=600,
        sticky=sticky,
        minimal=minimal,
        policy="mostly_up",
    )
    assert counts["reward"] >= 10


def test_freeway_parity_through_time_limit(backend):
    counts = run_parity("minatar-freeway", backend=backend, seeds=[3, 4], steps=2600, policy="mostly_up")
    assert counts["episodes"] == 2  # the 2500-frame limit ends the episode as a termination


def test_freeway_parity_from_reference_state(backend):
    run_parity(
        "minatar-freeway", backend=backend, seeds=[21, 22], steps=300, warmup_steps=123, sticky=0.1, policy="mostly_up"
    )


@pytest.mark.parametrize("sticky", [0.0, 0.1])
@pytest.mark.parametrize("minimal", [False, True])
def test_asterix_parity(sticky, minimal, backend):
    counts = run_parity(
        "minatar-asterix", backend=backend, seeds=[0, 1, 2, 3], steps=500, sticky=sticky, minimal=minimal
    )
    assert counts["episodes"] >= 4 and counts["reward"] >= 4, counts


@pytest.mark.parametrize("ramping", [True, False])
def test_asterix_parity_long_ramping(ramping, backend):
    # the reference's spawn/move intervals ramp every ~100 frames; long copies reach several ramps
    counts = run_parity("minatar-asterix", backend=backend, seeds=[7, 8], steps=1500, ramping=ramping)
    assert counts["episodes"] >= 10
    assert (counts["max_ramp"] >= 1) if ramping else (counts["max_ramp"] == 0), counts


@pytest.mark.parametrize("level", [(4, 2, 7, 3), (2, 1, 9, 0), (1, 1, 10, 50)])
def test_asterix_parity_late_difficulty(level, backend):
    """Start at late ramp levels (spawn interval, move interval, ramp index, ramp timer), up to the last."""

    def jump(ref):
        ref.env.spawn_speed, ref.env.move_speed, ref.env.ramp_index, ref.env.ramp_timer = level
        ref.env.spawn_timer = min(ref.env.spawn_timer, level[0])
        ref.env.move_timer = min(ref.env.move_timer, level[1])

    counts = run_parity(
        "minatar-asterix", backend=backend, seeds=[9, 10, 11], steps=300, ref_setup=jump, warmup_steps=3
    )
    assert counts["episodes"] >= 3 and counts["max_ramp"] >= level[2]


def test_asterix_parity_from_reference_state(backend):
    run_parity("minatar-asterix", backend=backend, seeds=[31, 32, 33], steps=300, warmup_steps=41, sticky=0.1)


@pytest.mark.parametrize("sticky", [0.0, 0.1])
@pytest.mark.parametrize("minimal", [False, True])
def test_space_invaders_parity(sticky, minimal, backend):
    counts = run_parity(
        "minatar-space-invaders",
        backend=backend,
        seeds=[0, 1, 2],
        steps=500,
        sticky=sticky,
        minimal=minimal,
        policy="mostly_fire",
    )
    assert counts["episodes"] >= 3 and counts["reward"] >= 10, counts


@pytest.mark.parametrize("ramping", [True, False])
def test_space_invaders_parity_long_waves(ramping, backend):
    counts = run_parity(
        "minatar-space-invaders", backend=backend, seeds=[4, 5], steps=2000, ramping=ramping, policy="mostly_fire"
    )
    assert counts["reward"] >= 300, counts


@pytest.mark.parametrize("kept", [1, 3])
@pytest.mark.parametrize("ramping", [True, False])
@pytest.mark.parametrize("interval", [12, 7])
def test_space_invaders_parity_last_aliens_and_new_waves(ramping, interval, kept, backend):
    """Few aliens left (they speed up, to one move per frame for the last), a wave cleared at once by a bullet
    about to hit the last alien, a new wave at the ramped speed, the ramp's end (interval 7 -> 6 -> stays 6)."""

    def thin_out(ref):
        game = ref.env
        alien_rows, alien_cols = np.nonzero(game.alien_map)
        keep = ref.random.rng.permutation(len(alien_rows))[: kept - 1]
        game.alien_map[:] = 0
        game.alien_map[alien_rows[keep], alien_cols[keep]] = 1
        game.alien_map[5, game.pos] = 1
        game.f_bullet_map[6, game.pos] = 1
        game.alien_move_timer = max(game.alien_move_timer, 2)
        game.enemy_move_interval = interval

    counts = run_parity(
        "minatar-space-invaders",
        backend=backend,
        seeds=[6, 7, 8],
        steps=400,
        ramping=ramping,
        policy="aim_fire",
        warmup_steps=1,
        ref_setup=thin_out,
    )
    if kept == 1:
        assert (counts["max_ramp"] >= 1) if ramping else (counts["max_ramp"] == 0), counts


# ----------------------------------------------------------------------------------------------------
# Seaquest


@pytest.mark.parametrize("sticky", [0.0, 0.1])
@pytest.mark.parametrize("minimal", [False, True])
def test_seaquest_parity_random_policy(sticky, minimal, backend):
    counts = run_parity(
        "minatar-seaquest", backend=backend, seeds=[0, 1, 2, 3], steps=400, sticky=sticky, minimal=minimal
    )
    assert counts["episodes"] >= 4, counts


def test_seaquest_parity_oxygen_runs_out(backend):
    def low_oxygen(ref):
        ref.env.oxygen = 30
        ref.env.sub_y = 4
        ref.env.surface = False

    counts = run_parity(
        "minatar-seaquest",
        backend=backend,
        seeds=[40, 41, 42, 43],
        steps=200,
        policy="stay_down",
        warmup_steps=2,
        ref_setup=low_oxygen,
    )
    assert counts["episodes"] >= 4, counts


@pytest.mark.parametrize("divers", [0, 1, 3, 6])
def test_seaquest_parity_surfacing(divers, backend):
    """Surfacing with no divers (terminal), some (one leaves, oxygen refilled, ramp) or 6 (bonus, count to -1)."""

    def dive_with_divers(ref):
        ref.env.diver_count = divers
        ref.env.sub_y = 2
        ref.env.surface = False
        ref.env.oxygen = 150

    counts = run_parity(
        "minatar-seaquest",
        backend=backend,
        seeds=[50, 51, 52, 53],
        steps=300,
        policy="surface_often",
        warmup_steps=1,
        ref_setup=dive_with_divers,
    )
    if divers == 0:
        assert counts["episodes"] >= 4, counts
    else:
        assert counts["max_ramp"] >= 1, counts
    if divers == 6:
        assert counts["reward"] >= 4 * 7, counts  # the full-crew bonus oxygen * 10 // 200 (7 at oxygen 150)


@pytest.mark.parametrize("ramping", [True, False])
def test_seaquest_parity_late_difficulty(ramping, backend):
    """The fastest ramp level: an enemy spawns every frame (stacked enemies, long lists, many enemy bullets)."""

    def fastest(ref):
        ref.env.e_spawn_speed, ref.env.move_speed, ref.env.ramp_index = 1, 2, 19
        ref.env.e_spawn_timer = 0
        ref.env.diver_count = 5
        ref.env.oxygen = 200

    counts = run_parity(
        "minatar-seaquest",
        backend=backend,
        seeds=[60, 61, 62],
        steps=300,
        ramping=ramping,
        warmup_steps=3,
        ref_setup=fastest,
    )
    assert counts["episodes"] >= 3, counts


def test_seaquest_parity_from_reference_state(backend):
    run_parity("minatar-seaquest", backend=backend, seeds=[70, 71, 72], steps=400, warmup_steps=57, sticky=0.1)
