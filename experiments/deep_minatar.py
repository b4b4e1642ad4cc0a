"""Deep ACE-direct vs deep OffPAC (and DQN as a reference) on MinAtar Breakout and Freeway, learning from replay.

Two data regimes:

- ``uniform``: a fixed uniform-random behaviour writes ``num_envs`` streams; ``deep-ace`` / ``deep-offpac`` learn
  off-policy from them (``behaviour="fixed"``; every member samples the whole buffer). DQN cannot learn from a fixed
  behaviour in this library (it always acts), so it appears only in the other regime.
- ``epsilon-greedy``: each member acts epsilon-greedily on its own policy (``argmax pi`` for the actor-critics,
  ``argmax Q`` for DQN), epsilon 1 -> 0.1, with ``num_envs`` env copies per member.

Each (game, regime, agent) is one training run whose population axis holds the seeds (``P = seeds``), through the
library's own loop (``emphatic_rl.train.train``). Evaluation: the target policy (``pi`` sampled for the
actor-critics, greedy Q for DQN) for ``eval_episodes`` episodes per member every ``eval_every`` iterations.
Curves show the mean over seeds with a 95% Student-t confidence interval; the table gives the final evaluation and
the mean over the last third of the evaluations.

Budget (default, reduced for a 2-core CPU): 25,000 iterations x 2 env copies = 50,000 frames per member, 1,000
iterations before learning, then one gradient step (batch 32) every 2 iterations (12,000 steps), replay of all 50,000
transitions, 5 seeds; epsilon 1 -> 0.1 over 10,000 iterations; evaluation (5 episodes) every 2,500 iterations
(Freeway: 5,000, its episodes are 2,500 frames). ``--full`` switches to the
MinAtar paper's scale (5M frames per member: 5,000,000 iterations with 1 env copy, 100k replay, batch 32, a step
every iteration, target update every 1,000, epsilon over 100k, learning starts 5,000), far beyond a CPU.

Env protocol: the reference MinAtar defaults (sticky actions 0.1, difficulty ramping on); the reduced budget uses the
minimal action set (3 actions for Breakout and Freeway) to make the short runs informative, ``--full`` the full set
of 6 as in the paper.

Usage::

    nice -n 10 python experiments/deep_minatar.py --games breakout           # one game per process
    python experiments/deep_minatar.py --report-only                          # plots + table from finished runs
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from emphatic_rl import plots, stats
from emphatic_rl.config import TrainConfig
from emphatic_rl.logging import read_metrics
from emphatic_rl.stats import t_interval
from emphatic_rl.train import train

RESULTS = Path(__file__).resolve().parent / "results" / "deep_minatar"
GAMES = ("breakout", "freeway")  # the study's default games
ALL_GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")  # any may be passed with --games
REGIMES = ("uniform", "epsilon-greedy")
AGENTS = ("deep-ace", "deep-offpac", "dqn")
# Student-t 97.5% quantiles by degrees of freedom (95% two-sided CI of a mean).


def budget(full: bool, steps: int | None = None) -> dict:
    if steps is not None:  # the default budget's proportions at another length
        b = budget(full)
        return {**b, "steps": steps, "buffer_size": steps * b["num_envs"], "learning_starts": min(steps // 10, 1_000),
                "eval_every": max(steps // 10, 1), "epsilon_decay_steps": max(2 * steps // 5, 1),
                "target_update_every": min(b["target_update_every"], max(steps // 50, 1))}
    if full:
        return dict(steps=5_000_000, num_envs=1, train_every=1, batch_size=32, buffer_size=100_000,
                    learning_starts=5_000, target_update_every=1_000, epsilon_decay_steps=100_000,
                    eval_every=100_000, eval_episodes=10, minimal_action_set=False)
    return dict(steps=25_000, num_envs=2, train_every=2, batch_size=32, buffer_size=50_000, learning_starts=1_000,
                target_update_every=500, epsilon_decay_steps=10_000, eval_every=2_500, eval_episodes=5,
                minimal_action_set=True)


def run_config(game: str, regime: str, agent: str, seeds: int, b: dict, full: bool = False) -> TrainConfig:
    common = dict(batch_size=b["batch_size"], buffer_size=b["buffer_size"], learning_starts=b["learning_starts"],
                  train_every=b["train_every"], target_update_every=b["target_update_every"],
                  epsilon_decay_steps=b["epsilon_decay_steps"])
    if agent == "dqn":
        options = {**common, "learning_rate": 1e-3, "epsilon_end": 0.1}
    else:
        options = {**common, "behaviour": "fixed" if regime == "uniform" else "epsilon-greedy",
                   "actor_learning_rate": 5e-4, "critic_learning_rate": 1e-3, "emphasis_learning_rate": 1e-3,
                   "entropy_coef": 0.01, "rho_clip": 2.0, "emphasis_rho_clip": 2.0, "gamma": 0.99}
    return TrainConfig(
        agent=agent, env="minatar-" + game.replace("_", "-"), steps=b["steps"], seed=0, num_envs=b["num_envs"],
        population_size=seeds,
        behaviour="uniform",
        eval_every=b["eval_every"] * (2 if game == "freeway" and not full else 1), eval_episodes=b["eval_episodes"],
        eval_max_steps=2_500 if game == "freeway" else 1_000, checkpoint_every=0, log_every=500, progress=False,
        num_threads=1, agent_options=options, env_options={"minimal_action_set": b["minimal_action_set"]},
    )


def runs(games, regimes, agents):
    for game in games:
        for regime in regimes:
            for agent in agents:
                if agent == "dqn" and regime == "uniform":
                    continue
                yield game, regime, agent


def run_all(args) -> None:
    b = budget(args.full, args.steps)
    for game, regime, agent in runs(args.games, args.regimes, args.agents):
        out = args.out / f"{game}_{regime}_{agent}"
        if (out / "metrics.csv").exists():
            print(f"skip {out.name}: already has metrics.csv", flush=True)
            continue
        start = time.perf_counter()
        result = train(run_config(game, regime, agent, args.seeds, b, args.full), out)
        seconds = time.perf_counter() - start
        (out / "wall_seconds.json").write_text(json.dumps({"wall_seconds": seconds}))
        print(f"{out.name}: final eval {result.final_eval_return.tolist()} in {seconds:.0f} s", flush=True)


def eval_curve(out: Path) -> tuple[list[int], torch.Tensor]:
    """Evaluation steps and returns ``[num_evals, P]`` of a finished run."""
    rows = [r for r in read_metrics(out / "metrics.csv") if r[1] == "eval/return"]
    steps = sorted({r[0] for r in rows})
    members = max(r[2] for r in rows) + 1
    values = torch.full((len(steps), members), math.nan)
    index = {s: i for i, s in enumerate(steps)}
    for step, _, member, value in rows:
        values[index[step], member] = value
    return steps, values


def mean_ci(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the last axis (seeds) and the half-width of its 95% Student-t interval (``emphatic_rl.stats``)."""
    mean, half = t_interval(values, axis=-1)
    return torch.as_tensor(mean, dtype=values.dtype), torch.as_tensor(half, dtype=values.dtype)


def report(args) -> None:
    plt = plots.figure()
    styles = plots.variant_styles(list(args.agents))
    frames_per_step = budget(args.full)["num_envs"]
    lines = ["| game | data | agent | final eval return (95% CI) | mean of last third of evals | wall s |",
             "|---|---|---|---|---|---|"]
    for game in args.games:
        regimes = [r for r in args.regimes if any((args.out / f"{game}_{r}_{a}" / "metrics.csv").exists()
                                                  for a in args.agents)]  # a panel per regime that was run
        if not regimes:
            continue
        figure, axes = plt.subplots(1, len(regimes), figsize=(5 * len(regimes), 3.6), squeeze=False)
        for axis, regime in zip(axes[0], regimes, strict=True):
            for agent in args.agents:
                out = args.out / f"{game}_{regime}_{agent}"
                if not (out / "metrics.csv").exists():
                    continue
                steps, values = eval_curve(out)
                mean, half = mean_ci(values)
                frames = [s * frames_per_step for s in steps]
                plots.plot_band(axis, frames, mean.numpy(), half.numpy(), agent, styles[agent],
                                list(args.agents).index(agent))
                last = values[-max(1, len(steps) // 3):].mean(dim=0)
                final_mean, final_half = mean_ci(values[-1])
                last_mean, last_half = mean_ci(last)
                wall = json.loads((out / "wall_seconds.json").read_text())["wall_seconds"] if (
                    out / "wall_seconds.json").exists() else math.nan
                lines.append(f"| {game} | {regime} | {agent} | {float(final_mean):.2f} ± {float(final_half):.2f} | "
                             f"{float(last_mean):.2f} ± {float(last_half):.2f} | {wall:.0f} |")
            axis.set_title(f"MinAtar {game}, {regime} behaviour data\n{plots.interval_label(values.shape[-1])}",
                           fontsize=10)
            axis.set_xlabel("frames per member")
            axis.set_ylabel("eval return (target policy)")
        plots.legend_outside(axes[0][-1])
        figure.tight_layout()
        plots.save(figure, args.out / f"{game}.png")
    table = "\n".join(lines) + "\n"
    (args.out / "table.md").write_text(table)
    print(table)


@torch.no_grad()
def random_baselines(games, episodes: int = 500, max_steps: int = 1_000, seed: int = 1) -> None:
    """Print the uniform random policy's mean return per game (the study's env settings), with a 95% t-interval."""
    from emphatic_rl.envs import make_env
    from emphatic_rl.runner import PolicyFunction, rollout_returns

    for game in games:
        cap = 2_500 if game == "freeway" else max_steps
        env = make_env("minatar-" + game.replace("_", "-"), episodes, minimal_action_set=True, check_actions=False)
        obs = env.reset(seed=seed)
        generator = torch.Generator().manual_seed(seed)
        n = env.action_spec.n
        uniform = PolicyFunction(lambda obs, g, n=n: torch.randint(0, n, (obs.shape[0],), generator=g), generator)
        returns, _ = rollout_returns(uniform, env, obs, 1, episodes, cap)  # the library's rollout evaluator
        mean, half = stats.mean_ci(returns[0])
        print(f"{game}: uniform random policy {mean:.2f} ± {half:.2f} "
              f"({episodes} episodes capped at {cap} steps)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--games", nargs="+", default=list(GAMES), choices=ALL_GAMES)
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    parser.add_argument("--seeds", type=int, default=5, help="population size P (one seed per member)")
    parser.add_argument("--full", action="store_true", help="the MinAtar paper's 5M-frame protocol (not for a CPU)")
    parser.add_argument("--steps", type=int, default=None, help="override the iterations per run (smoke tests)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--random-baselines", action="store_true",
                        help="print the uniform random policy's return on --games and exit")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    torch.set_num_threads(1)
    if args.random_baselines:
        random_baselines(args.games)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        run_all(args)
    report(args)


if __name__ == "__main__":
    main()
