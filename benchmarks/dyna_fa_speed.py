"""Real steps per second of one population of the Dyna-with-a-neural-Q study, this checkout against another one.

    python benchmarks/dyna_fa_speed.py --reference /path/to/other/checkout        # -> benchmarks/results/dyna_fa_cpu.md
    python benchmarks/dyna_fa_speed.py --reference /path/to/other/checkout --quick   # prints only

A *population step* is one real step of every member of one study population: act, env step, store, the direct
update, planning, the target update (``emphatic_rl.studies.dyna_fa.run_population``, whatever loop that checkout
has). The workload is the study's: 10 seeds x (perfect, doses 0.1 / 0.25 / 0.5, model-free) = 50 members, 2
planning steps of 32, ``n = 3``, Adam 3e-3, a 2 x ``--hidden`` Q-network, on CartPole, Catcher and Puddle World for
each of the four variants, with ``--planning-update`` (default ``separate``: one Adam step per planning step, what a
checkout from before that option does, so both sides do the same work; ``mixed`` makes one Adam step per real step).
Each measurement is a fresh process (``PYTHONPATH`` set to the checkout) that first runs a throwaway 150-step
population (imports, numba compilation), then times a 150-step run and a ``150 + --steps``-step run of the same
seed and reports the difference per step: the CPU time of ``--steps`` population steps after the replay is past
``warmup = 100``.

Method: ``--rounds`` rounds; in each round every workload runs on both checkouts back to back (the order alternating
between rounds). The table gives the median steps per second over rounds and the median of the per-round ratios
this / reference; single-threaded (torch, numba and BLAS at one thread); the load average is recorded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import sys, time, torch
torch.set_num_threads(1)
from emphatic_rl.studies.dyna_fa import FAStudyConfig, run_population
env, variant, steps, hidden, update = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
options = {"catcher": {"max_episode_steps": 500}, "puddle-world": {"max_episode_steps": 300}}.get(env, {})
# a checkout from before planning_update existed makes separate updates
extra = {"planning_update": update} if "planning_update" in FAStudyConfig.__dataclass_fields__ else {}
if not extra and update != "separate":
    raise SystemExit(f"this checkout has no planning_update option (it makes separate updates); got {update!r}")
def config(total):
    return FAStudyConfig(env=env, env_options=options, seeds=10, steps=total, doses=[0.0, 0.1, 0.25, 0.5],
                         planning_steps=2, planning_batch=32, rollout_length=3, learning_rate=3e-3, eval_every=50,
                         hidden=hidden, **extra)
conditions = ["perfect", "dose 0.1", "dose 0.25", "dose 0.5", "model-free"]
run_population(config(150), variant, 0, conditions, 3)  # imports, numba compilation / cache loading
started = time.process_time()
run_population(config(150), variant, 0, conditions, 3)
warm_time = time.process_time() - started
started = time.process_time()
run_population(config(150 + steps), variant, 0, conditions, 3)
print((time.process_time() - started - warm_time) / steps)
"""

ENVS = ("cartpole", "catcher", "puddle-world")
VARIANTS = ("one-step-successor", "multi-step-successor", "one-step-predecessor", "multi-step-predecessor")


def measure(tree: Path, env: str, variant: str, steps: int, hidden: int, update: str) -> float:
    """Population steps per second (CPU time) of ``tree``'s code."""
    environment = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, env, variant, str(steps), str(hidden), update],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        cwd=tree,
    )
    return 1.0 / float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of the code to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300, help="timed population steps per measurement")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--envs", default=",".join(ENVS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--planning-update",
        default="separate",
        choices=("separate", "mixed"),
        help="planning_update of this checkout's agent (and of the reference's, if it has the option; a checkout "
        "from before it makes separate updates). Default separate: the same optimizer work on both sides",
    )
    parser.add_argument("--quick", action="store_true", help="one round of 150 steps, print only")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps = 1, 150
    here = Path(__file__).resolve().parents[1]
    workloads = [(e, v) for e in args.envs.split(",") for v in args.variants.split(",")]
    rates: dict[tuple[str, str], dict[str, list[float]]] = {w: {"this": [], "reference": []} for w in workloads}
    loads = []
    for round_index in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for workload in workloads:
            order = [("this", here), ("reference", args.reference)]
            for name, tree in order if round_index % 2 == 0 else order[::-1]:
                rates[workload][name].append(measure(tree, *workload, args.steps, args.hidden, args.planning_update))
            this, ref = rates[workload]["this"][-1], rates[workload]["reference"][-1]
            print(f"round {round_index + 1} {workload[0]:13s} {workload[1]:23s} {this:7.1f} vs {ref:7.1f} steps/s")
    lines = [
        "| env | variant | this (steps/s) | reference (steps/s) | ratio (median of rounds) |",
        "|---|---|---|---|---|",
    ]
    for (env, variant), per in rates.items():
        ratios = [a / b for a, b in zip(per["this"], per["reference"], strict=True)]
        lines.append(
            f"| {env} | {variant} | {statistics.median(per['this']):.1f} | {statistics.median(per['reference']):.1f} "
            f"| {statistics.median(ratios):.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    print(f"load average (1 min) at the rounds' starts: {', '.join(f'{x:.1f}' for x in loads)}")
    if not args.quick:
        out = here / "benchmarks" / "results" / "dyna_fa_cpu.md"
        out.write_text(
            "# Dyna with a neural Q: population steps per second (CPU, 1 thread)\n\n"
            f"`python benchmarks/dyna_fa_speed.py --reference <checkout> --rounds {args.rounds} --steps {args.steps}"
            f" --hidden {args.hidden} --planning-update {args.planning_update}`; 50 members per population (the "
            f"study's); {args.rounds} interleaved rounds, "
            "medians.\n\n"
            f"{table}\n\nLoad average (1 min) at the rounds' starts: {', '.join(f'{x:.1f}' for x in loads)} "
            "(2 cores shared with other jobs).\n"
        )
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
