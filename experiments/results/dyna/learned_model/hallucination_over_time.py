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

from emphatic_rl.agents.dyna.tabular import DynaOptions, make_dyna_for_env
from emphatic_rl.envs.gridworld import BorderedGridworld
from emphatic_rl.stats import mean_ci


def run(variant: str, seeds: int, steps: int, window: int, seed: int) -> dict[str, list[float]]:
    env = BorderedGridworld(num_envs=seeds)
    options = DynaOptions(
        variant=variant, planning_steps=5, rollout_length=3, step_size=0.5, gamma=0.95, epsilon=0.1, model="learned"
    )
    agent = make_dyna_for_env(env, seeds, options, seed=seed)
    obs = env.reset(seed=seed)
    rows: dict[str, list[float]] = {"end_step": [], "model_outputs_hallucinated": [], "ci": [], "bootstrap_halluc": []}
    for step in range(1, steps + 1):
        action, _ = agent.act(obs.view(seeds, 1), step)
        result = env.step(action.view(seeds))
        agent.observe(
            obs.view(seeds, 1),
            action,
            result.reward.view(seeds, 1),
            result.final_obs.view(seeds, 1),
            result.terminated.view(seeds, 1),
        )
        obs = result.obs
        if step % window == 0:
            stats = agent.planning_statistics()
            rate = stats["fraction_model_outputs_hallucinated"]
            rows["end_step"].append(step)
            rows["model_outputs_hallucinated"].append(rate.mean().item())
            rows["ci"].append(mean_ci(rate)[1])  # 95% t-interval over the seeds
            rows["bootstrap_halluc"].append(stats["fraction_bootstrap_hallucinated"].mean().item())
            agent.reset_statistics()
    return rows


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
