"""``TrajectoryBuffer`` add and sample against Stable-Baselines3's ``ReplayBuffer``, in one process, interleaved.

    python benchmarks/buffer.py                  # full table -> benchmarks/results/buffer_cpu.md
    python benchmarks/buffer.py --quick          # fewer, shorter rounds, prints only

The peer is SB3's real ``stable_baselines3.common.buffers.ReplayBuffer`` with its default settings
(``optimize_memory_usage=False``, ``handle_timeout_termination=True``) and ``n_envs = N``, fed the way SB3's
off-policy algorithms feed it: one ``add(obs, next_obs, action, reward, done, infos)`` call per vector-env step with all
``N`` envs at once, and ``sample(B)`` returning torch tensors. Ours gets the same step as ``add(obs, action, reward,
terminated, truncated, final_obs)`` and returns ``sample_transitions(B)``. Both hold about ``--transitions``
transitions (``capacity = transitions // N`` rows each) and are filled past one wrap before timing.

Workloads: CartPole ``float32[4]`` (2 actions) and MinAtar ``bool[10, 10, 4]`` (6 actions, bit-packed by us, one
byte per cell in SB3), ``N`` in {1, 64, 1024} envs per add, ``B`` in {32, 256, 4096} per sample; episodes end with
probability 1/100 per step (a tenth of them truncated). Data is made before timing.

Method: ``--rounds`` rounds; in each round every measurement runs ours and the peer back to back (the order
alternating between rounds), each for about ``--seconds``. The table gives the median rate over rounds and the
median of the per-round ratios ours / peer; single-threaded (torch, numba and BLAS at one thread); the load
average is recorded. Rates: *add* = transitions written per second (one call writes ``N``), *sample* = transitions
returned per second.
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from emphatic_rl.buffers import TrajectoryBuffer  # noqa: E402

WORKLOADS = {
    "cartpole float32[4]": ((4,), torch.float32, 2),
    "minatar bool[10,10,4]": ((10, 10, 4), torch.bool, 6),
}


def make_sb3_buffer(size: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype, actions: int, num_envs: int):
    from gymnasium import spaces
    from stable_baselines3.common.buffers import ReplayBuffer

    if obs_dtype == torch.bool:
        observation_space = spaces.Box(0, 1, obs_shape, dtype=bool)
    else:
        observation_space = spaces.Box(-np.inf, np.inf, obs_shape, dtype=np.float32)
    return ReplayBuffer(size, observation_space, spaces.Discrete(actions), device="cpu", n_envs=num_envs)


def make_steps(count: int, num_envs: int, obs_shape, obs_dtype, actions: int, seed: int = 0) -> list[dict]:
    """A pool of pre-made vector-env steps, as torch tensors (ours) and numpy arrays + infos (SB3), same data."""
    generator = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(count):

        def draw_obs():
            values = torch.rand((num_envs, *obs_shape), generator=generator)
            return values < 0.2 if obs_dtype == torch.bool else values

        u = torch.rand(num_envs, generator=generator)
        step = dict(
            obs=draw_obs(),
            action=torch.randint(0, actions, (num_envs,), generator=generator),
            reward=torch.rand(num_envs, generator=generator),
            terminated=u < 0.009,
            truncated=(u >= 0.009) & (u < 0.01),
            final_obs=draw_obs(),
        )
        done = (step["terminated"] | step["truncated"]).numpy()
        infos = [
            {"TimeLimit.truncated": bool(t)} if d else {} for d, t in zip(done, step["truncated"].numpy(), strict=True)
        ]
        sb3 = dict(
            obs=step["obs"].numpy(),
            next_obs=step["final_obs"].numpy(),
            action=step["action"].numpy(),
            reward=step["reward"].numpy(),
            done=done.astype(np.float32),
            infos=infos,
        )
        steps.append((step, sb3))
    return steps


def timed_rate(fn: Callable[[], object], units_per_call: int, seconds: float) -> tuple[float, float]:
    """Units per second of ``fn`` over about ``seconds`` (calls in batches, so the clock is read rarely): per
    wall-clock second and per second of this process's CPU time (which other jobs on a shared machine disturb
    less)."""
    fn()
    calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
    batch = 1
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            cpu = max(time.process_time() - cpu_start, 1e-9)
            return calls * units_per_call / elapsed, calls * units_per_call / cpu
        batch = min(batch * 2, 256)


def bench_workload(obs_shape, obs_dtype, actions, num_envs, batch_sizes, transitions, rounds, seconds) -> list[dict]:
    capacity = max(transitions // num_envs, 16)
    steps = make_steps(8, num_envs, obs_shape, obs_dtype, actions)
    ours = TrajectoryBuffer(capacity, num_envs, obs_shape, obs_dtype)
    peer = make_sb3_buffer(capacity * num_envs, obs_shape, obs_dtype, actions, num_envs)
    for k in range(capacity + 1):  # one wrap: steady state
        step, sb3 = steps[k % len(steps)]
        ours.add(**step)
        peer.add(**sb3)
    counter = iter(range(10**12))

    def add_ours() -> None:
        ours.add(**steps[next(counter) % len(steps)][0])

    def add_peer() -> None:
        peer.add(**steps[next(counter) % len(steps)][1])

    generator = torch.Generator().manual_seed(0)
    np.random.seed(0)  # SB3 samples with numpy's global generator
    measurements: dict[str, tuple[Callable, Callable, int]] = {"add": (add_ours, add_peer, num_envs)}
    for b in batch_sizes:
        measurements[f"sample B={b}"] = (
            lambda b=b: ours.sample_transitions(b, generator),
            lambda b=b: peer.sample(b),
            b,
        )
    results: dict[str, tuple[list[tuple[float, float]], list[tuple[float, float]]]] = {
        name: ([], []) for name in measurements
    }
    for r in range(rounds):
        for name, (fn_ours, fn_peer, units) in measurements.items():
            if r % 2 == 0:
                a = timed_rate(fn_ours, units, seconds)
                b_ = timed_rate(fn_peer, units, seconds)
            else:
                b_ = timed_rate(fn_peer, units, seconds)
                a = timed_rate(fn_ours, units, seconds)
            results[name][0].append(a)
            results[name][1].append(b_)
    peer_bytes = sum(
        getattr(peer, name).nbytes
        for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
    ) / (capacity * num_envs)
    ours_bytes = ours.memory_bytes()["total"] / (capacity * num_envs)
    rows = []
    for name, (rates_ours, rates_peer) in results.items():
        ratios = [a[0] / b[0] for a, b in zip(rates_ours, rates_peer, strict=True)]
        cpu_ratios = [a[1] / b[1] for a, b in zip(rates_ours, rates_peer, strict=True)]
        rows.append(
            dict(
                what=name,
                num_envs=num_envs,
                ours=statistics.median(r[0] for r in rates_ours),
                peer=statistics.median(r[0] for r in rates_peer),
                ratio=statistics.median(ratios),
                ratio_min=min(ratios),
                ratio_max=max(ratios),
                cpu_ratio=statistics.median(cpu_ratios),
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
    parser.add_argument("--quick", action="store_true", help="3 short rounds, print only (no results file)")
    parser.add_argument("--transitions", type=int, default=100_000, help="buffer size in transitions")
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 64, 1024], help="envs per add (N)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256, 4096])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.25, help="time per measurement and round")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "buffer_cpu.md")
    args = parser.parse_args()
    if args.transitions < 16 or min(args.envs) < 1 or min(args.batch_sizes) < 1 or args.rounds < 1:
        parser.error("--transitions must be >= 16; --envs, --batch-sizes and --rounds >= 1")
    if args.quick:
        args.rounds, args.seconds = 3, 0.05
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]

    header = (
        "| obs | N | measure | ours /s | SB3 /s | ratio (median) | ratio range | CPU-time ratio | bytes/tr ours "
        "| bytes/tr SB3 |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    print(header, flush=True)
    for name, (obs_shape, obs_dtype, actions) in WORKLOADS.items():
        for num_envs in args.envs:
            rows = bench_workload(
                obs_shape, obs_dtype, actions, num_envs, args.batch_sizes, args.transitions, args.rounds, args.seconds
            )
            for row in rows:
                line = (
                    f"| {name} | {row['num_envs']} | {row['what']} | {fmt(row['ours'])} | {fmt(row['peer'])} "
                    f"| {row['ratio']:.2f}x | {row['ratio_min']:.2f}-{row['ratio_max']:.2f} "
                    f"| {row['cpu_ratio']:.2f}x | {row['bytes_ours']:.1f} | {row['bytes_peer']:.1f} |"
                )
                lines.append(line)
                print(line, flush=True)
    if args.quick:
        return
    import stable_baselines3

    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
        f"(1 thread), numpy {np.__version__}, stable-baselines3 {stable_baselines3.__version__}, Python "
        f"{platform.python_version()}; load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    command = (
        "python benchmarks/buffer.py"
        + ("" if args.transitions == 100_000 else f" --transitions {args.transitions}")
        + ("" if args.rounds == 7 else f" --rounds {args.rounds}")
        + ("" if args.seconds == 0.25 else f" --seconds {args.seconds}")
    )
    text = "\n".join(
        [
            "# TrajectoryBuffer against Stable-Baselines3's ReplayBuffer on CPU",
            "",
            f"Command: `{command}`. Machine: {machine}.",
            "",
            "Peer: SB3's real `ReplayBuffer` (default settings, `n_envs = N`), all N envs in one `add` call, "
            "`sample(B)` to torch tensors. Ours: `TrajectoryBuffer` (default backend: the compiled numba kernels on "
            "CPU), `add` of one row of N streams, `sample_transitions(B)`. Rates are transitions per second (median "
            f"over {args.rounds} interleaved rounds of about {args.seconds} s each); ratio = ours / SB3, median of the "
            "per-round ratios, with their range; CPU-time ratio = the same from each side's process CPU time per "
            "measurement (less disturbed by other jobs). Buffers of about "
            f"{args.transitions} transitions. bytes/tr = storage per stored transition (ours bit-packs bool "
            "observations and keeps final observations only where episodes end; SB3 stores a full `next_obs`). The "
            "machine is shared: absolute rates move with the load, the within-round ratios much less.",
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
