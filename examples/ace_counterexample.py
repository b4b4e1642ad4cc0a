"""Train a population of linear ACE and OffPAC learners on the three-state counterexample, then evaluate and plot.

Imani, Graves and White (2018) built the three-state counterexample so that OffPAC's semi-gradient converges to the
wrong policy (J = 0.875) while ACE, weighting its updates by the emphatic weighting, reaches the optimum (J* = 1.25).
This script runs both as ONE population: ``2 * runs`` learners (eta = 0 is OffPAC, eta = 1 is ACE) fed by ``runs``
shared behaviour streams, with the exact value function as critic so that only the gradient estimator differs.

    python examples/ace_counterexample.py --runs 30 --steps 4000 --out runs/example-ace

Prints the exact objective J of each group's final policies and writes ``curves.png`` (mean exact J against steps,
with a 95% t-interval band) into the run folder.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from emphatic_rl.config import TrainConfig
from emphatic_rl.logging import read_metrics
from emphatic_rl.stats import mean_ci
from emphatic_rl.train import build_run, train


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=positive_int, default=30, help="behaviour streams (runs) per method (30)")
    parser.add_argument("--steps", type=positive_int, default=4000, help="steps per stream; 2 steps = 1 episode (4000)")
    parser.add_argument("--alpha", type=float, default=0.1, help="actor step size (0.1, as in the paper's figure 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="run folder (default runs/example-ace-<time>)")
    parser.add_argument("--no-plot", action="store_true", help="skip the figure")
    args = parser.parse_args(argv)
    if not args.alpha > 0:
        parser.error(f"--alpha must be > 0, got {args.alpha}")
    return args


def t_interval(values: torch.Tensor) -> float:
    """Half-width of the 95% t-interval of the mean over runs (emphatic_rl.stats: scipy's t quantile)."""
    return mean_ci(values.double().numpy())[1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out or f"runs/example-ace-{time.strftime('%Y%m%d-%H%M%S')}")
    etas = [0.0] * args.runs + [1.0] * args.runs  # members 0..R-1: OffPAC, R..2R-1: ACE
    config = TrainConfig(
        agent="ace",
        env="counterexample-three-state",
        steps=args.steps,
        seed=args.seed,
        num_envs=args.runs,  # R behaviour streams; member p reads stream p % R, so both methods see the same data
        population_size=2 * args.runs,
        eval_every=max(args.steps // 20, 1),
        eval_episodes=1,
        eval_max_steps=10,
        log_every=max(args.steps // 20, 1),
        checkpoint_every=args.steps,
        progress=False,
        env_options={"observation": "state"},
        agent_options={"critic": "oracle", "alpha_actor": args.alpha, "eta": etas},
    )
    run = build_run(config)
    train(config, out, run=run)

    final_j = run.agent.exact_objective().double()  # [P]: the exact J_mu of each member's final policy
    groups = {"OffPAC (eta = 0)": final_j[: args.runs], "ACE (eta = 1)": final_j[args.runs :]}
    print(
        f"exact J of the final policies ({args.runs} runs each, {args.steps} steps; J* = 1.25, OffPAC's fixed "
        f"point 0.875):"
    )
    for name, values in groups.items():
        high = int((values >= 1.2).sum())
        print(f"  {name:17s} {float(values.mean()):.3f} +- {t_interval(values):.3f}   runs >= 1.2: {high}/{args.runs}")

    # The learning curves: metrics.csv holds one row per (step, metric, member).
    curves: dict[int, dict[int, float]] = defaultdict(dict)
    for step, name, member, value in read_metrics(out / "metrics.csv"):
        if name.endswith("exact_J"):
            curves[step][member] = value
    steps = sorted(curves)
    if not args.no_plot and steps:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for index, (name, colour) in enumerate(zip(groups, ("C0", "C1"), strict=True)):
            offset = index * args.runs
            table = torch.tensor(
                [[curves[s][offset + r] for r in range(args.runs)] for s in steps], dtype=torch.float64
            )
            mean = table.mean(1)
            half = torch.tensor([t_interval(row) for row in table])
            ax.plot(steps, mean, color=colour, label=name)
            ax.fill_between(steps, mean - half, mean + half, color=colour, alpha=0.2, linewidth=0)
        ax.axhline(1.25, color="grey", linestyle="--", linewidth=1, label="J* = 1.25")
        ax.set(
            xlabel="steps",
            ylabel="exact J of the target policy",
            title=f"three-state counterexample, mean and 95% t-interval, n = {args.runs}",
        )
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, frameon=False)  # off the data
        fig.tight_layout()
        fig.savefig(out / "curves.png", dpi=120)
        print(f"figure: {out / 'curves.png'}")
    print(f"run folder: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
