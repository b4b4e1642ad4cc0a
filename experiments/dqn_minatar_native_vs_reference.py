"""DQN on native batched MinAtar Breakout (both backends: compiled numba kernels, batched torch) against DQN on the
reference `minatar` Breakout (through the Gymnasium adapter), same seeds and hyperparameters, 5 seeds each as one
population run.

    python experiments/dqn_minatar_native_vs_reference.py --steps 15000 --out runs/dqn-minatar
    python experiments/dqn_minatar_native_vs_reference.py --report-only --out runs/dqn-minatar \
        --results experiments/results/dqn-minatar-native-vs-reference

Both envs: full action set (6 actions), sticky actions 0.1, difficulty ramping on (the reference's defaults;
`gym:MinAtar/Breakout-v0` is the reference with the full action set). Evaluation: greedy policy, 10 episodes per seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emphatic_rl.config import TrainConfig
from emphatic_rl.logging import read_metrics
from emphatic_rl.stats import mean_ci

#: arm -> (env name, env options)
ENVS = {
    "native-numba": ("minatar-breakout", {"backend": "numba"}),
    "native-torch": ("minatar-breakout", {"backend": "torch"}),
    "reference": ("gym:MinAtar/Breakout-v0", {}),
}


def run(name: str, steps: int, out: Path, seeds: int) -> None:
    from emphatic_rl.train import build_run, train

    env, env_options = ENVS[name]
    config = TrainConfig(agent="dqn", env=env, env_options=env_options, steps=steps, population_size=seeds,
                         eval_every=2500, eval_episodes=10, progress=False, agent_options={"learning_starts": 1000})
    train(config, out / name, run=build_run(config))


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95% t-interval (``emphatic_rl.stats``)."""
    return mean_ci(values)


def report(out: Path, results: Path) -> str:
    curves: dict[str, dict[int, list[float]]] = {}
    for name in ENVS:
        if not (out / name / "metrics.csv").exists():
            continue
        by_step: dict[int, dict[int, float]] = {}
        for step, metric, member, value in read_metrics(out / name / "metrics.csv"):
            if metric == "eval/return":
                by_step.setdefault(step, {})[member] = value
        curves[name] = {step: [v for _, v in sorted(members.items())] for step, members in sorted(by_step.items())}
    arms = list(curves)
    lines = [
        "# DQN: native batched MinAtar Breakout vs the reference `minatar` Breakout",
        "",
        "Command: `python experiments/dqn_minatar_native_vs_reference.py --steps 15000 --out runs/dqn-minatar` (then",
        "`--report-only`). 5 seeds each as one population run, identical DQN options (defaults, learning from step",
        "1000), full action set, sticky actions 0.1, difficulty ramping on; greedy evaluation, 10 episodes per seed.",
        "Arms: " + ", ".join(f"`{a}` ({ENVS[a][0]}, {ENVS[a][1] or 'defaults'})" for a in arms) + ".",
        "",
        "| step | " + " | ".join(f"{a}: mean +- 95% CI" for a in arms) + " | "
        + " | ".join(f"{a} per seed" for a in arms) + " |",
        "|---:|" + "---|" * (2 * len(arms)),
    ]
    for step in sorted(set.intersection(*(set(curves[a]) for a in arms))):
        cells = []
        for a in arms:
            mean, half = t_interval(curves[a][step])
            cells.append(f"{mean:.2f} +- {half:.2f}")
        cells += [", ".join(f"{v:.1f}" for v in curves[a][step]) for a in arms]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    results.mkdir(parents=True, exist_ok=True)
    (results / "README.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=15000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/dqn-minatar"))
    parser.add_argument("--results", type=Path, default=Path("experiments/results/dqn-minatar-native-vs-reference"))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--arms", nargs="+", default=list(ENVS), choices=list(ENVS), help="arms to run (default all)")
    args = parser.parse_args()
    if not args.report_only:
        for name in args.arms:
            run(name, args.steps, args.out, args.seeds)
    print(report(args.out, args.results))


if __name__ == "__main__":
    main()
