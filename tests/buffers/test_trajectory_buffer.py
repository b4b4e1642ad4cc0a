"""TrajectoryBuffer against a naive list-of-transitions reference model (hypothesis property tests)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emphatic_rl.buffers import FieldSpec, TrajectoryBuffer, TransitionBatch, pack_bool, unpack_bool
from emphatic_rl.envs.base import BoxSpec, DiscreteSpec, TensorEnv

FIELDS = ("obs", "action", "reward", "terminated", "truncated", "next_obs", "behaviour_log_prob", "interest")
EXTRAS = {"logits": FieldSpec((2,), torch.float32), "flag": FieldSpec((), torch.bool)}


@dataclass
class Scenario:
    """A buffer fed with random steps and the naive reference: one dict of ``[N, ...]`` tensors per time."""

    buffer: TrajectoryBuffer
    reference: list[dict[str, torch.Tensor]]

    def expected(self, time_index: torch.Tensor, stream_index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reference fields at the given (time, stream) pairs, stacked with the indices' shape."""
        flat_t, flat_n = time_index.reshape(-1).tolist(), stream_index.reshape(-1).tolist()
        out = {}
        for name in self.reference[0]:
            values = torch.stack([self.reference[t][name][n] for t, n in zip(flat_t, flat_n, strict=True)])
            out[name] = values.reshape(*time_index.shape, *values.shape[1:])
        return out


def assert_matches_reference(scenario: Scenario, batch: TransitionBatch) -> None:
    expected = scenario.expected(batch.time_index, batch.stream_index)
    for name in FIELDS:
        assert torch.equal(getattr(batch, name), expected[name]), name
    for name in batch.extras:
        assert torch.equal(batch.extras[name], expected[name]), name


def run_scenario(
    capacity: int,
    num_streams: int,
    steps: int,
    end_prob: float,
    seed: int,
    bool_obs: bool = False,
    final_obs_slots: int | None = None,
    with_extras: bool = False,
    ramp: bool = False,
) -> Scenario:
    """Feed ``steps`` rows like a same-step-autoreset env: ``next obs = reset obs where done else final obs``.

    Episodes end with probability ``end_prob`` per step and stream (rising linearly from 0 to ``end_prob``
    when ``ramp``, so the final-obs store must grow after the ring has wrapped).
    """
    rng = np.random.default_rng(seed)
    obs_shape = (4, 9) if bool_obs else (3,)
    counter = iter(range(10**9))

    def new_obs() -> torch.Tensor:
        if bool_obs:  # 36 random bits: a wrongly paired observation is caught with overwhelming probability
            return torch.from_numpy(rng.random((num_streams, *obs_shape)) < 0.5)
        # unique values per observation, so any mispairing of obs and next_obs is caught
        ids = torch.tensor([next(counter) for _ in range(num_streams)], dtype=torch.float32)
        return ids[:, None] + torch.tensor([0.0, 0.25, 0.5])

    buffer = TrajectoryBuffer(
        capacity,
        num_streams,
        obs_shape,
        torch.bool if bool_obs else torch.float32,
        device="cpu",
        extras=EXTRAS if with_extras else None,
        final_obs_slots=final_obs_slots,
    )
    reference = []
    current = new_obs()
    for t in range(steps):
        u = rng.random(num_streams)
        p_end = end_prob * (t + 1) / steps if ramp else end_prob
        step = {
            "obs": current,
            "action": torch.from_numpy(rng.integers(0, 5, num_streams)),
            "reward": torch.from_numpy(rng.normal(size=num_streams).astype(np.float32)),
            "terminated": torch.from_numpy(u < p_end / 2),
            "truncated": torch.from_numpy((u >= p_end / 2) & (u < p_end)),
            "behaviour_log_prob": torch.from_numpy(-rng.random(num_streams).astype(np.float32)),
            "interest": torch.from_numpy(rng.random(num_streams).astype(np.float32)),
        }
        final_obs = new_obs()
        extras = {}
        if with_extras:
            extras = {
                "logits": torch.from_numpy(rng.normal(size=(num_streams, 2)).astype(np.float32)),
                "flag": torch.from_numpy(rng.random(num_streams) < 0.5),
            }
        buffer.add(**step, final_obs=final_obs, **extras)
        reference.append({**step, "next_obs": final_obs, **extras})
        done = step["terminated"] | step["truncated"]
        reset_obs = new_obs()
        current = torch.where(done.view(-1, *([1] * len(obs_shape))), reset_obs, final_obs)
    return Scenario(buffer, reference)


scenario_params = dict(
    capacity=st.integers(1, 12),
    num_streams=st.integers(1, 4),
    steps=st.integers(1, 60),
    end_prob=st.sampled_from([0.0, 0.2, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
    bool_obs=st.booleans(),
    final_obs_slots=st.sampled_from([None, 1, 3]),
    ramp=st.booleans(),
)


# ---------------------------------------------------------------------------------------------- transitions
@settings(max_examples=80, deadline=None)
@given(**scenario_params)
def test_every_stored_transition_equals_the_reference(
    capacity, num_streams, steps, end_prob, seed, bool_obs, final_obs_slots, ramp
):
    scenario = run_scenario(capacity, num_streams, steps, end_prob, seed, bool_obs, final_obs_slots, ramp=ramp)
    buffer = scenario.buffer
    assert len(buffer) == min(steps, capacity)
    assert buffer.total_steps == steps
    assert buffer.total_transitions == steps * num_streams
    # every stored (time, stream), read through the public index
    times = torch.arange(steps - len(buffer), steps).repeat_interleave(num_streams)
    streams = torch.arange(num_streams).repeat(len(buffer))
    batch = buffer.transitions_at(times, streams)
    assert torch.equal(batch.time_index, times) and torch.equal(batch.stream_index, streams)
    assert_matches_reference(scenario, batch)
    # latest() is the last added row of every stream, with that step's final obs
    latest = buffer.latest()
    assert torch.equal(latest.time_index, torch.full((num_streams,), steps - 1))
    assert_matches_reference(scenario, latest)
    # sampled transitions are stored transitions, paired correctly
    sample = buffer.sample_transitions(64, torch.Generator().manual_seed(seed))
    assert sample.obs.shape[0] == 64
    assert bool((sample.time_index >= steps - len(buffer)).all() and (sample.time_index < steps).all())
    assert_matches_reference(scenario, sample)
    # the side store of final observations stays within its documented bound
    live_ends = int(sum(int((r["terminated"] | r["truncated"]).sum()) for r in scenario.reference[-len(buffer) :]))
    assert buffer._final_slots <= capacity * num_streams
    assert buffer._final_slots >= min(live_ends, capacity * num_streams)


def test_wraparound_many_times_keeps_pairs_consistent():
    scenario = run_scenario(capacity=5, num_streams=3, steps=503, end_prob=0.3, seed=7, final_obs_slots=1)
    buffer = scenario.buffer
    sample = buffer.sample_transitions(4096, torch.Generator().manual_seed(1))
    assert_matches_reference(scenario, sample)
    # every stored time appears: uniform coverage of the 5 x 3 valid cells
    cells = (sample.time_index - buffer.oldest_time) * 3 + sample.stream_index
    counts = torch.bincount(cells, minlength=15)
    assert counts.numel() == 15 and int(counts.min()) > 4096 / 15 * 0.7


def test_final_obs_store_grows_after_wraparound():
    # few episode ends while the ring wraps, then many: the store grows while its live slots sit mid-ring
    scenario = run_scenario(capacity=50, num_streams=2, steps=400, end_prob=1.0, seed=8, final_obs_slots=1, ramp=True)
    buffer = scenario.buffer
    times = torch.arange(buffer.oldest_time, buffer.total_steps).repeat_interleave(2)
    assert_matches_reference(scenario, buffer.transitions_at(times, torch.arange(2).repeat(len(buffer))))


def test_sample_transitions_is_uniform_over_stored_cells():
    scenario = run_scenario(capacity=4, num_streams=3, steps=10, end_prob=0.5, seed=3)
    buffer = scenario.buffer
    sample = buffer.sample_transitions(60_000, torch.Generator().manual_seed(0))
    cells = (sample.time_index - buffer.oldest_time) * 3 + sample.stream_index
    counts = torch.bincount(cells, minlength=12).double()
    expected = 60_000 / 12
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 40.0  # 11 degrees of freedom: P(chi2 > 40) ~ 3e-5


def test_grouped_sampling_stays_in_each_group():
    scenario = run_scenario(capacity=6, num_streams=6, steps=15, end_prob=0.3, seed=12)
    batch = scenario.buffer.sample_transitions(2000, torch.Generator().manual_seed(0), num_groups=3)
    assert batch.obs.shape == (3, 2000, 3) and batch.time_index.shape == (3, 2000)
    group_of_stream = batch.stream_index // 2
    assert torch.equal(group_of_stream, torch.arange(3).unsqueeze(1).expand(3, 2000))
    # uniform within a group: both streams and all 6 stored times of each group appear
    assert torch.bincount(batch.stream_index.reshape(-1), minlength=6).min() > 800
    assert set(batch.time_index.reshape(-1).tolist()) == set(range(9, 15))
    assert_matches_reference(scenario, batch)
    for bad in (4, 0, True):
        with pytest.raises(ValueError, match="num_groups must be a positive divisor of num_streams=6"):
            scenario.buffer.sample_transitions(8, torch.Generator(), num_groups=bad)


def test_extras_round_trip_and_attribute_access():
    scenario = run_scenario(capacity=4, num_streams=2, steps=9, end_prob=0.3, seed=11, with_extras=True)
    batch = scenario.buffer.sample_transitions(32, torch.Generator().manual_seed(0))
    assert set(batch.extras) == {"logits", "flag"}
    assert batch.logits.shape == (32, 2) and batch.logits.dtype == torch.float32
    assert batch.flag.shape == (32,) and batch.flag.dtype == torch.bool
    assert_matches_reference(scenario, batch)
    sequences = scenario.buffer.sample_sequences(8, 2, torch.Generator().manual_seed(0), cross_episodes=True)
    assert sequences.logits.shape == (8, 2, 2)
    assert_matches_reference(scenario, sequences)
    with pytest.raises(AttributeError):
        _ = batch.no_such_field
    moved = batch.to("cpu")
    assert torch.equal(moved.logits, batch.logits) and set(moved.as_dict()) == set(FIELDS) | {
        "time_index",
        "stream_index",
        "logits",
        "flag",
    }


def test_default_behaviour_log_prob_and_interest():
    buffer = TrajectoryBuffer(3, 2, (1,), torch.float32)
    zeros = torch.zeros(2, dtype=torch.bool)
    buffer.add(torch.zeros(2, 1), torch.zeros(2, dtype=torch.int64), torch.zeros(2), zeros, zeros, torch.ones(2, 1))
    latest = buffer.latest()
    assert torch.equal(latest.behaviour_log_prob, torch.zeros(2))
    assert torch.equal(latest.interest, torch.ones(2))
    assert torch.equal(latest.next_obs, torch.ones(2, 1))


# ---------------------------------------------------------------------------------------------- sequences
def valid_starts(scenario: Scenario, length: int, cross_episodes: bool) -> set[tuple[int, int]]:
    """Reference: every (start time, stream) whose run of ``length`` is stored and episode-local."""
    buffer, ref = scenario.buffer, scenario.reference
    out = set()
    for start in range(buffer.oldest_time, buffer.total_steps - length + 1):
        for n in range(buffer.num_streams):
            ends = [bool(ref[t]["terminated"][n] or ref[t]["truncated"][n]) for t in range(start, start + length - 1)]
            if cross_episodes or not any(ends):
                out.add((start, n))
    return out


@settings(max_examples=60, deadline=None)
@given(**scenario_params, length=st.integers(1, 8), cross_episodes=st.booleans())
def test_sequences_are_contiguous_episode_local_and_match_the_reference(
    capacity, num_streams, steps, end_prob, seed, bool_obs, final_obs_slots, ramp, length, cross_episodes
):
    scenario = run_scenario(capacity, num_streams, steps, end_prob, seed, bool_obs, final_obs_slots, ramp=ramp)
    buffer = scenario.buffer
    generator = torch.Generator().manual_seed(seed)
    if length > len(buffer):
        with pytest.raises(ValueError, match="length"):
            buffer.sample_sequences(4, length, generator, cross_episodes=cross_episodes)
        return
    allowed = valid_starts(scenario, length, cross_episodes)
    if not allowed:
        with pytest.raises(ValueError, match="no run of length"):
            buffer.sample_sequences(4, length, generator, cross_episodes=cross_episodes)
        return
    batch = buffer.sample_sequences(16, length, generator, cross_episodes=cross_episodes)
    assert batch.obs.shape[:2] == (16, length) and batch.reward.shape == (16, length)
    # contiguous in time, one stream, never across the ring seam
    assert torch.equal(batch.time_index - batch.time_index[:, :1], torch.arange(length).expand(16, -1))
    assert bool((batch.stream_index == batch.stream_index[:, :1]).all())
    assert bool((batch.time_index >= buffer.oldest_time).all() and (batch.time_index < buffer.total_steps).all())
    if not cross_episodes:  # an episode end may only be the last step
        assert not bool(batch.done[:, :-1].any())
    starts = set(zip(batch.time_index[:, 0].tolist(), batch.stream_index[:, 0].tolist(), strict=True))
    assert starts <= allowed
    assert_matches_reference(scenario, batch)
    # within an episode, next_obs of step k is obs of step k + 1
    if not cross_episodes and length > 1:
        assert torch.equal(batch.next_obs[:, :-1], batch.obs[:, 1:])


@pytest.mark.parametrize(
    ("capacity", "num_streams", "end_prob", "length", "fallback"),
    [(12, 3, 0.15, 4, False), (40, 4, 0.85, 3, True)],
)
def test_sequence_starts_are_uniform_over_valid_runs(capacity, num_streams, end_prob, length, fallback):
    scenario = run_scenario(capacity, num_streams, steps=40, end_prob=end_prob, seed=4)
    allowed = sorted(valid_starts(scenario, length, cross_episodes=False))
    assert len(allowed) >= 3
    acceptance = len(allowed) / ((len(scenario.buffer) - length + 1) * num_streams)
    # under 5% of candidates valid: the sampler gives up on rejection and enumerates (the exact fallback)
    assert (acceptance < 0.05) == fallback
    batch = scenario.buffer.sample_sequences(30_000, length, torch.Generator().manual_seed(0))
    starts = list(zip(batch.time_index[:, 0].tolist(), batch.stream_index[:, 0].tolist(), strict=True))
    counts = np.array([starts.count(s) for s in allowed], dtype=np.float64)
    assert counts.sum() == 30_000  # nothing outside the valid set
    expected = 30_000 / len(allowed)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = len(allowed) - 1
    assert chi2 < dof + 6 * math.sqrt(2 * dof)  # ~6 sigma of the chi-square distribution


def test_sampling_is_reproducible_given_the_generator():
    scenario = run_scenario(capacity=20, num_streams=4, steps=50, end_prob=0.2, seed=2)
    buffer = scenario.buffer
    for draw in (
        lambda g: buffer.sample_transitions(100, g),
        lambda g: buffer.sample_sequences(50, 3, g),
        lambda g: buffer.sample_sequences(50, 3, g, cross_episodes=True),
    ):
        first, second = draw(torch.Generator().manual_seed(9)), draw(torch.Generator().manual_seed(9))
        other = draw(torch.Generator().manual_seed(10))
        assert torch.equal(first.time_index, second.time_index) and torch.equal(first.obs, second.obs)
        assert not torch.equal(first.time_index, other.time_index)


# ---------------------------------------------------------------------------------------------- state dict
def test_state_dict_round_trip_is_exact():
    scenario = run_scenario(capacity=6, num_streams=3, steps=17, end_prob=0.4, seed=4, bool_obs=True, final_obs_slots=1)
    buffer = scenario.buffer
    saved = io.BytesIO()
    torch.save(buffer.state_dict(), saved)
    saved.seek(0)
    restored = TrajectoryBuffer(6, 3, (4, 9), torch.bool, final_obs_slots=1)
    restored.load_state_dict(torch.load(saved))
    assert len(restored) == len(buffer) and restored.total_steps == buffer.total_steps
    for draw in (lambda b, g: b.sample_transitions(50, g), lambda b, g: b.sample_sequences(20, 2, g)):
        a, b = (
            draw(buffer, torch.Generator().manual_seed(3)),
            draw(restored, torch.Generator().manual_seed(3)),
        )
        for name, value in a.as_dict().items():
            assert torch.equal(value, b.as_dict()[name]), name
    # both continue identically (including growth of the final-obs store)
    rng = np.random.default_rng(0)
    for _ in range(12):
        step = dict(
            obs=torch.from_numpy(rng.random((3, 4, 9)) < 0.5),
            action=torch.zeros(3, dtype=torch.int64),
            reward=torch.ones(3),
            terminated=torch.from_numpy(rng.random(3) < 0.5),
            truncated=torch.zeros(3, dtype=torch.bool),
            final_obs=torch.from_numpy(rng.random((3, 4, 9)) < 0.5),
        )
        buffer.add(**step)
        restored.add(**step)
    state_a, state_b = buffer.state_dict(), restored.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        if isinstance(state_a[key], torch.Tensor):
            assert torch.equal(state_a[key], state_b[key]), key
        else:
            assert state_a[key] == state_b[key], key


def test_load_state_dict_rejects_a_different_configuration():
    state = TrajectoryBuffer(4, 2, (3,), torch.float32).state_dict()
    with pytest.raises(ValueError, match="configured"):
        TrajectoryBuffer(5, 2, (3,), torch.float32).load_state_dict(state)


# ---------------------------------------------------------------------------------------------- bit packing
@settings(max_examples=50, deadline=None)
@given(
    shape=st.sampled_from([(10, 10, 4), (10, 10, 7), (10, 10, 10), (3,), (1,), (2, 3, 5), (8,)]),
    batch=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_bool_packing_round_trip(shape, batch, seed):
    generator = torch.Generator().manual_seed(seed)
    bits = torch.rand((batch, *shape), generator=generator) < 0.5
    packed = pack_bool(bits, shape)
    assert packed.dtype == torch.uint8 and packed.shape == (batch, math.ceil(math.prod(shape) / 8))
    assert torch.equal(unpack_bool(packed, shape), bits)


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_both_packing_paths_agree(monkeypatch, byteorder):
    import sys

    monkeypatch.setattr(sys, "byteorder", byteorder)  # "big" exercises the portable shift-and-sum path
    bits = torch.rand((6, 10, 10, 7), generator=torch.Generator().manual_seed(1)) < 0.5
    packed = pack_bool(bits, (10, 10, 7))
    weights = 2 ** torch.arange(8)
    padded = torch.nn.functional.pad(bits.reshape(6, -1).long(), (0, 4)).view(6, -1, 8)
    assert torch.equal(packed, (padded * weights).sum(-1).to(torch.uint8))


@pytest.mark.parametrize("channels", [4, 7])
def test_bool_obs_are_stored_bit_packed(channels):
    obs_shape = (10, 10, channels)
    capacity, num_streams = 64, 8
    buffer = TrajectoryBuffer(capacity, num_streams, obs_shape, torch.bool)
    cells_bytes = math.ceil(math.prod(obs_shape) / 8)
    assert buffer.bytes_per_obs == cells_bytes
    memory = buffer.memory_bytes()
    assert memory["obs"] == capacity * num_streams * cells_bytes
    # the final-obs side store adds only its slots (4 N by default) and the newest row's N slots
    assert memory["final_obs_store"] <= (4 * num_streams + num_streams) * cells_bytes
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand((num_streams, *obs_shape), generator=generator) < 0.3 for _ in range(capacity + 1)]
    never = torch.zeros(num_streams, dtype=torch.bool)
    for t in range(capacity):
        buffer.add(
            images[t],
            torch.zeros(num_streams, dtype=torch.int64),
            torch.zeros(num_streams),
            never,
            never,
            images[t + 1],
        )
    batch = buffer.sample_transitions(32, generator)
    assert batch.obs.dtype == torch.bool and batch.obs.shape == (32, *obs_shape)
    stacked = torch.stack(images)  # [T + 1, N, *obs_shape]
    assert torch.equal(batch.obs, stacked[batch.time_index, batch.stream_index])
    assert torch.equal(batch.next_obs, stacked[batch.time_index + 1, batch.stream_index])
    # with no episode end, the side store never grew
    assert buffer.memory_bytes()["final_obs_store"] == memory["final_obs_store"]


def test_final_obs_store_does_not_copy_every_observation():
    # episodes of length 10: about one final obs per 10 rows is kept, not one per row
    capacity, num_streams = 200, 4
    buffer = TrajectoryBuffer(capacity, num_streams, (6,), torch.float32)
    for t in range(3 * capacity):
        ends = torch.full((num_streams,), t % 10 == 9)
        obs = torch.full((num_streams, 6), float(t))
        buffer.add(
            obs,
            torch.zeros(num_streams, dtype=torch.int64),
            torch.zeros(num_streams),
            ends,
            ends & False,
            obs + 1,
        )
    slots = buffer._final_slots
    assert slots < capacity * num_streams / 2
    assert slots >= capacity * num_streams // 10


# ---------------------------------------------------------------------------------------------- with an env
class CountingEnv(TensorEnv):
    """obs = (episode step, episode id, stream); terminates with probability 0.2 per step; time limit 4."""

    name = "counting"
    observation_spec = BoxSpec((3,), 0.0, 1e9)
    action_spec = DiscreteSpec(2)
    state_names = ("episode_step", "episode_id")

    def __init__(self, num_envs: int) -> None:
        super().__init__(num_envs, max_episode_steps=4)
        self.episode_step = torch.zeros(num_envs)
        self.episode_id = torch.zeros(num_envs)
        self.next_id = 0.0

    def _reset_where(self, mask: torch.Tensor) -> None:
        self.episode_step = torch.where(mask, 0.0, self.episode_step)
        new_ids = self.next_id + torch.cumsum(mask.float(), 0)
        self.episode_id = torch.where(mask, new_ids, self.episode_id)
        self.next_id += float(mask.sum())

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.episode_step = self.episode_step + 1
        return action.float(), self.uniform(self.num_envs) < 0.2

    def _observe(self) -> torch.Tensor:
        return torch.stack([self.episode_step, self.episode_id, torch.arange(self.num_envs).float()], dim=1)


def test_env_loop_transitions_are_real_transitions():
    env = CountingEnv(num_envs=5)
    obs = env.reset(seed=0)
    buffer = TrajectoryBuffer(16, 5, (3,), torch.float32)
    generator = torch.Generator().manual_seed(0)
    for _ in range(70):
        action = torch.randint(0, 2, (5,), generator=generator)
        result = env.step(action)
        buffer.add(obs, action, result.reward, result.terminated, result.truncated, result.final_obs)
        obs = result.obs
    batch = buffer.sample_transitions(2000, generator)
    # next_obs is one step later in the same episode of the same stream: never a reset observation
    assert torch.equal(batch.next_obs[:, 0], batch.obs[:, 0] + 1)
    assert torch.equal(batch.next_obs[:, 1:], batch.obs[:, 1:])
    assert bool((batch.truncated == (batch.next_obs[:, 0] == 4) & ~batch.terminated).all())
    sequences = buffer.sample_sequences(500, 3, generator)
    episode_ids = sequences.obs[..., 1]
    assert bool((episode_ids == episode_ids[:, :1]).all())


# ---------------------------------------------------------------------------------------------- bad input
def make_small() -> TrajectoryBuffer:
    return TrajectoryBuffer(4, 2, (3,), torch.float32)


def good_step(**overrides):
    step = dict(
        obs=torch.zeros(2, 3),
        action=torch.zeros(2, dtype=torch.int64),
        reward=torch.zeros(2),
        terminated=torch.zeros(2, dtype=torch.bool),
        truncated=torch.zeros(2, dtype=torch.bool),
        final_obs=torch.zeros(2, 3),
    )
    step.update(overrides)
    return step


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"obs": torch.zeros(2, 4)}, r"obs has shape \(2, 4\), expected \(2, 3\)"),
        ({"final_obs": torch.zeros(3, 3)}, r"final_obs has shape \(3, 3\), expected \(2, 3\)"),
        ({"reward": torch.zeros(2, 1)}, r"reward has shape \(2, 1\), expected \(2,\)"),
        ({"action": torch.zeros(2)}, r"action has dtype torch.float32, expected torch.int64"),
        ({"terminated": torch.zeros(2)}, r"terminated has dtype torch.float32, expected torch.bool"),
        ({"obs": torch.zeros(2, 3, dtype=torch.bool)}, r"obs has dtype torch.bool"),
        ({"interest": torch.ones(3)}, r"interest has shape \(3,\), expected \(2,\)"),
        ({"behaviour_log_prob": torch.zeros(2, dtype=torch.int64)}, r"behaviour_log_prob has dtype"),
        ({"bogus": torch.zeros(2)}, r"unknown field\(s\) \['bogus'\]"),
    ],
)
def test_add_rejects_bad_fields_and_writes_nothing(overrides, message):
    buffer = make_small()
    with pytest.raises(ValueError, match=message):
        buffer.add(**good_step(**overrides))
    assert len(buffer) == 0 and buffer.total_steps == 0


def test_add_requires_declared_extras_with_right_shapes():
    buffer = TrajectoryBuffer(4, 2, (3,), torch.float32, extras={"logits": FieldSpec((2,), torch.float32)})
    with pytest.raises(ValueError, match=r"missing declared extra field\(s\) \['logits'\]"):
        buffer.add(**good_step())
    with pytest.raises(ValueError, match=r"logits has shape \(2, 3\), expected \(2, 2\)"):
        buffer.add(**good_step(), logits=torch.zeros(2, 3))
    buffer.add(**good_step(), logits=torch.zeros(2, 2, dtype=torch.float64))  # floating is cast
    assert buffer.latest().logits.dtype == torch.float32


def test_sampling_errors():
    buffer = make_small()
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="empty"):
        buffer.sample_transitions(4, generator)
    with pytest.raises(ValueError, match="empty"):
        buffer.sample_sequences(4, 1, generator)
    with pytest.raises(ValueError, match="empty"):
        buffer.latest()
    buffer.add(**good_step())
    buffer.add(**good_step())
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            buffer.sample_transitions(bad, generator)
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            buffer.sample_sequences(bad, 1, generator)
    for bad in (0, -1, 3):
        with pytest.raises(ValueError, match=r"length must be an integer in \[1, len\(buffer\)=2\]"):
            buffer.sample_sequences(4, bad, generator)
    with pytest.raises(ValueError, match="generator"):
        buffer.sample_transitions(4, 123)
    with pytest.raises(ValueError, match="time_index outside"):
        buffer.transitions_at(torch.tensor([2]), torch.tensor([0]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capacity": 0}, "capacity must be an integer >= 1"),
        ({"num_streams": 0}, "num_streams must be an integer >= 1"),
        ({"obs_shape": (2, -1)}, "obs_shape must be a tuple of non-negative integers"),
        ({"obs_shape": (0,)}, "obs_shape must have at least one element"),
        ({"obs_dtype": "float32"}, "obs_dtype must be a real or bool torch.dtype"),
        ({"extras": {"obs": FieldSpec((), torch.float32)}}, "reserved"),
        ({"extras": {"x": (2,)}}, "must be a FieldSpec"),
        ({"final_obs_slots": 0}, "final_obs_slots must be an integer >= 1"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, message):
    args = dict(capacity=4, num_streams=2, obs_shape=(3,), obs_dtype=torch.float32)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        TrajectoryBuffer(**args)


# ---------------------------------------------------------------------------------------------- backends
@pytest.mark.parametrize("bool_obs", [False, True])
def test_numba_and_torch_backends_store_and_return_the_same(bool_obs):
    """Same steps (some inputs non-contiguous, some of other dtypes) into both backends: same batches, same rows."""
    rng = np.random.default_rng(3)
    shape = (3, 5, 2) if bool_obs else (4,)
    dtype = torch.bool if bool_obs else torch.float32
    buffers = {b: TrajectoryBuffer(7, 3, shape, dtype, extras=EXTRAS, backend=b) for b in ("numba", "torch")}
    for t in range(30):
        values = rng.random((3, *shape))
        obs = torch.from_numpy(values < 0.5) if bool_obs else torch.from_numpy(values).float()
        final = (
            torch.from_numpy(rng.random((3, *shape)) < 0.5) if bool_obs else torch.from_numpy(rng.random((3, *shape)))
        )
        if t % 2:  # non-contiguous views of the same values
            obs = obs.transpose(0, -1).contiguous().transpose(0, -1)
        u = rng.random(3)
        step = dict(
            obs=obs,
            action=torch.from_numpy(rng.integers(0, 5, 3)).int(),  # int32: cast to the stored int64
            reward=torch.from_numpy(rng.normal(size=6))[::2],  # float64, strided
            terminated=torch.from_numpy(u < 0.2),
            truncated=torch.from_numpy((u >= 0.2) & (u < 0.3)),
            final_obs=final,  # float64 for float obs: cast
            behaviour_log_prob=torch.from_numpy(-rng.random(3)).float(),
            logits=torch.from_numpy(rng.normal(size=(3, 2))).float(),
            flag=torch.from_numpy(rng.random(3) < 0.5),
        )
        for buffer in buffers.values():
            buffer.add(**step)
    batches = {}
    for name, buffer in buffers.items():
        generator = torch.Generator().manual_seed(5)
        batches[name] = [
            buffer.sample_transitions(16, generator),
            buffer.sample_transitions(4, generator, num_groups=3),
            buffer.sample_sequences(5, 3, generator),
            buffer.latest(),
            buffer.transitions_at(torch.tensor([[25, 29]]), torch.tensor([[2, 0]])),
        ]
    for fast, reference in zip(batches["numba"], batches["torch"], strict=True):
        for (name, a), (_, b) in zip(fast.as_dict().items(), reference.as_dict().items(), strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b), name
    numba_state, torch_state = buffers["numba"].state_dict(), buffers["torch"].state_dict()
    for key in ("obs", "action", "scalars", "ends", "row_time"):
        assert torch.equal(numba_state[key], torch_state[key]), key


def test_numba_backend_needs_cpu_and_numpy_dtypes():
    with pytest.raises(ValueError, match="backend must be one of"):
        TrajectoryBuffer(4, 1, (2,), torch.float32, backend="jax")
    with pytest.raises(ValueError, match="needs numpy dtypes"):
        TrajectoryBuffer(4, 1, (2,), torch.bfloat16, backend="numba")
    assert TrajectoryBuffer(4, 1, (2,), torch.bfloat16, backend="auto").backend == "torch"


@pytest.mark.parametrize("N", [3, 1])
@pytest.mark.parametrize(("shape", "dtype"), [((5, 4, 4), torch.bool), ((3, 3), torch.bool), ((4,), torch.float32)])
def test_fast_add_leaves_the_torch_backends_state_bit_for_bit(shape, dtype, N):
    """The numba backend's fast path of ``add`` (no extras; bool observations packed by 8-byte words when their cells
    are a multiple of 8 and aligned, byte by byte otherwise) leaves every state tensor equal to the torch backend's,
    and a restored copy continues bit-identically."""
    rng = np.random.default_rng(7)
    T = 5
    buffers = {b: TrajectoryBuffer(T, N, shape, dtype, final_obs_slots=1, backend=b) for b in ("numba", "torch")}
    assert buffers["numba"]._unpack_by_words == (dtype == torch.bool and math.prod(shape) % 8 == 0)
    buffers["numba"]._checked = lambda *args: pytest.fail("the general path of add was taken")

    def draw() -> torch.Tensor:
        values = rng.random((N, *shape))
        return torch.from_numpy(values < 0.5) if dtype == torch.bool else torch.from_numpy(values).float()

    restored = None
    for t in range(40):
        obs, final = draw(), draw()
        if t % 3 == 1:  # contiguous but one byte (or element) off the allocation's alignment
            flat = torch.cat([obs.new_zeros(1), obs.reshape(-1)])[1:]
            obs = flat.view(N, *shape)
            assert obs.is_contiguous() and obs.data_ptr() % 8 != 0 or dtype != torch.bool
        u = rng.random(N)
        step = dict(
            obs=obs,
            action=torch.from_numpy(rng.integers(0, 4, N)),
            reward=torch.from_numpy(rng.random(N)).float(),
            terminated=torch.from_numpy(u < 0.3),
            truncated=torch.from_numpy((u >= 0.3) & (u < 0.4)),
            final_obs=final,
        )
        for buffer in buffers.values():
            buffer.add(**step)
        if restored is not None:
            restored.add(**step)
        if t == 17:
            restored = TrajectoryBuffer(T, N, shape, dtype, final_obs_slots=1, backend="numba")
            restored.load_state_dict(buffers["numba"].state_dict())
    states = [buffers["numba"].state_dict(), buffers["torch"].state_dict(), restored.state_dict()]
    assert states[0]["final_slots"] > 1  # the final-observation store grew on the way
    for key, value in states[0].items():
        for other in states[1:]:
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, other[key]), key
            elif key != "final_live_bound":  # a host-side bound: exact on the CPU kernels, looser on torch's path
                assert value == other[key], key


@pytest.mark.parametrize("N", [1, 2])
def test_fast_add_takes_one_element_views_and_leaves_strided_inputs_to_the_general_path(N):
    """At ``N = 1`` the ``[N]`` inputs have one element, so any view of them is contiguous and the fast path takes it;
    a strided observation (or, at ``N > 1``, a strided reward) goes through the general path; every case stores the
    torch backend's bits."""
    rng = np.random.default_rng(3)
    buffers = {b: TrajectoryBuffer(4, N, (3,), torch.float32, final_obs_slots=1, backend=b) for b in ("numba", "torch")}
    general = []
    original = buffers["numba"]._checked
    buffers["numba"]._checked = lambda name, *args: general.append(name) or original(name, *args)
    for t in range(12):
        wide = torch.from_numpy(rng.random((N, 6))).float()
        rewards = torch.from_numpy(rng.random(2 * N)).float()
        u = rng.random(N)
        terminated = torch.from_numpy(u < 0.4)
        if N == 1:
            terminated = terminated[0].expand(1)  # stride 0, one element
        step = dict(
            obs=wide[:, ::2] if t % 3 == 0 else wide[:, :3].contiguous(),  # every third obs strided
            action=torch.from_numpy(rng.integers(0, 4, N)),
            reward=rewards[::2] if t % 3 == 1 else rewards[:N],  # strided (at N = 1: one element, a view of stride 2)
            terminated=terminated,
            truncated=torch.from_numpy((u >= 0.4) & (u < 0.5)),
            final_obs=torch.from_numpy(rng.random((N, 3))).float(),
        )
        before = len(general)
        for buffer in buffers.values():
            buffer.add(**step)
        took_general = len(general) > before
        assert took_general == (t % 3 == 0 or (t % 3 == 1 and N > 1)), (t, general[before:])
    states = [buffers[b].state_dict() for b in ("numba", "torch")]
    for key, value in states[0].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, states[1][key]), key
        elif key != "final_live_bound":
            assert value == states[1][key], key


@pytest.mark.parametrize("N", [1, 3])
def test_a_strided_vector_action_is_stored_as_given(N):
    """A continuous action ``[N, A]`` may be a strided view even at ``N = 1``: stored as its values, on both
    backends."""
    for backend in ("numba", "torch"):
        buffer = TrajectoryBuffer(
            4, N, (2,), torch.float32, action_shape=(3,), action_dtype=torch.float32, backend=backend
        )
        action = torch.arange(6 * N, dtype=torch.float32).view(N, 6)[:, ::2]
        obs = torch.zeros(N, 2)
        no = torch.zeros(N, dtype=torch.bool)
        buffer.add(obs, action, torch.zeros(N), no, no, obs)
        assert torch.equal(buffer.latest().action, action), backend


def test_load_state_dict_rejects_cursor_and_size_that_do_not_match_total_steps():
    buffer = TrajectoryBuffer(4, 2, (3,), torch.float32)
    for _ in range(5):
        buffer.add(**good_step())
    state = buffer.state_dict()
    assert (state["cursor"], state["size"], state["total_steps"]) == (1, 4, 5)
    state["cursor"] = 2
    with pytest.raises(ValueError, match=r"cursor 2 and size 4 do not match total_steps 5"):
        TrajectoryBuffer(4, 2, (3,), torch.float32).load_state_dict(state)


def test_compiled_kernel_is_the_dispatchers_function_for_those_types():
    """``kernels.compiled`` gives the dispatcher's compiled function for the example arguments' types: same results
    without the per-call typing."""
    from numba import njit

    from emphatic_rl.buffers import kernels

    @njit
    def weighted(values, scale):
        return values[0] * scale + values[1]

    direct = kernels.compiled(weighted, ((1, 2), 3))
    assert direct((4, 5), 6) == weighted((4, 5), 6) == 29
    assert kernels.compiled(weighted.py_func, ((1, 2), 3)) is weighted.py_func  # no JIT: the function itself


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_buffer_writes_its_own_storage(how):
    """A deep copy (or an unpickled copy) of a buffer has its own views and storage addresses: adding to it leaves the
    original unchanged, and both continue as a buffer fed the same steps would."""
    import copy
    import pickle

    rng = np.random.default_rng(11)

    def step() -> dict[str, torch.Tensor]:
        u = rng.random(2)
        return dict(
            obs=torch.from_numpy(rng.random((2, 3))).float(),
            action=torch.from_numpy(rng.integers(0, 4, 2)),
            reward=torch.from_numpy(rng.random(2)).float(),
            terminated=torch.from_numpy(u < 0.3),
            truncated=torch.from_numpy((u >= 0.3) & (u < 0.4)),
            final_obs=torch.from_numpy(rng.random((2, 3))).float(),
        )

    original, reference = TrajectoryBuffer(4, 2, (3,), torch.float32), TrajectoryBuffer(4, 2, (3,), torch.float32)
    for _ in range(6):
        fields = step()
        original.add(**fields)
        reference.add(**fields)
    frozen = original.state_dict()
    copied = copy.deepcopy(original) if how == "deepcopy" else pickle.loads(pickle.dumps(original))
    for _ in range(7):  # past the initial final-observation slots: the copy's store grows
        fields = step()
        copied.add(**fields)
        reference.add(**fields)
    after = original.state_dict()
    for key, value in frozen.items():
        assert torch.equal(value, after[key]) if isinstance(value, torch.Tensor) else value == after[key], key
    for key, value in reference.state_dict().items():
        other = copied.state_dict()[key]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key
