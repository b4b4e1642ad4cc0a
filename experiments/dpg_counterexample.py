"""DPG counterexample study (Imani, Graves and White 2018, fig. 5; docs/protocols.md): expected-update ascent (exact
lab) next to sampled linear runs.

- DPG with M = 1 vs emphatic DPG with M = m / d_mu (oracle, exact d_mu), oracle grad_a q critic;
- linear Gaussian ACE with eta in {0, 0.5, 1} (oracle v critic, sampled follow-on trace).

Run: python experiments/dpg_counterexample.py [--quick | --episodes N --runs R];
writes experiments/results/dpg/counterexample.{png,md,json}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from emphatic_rl.agents.dpg import run_sampled_linear_dpg
from emphatic_rl.agents.gaussian import run_sampled_gaussian_ace
from emphatic_rl.envs.counterexamples import dpg_counterexample_mdp
from emphatic_rl.exact import ContinuousLab

OUT = Path(__file__).parent / "results" / "dpg"


def ci95(x: torch.Tensor) -> tuple[float, float]:
    x = x[torch.isfinite(x)]
    return float(x.mean()), float(1.96 * x.std() / max(1, x.numel()) ** 0.5) if x.numel() > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="400 episodes x 4 runs (a smoke run)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per run (default 2000)")
    parser.add_argument("--runs", type=int, default=None, help="independent runs per method (default 10)")
    args = parser.parse_args()
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

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, names in zip(axes, (["dpg", "emphatic-dpg"], [n for n in sampled if n.startswith("gaussian")]),
                         strict=True):
        for name in names:
            line = ax.plot(torch.arange(steps + 1) / 2, ascent[name], "--", lw=1)[0]
            mean = sampled[name].mean(0)
            err = 1.96 * sampled[name].std(0) / runs**0.5
            x = dpg.checkpoint_episodes
            ax.errorbar(x, mean, yerr=err, color=line.get_color(), marker="o", ms=3, label=name)
        ax.axhline(j_star, color="k", lw=0.8, ls=":", label="J* (exact lab)")
        ax.set_xlabel("episodes")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("J_mu (exact)")
    axes[0].set_title(f"deterministic, alpha={dpg_alpha}: sampled (markers) vs expected ascent (dashed)")
    axes[1].set_title(f"Gaussian ACE, alpha={gauss_alpha}")
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "counterexample.png", dpi=120)

    rows = []
    summary = {"j_star": j_star, "episodes": episodes, "runs": runs, "methods": {}}
    for name in sampled:
        mean, half = ci95(sampled[name][:, -1])
        expected = float(ascent[name][-1])
        final = sampled[name][:, -1]
        high = int((final >= 1.2).sum())
        summary["methods"][name] = {"sampled_final_mean": mean, "ci95": half, "expected_ascent_final": expected,
                                    "runs_final_at_least_1.2": high, "final_per_run": final.tolist()}
        rows.append(f"| {name} | {mean:.4f} ± {half:.4f} | {float(final.median()):.4f} | {high}/{runs} |"
                    f" {expected:.4f} |")
    (OUT / "counterexample.json").write_text(json.dumps(summary, indent=2))
    header = ("| method | sampled final J (mean ± 95% CI) | median | runs with final J >= 1.2 |"
              " expected-update ascent J |")
    table = "\n".join([header, "|---|---|---|---|---|", *rows])
    (OUT / "counterexample_table.md").write_text(table + "\n")
    print(f"J* = {j_star:.4f}, {episodes} episodes, {runs} runs")
    print(table)


if __name__ == "__main__":
    main()
