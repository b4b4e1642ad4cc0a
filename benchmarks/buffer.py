"""Throughput of ``TrajectoryBuffer`` add and sample against a naive per-transition numpy ring, in one run.

    python benchmarks/buffer.py                  # full table -> benchmarks/results/buffer_cpu.md
    python benchmarks/buffer.py --quick          # shorter timings, prints only

Workloads: CartPole-like ``float32[4]`` observations and MinAtar-like ``bool[10, 10, 4]`` observations, ``N`` in
{1, 64, 1024} streams, a ring of about ``--transitions`` transitions (``capacity = transitions // N`` rows), episodes
ending with probability 1/100 per step, batch sizes 32 and 256.

The peer is the usual per-transition replay ring (the shape of Stable-Baselines3's ``ReplayBuffer`` with one
transition per ``add`` call, as when a single-env buffer is fed from a vector env): numpy arrays of ``capacity *
N`` transitions with a full ``next_obs`` copy, ``bool`` observations at one byte per cell, sampling by fancy
indexing and ``torch.from_numpy``. Both are measured in the same process on the same data.

Figures:
- add: transitions written per second (one ``add`` writes ``N``; the peer makes ``N`` calls);
- sample: transitions returned per second by ``sample_transitions(B)`` (peer: ``sample(B)``);
- seq: transitions per second returned by ``sample_sequences(B // 8, 8)`` (no peer);
- loop: env steps per second of "add one step of all N streams, then sample one batch of B" (a replay agent's
  inner loop without the network);
- bytes/tr: storage per stored transition.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from emphatic_rl.buffers import TrajectoryBuffer

WORKLOADS = {"cartpole float32[4]": ((4,), torch.float32), "minatar bool[10,10,4]": ((10, 10, 4), torch.bool)}


class NumpyRingBuffer:
    """Peer: a per-transition numpy replay ring that stores ``next_obs`` for every transition."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> None:
        self.capacity = capacity
        self.obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.next_obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.action = np.zeros(capacity, dtype=np.int64)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=bool)
        self.truncated = np.zeros(capacity, dtype=bool)
        self.pos = 0
        self.full = False

    def add(self, obs, next_obs, action, reward, terminated, truncated) -> None:
        self.obs[self.pos] = obs
        self.next_obs[self.pos] = next_obs
        self.action[self.pos] = action
        self.reward[self.pos] = reward
        self.terminated[self.pos] = terminated
        self.truncated[self.pos] = truncated
        self.pos += 1
        if self.pos == self.capacity:
            self.pos, self.full = 0, True

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        size = self.capacity if self.full else self.pos
        idx = rng.integers(0, size, batch_size)
        return {
            name: torch.from_numpy(getattr(self, name)[idx])
            for name in ("obs", "next_obs", "action", "reward", "terminated", "truncated")
        }

    def nbytes_per_transition(self) -> float:
        arrays = (self.obs, self.next_obs, self.action, self.reward, self.terminated, self.truncated)
        return sum(a.nbytes for a in arrays) / self.capacity


def rate(fn: Callable[[], object], units_per_call: int, min_seconds: float) -> float:
    """Units per second of ``fn`` (3 warm-up calls, then repeated until ``min_seconds`` have passed)."""
    for _ in range(3):
        fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls * units_per_call / elapsed


def make_steps(num_steps: int, num_streams: int, obs_shape, obs_dtype, seed: int = 0) -> list[dict]:
    """A pool of pre-made steps (so data generation is not timed)."""
    generator = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(num_steps):

        def draw_obs():
            values = torch.rand((num_streams, *obs_shape), generator=generator)
            return values < 0.2 if obs_dtype == torch.bool else values

        ends = torch.rand(num_streams, generator=generator) < 0.01
        steps.append(
            dict(
                obs=draw_obs(),
                action=torch.randint(0, 4, (num_streams,), generator=generator),
                reward=torch.rand(num_streams, generator=generator),
                terminated=ends,
                truncated=torch.zeros(num_streams, dtype=torch.bool),
                final_obs=draw_obs(),
            )
        )
    return steps


def bench_one(
    obs_shape, obs_dtype, num_streams: int, batch_sizes: list[int], transitions: int, min_seconds: float
) -> list[dict]:
    capacity = max(transitions // num_streams, 16)
    steps = make_steps(8, num_streams, obs_shape, obs_dtype)
    buffer = TrajectoryBuffer(capacity, num_streams, obs_shape, obs_dtype)
    for k in range(capacity + 1):  # fill past one wrap: steady state
        buffer.add(**steps[k % len(steps)])
    counter = iter(range(10**12))

    def add_ours() -> None:
        buffer.add(**steps[next(counter) % len(steps)])

    add_ours_rate = rate(add_ours, num_streams, min_seconds)

    np_dtype = np.bool_ if obs_dtype == torch.bool else np.float32
    peer = NumpyRingBuffer(capacity * num_streams, obs_shape, np_dtype)
    np_steps = [{k: v.numpy() for k, v in s.items()} for s in steps]
    for k in range(capacity + 1):
        s = np_steps[k % len(np_steps)]
        for n in range(num_streams):
            peer.add(s["obs"][n], s["final_obs"][n], s["action"][n], s["reward"][n], s["terminated"][n], False)

    def add_peer() -> None:
        s = np_steps[next(counter) % len(np_steps)]
        for n in range(num_streams):  # one transition per call
            peer.add(s["obs"][n], s["final_obs"][n], s["action"][n], s["reward"][n], s["terminated"][n], False)

    add_peer_rate = rate(add_peer, num_streams, min_seconds)
    ours_bytes = buffer.memory_bytes()["total"] / (capacity * num_streams)
    peer_bytes = peer.nbytes_per_transition()

    rows = []
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    for batch_size in batch_sizes:
        sample_ours = rate(lambda b=batch_size: buffer.sample_transitions(b, generator), batch_size, min_seconds)
        sample_peer = rate(lambda b=batch_size: peer.sample(b, rng), batch_size, min_seconds)
        sequence_rate = rate(
            lambda b=batch_size: buffer.sample_sequences(max(b // 8, 1), 8, generator),
            max(batch_size // 8, 1) * 8,
            min_seconds,
        )

        def loop_ours(b=batch_size) -> None:
            add_ours()
            buffer.sample_transitions(b, generator)

        def loop_peer(b=batch_size) -> None:
            add_peer()
            peer.sample(b, rng)

        rows.append(
            dict(
                num_streams=num_streams,
                batch_size=batch_size,
                add_ours=add_ours_rate,
                add_peer=add_peer_rate,
                sample_ours=sample_ours,
                sample_peer=sample_peer,
                sequences_ours=sequence_rate,
                loop_ours=rate(loop_ours, num_streams, min_seconds),
                loop_peer=rate(loop_peer, num_streams, min_seconds),
                bytes_ours=ours_bytes,
                bytes_peer=peer_bytes,
            )
        )
    return rows


def fmt(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short timings, print only (no results file)")
    parser.add_argument("--transitions", type=int, default=100_000, help="ring size in transitions")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "buffer_cpu.md")
    args = parser.parse_args()
    if args.transitions < 16 or min(args.streams) < 1 or min(args.batch_sizes) < 1:
        parser.error("--transitions must be >= 16, --streams and --batch-sizes >= 1")
    torch.set_num_threads(1)
    min_seconds = 0.05 if args.quick else 0.3

    header = (
        "| obs | N | B | add ours | add peer | sample ours | sample peer | seq L=8 ours | loop ours | loop peer "
        "| bytes/tr ours | bytes/tr peer |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    print(header, flush=True)
    for name, (obs_shape, obs_dtype) in WORKLOADS.items():
        for num_streams in args.streams:
            for row in bench_one(obs_shape, obs_dtype, num_streams, args.batch_sizes, args.transitions, min_seconds):
                line = (
                    f"| {name} | {row['num_streams']} | {row['batch_size']} | {fmt(row['add_ours'])} "
                    f"| {fmt(row['add_peer'])} | {fmt(row['sample_ours'])} | {fmt(row['sample_peer'])} "
                    f"| {fmt(row['sequences_ours'])} | {fmt(row['loop_ours'])} | {fmt(row['loop_peer'])} "
                    f"| {row['bytes_ours']:.1f} | {row['bytes_peer']:.1f} |"
                )
                lines.append(line)
                print(line, flush=True)
    if args.quick:
        return
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
        f"(1 thread), numpy {np.__version__}, Python {platform.python_version()}, "
        f"load average at the end {os.getloadavg()[0]:.1f}"
    )
    text = "\n".join(
        [
            "# TrajectoryBuffer throughput on CPU",
            "",
            f"Command: `python benchmarks/buffer.py --transitions {args.transitions}`. Machine: {machine}.",
            "",
            "Rates are per second: *add* = transitions written, *sample* = transitions returned by "
            "`sample_transitions(B)`, *seq* = transitions returned by `sample_sequences(B // 8, 8)`, *loop* = env "
            "steps of (add one row of all N streams + sample one batch of B). The peer is a per-transition numpy "
            "ring (SB3-style layout, one `add` call per transition, full `next_obs` copy, bool obs at 1 byte per "
            "cell). Ring size about "
            f"{args.transitions} transitions (capacity = transitions // N rows). bytes/tr = storage per stored "
            "transition. On a shared machine (load average above the core count) rates are noisy: compare ours and "
            "the peer within a row, not across runs.",
            "",
            *lines,
            "",
        ]
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.output.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
