"""Load a trained agent and act with its target policy: a saved agent file, or a run folder of ``emphatic-rl train``.

    python examples/load_trained_agent.py                       # trains and saves a short DQN, loads it, plays
    python examples/load_trained_agent.py --run runs/my-run     # loads an existing run folder

A saved agent (``emphatic_rl.make_agent(...).learn(...)``, then ``save``) holds its parameters and options only and
loads with ``emphatic_rl.load`` (safely: ``weights_only``). A run folder holds ``config.json`` (the resolved
configuration) and ``checkpoint.pt`` (the agent's state, among others); loading it is: rebuild the run from its
config, load the agent's state, call ``evaluation_action``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from emphatic_rl.envs import make_env
from emphatic_rl.runner import rollout_returns
from emphatic_rl.train import CHECKPOINT_NAME, build_run, load_run_config


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def load_agent(run_dir: Path):
    """The run rebuilt from ``run_dir/config.json`` with the agent's trained state loaded; and the trained steps."""
    config = load_run_config(run_dir)
    run = build_run(config)  # env, evaluation env, agent and buffer; writes nothing
    checkpoint = torch.load(run_dir / CHECKPOINT_NAME, map_location=run.device, weights_only=False)
    run.agent.load_state_dict(checkpoint["agent"])
    return run, int(checkpoint["step"])


def play(run, episodes: int, seed: int) -> torch.Tensor:
    """Undiscounted return of ``episodes`` episodes per member with the target policy, ``[P, episodes]``."""
    population = run.config.population_size
    env = make_env(run.config.env, population * episodes, run.device, **run.config.evaluation_env_options())
    obs = env.reset(seed=seed)
    returns, _ = rollout_returns(run.agent, env, obs, population, episodes, run.config.eval_max_steps)
    return returns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run", default=None, help="an existing run folder (default: train, save and load a short DQN)"
    )
    parser.add_argument("--steps", type=positive_int, default=5_000, help="steps of the short run (5000)")
    parser.add_argument("--episodes", type=positive_int, default=5, help="episodes per member to play (5)")
    args = parser.parse_args(argv)

    if args.run is None:
        import emphatic_rl

        with tempfile.TemporaryDirectory() as scratch:
            model = emphatic_rl.make_agent("dqn", env="cartpole", seed=0, learning_starts=min(1_000, args.steps))
            model.learn(args.steps)
            path = Path(scratch) / "dqn-cartpole.pt"
            model.save(path)
            loaded = emphatic_rl.load(path)
        mean, std = loaded.evaluate(episodes=args.episodes, seed=12345)
        print(f"loaded a saved dqn on cartpole, trained for {args.steps} steps")
        print(f"  greedy return over {args.episodes} episodes: {mean:.1f} +- {std:.1f} (std)")
        return 0
    run_dir = Path(args.run)
    if not (run_dir / CHECKPOINT_NAME).is_file():
        print(f"load_trained_agent: {run_dir} is not a run folder (no {CHECKPOINT_NAME})", file=sys.stderr)
        return 2
    run, steps = load_agent(run_dir)
    returns = play(run, args.episodes, seed=12345)
    print(f"loaded {run.config.agent} on {run.config.env}, trained for {steps} steps, from {run_dir}")
    for member, row in enumerate(returns.tolist()):
        print(f"  member {member}: returns {', '.join(f'{value:.1f}' for value in row)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
