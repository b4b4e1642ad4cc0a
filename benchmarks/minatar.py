"""Steps per second of the native batched MinAtar games against the reference ``minatar`` package.

Peers, measured in the same run with the same protocol (sticky actions 0.1, difficulty ramping on, full action
set, uniform random actions, observation produced every step, finished episodes reset):

- ``native numba``: our ``TensorEnv`` with ``N`` copies, compiled CPU kernels (``backend="numba"``, the CPU
  default; one ``step`` call per batch step, actions checked);
- ``native torch Kt``: the same env on batched torch operations (``backend="torch"``, the GPU path) with ``K``
  torch threads (on ``--device cuda`` the only native peer);
- ``reference loop``: ``N`` ``minatar.Environment`` objects stepped in a Python loop (``act`` + ``state``);
- ``gymnasium sync``: ``gymnasium.vector.SyncVectorEnv`` of ``MinAtar/<Game>-v0``;
- ``gymnax``: gymnax's ``<Game>-MinAtar`` with its default parameters, ``jax.jit(jax.vmap(step))`` on JAX's CPU
  backend on one thread, the action sampled inside, timed after compilation, each call waited for (see
  ``gymnax_peer.py``; skipped when jax/gymnax are not installed). gymnax's MinAtar has **no sticky actions** (ours
  keep them on, 0.1) and cuts episodes at 1000 steps (``max_steps_in_episode``); it computes a reset for every
  copy at every step and selects.

All peers take turns in interleaved rounds, so load from other jobs on a shared machine hits them alike; each
figure is the median over rounds, per wall-clock second and per second of this process's CPU time. Slow peers at large
``N`` are timed over few batch steps (at least one per round). Run:

    .venv/bin/python benchmarks/minatar.py                      # writes benchmarks/results/minatar_cpu.md
    .venv/bin/python benchmarks/minatar.py --games breakout --sizes 1024 --min-time 0.5 --no-write
    python benchmarks/minatar.py --device cuda                  # writes benchmarks/results/minatar_cuda.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import gymnax_peer  # sets XLA's single-thread flags before jax is imported
import numpy as np
import torch

from emphatic_rl.envs import make_env

GAMES = ("breakout", "freeway", "asterix", "space_invaders", "seaquest")
SIZES = (1, 64, 1024, 8192)
RESULTS_DIR = Path(__file__).parent / "results"


def import_reference():
    """The reference ``minatar`` package (this script's own name would shadow it when run from its folder)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    import minatar
    import minatar.gym

    return minatar


def measure(
    batch_step: Callable[[], None], num_envs: int, min_time: float, synchronize: Callable[[], None] = lambda: None
) -> tuple[float, float]:
    """Steps per second of ``batch_step`` (which advances ``num_envs`` copies once): ``(wall, cpu)``.

    ``wall`` divides by elapsed wall-clock time, ``cpu`` by this process's CPU time (user + system, kernel page
    faults included), which other jobs on a loaded machine barely disturb. Runs at least one call.
    ``synchronize`` waits for queued device work (CUDA) before the clock is read.
    """
    synchronize()
    calls, wall_start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        batch_step()
        calls += 1
        synchronize()
        wall = time.perf_counter() - wall_start
        if wall >= min_time:
            cpu = max(time.process_time() - cpu_start, 1e-9)
            return calls * num_envs / wall, calls * num_envs / cpu


def native_stepper(game: str, num_envs: int, backend: str, device: str) -> Callable[[], None]:
    env = make_env("minatar-" + game.replace("_", "-"), num_envs, backend=backend, device=device)
    env.reset(seed=0)
    generator = torch.Generator().manual_seed(0)
    actions = torch.randint(0, 6, (64, num_envs), generator=generator).to(device)
    counter = [0]

    def batch_step() -> None:
        env.step(actions[counter[0] % 64])
        counter[0] += 1

    return batch_step


def reference_stepper(game: str, num_envs: int) -> Callable[[], None]:
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

    return batch_step


def gymnasium_stepper(game: str, num_envs: int) -> Callable[[], None]:
    minatar = import_reference()
    gym_id = f"MinAtar/{game.title().replace('_', '')}-v0"
    if gym_id not in gym.registry:
        minatar.gym.register_envs()
    vector_env = gym.vector.SyncVectorEnv([lambda: gym.make(gym_id) for _ in range(num_envs)])
    vector_env.reset(seed=0)
    rng = np.random.default_rng(0)

    def batch_step() -> None:
        vector_env.step(rng.integers(0, 6, num_envs))

    return batch_step


def gymnax_id(game: str) -> str:
    return game.title().replace("_", "") + "-MinAtar"


def interleaved_rates(
    steppers: dict[str, tuple[Callable[[], None], int]],
    num_envs: int,
    min_time: float,
    rounds: int,
    synchronize: Callable[[], None] = lambda: None,
) -> dict[str, tuple[float, float]]:
    """Median ``(wall, cpu)`` rate of each peer over ``rounds`` rounds of ``min_time / rounds`` s each.

    Peers take turns within every round (native, reference, ...), so a burst of load from other jobs hits
    them alike. ``steppers[name] = (batch_step, threads)``.
    """
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in steppers}
    for batch_step, threads in steppers.values():  # warm-up
        torch.set_num_threads(threads)
        batch_step()
    for _ in range(rounds):
        for name, (batch_step, threads) in steppers.items():
            torch.set_num_threads(threads)
            samples[name].append(measure(batch_step, num_envs, min_time / rounds, synchronize))
    return {
        name: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
        for name, values in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--games", nargs="+", default=list(GAMES), choices=GAMES)
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per peer and size (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per measurement (default 5)")
    parser.add_argument(
        "--threads", nargs="+", type=int, default=[1, 2], help="torch threads of the torch backend (default 1 2)"
    )
    parser.add_argument(
        "--backends", nargs="+", default=["numba", "torch"], choices=["numba", "torch"], help="native backends"
    )
    parser.add_argument("--device", default="cpu", help="device of the native env (default cpu; cuda: torch only)")
    parser.add_argument("--no-gymnasium", action="store_true", help="skip the gymnasium SyncVectorEnv peer")
    parser.add_argument("--no-gymnax", action="store_true", help="skip the gymnax peer")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/minatar_<device>.md")
    args = parser.parse_args()
    if any(n < 1 for n in args.sizes) or args.min_time <= 0 or any(t < 1 for t in args.threads) or args.rounds < 1:
        parser.error("--sizes must be >= 1, --min-time > 0, --threads >= 1 and --rounds >= 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    backends = [b for b in args.backends if device.type == "cpu" or b == "torch"]
    if not backends:
        parser.error(f"no backend left for --device {args.device} (numba runs on CPU only)")
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    results = RESULTS_DIR / f"minatar_{device.type}.md"

    # native peers: name -> (backend, torch threads)
    native_peers = {}
    for backend in backends:
        if backend == "numba":
            native_peers["native numba"] = ("numba", 1)
        else:
            for threads in args.threads:
                native_peers[f"native torch {threads}t"] = ("torch", threads)
    native_names = list(native_peers)
    use_gymnax = not args.no_gymnax and gymnax_peer.gymnax_available()
    header = (
        "| game | N | "
        + " | ".join(f"{name} steps/s (cpu)" for name in native_names)
        + " | reference loop steps/s (cpu) | "
        + ("gymnasium sync steps/s (cpu) | " if not args.no_gymnasium else "")
        + ("gymnax jit+vmap steps/s (cpu) | " if use_gymnax else "")
        + " | ".join(f"{name} / reference wall (cpu)" for name in native_names)
        + ("".join(f" | {name} / gymnax wall (cpu)" for name in native_names) if use_gymnax else "")
        + " |\n|---|---:|"
        + "---:|" * ((2 + use_gymnax) * len(native_names) + 1 + (not args.no_gymnasium) + use_gymnax)
    )
    rows = []
    print(header, flush=True)
    for game in args.games:
        for num_envs in args.sizes:
            steppers: dict[str, tuple[Callable[[], None], int]] = {}
            for name, (backend, threads) in native_peers.items():
                steppers[name] = (native_stepper(game, num_envs, backend, args.device), threads)
            steppers["reference"] = (reference_stepper(game, num_envs), 1)
            if not args.no_gymnasium:
                steppers["gymnasium"] = (gymnasium_stepper(game, num_envs), 1)
            if use_gymnax:
                steppers["gymnax"] = (gymnax_peer.gymnax_stepper(gymnax_id(game), num_envs), 1)
            rates = interleaved_rates(steppers, num_envs, args.min_time, args.rounds, synchronize)
            cells = [f"{rates[name][0]:,.0f} ({rates[name][1]:,.0f})" for name in steppers]
            ratios = []
            for peer in ("reference", "gymnax") if use_gymnax else ("reference",):
                ratios += [
                    f"{rates[name][0] / rates[peer][0]:.1f}x ({rates[name][1] / rates[peer][1]:.1f}x)"
                    for name in native_names
                ]
            row = f"| {game} | {num_envs} | " + " | ".join(cells + ratios) + " |"
            rows.append(row)
            print(row, flush=True)

    if not args.no_write:
        cpu = platform.processor() or platform.machine()
        if device.type == "cuda":
            cpu += f" with {torch.cuda.get_device_name(device)}"
        try:
            load = ", load average {:.1f} / {:.1f} / {:.1f} at the end".format(*os.getloadavg())
        except OSError:
            load = ""
        command = " ".join(["benchmarks/minatar.py", *sys.argv[1:]])
        text = "\n".join(
            [
                f"# MinAtar: native batched env ({device.type}) vs the reference `minatar` (CPU)",
                "",
                f"Machine: {cpu}, {os.cpu_count()} logical CPUs{load}; torch {torch.__version__}, "
                f"numpy {np.__version__}, gymnasium {gym.__version__}"
                + (f", {gymnax_peer.gymnax_versions()}" if use_gymnax else "")
                + ".",
                "Protocol: sticky actions 0.1, difficulty ramping on, 6 actions, uniform random actions, observation"
                " every step, finished episodes reset. Environment steps per second (N copies x batch steps / s);",
                "in parentheses the same per second of this process's CPU time (user + system), which the other"
                " jobs on a shared machine disturb far less than wall-clock time.",
                f"Peers take turns in {args.rounds} interleaved rounds ({args.min_time} s per peer in all); each"
                " figure is the median over rounds. `native numba`: compiled kernels (the CPU default);"
                " `native torch Kt`: batched torch operations with K torch threads. gymnax: `jit(vmap(step))` on"
                " JAX's CPU backend, one thread, after compilation; it has no sticky actions (ours: 0.1) and cuts"
                " episodes at 1000 steps.",
                f"Command: `.venv/bin/python {command}`",
                "",
                header,
                *rows,
                "",
            ]
        )
        results.parent.mkdir(parents=True, exist_ok=True)
        temporary = results.with_suffix(".md.tmp")
        temporary.write_text(text)
        temporary.replace(results)
        print(f"wrote {results}")


if __name__ == "__main__":
    main()
