"""Steps per second of the native batched MinAtar games against the reference ``minatar`` package.

Peers, measured in the same run with the same protocol (sticky actions 0.1, difficulty ramping on, full action
set, uniform random actions, observation produced every step, finished episodes reset):

- ``native``: our ``TensorEnv`` with ``N`` copies (one ``step`` call per batch step, actions checked);
- ``reference loop``: ``N`` ``minatar.Environment`` objects stepped in a Python loop (``act`` + ``state``);
- ``gymnasium sync``: ``gymnasium.vector.SyncVectorEnv`` of ``MinAtar/<Game>-v0``.

Slow peers at large ``N`` are timed over few batch steps (at least one; each measurement runs until
``--min-time`` seconds have passed). Run:

    .venv/bin/python benchmarks/minatar.py                      # writes benchmarks/results/minatar_cpu.md
    .venv/bin/python benchmarks/minatar.py --games breakout --sizes 1 64 --min-time 0.2 --no-write
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from emphatic_rl.envs import make_env

GAMES = ("breakout", "freeway", "asterix", "space_invaders")
SIZES = (1, 64, 1024, 8192)
RESULTS = Path(__file__).parent / "results" / "minatar_cpu.md"


def import_reference():
    """The reference ``minatar`` package (this script's own name would shadow it when run from its folder)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    import minatar
    import minatar.gym

    return minatar


def measure(batch_step: Callable[[], None], num_envs: int, min_time: float) -> float:
    """Environment steps per second of ``batch_step`` (which advances ``num_envs`` copies once)."""
    batch_step()  # warm-up
    calls, start = 0, time.perf_counter()
    while True:
        batch_step()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return calls * num_envs / elapsed


def native_rate(game: str, num_envs: int, min_time: float) -> float:
    env = make_env("minatar-" + game.replace("_", "-"), num_envs)
    env.reset(seed=0)
    generator = torch.Generator().manual_seed(0)
    actions = torch.randint(0, 6, (64, num_envs), generator=generator)
    counter = [0]

    def batch_step() -> None:
        env.step(actions[counter[0] % 64])
        counter[0] += 1

    return measure(batch_step, num_envs, min_time)


def reference_rate(game: str, num_envs: int, min_time: float) -> float:
    minatar = import_reference()
    envs = []
    for i in range(num_envs):
        env = minatar.Environment(game)
        env.seed(i)
        env.reset()
        envs.append(env)
    rng = np.random.default_rng(0)

    def batch_step() -> None:
        actions = rng.integers(0, 6, num_envs)
        for env, action in zip(envs, actions, strict=True):
            _, done = env.act(action)
            if done:
                env.reset()
            env.state()

    return measure(batch_step, num_envs, min_time)


def gymnasium_rate(game: str, num_envs: int, min_time: float) -> float:
    minatar = import_reference()
    gym_id = f"MinAtar/{game.title().replace('_', '')}-v0"
    if gym_id not in gym.registry:
        minatar.gym.register_envs()
    vector_env = gym.vector.SyncVectorEnv([lambda: gym.make(gym_id) for _ in range(num_envs)])
    vector_env.reset(seed=0)
    rng = np.random.default_rng(0)

    def batch_step() -> None:
        vector_env.step(rng.integers(0, 6, num_envs))

    rate = measure(batch_step, num_envs, min_time)
    vector_env.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--games", nargs="+", default=list(GAMES), choices=GAMES)
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per measurement (default 0.5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS}")
    args = parser.parse_args()
    if any(n < 1 for n in args.sizes) or args.min_time <= 0 or args.threads < 1:
        parser.error("--sizes must be >= 1, --min-time > 0 and --threads >= 1")
    torch.set_num_threads(args.threads)

    header = (
        "| game | N | native steps/s | reference loop steps/s | gymnasium sync steps/s "
        "| native / reference | native / gymnasium |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    rows = []
    print(header, flush=True)
    for game in args.games:
        for num_envs in args.sizes:
            native = native_rate(game, num_envs, args.min_time)
            reference = reference_rate(game, num_envs, args.min_time)
            vector = gymnasium_rate(game, num_envs, args.min_time)
            row = (
                f"| {game} | {num_envs} | {native:,.0f} | {reference:,.0f} | {vector:,.0f} "
                f"| {native / reference:.1f}x | {native / vector:.1f}x |"
            )
            rows.append(row)
            print(row, flush=True)

    if not args.no_write:
        cpu = platform.processor() or platform.machine()
        text = "\n".join(
            [
                "# MinAtar: native batched env vs the reference `minatar` (CPU)",
                "",
                f"Machine: {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with "
                f"{args.threads} thread(s), numpy {np.__version__}, gymnasium {gym.__version__}.",
                "Protocol: sticky actions 0.1, difficulty ramping on, 6 actions, uniform random actions, observation"
                " every step, finished episodes reset. Environment steps per second (N copies x batch steps / s).",
                f"Each figure: at least {args.min_time} s of stepping after one warm-up batch step.",
                f"Command: `.venv/bin/python benchmarks/minatar.py --min-time {args.min_time}`",
                "",
                header,
                *rows,
                "",
            ]
        )
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        temporary = RESULTS.with_suffix(".md.tmp")
        temporary.write_text(text)
        temporary.replace(RESULTS)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
