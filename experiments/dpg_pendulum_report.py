"""Table and figure of deep DDPG vs deep emphatic DPG on native Pendulum from `emphatic-rl train` run folders.

Usage: python experiments/dpg_pendulum_report.py LABEL=RUN_DIR [LABEL=RUN_DIR ...]
Writes experiments/results/dpg/pendulum.png and pendulum_table.md (eval return per seed = population member).
"""

from __future__ import annotations

import csv
import sys
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


def main(pairs: list[str]) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    OUT.mkdir(parents=True, exist_ok=True)
    lines = ["| variant | seeds | steps | final eval return (mean ± 95% CI) | per seed | first step with mean > -200 |",
             "|---|---|---|---|---|---|"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for pair in pairs:
        label, _, path = pair.partition("=")
        evals = read_eval(Path(path))
        steps = np.array(list(evals))
        values = np.array([[v for _, v in sorted(row.items())] for row in evals.values()])  # [C, seeds]
        mean = values.mean(1)
        half = 1.96 * values.std(1, ddof=1) / np.sqrt(values.shape[1]) if values.shape[1] > 1 else 0 * mean
        ax.plot(steps, mean, marker="o", ms=3, label=label)
        ax.fill_between(steps, mean - half, mean + half, alpha=0.2)
        solved = steps[mean > -200]
        per_seed = ", ".join(f"{v:.0f}" for v in values[-1])
        lines.append(f"| {label} | {values.shape[1]} | {steps[-1]} | {mean[-1]:.1f} ± {half[-1]:.1f} | {per_seed} | "
                     f"{solved[0] if solved.size else 'not yet'} |")
    ax.axhline(-200, color="k", ls=":", lw=0.8)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return (10 episodes)")
    ax.set_title("native Pendulum")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "pendulum.png", dpi=120)
    (OUT / "pendulum_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
