"""DQN on the native batched CartPole: a population of independent Q-networks trained as one program.

    python examples/dqn_cartpole.py --steps 5000 --seeds 3

Each seed is one population member with its own network, replay and env copies (one batched program, no Python
loop over seeds). Prints the greedy policy's evaluation return per seed at the end. A few thousand steps show the
loop at work; CartPole's maximum of 500 takes about 50k (``--steps 50000``; see experiments/results/dqn-cartpole).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from emphatic_rl.config import TrainConfig
from emphatic_rl.train import train


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=positive_int, default=5_000, help="steps per env copy (5000)")
    parser.add_argument("--seeds", type=positive_int, default=3, help="independent learners, one population (3)")
    parser.add_argument("--learning-starts", type=positive_int, default=1_000, help="random steps before learning")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="run folder (default runs/example-dqn-<time>)")
    args = parser.parse_args(argv)

    out = Path(args.out or f"runs/example-dqn-{time.strftime('%Y%m%d-%H%M%S')}")
    config = TrainConfig(
        agent="dqn",
        env="cartpole",
        steps=args.steps,
        seed=args.seed,
        population_size=args.seeds,
        eval_every=max(args.steps // 4, 1),
        eval_episodes=5,
        eval_max_steps=500,
        checkpoint_every=args.steps,
        log_every=max(args.steps // 10, 1),
        progress=False,
        agent_options={
            "learning_starts": min(args.learning_starts, args.steps),
            "epsilon_decay_steps": max(args.steps // 2, 1),
        },
    )
    started = time.perf_counter()
    result = train(config, out)
    seconds = time.perf_counter() - started
    returns = ", ".join(f"{value:.1f}" for value in result.final_eval_return.tolist())
    print(f"DQN on CartPole, {args.steps} steps x {args.seeds} seeds in {seconds:.0f} s")
    print(f"greedy evaluation return per seed (5 episodes each, max 500): {returns}")
    print(f"run folder: {out} (TensorBoard: tensorboard --logdir {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
