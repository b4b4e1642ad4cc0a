"""Puddle World reference policies, and the action map of learned linear policies (the figures in
``experiments/results/j23-puddle-world/README.md``).

- Reference returns and episode lengths (undiscounted, from the start distribution, capped at 1000 steps,
  ``--episodes`` rollouts): the uniform policy, "up to y = 0.9, then right, then up", and "right, then up".
- ``--run DIR``: for a finished linear actor-critic run on ``puddle-world`` (a sweep variant folder, e.g.
  ``runs/sweeps/pw-probe/offpac``), the most likely action and its probability on a 7 x 7 grid of states for the
  first members (rows from y = 0.95 at the top to y = 0.05), read from ``checkpoint.pt``.

    python experiments/puddle_world_policies.py
    python experiments/puddle_world_policies.py --run runs/sweeps/pw-probe/offpac --members 0 1 5
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from emphatic_rl.checkpoints import load_checkpoint
from emphatic_rl.envs import make_env
from emphatic_rl.features import TileCoder
from emphatic_rl.runner import PolicyFunction, rollout_returns

UP, DOWN, RIGHT, LEFT = range(4)
ACTION_LETTERS = "UDRL"


def mean_return_and_length(
    policy: Callable[[torch.Tensor, torch.Generator], torch.Tensor], episodes: int, seed: int
) -> tuple[float, float]:
    """Mean undiscounted return and mean episode length of ``policy`` from the start, capped at 1000 steps (the
    library's rollout evaluator)."""
    env = make_env("puddle-world", episodes, max_episode_steps=1000)
    obs = env.reset(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    returns, lengths = rollout_returns(PolicyFunction(policy, generator), env, obs, 1, episodes, 1000)
    return float(returns.mean()), float(lengths.float().mean())


def reference_policies(episodes: int, seed: int) -> None:
    def uniform(obs, generator):
        return torch.randint(0, 4, (obs.shape[0],), generator=generator)

    def up_then_right(obs, generator):
        return torch.where(obs[:, 1] < 0.9, UP, torch.where(obs[:, 0] < 0.95, RIGHT, UP))

    def right_then_up(obs, generator):
        return torch.where(obs[:, 0] < 0.95, RIGHT, UP)

    for name, policy in (("uniform", uniform), ("up to y = 0.9, then right, then up", up_then_right),
                         ("right, then up", right_then_up)):
        mean, length = mean_return_and_length(policy, episodes, seed)
        print(f"{name}: return {mean:.1f}, length {length:.1f} ({episodes} rollouts, cap 1000)")


def action_maps(run: Path, members: list[int]) -> None:
    checkpoint = load_checkpoint(run / "checkpoint.pt")  # weights_only: a crafted file cannot run code
    theta = checkpoint["agent"]["theta"].double()  # [P, actions, features]
    features = TileCoder((0.0, 0.0), (1.0, 1.0), (2, 2), 2)  # the agents' Puddle World tiling (docs/environments.md)
    grid = torch.linspace(0.05, 0.95, 7)
    points = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), dim=-1).reshape(-1, 2)
    x = features.dense(points).double()
    for member in members:
        probs = torch.einsum("ad,kd->ka", theta[member], x).softmax(dim=-1)
        print(f"member {member} (rows y = 0.95 .. 0.05, columns x = 0.05 .. 0.95):")
        for row in reversed(range(7)):
            cells = probs[row * 7:(row + 1) * 7]
            print("  " + " ".join(f"{ACTION_LETTERS[int(p.argmax())]}{float(p.max()):.2f}" for p in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--run", type=Path, default=None, help="a finished puddle-world run folder")
    parser.add_argument("--members", type=int, nargs="+", default=[0, 1, 5])
    args = parser.parse_args()
    if args.run is None:
        reference_policies(args.episodes, args.seed)
    else:
        action_maps(args.run, args.members)


if __name__ == "__main__":
    main()
