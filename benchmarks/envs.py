"""Native batched CartPole against Gymnasium's SyncVectorEnv of CartPole-v1, in one run.

    python benchmarks/envs.py [--device cpu] [--sizes 1,64,1024,8192] [--native-seconds 1.5] [--gym-seconds 4]

Measures total env steps per second (``num_envs * vector steps / seconds``) with uniformly random actions
drawn inside the timed loop (on ``--device`` for the native env, with numpy for Gymnasium). Both use same-step
autoreset. The native env is timed with ``check_actions=False`` (no device sync) at 1 and 2 torch threads, and
with ``check_actions=True`` at 1 thread.

Both sides are timed the same way: the stepping is cut into chunks of about ``--chunk-ms`` milliseconds (at
least one vector step each, so a chunk of 8192 Gymnasium envs is one step), for ``--native-seconds`` per native
figure and ``--gym-seconds`` per Gymnasium figure (at least 3 chunks), and the fastest chunk is reported. On a
shared machine this filters out the time other processes take. Garbage collection is off inside the timed
loops. Prints a Markdown table and writes it to ``benchmarks/results/envs_<device type>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from emphatic_rl.envs.classic import CartPole

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def fastest_chunk_rate(
    step: Callable[[], None], num_envs: int, chunk_seconds: float, budget_seconds: float, sync: Callable[[], None]
) -> tuple[float, int]:
    """Run ``step`` in chunks of ~``chunk_seconds`` for ~``budget_seconds``; return (best env steps/s, steps)."""
    best, total_steps, spent, chunks = 0.0, 0, 0.0, 0
    while chunks < 3 or spent < budget_seconds:
        sync()
        start = time.perf_counter()
        steps = 0
        while steps < 1 or time.perf_counter() - start < chunk_seconds:
            step()
            steps += 1
        sync()
        elapsed = time.perf_counter() - start
        best = max(best, num_envs * steps / elapsed)
        total_steps += steps
        spent += elapsed
        chunks += 1
    return best, total_steps


def native_rate(
    num_envs: int, device: torch.device, threads: int, check_actions: bool, chunk: float, budget: float
) -> float:
    """Env steps/s of the native CartPole (``check_actions`` as given) with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    env = CartPole(num_envs=num_envs, device=device, check_actions=check_actions)
    env.reset(seed=0)
    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        env.step(torch.randint(0, 2, (num_envs,), generator=generator, device=device))

    for _ in range(20):  # warm-up
        step()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    return fastest_chunk_rate(step, num_envs, chunk, budget, sync)[0]


def gym_rate(num_envs: int, chunk: float, budget: float) -> tuple[float, int]:
    """Env steps/s of ``SyncVectorEnv(CartPole-v1)`` with same-step autoreset; also the vector steps timed."""
    vector_env = gym.make_vec(
        "CartPole-v1",
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
    )
    vector_env.reset(seed=0)
    rng = np.random.default_rng(0)

    def step() -> None:
        vector_env.step(rng.integers(0, 2, num_envs))

    for _ in range(2):  # warm-up
        step()
    result = fastest_chunk_rate(step, num_envs, chunk, budget, lambda: None)
    vector_env.close()
    del step  # the closure holds the envs
    gc.collect()  # leave no garbage of thousands of envs for the next measurement
    return result


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device of the native env (default: cpu)")
    parser.add_argument("--sizes", default="1,64,1024,8192", help="comma-separated numbers of envs")
    parser.add_argument("--chunk-ms", type=float, default=5.0, help="length of one timed chunk (ms)")
    parser.add_argument("--native-seconds", type=float, default=1.5, help="seconds per native figure")
    parser.add_argument("--gym-seconds", type=float, default=4.0, help="seconds per Gymnasium figure")
    parser.add_argument("--out", default=None, help="Markdown file (default: benchmarks/results/envs_<dev>.md)")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        parser.error(f"--sizes must be integers >= 1, got {args.sizes!r}")
    if min(args.chunk_ms, args.native_seconds, args.gym_seconds) <= 0:
        parser.error("--chunk-ms, --native-seconds and --gym-seconds must be > 0")
    try:
        device = torch.device(args.device)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as error:
        parser.error(f"--device {args.device!r} is not available: {error}")
    chunk = args.chunk_ms / 1000

    rows = []
    gc.collect()
    gc.disable()  # no garbage-collection pauses inside timed loops (both sides)
    try:
        for num_envs in sizes:
            gym_steps_per_s, gym_steps = gym_rate(num_envs, chunk, args.gym_seconds)
            native_1 = native_rate(num_envs, device, 1, False, chunk, args.native_seconds)
            native_1_checked = native_rate(num_envs, device, 1, True, chunk, args.native_seconds)
            native_2 = native_rate(num_envs, device, 2, False, chunk, args.native_seconds)
            torch.set_num_threads(1)
            row = (
                f"| {num_envs} | {gym_steps_per_s:,.0f} ({gym_steps} vector steps) | {native_1:,.0f} "
                f"| {native_1_checked:,.0f} | {native_2:,.0f} | {native_1 / gym_steps_per_s:,.1f}x |"
            )
            rows.append(row)
            print(row, flush=True)
    finally:
        gc.enable()

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    device_name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    header = [
        f"# Native batched CartPole vs Gymnasium SyncVectorEnv ({device.type})",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} logical CPUs, "
        f"load average (1, 5, 15 min) at the end of the run: {load}",
        f"- python {platform.python_version()}, torch {torch.__version__}, gymnasium {gym.__version__}, "
        f"numpy {np.__version__}",
        f"- native device: {device}{device_name}",
        f"- command: `python {' '.join(['benchmarks/envs.py', *sys.argv[1:]])}`",
        f"- fastest chunk of ~{args.chunk_ms:g} ms (at least one vector step) over {args.native_seconds:g} s "
        f"per native figure and {args.gym_seconds:g} s per Gymnasium figure; random actions drawn inside the "
        "timed loop; same-step autoreset on both sides.",
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
