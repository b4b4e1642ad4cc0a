"""How often the learned Dyna model hallucinates as it learns (Bordered Gridworld, the learned-model study settings).

Run (about 5 minutes on 2 loaded cores):

    python experiments/results/dyna/learned_model/hallucination_over_time.py \
        --out experiments/results/dyna/learned_model/hallucination_over_time.json

Per variant, 10 seeds as one population, 3000 real steps, the options of experiments/dyna_learned_gridworld.toml;
every ``window`` steps it records, per member, the fraction of the states the learned model returned during planning
that are not real (``fraction_model_outputs_hallucinated``) and the fraction of planning updates whose target
bootstraps from a hallucinated state, over that window only (the instruments are reset after each window).
"""

from __future__ import annotations

import argparse
import json

import torch

from emphatic_rl.config import TrainConfig
from emphatic_rl.runner import Callback, Runner
from emphatic_rl.stats import mean_ci
from emphatic_rl.train import build_run


class HallucinationWindows(Callback):
    """Every ``window`` steps: the seed-mean fraction of hallucinated model outputs (and its 95% t-interval over the
    seeds) and of hallucinated bootstrap states over the window, then the instruments are reset."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.rows: dict[str, list[float]] = {
            "end_step": [], "model_outputs_hallucinated": [], "ci": [], "bootstrap_halluc": [],
        }  # fmt: skip

    def on_step(self, runner: Runner) -> None:
        if runner.step % self.window:
            return
        stats = runner.agent.planning_statistics()
        rate = stats["fraction_model_outputs_hallucinated"]
        self.rows["end_step"].append(runner.step)
        self.rows["model_outputs_hallucinated"].append(rate.mean().item())
        self.rows["ci"].append(mean_ci(rate)[1])  # 95% t-interval over the seeds
        self.rows["bootstrap_halluc"].append(stats["fraction_bootstrap_hallucinated"].mean().item())
        runner.agent.reset_statistics()


def run(variant: str, seeds: int, steps: int, window: int, seed: int) -> dict[str, list[float]]:
    """One population of ``seeds`` learners of ``variant`` trained by the library's ``Runner``."""
    options = {
        "variant": variant, "planning_steps": 5, "rollout_length": 3, "step_size": 0.5, "gamma": 0.95, "epsilon": 0.1,
        "model": "learned",
    }  # fmt: skip
    config = TrainConfig(
        agent="dyna", env="bordered-gridworld", agent_options=options, population_size=seeds, num_envs=1,
        steps=steps, seed=seed, eval_every=0, progress=False,
    )  # fmt: skip
    windows = HallucinationWindows(window)
    Runner(build_run(config)).run(steps, [windows])
    return windows.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--window", type=int, default=250)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    results = {
        variant: run(variant, args.seeds, args.steps, args.window, seed=index)
        for index, variant in enumerate(("one-step-successor", "multi-step-predecessor"))
    }
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=1)
    for variant, rows in results.items():
        cells = ", ".join(
            f"{s}: {r:.3f}" for s, r in zip(rows["end_step"], rows["model_outputs_hallucinated"], strict=True)
        )
        print(f"{variant}: {cells}")


if __name__ == "__main__":
    main()
