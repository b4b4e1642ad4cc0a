"""Puddle World policy evaluation: how well do the TD, TDRC and ETD critics learn v_pi of a FIXED target policy from
uniform-random behaviour data? (The question behind the J23 Puddle World ETD gap, experiments/results/j23-puddle-world.)

Setup: the J23 Puddle World features and data (tile coding 2 tilings of 3x3 + bias, step sizes divided by 3,
gamma 0.95, uniform behaviour, no time limit in the stream), one population per critic (lambda 0) with
``--runs`` behaviour streams x the critic step sizes, run through the library's OffPAC agent with a frozen actor
(actor step 1e-30; the target policy is written into theta's bias column, so it is the same in every state). The
follow-on trace F that the ETD critic uses is the agent's own (interest 1).

Ground truth: v_pi(s) at ``--states`` states drawn from a separate behaviour stream (one every 1000 steps, so
distributed as d_mu), each by ``--rollouts`` Monte Carlo rollouts of pi (discounted, until the goal or 400 steps,
0.95^400 ~ 1e-9). Error: the root mean squared value error over those states (d_mu-weighted), mean and 95%
t-interval over runs, at a few steps of training.

    python experiments/puddle_world_critics.py --out experiments/results/j23-puddle-world/critics/critics.md
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from emphatic_rl.config import TrainConfig
from emphatic_rl.envs import make_env
from emphatic_rl.runner import Lambda, Runner
from emphatic_rl.stats import mean_ci
from emphatic_rl.train import build_run

#: target policies over (up, down, right, left), the same in every state
POLICIES = {
    "mild (.35, .05, .55, .05)": (0.35, 0.05, 0.55, 0.05),
    "peaked (.20, .01, .78, .01)": (0.20, 0.01, 0.78, 0.01),
}
CRITICS = ("td", "tdrc", "etd")
GAMMA = 0.95


@torch.no_grad()
def true_values(
    probs: torch.Tensor, states: torch.Tensor, rollouts: int, seed: int, horizon: int = 400
) -> torch.Tensor:
    """Monte Carlo v_pi ``[K]`` at ``states [K, 2]`` (discounted, until termination or ``horizon`` steps)."""
    K = states.shape[0]
    env = make_env("puddle-world", K * rollouts, max_episode_steps=100_000_000)
    env.reset(seed=seed)
    env.set_state(states.repeat_interleave(rollouts, dim=0))
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(K * rollouts, dtype=torch.float64)
    running = torch.ones(K * rollouts, dtype=torch.bool)
    discount = 1.0
    for _ in range(horizon):
        action = torch.multinomial(probs.expand(K * rollouts, -1), 1, generator=generator).squeeze(1)
        result = env.step(action)
        total += torch.where(running, discount * result.reward.double(), 0.0)
        running &= ~result.terminated
        discount *= GAMMA
        if not bool(running.any()):
            break
    return total.view(K, rollouts).mean(dim=1)


@torch.no_grad()
def behaviour_states(count: int, spacing: int, seed: int) -> torch.Tensor:
    """``count`` states of one uniform-random behaviour stream, one every ``spacing`` steps (no time limit)."""
    env = make_env("puddle-world", 1, max_episode_steps=100_000_000)
    env.reset(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    states = []
    for step in range(1, count * spacing + 1):
        env.step(torch.randint(0, 4, (1,), generator=generator))
        if step % spacing == 0:
            states.append(env.position[0].clone())
    return torch.stack(states)


def critic_errors(
    critic: str, probs: tuple[float, ...], alphas: list[float], runs: int, steps: int, checkpoints: list[int],
    states: torch.Tensor, values: torch.Tensor,
) -> dict[tuple[float, int], list[float]]:
    """RMSVE per (critic step size, checkpoint), one value per run."""
    config = TrainConfig()
    config.env = "puddle-world"
    config.env_options = {"max_episode_steps": 100_000_000}
    config.steps, config.seed, config.behaviour = steps, 0, "uniform"
    config.agent = "offpac"
    config.num_envs, config.population_size = runs, runs * len(alphas)
    config.eval_every, config.eval_episodes, config.progress = 0, 1, False
    config.agent_options = {
        "critic": critic, "gamma": GAMMA, "critic_lambda": 0.0,
        "alpha_actor": 1e-30,
        "alpha_critic": [alpha for alpha in alphas for _ in range(runs)],
        "stream_of": [r for _ in alphas for r in range(runs)],
    }
    run = build_run(config)
    agent = run.agent
    agent.policy.theta.zero_()
    agent.policy.theta[:, :, -1] = torch.tensor(probs).log()  # the bias feature is the last one
    state_features = agent.critic_features.dense(states).double()  # [K, d]
    errors: dict[tuple[float, int], list[float]] = {}

    def record(runner: Runner) -> None:
        if runner.step not in checkpoints:
            return
        estimates = agent.critic.weights.double() @ state_features.T  # [P, K]
        rmsve = ((estimates - values) ** 2).mean(dim=1).sqrt()  # non-finite when a member diverged
        for index, alpha in enumerate(alphas):
            errors[(alpha, runner.step)] = rmsve[index * runs:(index + 1) * runs].tolist()

    Runner(run).run(steps, [Lambda(record)])  # the training loop: uniform behaviour, the agent's updates
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--states", type=int, default=100)
    parser.add_argument("--rollouts", type=int, default=200)
    parser.add_argument("--out", help="write the Markdown tables here as well")
    args = parser.parse_args()
    torch.set_num_threads(1)

    alphas = [2.0**-k for k in (1, 3, 5, 7, 9, 11, 13)]
    checkpoints = sorted({args.steps // 4, args.steps // 2, args.steps})
    states = behaviour_states(args.states, 1000, seed=12345)
    lines = [
        f"Puddle World policy evaluation, {args.runs} runs, {args.steps} steps, RMSVE over {args.states} states of "
        f"a behaviour stream (true v_pi by {args.rollouts} rollouts each). Reproduce: "
        f"`python experiments/puddle_world_critics.py --runs {args.runs} --steps {args.steps}`.",
        "",
    ]
    for name, probs in POLICIES.items():
        started = time.perf_counter()
        values = true_values(torch.tensor(probs), states, args.rollouts, seed=777)
        lines += [
            f"### target policy {name}: v_pi over the states: mean {values.mean():.1f}, sd {values.std():.1f}, "
            f"min {values.min():.1f}, max {values.max():.1f}",
            "",
            "| critic | alpha_w (before / 3) | " + " | ".join(f"RMSVE at {c}" for c in checkpoints) + " |",
            "|---|---|" + "---|" * len(checkpoints),
        ]
        for critic in CRITICS:
            errors = critic_errors(critic, probs, alphas, args.runs, args.steps, checkpoints, states, values)
            for alpha in alphas:
                cells = []
                for checkpoint in checkpoints:
                    run_errors = torch.tensor(errors[(alpha, checkpoint)])
                    if not bool(torch.isfinite(run_errors).all()):
                        cells.append(f"diverged ({int((~torch.isfinite(run_errors)).sum())}/{args.runs})")
                    else:
                        mean, half = mean_ci(run_errors.numpy())
                        cells.append(f"{mean:.1f} ± {half:.1f}" if math.isfinite(half) else f"{mean:.1f}")
                lines.append(f"| {critic} | 2^{round(math.log2(alpha))} | " + " | ".join(cells) + " |")
            print(f"{name} {critic}: {time.perf_counter() - started:.0f} s", flush=True)
        lines.append("")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
