"""How many real steps, and which settings, make Catcher learn: the model-free members of the ``dyna-fa`` agent.

    python experiments/dyna_fa_catcher_probe.py --steps 12000 --hidden 64      # one network width per call
    python experiments/dyna_fa_catcher_probe.py --steps 20000 --hidden 32

One population of the ``dyna-fa`` agent without planning (``planning_steps = 0``: DQN-style Q-learning with replay,
the study's model-free baseline) on Catcher with episodes cut at ``--episode-steps``; its members are every (Adam
step size, epsilon) pair of ``--learning-rates`` x ``--epsilons`` times ``--seeds`` seeds, on the library's
``Runner``. Every ``--every`` real steps it prints, per pair, the mean return of the episodes that ended in the
window and the catches per 100 steps (averaged over seeds). This chose the Catcher study's budget and network
(``experiments/results/dyna-fa/REPORT.md``).
"""

from __future__ import annotations

import argparse
import itertools

import torch

from emphatic_rl.config import TrainConfig
from emphatic_rl.runner import Callback, Runner
from emphatic_rl.train import build_run


class _Windows(Callback):
    def __init__(self, every: int, pairs: list[tuple[float, float]], members: list[tuple[float, float]]) -> None:
        self.every, self.pairs, self.members = every, pairs, members

    def on_start(self, runner: Runner) -> None:
        self.catches = torch.zeros(runner.population_size)

    def on_step(self, runner: Runner) -> None:
        self.catches += (runner.buffer.latest().reward > 0).float()
        if runner.step % self.every:
            return
        window = runner.stats.flush().get("rollout/ep_rew_mean", torch.full((runner.population_size,), float("nan")))
        cells = []
        for pair in self.pairs:
            index = torch.tensor([m == pair for m in self.members])
            ret = window[index].nanmean().item()
            rate = 100 * self.catches[index].mean().item() / self.every
            cells.append(f"lr {pair[0]:g} eps {pair[1]:g}: {ret:6.2f} ({rate:.2f})")
        print(f"step {runner.step:6d}  " + "  ".join(cells), flush=True)
        self.catches.zero_()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--episode-steps", type=int, default=500)
    parser.add_argument("--learning-rates", default="1e-3,3e-3,1e-2")
    parser.add_argument("--epsilons", default="0.05,0.1")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pairs = list(
        itertools.product(
            [float(x) for x in args.learning_rates.split(",")], [float(x) for x in args.epsilons.split(",")]
        )
    )
    members = [pair for pair in pairs for _ in range(args.seeds)]
    options = {
        "planning_steps": 0,
        "hidden": args.hidden,
        "learning_rate": [m[0] for m in members],
        "epsilon": [m[1] for m in members],
    }
    config = TrainConfig(
        agent="dyna-fa",
        env="catcher",
        env_options={"max_episode_steps": args.episode_steps},
        agent_options=options,
        population_size=len(members),
        steps=args.steps,
        seed=args.seed,
        progress=False,
        logger="none",
    )
    Runner(build_run(config)).run(args.steps, [_Windows(args.every, pairs, members)])


if __name__ == "__main__":
    main()
