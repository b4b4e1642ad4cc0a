"""Native batched CartPole against Gymnasium's SyncVectorEnv of CartPole-v1, in one run.

    python benchmarks/envs.py [--device cpu] [--sizes 1,64,1024,8192] [--steps 50] [--repeats 30] [--gym-seconds 4]

Measures total env steps per second (``num_envs * vector steps / seconds``) with uniformly random actions
drawn inside the timed loop (on ``--device`` for the native env, with numpy for Gymnasium). Both use same-step
autoreset. The native env is timed with ``check_actions=False`` (no device sync) at 1 and 2 torch threads, and
with ``check_actions=True`` at 1 thread. Each figure is the best of ``--repeats`` short timed chunks (``--steps``
native steps each; Gymnasium: ``--gym-seconds`` split into as many chunks, at least one vector step each),
which filters out interference from other processes on a shared machine. Prints a Markdown table and writes it to
``benchmarks/results/envs_<device type>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from emphatic_rl.envs.classic import CartPole

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def native_steps_per_second(
    num_envs: int, steps: int, device: torch.device, threads: int, check_actions: bool, repeats: int
) -> float:
    """Best-of-``repeats`` env steps/s of the native CartPole stepping ``steps`` times with random actions."""
    torch.set_num_threads(threads)
    env = CartPole(num_envs=num_envs, device=device, check_actions=check_actions)
    env.reset(seed=0)
    generator = torch.Generator(device=device).manual_seed(0)
    for _ in range(20):  # warm-up
        env.step(torch.randint(0, 2, (num_envs,), generator=generator, device=device))
    best = 0.0
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            env.step(torch.randint(0, 2, (num_envs,), generator=generator, device=device))
        _sync(device)
        best = max(best, num_envs * steps / (time.perf_counter() - start))
    return best


def gym_steps_per_second(num_envs: int, seconds: float, repeats: int) -> tuple[float, int]:
    """Best-of-``repeats`` env steps/s of ``SyncVectorEnv(CartPole-v1)``, chunks of ~``seconds / repeats``.

    Returns ``(steps_per_second, vector_steps_timed_in_total)``.
    """
    vector_env = gym.make_vec(
        "CartPole-v1",
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
    )
    vector_env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(2):  # warm-up
        vector_env.step(rng.integers(0, 2, num_envs))
    best, total_steps = 0.0, 0
    for _ in range(repeats):
        steps = 0
        start = time.perf_counter()
        while steps < 1 or time.perf_counter() - start < seconds / repeats:
            vector_env.step(rng.integers(0, 2, num_envs))
            steps += 1
        best = max(best, num_envs * steps / (time.perf_counter() - start))
        total_steps += steps
    vector_env.close()
    return best, total_steps


def _fmt(rate: float) -> str:
    return f"{rate:,.0f}"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device of the native env (default: cpu)")
    parser.add_argument("--sizes", default="1,64,1024,8192", help="comma-separated numbers of envs")
    parser.add_argument("--steps", type=int, default=50, help="native vector steps per timed chunk")
    parser.add_argument("--gym-seconds", type=float, default=4.0, help="seconds of Gymnasium steps per size")
    parser.add_argument("--repeats", type=int, default=30, help="timed chunks per figure (the best is kept)")
    parser.add_argument("--out", default=None, help="Markdown file (default: benchmarks/results/envs_<dev>.md)")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        parser.error(f"--sizes must be integers >= 1, got {args.sizes!r}")
    if args.steps < 1 or args.repeats < 1 or args.gym_seconds <= 0:
        parser.error("--steps and --repeats must be >= 1 and --gym-seconds > 0")
    try:
        device = torch.device(args.device)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as error:
        parser.error(f"--device {args.device!r} is not available: {error}")

    rows = []
    for num_envs in sizes:
        gym_rate, gym_steps = gym_steps_per_second(num_envs, args.gym_seconds, args.repeats)
        native_1 = native_steps_per_second(num_envs, args.steps, device, 1, False, args.repeats)
        native_1_checked = native_steps_per_second(num_envs, args.steps, device, 1, True, args.repeats)
        native_2 = native_steps_per_second(num_envs, args.steps, device, 2, False, args.repeats)
        torch.set_num_threads(1)
        row = (
            f"| {num_envs} | {_fmt(gym_rate)} ({gym_steps} vector steps) | {_fmt(native_1)} "
            f"| {_fmt(native_1_checked)} | {_fmt(native_2)} | {native_1 / gym_rate:,.1f}x |"
        )
        rows.append(row)
        print(row, flush=True)

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    header = [
        f"# Native batched CartPole vs Gymnasium SyncVectorEnv ({device.type})",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} logical CPUs, "
        f"load average (1, 5, 15 min) at the end of the run: {load}",
        f"- python {platform.python_version()}, torch {torch.__version__}, gymnasium {gym.__version__}, "
        f"numpy {np.__version__}",
        f"- native device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        f"- command: `python {' '.join(['benchmarks/envs.py', *sys.argv[1:]])}`",
        f"- native: {args.steps} vector steps per chunk; Gymnasium: ~{args.gym_seconds:g} s per size; "
        f"best of {args.repeats} chunks; random actions drawn inside the timed loop.",
        "",
        "Env steps per second (total over all envs):",
        "",
        "| envs | Gymnasium SyncVectorEnv | native, 1 thread | native, 1 thread, check_actions=True "
        "| native, 2 threads | native / Gymnasium (1 thread) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    table = "\n".join([*header, *rows]) + "\n"
    out = Path(args.out) if args.out else RESULTS_DIR / f"envs_{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_suffix(out.suffix + ".tmp")
    temporary.write_text(table)
    temporary.replace(out)
    print()
    print(table)
    print(f"written to {out}")
    return table


if __name__ == "__main__":
    main()
