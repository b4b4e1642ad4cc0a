"""Table and figure of the native-Pendulum comparison (DDPG, emphatic DDPG, Gaussian ACE, Gaussian OffPAC) from
`emphatic-rl train` run folders, each a population run (population member = seed).

Usage: python experiments/dpg_pendulum_report.py LABEL=RUN_DIR [LABEL=RUN_DIR ...] [--steps N]
Reads ``eval/return`` (mean of the evaluation episodes, per member) from each ``metrics.csv``; only evaluation steps
that every run has reached are compared (``--steps`` caps them further). Writes experiments/results/dpg/pendulum.png
and pendulum_table.md. Intervals are 95% Student-t intervals over seeds (members).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).parent / "results" / "dpg"


def read_eval(run_dir: Path) -> dict[int, dict[int, float]]:
    """``{step: {member: eval return}}`` from ``metrics.csv`` (columns step, name, member, value)."""
    table: dict[int, dict[int, float]] = defaultdict(dict)
    with (run_dir / "metrics.csv").open() as f:
        for row in csv.reader(f):
            if len(row) == 4 and row[1] == "eval/return":
                table[int(row[0])][int(row[2])] = float(row[3])
    return dict(sorted(table.items()))


def mean_ci(values):  # values: [seeds] numpy array -> (mean, half width of the 95% t interval)
    from emphatic_rl.stats import mean_ci as t_mean_ci

    return t_mean_ci(values)


def main(argv: list[str] | None = None) -> None:
    import numpy as np

    from emphatic_rl import plots

    plt = plots.figure()

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    parser.add_argument("--steps", type=int, default=None, help="compare evaluations up to this step only")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    runs = []
    for pair in args.runs:
        label, _, path = pair.partition("=")
        evals = {s: row for s, row in read_eval(Path(path)).items() if row}
        runs.append((label, evals))
    common = set.intersection(*(set(evals) for _, evals in runs))
    if args.steps is not None:
        common = {s for s in common if s <= args.steps}
    if not common:
        raise SystemExit("no evaluation step is common to every run")
    last = max(common)
    lines = [
        f"Native Pendulum, evaluation return (mean of 10 episodes, mean action / deterministic policy) at step {last}",
        "",
        "| variant | seeds | final eval return (mean ± 95% CI) | best eval return (mean ± 95% CI) | final per seed |"
        " first step with mean > -200 |",
        "|---|---|---|---|---|---|",
    ]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    styles = plots.variant_styles([label for label, _ in runs])
    seeds = set()
    for index, (label, evals) in enumerate(runs):
        steps = np.array(sorted(s for s in evals if s <= last))
        values = np.array([[v for _, v in sorted(evals[s].items())] for s in steps])  # [C, seeds]
        curve = [mean_ci(row) for row in values]
        mean = np.array([m for m, _ in curve])
        half = np.array([h for _, h in curve])
        plots.plot_band(ax, steps, mean, half, label, styles[label], index)
        seeds.add(values.shape[1])
        final_mean, final_half = mean_ci(values[-1])
        best_mean, best_half = mean_ci(values.max(axis=0))
        solved = steps[mean > -200]
        per_seed = ", ".join(f"{v:.0f}" for v in values[-1])
        lines.append(
            f"| {label} | {values.shape[1]} | {final_mean:.1f} ± {final_half:.1f} | {best_mean:.1f} ± {best_half:.1f}"
            f" | {per_seed} | {solved[0] if solved.size else 'not reached'} |"
        )
    ax.axhline(-200, color="k", ls=":", lw=0.8, label="-200 (the table's threshold)")
    ax.set_xlabel("environment steps (per seed)")
    ax.set_ylabel("evaluation return (10 episodes)")
    n = seeds.pop() if len(seeds) == 1 else min(seeds)
    ax.set_title(f"native Pendulum: {plots.interval_label(n)}", fontsize=10)
    plots.legend_outside(ax)
    fig.tight_layout()
    plots.save(fig, OUT / "pendulum.png", dpi=120)
    (OUT / "pendulum_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
