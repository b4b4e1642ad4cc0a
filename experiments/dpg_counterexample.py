"""DPG counterexample study (Imani, Graves and White 2018, fig. 5; docs/protocols.md): expected-update ascent (exact
lab) next to sampled linear runs.

- DPG with M = 1 vs emphatic DPG with M = m / d_mu (oracle, exact d_mu), oracle grad_a q critic;
- linear Gaussian ACE with eta in {0, 0.5, 1} (oracle v critic, sampled follow-on trace).

Run: python experiments/dpg_counterexample.py [--quick | --episodes N --runs R];
writes experiments/results/dpg/counterexample.{png,md,json}. ``--table-only`` rewrites the table (and the intervals in
the JSON) from the committed counterexample.json in a second. Intervals: 95% t-intervals over runs
(``emphatic_rl.stats``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from emphatic_rl import plots
from emphatic_rl.envs.counterexamples import dpg_counterexample_mdp
from emphatic_rl.exact import ContinuousLab
from emphatic_rl.exact.continuous import run_sampled_gaussian_ace, run_sampled_linear_dpg
from emphatic_rl.stats import mean_ci, t_interval

OUT = Path(__file__).parent / "results" / "dpg"


def ci95(x: torch.Tensor) -> tuple[float, float]:
    """Mean and 95% t-interval half-width over the finite runs of ``x [runs]``."""
    return mean_ci(x[torch.isfinite(x)])


def write_table(summary: dict) -> str:
    """``counterexample_table.md`` from the summary (per method: the final J of every run and the expected ascent's);
    fills each method's ``sampled_final_mean`` / ``ci95``."""
    rows = []
    runs = summary["runs"]
    for name, method in summary["methods"].items():
        final = torch.tensor(method["final_per_run"], dtype=torch.float64)
        mean, half = ci95(final)
        method["sampled_final_mean"], method["ci95"] = mean, half
        high = int((final >= 1.2).sum())
        rows.append(f"| {name} | {mean:.4f} ± {half:.4f} | {float(final.median()):.4f} | {high}/{runs} |"
                    f" {method['expected_ascent_final']:.4f} |")
    header = (f"| method | sampled final J (mean ± 95% t-CI, n = {runs} runs) | median | runs with final J >= 1.2 |"
              " expected-update ascent J |")
    table = "\n".join([header, "|---|---|---|---|---|", *rows])
    (OUT / "counterexample.json").write_text(json.dumps(summary, indent=2))
    (OUT / "counterexample_table.md").write_text(table + "\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="400 episodes x 4 runs (a smoke run)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per run (default 2000)")
    parser.add_argument("--runs", type=int, default=None, help="independent runs per method (default 10)")
    parser.add_argument("--table-only", action="store_true", help="rewrite the table from counterexample.json")
    args = parser.parse_args()
    if args.table_only:
        print(write_table(json.loads((OUT / "counterexample.json").read_text())))
        return
    torch.set_num_threads(1)
    episodes, runs = (400, 4) if args.quick else (2000, 10)
    episodes, runs = args.episodes or episodes, args.runs or runs
    dpg_alpha, gauss_alpha = 0.1, 0.02
    mdp = dpg_counterexample_mdp()
    det, gauss = ContinuousLab(mdp, "deterministic"), ContinuousLab(mdp, "gaussian")
    j_star = det.best_corner_objective()[0]
    steps = 2 * episodes  # two behaviour steps per episode
    ascent = {
        "dpg": det.ascent("dpg", torch.zeros(2), steps, dpg_alpha).objective,
        "emphatic-dpg": det.ascent("emphatic-dpg", torch.zeros(2), steps, dpg_alpha).objective,
    }
    for eta in (0.0, 0.5, 1.0):
        ascent[f"gaussian-ace eta={eta}"] = gauss.ascent("ace", torch.zeros(3), steps, gauss_alpha, eta=eta).objective
    dpg = run_sampled_linear_dpg(det, ("none", "oracle"), alpha=dpg_alpha, episodes=episodes, runs=runs)
    ace = run_sampled_gaussian_ace(gauss, (0.0, 0.5, 1.0), alpha=gauss_alpha, episodes=episodes, runs=runs)
    sampled = {"dpg": dpg.objective[0], "emphatic-dpg": dpg.objective[1]}
    for k, eta in enumerate(ace.etas):
        sampled[f"gaussian-ace eta={eta}"] = ace.objective[k]

    plt = plots.figure()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, names in zip(axes, (["dpg", "emphatic-dpg"], [n for n in sampled if n.startswith("gaussian")]),
                         strict=True):
        styles = plots.variant_styles(names)
        for name in names:
            style = styles[name]
            ax.plot(torch.arange(steps + 1) / 2, ascent[name], color=style["color"], ls=(0, (5, 3)), lw=1,
                    label=f"{name}: expected ascent")
            mean, err = t_interval(sampled[name], axis=0)  # over runs
            ax.errorbar(dpg.checkpoint_episodes, mean, yerr=err, color=style["color"], marker=style["marker"], ms=3,
                        ls=style["linestyle"], label=f"{name}: sampled")
        ax.axhline(j_star, color="k", lw=0.8, ls=":", label="J* (exact lab)")
        ax.set_xlabel("episodes")
        plots.legend_outside(ax, fontsize=7)
    axes[0].set_ylabel("J_mu (exact)")
    axes[0].set_title(f"deterministic, alpha={dpg_alpha}\nsampled: {plots.interval_label(runs)}", fontsize=9)
    axes[1].set_title(f"Gaussian ACE, alpha={gauss_alpha}\nsampled: {plots.interval_label(runs)}", fontsize=9)
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    plots.save(fig, OUT / "counterexample.png", dpi=120)

    summary = {"j_star": j_star, "episodes": episodes, "runs": runs, "methods": {}}
    for name in sampled:
        summary["methods"][name] = {"expected_ascent_final": float(ascent[name][-1]),
                                    "runs_final_at_least_1.2": int((sampled[name][:, -1] >= 1.2).sum()),
                                    "final_per_run": sampled[name][:, -1].tolist()}
    table = write_table(summary)
    print(f"J* = {j_star:.4f}, {episodes} episodes, {runs} runs")
    print(table)


if __name__ == "__main__":
    main()
