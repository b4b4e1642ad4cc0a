"""Step rate of one env through ``gymnasium.make``: our ids against Gymnasium's own classic-control envs.

Both sides run behind the same wrappers ``gymnasium.make`` adds (``TimeLimit``, ``OrderEnforcing``, the passive
env checker), with a fixed action sequence and ``reset()`` at every episode end. Rounds alternate ours / theirs
(interleaved A/B) and the table gives the median steps per second over rounds and the ratio.

Usage::

    python benchmarks/gym_single_env.py [--steps 20000] [--rounds 7] [--out benchmarks/results/gym_single_env_cpu.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import gymnasium as gym
import numpy as np
import torch

import emphatic_rl  # noqa: F401  (registers the ids)

PAIRS = [
    ("emphatic_rl/CartPole-v1", "CartPole-v1"),
    ("emphatic_rl/MountainCar-v0", "MountainCar-v0"),
    ("emphatic_rl/Acrobot-v1", "Acrobot-v1"),
    ("emphatic_rl/Pendulum-v1", "Pendulum-v1"),
]


def steps_per_second(gym_id: str, steps: int) -> float:
    env = gym.make(gym_id)
    rng = np.random.default_rng(0)
    actions = [env.action_space.sample() for _ in range(256)]
    env.action_space.seed(0)
    env.reset(seed=int(rng.integers(1 << 30)))
    start = time.perf_counter()
    for t in range(steps):
        _, _, terminated, truncated, _ = env.step(actions[t % 256])
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results/gym_single_env_cpu.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for ours, theirs in PAIRS:
        rates: dict[str, list[float]] = {ours: [], theirs: []}
        steps_per_second(ours, 500)  # warm-up
        steps_per_second(theirs, 500)
        for _ in range(args.rounds):
            for gym_id in (ours, theirs):
                rates[gym_id].append(steps_per_second(gym_id, args.steps))
        ours_median, theirs_median = statistics.median(rates[ours]), statistics.median(rates[theirs])
        rows.append((ours, theirs, ours_median, theirs_median, theirs_median / ours_median))
        print(
            f"{ours:30s} {ours_median:10.0f} steps/s   {theirs:16s} {theirs_median:10.0f} steps/s   "
            f"Gymnasium / ours {theirs_median / ours_median:.2f}"
        )
    load = os.getloadavg()
    lines = [
        "# One env through `gymnasium.make`: our ids against Gymnasium's",
        "",
        f"`python benchmarks/gym_single_env.py --steps {args.steps} --rounds {args.rounds}`; median of "
        f"{args.rounds} interleaved rounds of {args.steps} steps, random actions, reset at episode end, one torch "
        f"thread. Python {platform.python_version()}, torch {torch.__version__}, gymnasium {gym.__version__}, "
        f"{platform.machine()}, load average {load[0]:.1f} during the run (a shared machine: ratios are the "
        "figure to read).",
        "",
        "| our id | steps/s | Gymnasium id | steps/s | Gymnasium / ours |",
        "|---|---:|---|---:|---:|",
    ]
    lines += [f"| `{o}` | {a:,.0f} | `{t}` | {b:,.0f} | {r:.2f} |" for o, t, a, b, r in rows]
    lines += [
        "",
        "Our classic-control ids step a scalar copy in plain Python floats (`emphatic_rl/envs/scalar_classic.py`), "
        "matched step for step against the batched env and Gymnasium by `tests/envs/test_gymnasium_citizenship.py`. "
        "Before it, `emphatic_rl/CartPole-v1` ran the batched torch env with one copy: 654 steps/s against "
        "Gymnasium's 18,963.",
    ]
    with open(args.out, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
