"""Wall time of a small study on the local backend and on Ray with 1 and 2 local workers.

    python benchmarks/sweep_ray.py [--rounds 3] [--steps 1000]

The study: the N18 three-state counterexample with the oracle critic, OffPAC (2 settings) and ACE (4 settings),
2 runs, ``max_population = 2``: six population runs of P = 2. Rounds are interleaved (local, Ray 1 worker, Ray 2
workers) and the medians reported. A Ray figure includes starting the local Ray instance and its worker processes
(each imports torch), which a long study pays once. Needs Ray (``pip install 'emphatic-rl[ray]'``).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

STUDY = """
name = "ray-bench"
runs = 2
max_population = 2
[base]
env = "counterexample-three-state"
steps = {steps}
eval_every = {eval_every}
eval_episodes = 1
eval_max_steps = 5
log_every = {eval_every}
checkpoint_every = {eval_every}
progress = false
[base.env_options]
observation = "state"
[base.agent_options]
critic = "oracle"
[grid]
alpha_actor = [0.5, 0.2]
[[variants]]
name = "offpac"
agent = "offpac"
[[variants]]
name = "ace-eta"
agent = "ace"
grid = {{ eta = [0.0, 1.0] }}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    import ray
    import torch

    from emphatic_rl.studies.sweep import load_study, plan_study, run_study
    from emphatic_rl.studies.sweep_ray import run_study_ray

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    path = root / "study.toml"
    path.write_text(STUDY.format(steps=args.steps, eval_every=max(1, args.steps // 2)))
    chunks = len(plan_study(load_study(path)))
    times: dict[str, list[float]] = {"local": [], "ray, 1 worker": [], "ray, 2 workers": []}
    for r in range(args.rounds):
        for name in times:
            out = root / f"{r}-{name.replace(' ', '').replace(',', '-')}"
            start = time.perf_counter()
            if name == "local":
                run_study(load_study(path), out, log=lambda m: None)
            else:
                ray.init(num_cpus=int(name.split()[1]), include_dashboard=False, logging_level=logging.ERROR,
                         log_to_driver=False)
                run_study_ray(load_study(path), out, log=lambda m: None)
                ray.shutdown()
            times[name].append(time.perf_counter() - start)
            print(f"round {r}: {name}: {times[name][-1]:.1f} s", flush=True)
    load = os.getloadavg()
    print(f"\n{chunks} population runs x {args.steps} steps, {args.rounds} interleaved rounds, load average "
          f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs")
    base = statistics.median(times["ray, 1 worker"])
    print("| backend | median wall time | rounds | vs Ray 1 worker |\n|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} s | {', '.join(f'{v:.1f}' for v in values)} | {base / median:.2f}x |")


if __name__ == "__main__":
    main()
