"""Native batched classic-control envs and Puddle World against Gymnasium's batched vector envs and gymnax.

    python benchmarks/envs.py                       # writes benchmarks/results/envs_cpu.md
    python benchmarks/envs.py --envs cartpole --sizes 64 1024 --rounds 3 --no-write

Peers, each with its default settings, single-threaded (``torch.set_num_threads(1)``, numba kernels are serial,
XLA's CPU backend on one thread), stepping ``N`` copies with uniformly random actions:

- ``ours``: our ``TensorEnv`` as a user gets it on the CPU (``make_env(name, num_envs=N)``: the compiled numba
  backend, actions checked, same-step autoreset, new output tensors every step, ``final_obs`` included; the memory
  under them is reused once nothing refers to an earlier step's outputs, as here where each result is dropped);
- ``ours torch``: the same env on its torch backend (``set_backend("torch")``, the path for GPUs);
- ``gymnasium``: Gymnasium's batched vector env where it has one (``gymnasium.make_vec(id, num_envs=N,
  vectorization_mode="vector_entry_point")``: ``CartPoleVectorEnv``, numpy over all copies). Gymnasium 1.4 has
  none for MountainCar-v0, Acrobot-v1 and Pendulum-v1; for those its vector env is ``SyncVectorEnv``
  (``vectorization_mode="sync"``, a Python loop over copies), measured and labelled as such;
- ``gymnax``: gymnax's env of the same id, ``jax.jit(jax.vmap(step))`` with the action sampled inside, timed after
  compilation, each call waited for (see ``gymnax_peer.py``); skipped when jax/gymnax are not installed.

Puddle World has no peer in either library (ours only).

The action batches for ours and Gymnasium are drawn before timing (64 batches, used in turn; the same int64
numbers, a torch tensor over the numpy array for ours); gymnax samples inside its jitted step. Per step Gymnasium's
``CartPoleVectorEnv`` does less than ours: it checks the actions too, but resets ended copies on the following step
(no final observation) and returns four arrays, where ours also computes and returns ``final_obs``.

Peers take turns in ``--rounds`` interleaved rounds of ``--seconds`` each (at least one batch
step), so load from other jobs hits all alike; each figure is the median over rounds of env steps per second
(``N`` x batch steps / wall-clock seconds); ratios are ratios of medians. The load average is noted before and
after. A second table gives the fixed cost of one ``step`` at small ``N`` (microseconds), with the kernel call
alone (preallocated outputs, actions already arrays) to show what the checks and the new output tensors cost.
"""

from __future__ import annotations

import argparse
import gc
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

ENVS = ("cartpole", "mountain-car", "acrobot", "pendulum", "puddle-world")
GYM_IDS = {
    "cartpole": "CartPole-v1",
    "mountain-car": "MountainCar-v0",
    "acrobot": "Acrobot-v1",
    "pendulum": "Pendulum-v1",
}
SIZES = (1, 64, 1024, 8192)
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def rate(batch_step: Callable[[], None], num_envs: int, seconds: float) -> tuple[float, float]:
    """Env steps per second of ``batch_step`` over about ``seconds`` (at least one call): per wall-clock second and
    per second of this process's CPU time (all its threads), which other jobs on a shared machine disturb less."""
    calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        batch_step()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            cpu = max(time.process_time() - cpu_start, 1e-9)
            return calls * num_envs / elapsed, calls * num_envs / cpu


def action_batches(name: str, num_envs: int, num_actions: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if name == "pendulum":
        return rng.uniform(-2.0, 2.0, size=(64, num_envs, 1)).astype(np.float32)
    return rng.integers(0, num_actions, size=(64, num_envs))


def ours_stepper(name: str, num_envs: int, backend: str) -> Callable[[], None]:
    env = make_env(name, num_envs=num_envs).set_backend(backend)
    env.reset(seed=0)
    n_actions = getattr(env.action_spec, "n", 0)
    actions = [torch.from_numpy(a) for a in action_batches(name, num_envs, n_actions)]
    counter = [0]

    def batch_step() -> None:
        env.step(actions[counter[0] % 64])
        counter[0] += 1

    return batch_step


def kernel_only_stepper(name: str, num_envs: int) -> Callable[[], None]:
    """The classic envs' numba step kernel alone, on preallocated outputs (no checks, no fresh tensors), the actions
    already arrays; ended copies are still restarted (their start states drawn from the generator), as in ``step``."""
    env = make_env(name, num_envs=num_envs)
    env.reset(seed=0)
    n_actions = getattr(env.action_spec, "n", 0)
    batches = [np.ascontiguousarray(a) for a in action_batches(name, num_envs, n_actions)]
    addresses = [batch.ctypes.data for batch in batches]
    env._block_steps = 1
    env._new_output_blocks()  # one step's outputs, reused by every call
    counter = [0]

    def batch_step(batches: list[np.ndarray] = batches) -> None:  # keeps the arrays behind the addresses alive
        state = env._state_array()
        count = env._run_step_kernel(addresses[counter[0] % 64], state, 0)
        if count:
            fresh = env._fresh_states(count)
            env._restart_rows(env._ended, count, fresh.numpy(), False, state)
            env._observe_kernel(env._ended, count, state, env._blocks[1], 0)
        counter[0] += 1

    return batch_step


def gymnasium_stepper(name: str, num_envs: int) -> tuple[Callable[[], None], str]:
    gym_id = GYM_IDS[name]
    batched = gym.spec(gym_id).vector_entry_point is not None
    mode = "vector_entry_point" if batched else "sync"
    vector_env = gym.make_vec(gym_id, num_envs=num_envs, vectorization_mode=mode)
    vector_env.reset(seed=0)
    n_actions = getattr(vector_env.single_action_space, "n", 0)
    actions = action_batches(name, num_envs, int(n_actions))
    counter = [0]

    def batch_step() -> None:
        vector_env.step(actions[counter[0] % 64])
        counter[0] += 1

    return batch_step, "batched" if batched else "sync loop"


def load_average() -> str:
    try:
        return "{:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg())
    except OSError:
        return "n/a"


def median_rates(
    steppers: dict[str, Callable[[], None]], num_envs: int, seconds: float, rounds: int
) -> dict[str, tuple[float, float]]:
    """Median over ``rounds`` interleaved rounds of each peer's env steps per second: ``(wall, cpu)``. The order of
    the peers is reversed every other round (the first to run after another peer runs on colder caches)."""
    for batch_step in steppers.values():  # warm-up
        batch_step()
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in steppers}
    for round_index in range(rounds):
        order = list(steppers.items())
        for name, batch_step in order if round_index % 2 == 0 else order[::-1]:  # no peer always first
            gc.collect()
            gc.disable()
            try:
                rates[name].append(rate(batch_step, num_envs, seconds))
            finally:
                gc.enable()
    return {
        name: (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
        for name, values in rates.items()
    }


def rate_cell(medians: dict[str, tuple[float, float]], key: str, suffix: str = "") -> str:
    if key not in medians:
        return "-"
    wall, cpu = medians[key]
    return f"{wall:,.0f} ({cpu:,.0f}){suffix}"


def ratio_cell(medians: dict[str, tuple[float, float]], key: str) -> str:
    if key not in medians:
        return "-"
    (ours_wall, ours_cpu), (wall, cpu) = medians["ours"], medians[key]
    return f"{ours_wall / wall:.1f}x ({ours_cpu / cpu:.1f}x)"


def fixed_costs(names: list[str], sizes: list[int], seconds: float, rounds: int) -> list[str]:
    """CPU microseconds per ``step`` at small ``N`` (medians): ours (numba), its kernel alone, ours torch,
    Gymnasium."""
    rows = []
    for name in names:
        for num_envs in sizes:
            steppers = {"ours": ours_stepper(name, num_envs, "numba")}
            if name != "puddle-world":
                steppers["kernel"] = kernel_only_stepper(name, num_envs)
            steppers["torch"] = ours_stepper(name, num_envs, "torch")
            if name in GYM_IDS:
                steppers["gymnasium"] = gymnasium_stepper(name, num_envs)[0]
            medians = median_rates(steppers, num_envs, seconds, rounds)
            us = {key: 1e6 * num_envs / value[1] for key, value in medians.items()}  # CPU time: least disturbed
            kernel = f"{us['kernel']:.1f}" if "kernel" in us else "-"
            checks = f"{us['ours'] - us['kernel']:.1f}" if "kernel" in us else "-"
            gym_cell = f"{us['gymnasium']:.1f}" if "gymnasium" in us else "-"
            row = f"| {name} | {num_envs} | {us['ours']:.1f} | {kernel} | {checks} | {us['torch']:.1f} | {gym_cell} |"
            rows.append(row)
            print(row, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=ENVS)
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="numbers of copies N")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--seconds", type=float, default=0.25, help="seconds per peer and round (default 0.25)")
    parser.add_argument("--no-gymnax", action="store_true", help="skip the gymnax peer")
    parser.add_argument("--no-torch", action="store_true", help="skip our torch backend")
    parser.add_argument("--no-write", action="store_true", help="do not write the results file")
    parser.add_argument("--out", default=None, help="results file (default benchmarks/results/envs_cpu.md)")
    args = parser.parse_args(argv)
    if not args.sizes or min(args.sizes) < 1 or args.rounds < 1 or args.seconds <= 0:
        parser.error("--sizes must be integers >= 1, --rounds >= 1 and --seconds > 0")
    torch.set_num_threads(1)
    use_gymnax = not args.no_gymnax and gymnax_peer.gymnax_available()
    load_before = load_average()
    started = time.perf_counter()

    header = (
        "| env | N | ours (numba) | ours torch | Gymnasium | gymnax jit+vmap | ours / Gymnasium | ours / gymnax |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    print(header, flush=True)
    rows = []
    for name in args.envs:
        for num_envs in args.sizes:
            steppers: dict[str, Callable[[], None]] = {"ours": ours_stepper(name, num_envs, "numba")}
            if not args.no_torch:
                steppers["torch"] = ours_stepper(name, num_envs, "torch")
            kind = ""
            if name in GYM_IDS:
                steppers["gymnasium"], kind = gymnasium_stepper(name, num_envs)
                if use_gymnax:
                    steppers["gymnax"] = gymnax_peer.gymnax_stepper(GYM_IDS[name], num_envs)
            medians = median_rates(steppers, num_envs, args.seconds, args.rounds)
            row = (
                f"| {name} | {num_envs} | {rate_cell(medians, 'ours')} | {rate_cell(medians, 'torch')} | "
                f"{rate_cell(medians, 'gymnasium', f' {kind}' if kind else '')} | {rate_cell(medians, 'gymnax')} | "
                f"{ratio_cell(medians, 'gymnasium')} | {ratio_cell(medians, 'gymnax')} |"
            )
            rows.append(row)
            print(row, flush=True)
            del steppers
            gc.collect()

    small = [n for n in args.sizes if n <= 64] or [min(args.sizes)]
    cost_header = (
        "| env | N | ours step | kernel alone | checks + fresh outputs | ours torch step | Gymnasium step |\n"
        "|---|---:|---:|---:|---:|---:|---:|"
    )
    print(cost_header, flush=True)
    cost_rows = fixed_costs(args.envs, small, args.seconds, args.rounds)
    load_after = load_average()
    minutes = (time.perf_counter() - started) / 60

    if args.no_write:
        return
    versions = f"torch {torch.__version__}, numpy {np.__version__}, gymnasium {gym.__version__}"
    if use_gymnax:
        versions += ", " + gymnax_peer.gymnax_versions()
    import numba

    versions += f", numba {numba.__version__}"
    command = " ".join(["python benchmarks/envs.py", *(argv if argv is not None else sys.argv[1:])])
    text = "\n".join(
        [
            "# Native classic-control envs and Puddle World vs Gymnasium's vector envs and gymnax (CPU)",
            "",
            f"- machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} logical CPUs; "
            f"load average (1 / 5 / 15 min) {load_before} before, {load_after} after ({minutes:.1f} min)",
            f"- python {platform.python_version()}, {versions}",
            "- single thread on every side (torch 1 thread, serial numba kernels, XLA CPU on one thread)",
            f"- command: `{command}`",
            f"- {args.rounds} interleaved rounds of {args.seconds:g} s per peer; medians of env steps per second "
            "(N copies x batch steps / wall-clock s); ratios are ratios of medians",
            "- ours: `make_env(name, num_envs=N)` defaults (numba backend on CPU, actions checked, same-step "
            "autoreset with `final_obs`, new output tensors every step); Gymnasium: `make_vec(..., "
            'vectorization_mode="vector_entry_point")` where it exists (CartPole), else `SyncVectorEnv` (a Python '
            "loop; Gymnasium has no batched MountainCar, Acrobot or Pendulum); gymnax: `jit(vmap(step))` with the "
            "action sampled inside, after compilation, each call waited for",
            "- actions for ours and Gymnasium drawn before timing (the same numbers); Gymnasium's `CartPoleVectorEnv` "
            "does less per step than ours (next-step autoreset: no final observation, four arrays returned)",
            "",
            "Env steps per second, per wall-clock second and (in parentheses) per second of the process's CPU "
            "time; Gymnasium's kind of vector env after its figure:",
            "",
            header,
            *rows,
            "",
            "Fixed cost of one batch step at small N, microseconds of CPU time (medians; wall-clock time on a loaded "
            "machine mostly measures the other jobs): `kernel alone` is the compiled step "
            "on preallocated outputs with actions already arrays (restarts included); `checks + fresh outputs` is "
            "the difference, the price of the shape/dtype checks and of the five new output tensors `step` "
            "returns (the API promises that a returned tensor is never overwritten by a later step).",
            "",
            cost_header,
            *cost_rows,
            "",
        ]
    )
    out = Path(args.out) if args.out else RESULTS_DIR / "envs_cpu.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_suffix(".md.tmp")
    temporary.write_text(text)
    temporary.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
