"""Puddle World policy evaluation: how well do the TD, TDRC and ETD critics learn v_pi of a FIXED target policy from
uniform-random behaviour data? (The question behind the J23 Puddle World ETD gap, experiments/results/j23-puddle-world.)

Setup: the J23 Puddle World features and data (tile coding 2 tilings of 3x3 + bias, step sizes divided by 3,
gamma 0.95, uniform behaviour, no time limit in the stream), one population per critic (lambda 0) that holds every
target policy x critic step size x run (``--runs`` behaviour streams, shared by the policies and step sizes), run
through the library's OffPAC agent with a frozen actor (actor step 1e-30; each member's target policy is written
into theta's bias column, so it is the same in every state). The follow-on trace F that the ETD critic uses is the
agent's own (interest 1).

Ground truth: v_pi(s) at ``--states`` states, each the state of a separate uniform-random behaviour stream after
1000 steps (so distributed as d_mu), by ``--rollouts`` Monte Carlo rollouts of pi (discounted, until the goal or
400 steps, 0.95^400 ~ 1e-9), every policy, state and rollout in one batched env. Error: the root mean squared
value error over those states (d_mu-weighted), mean and 95% t-interval over runs, at a few steps of training.

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
    """Monte Carlo v_pi ``[Q, K]`` of the ``Q`` state-independent policies ``probs [Q, 4]`` at ``states [K, 2]``
    (discounted, until termination or ``horizon`` steps): ``Q * K * rollouts`` copies of the env step together."""
    Q, K = probs.shape[0], states.shape[0]
    copies = Q * K * rollouts
    env = make_env("puddle-world", copies, max_episode_steps=100_000_000)
    env.reset(seed=seed)
    env.set_state(states.repeat_interleave(rollouts, dim=0).repeat(Q, 1))
    copy_probs = probs.double().repeat_interleave(K * rollouts, dim=0)  # [copies, 4]: policy q for its copies
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(copies, dtype=torch.float64)
    running = torch.ones(copies, dtype=torch.bool)
    discount = 1.0
    for _ in range(horizon):
        action = torch.multinomial(copy_probs, 1, generator=generator).squeeze(1)
        result = env.step(action)
        total += torch.where(running, discount * result.reward.double(), 0.0)
        running &= ~result.terminated
        discount *= GAMMA
        if not bool(running.any()):
            break
    return total.view(Q, K, rollouts).mean(dim=2)


@torch.no_grad()
def behaviour_states(count: int, spacing: int, seed: int) -> torch.Tensor:
    """``[count, 2]``: the states of ``count`` uniform-random behaviour streams (no time limit) after ``spacing``
    steps each, all streams stepping together."""
    env = make_env("puddle-world", count, max_episode_steps=100_000_000)
    env.reset(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(spacing):
        env.step(torch.randint(0, 4, (count,), generator=generator))
    return env.position.clone()


def critic_errors(
    critic: str,
    policies: torch.Tensor,
    alphas: list[float],
    runs: int,
    steps: int,
    checkpoints: list[int],
    states: torch.Tensor,
    values: torch.Tensor,
) -> dict[tuple[int, float, int], list[float]]:
    """RMSVE per (policy index, critic step size, checkpoint), one value per run, from one population of
    ``Q x len(alphas) x runs`` members (``policies [Q, 4]``, ``values [Q, K]``)."""
    Q = policies.shape[0]
    config = TrainConfig()
    config.env = "puddle-world"
    config.env_options = {"max_episode_steps": 100_000_000}
    config.steps, config.seed, config.behaviour = steps, 0, "uniform"
    config.agent = "offpac"
    config.num_envs, config.population_size = runs, Q * len(alphas) * runs
    config.eval_every, config.eval_episodes, config.progress = 0, 1, False
    # members in the order (policy, step size, run); run r learns from behaviour stream r
    config.agent_options = {
        "critic": critic,
        "gamma": GAMMA,
        "critic_lambda": 0.0,
        "alpha_actor": 1e-30,
        "alpha_critic": [alpha for _ in range(Q) for alpha in alphas for _ in range(runs)],
        "stream_of": [r for _ in range(Q) for _ in alphas for r in range(runs)],
    }
    run = build_run(config)
    agent = run.agent
    member_policy = torch.arange(Q).repeat_interleave(len(alphas) * runs)  # [P]
    agent.policy.theta.zero_()
    agent.policy.theta[:, :, -1] = policies.log()[member_policy].to(agent.policy.theta.dtype)  # bias is last
    state_features = agent.critic_features.dense(states).double()  # [K, d]
    member_values = values.double()[member_policy]  # [P, K]
    errors: dict[tuple[int, float, int], list[float]] = {}

    def record(runner: Runner) -> None:
        if runner.step not in checkpoints:
            return
        estimates = agent.critic.weights.double() @ state_features.T  # [P, K]
        rmsve = ((estimates - member_values) ** 2).mean(dim=1).sqrt()  # non-finite when a member diverged
        for (q, alpha), group in zip(
            ((q, alpha) for q in range(Q) for alpha in alphas), rmsve.view(Q * len(alphas), runs), strict=True
        ):
            errors[(q, alpha, runner.step)] = group.tolist()

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
    policies = torch.tensor(list(POLICIES.values()), dtype=torch.float64)  # [Q, 4]
    started = time.perf_counter()
    values = true_values(policies, states, args.rollouts, seed=777)  # [Q, K]
    errors: dict[tuple[str, int, float, int], list[float]] = {}  # (critic, policy, step size, checkpoint)
    for critic in CRITICS:
        for (q, alpha, checkpoint), run_errors in critic_errors(
            critic, policies, alphas, args.runs, args.steps, checkpoints, states, values
        ).items():
            errors[(critic, q, alpha, checkpoint)] = run_errors
        print(f"{critic}: {time.perf_counter() - started:.0f} s", flush=True)
    for q, name in enumerate(POLICIES):
        v = values[q]
        lines += [
            f"### target policy {name}: v_pi over the states: mean {v.mean():.1f}, sd {v.std():.1f}, "
            f"min {v.min():.1f}, max {v.max():.1f}",
            "",
            "| critic | alpha_w (before / 3) | " + " | ".join(f"RMSVE at {c}" for c in checkpoints) + " |",
            "|---|---|" + "---|" * len(checkpoints),
        ]
        for critic in CRITICS:
            for alpha in alphas:
                cells = []
                for checkpoint in checkpoints:
                    run_errors = torch.tensor(errors[(critic, q, alpha, checkpoint)])
                    if not bool(torch.isfinite(run_errors).all()):
                        cells.append(f"diverged ({int((~torch.isfinite(run_errors)).sum())}/{args.runs})")
                    else:
                        mean, half = mean_ci(run_errors.numpy())
                        cells.append(f"{mean:.1f} ± {half:.1f}" if math.isfinite(half) else f"{mean:.1f}")
                lines.append(f"| {critic} | 2^{round(math.log2(alpha))} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
