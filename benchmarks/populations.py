"""Population speed-up: one batched ``ActorCritic`` of ``P`` learners vs the same learners run one at a time.

Mountain Car (native ``mountain-car`` env, uniform random behaviour, no time limit), tile coding 8 x (4x4) + bias
(201 features, 9 active), ACE with a TDRC critic. ``R`` behaviour streams feed ``P = R x C`` learners (``C``
settings per stream, each with its own step sizes). The same transitions are then fed to ``P = 1`` agents, one
learner after another, by a per-step Python loop (the way per-learner reference code runs). Both are measured in the
same process, on the same data; the table reports learner-steps per second.

    python benchmarks/populations.py [--streams 30] [--settings 100] [--steps 300] [--loop-learners 30]

The per-learner loop is timed on ``--loop-learners`` learners (it is linear in their number) and scaled.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from emphatic_rl.agents.actor_critic import ActorCritic
from emphatic_rl.agents.base import UniformRandomBehaviour
from emphatic_rl.envs import make_env
from emphatic_rl.features import TileCoder


def collect(num_streams: int, num_steps: int, seed: int = 0):
    env = make_env("mountain-car", num_envs=num_streams, max_episode_steps=None)
    behaviour = UniformRandomBehaviour(env.action_spec)
    generator = torch.Generator().manual_seed(seed)
    obs = env.reset(seed=seed)
    data = []
    for _ in range(num_steps):
        action, log_prob = behaviour.act(obs, generator)
        result = env.step(action)
        data.append(
            (obs, action, result.reward, result.terminated, result.truncated, result.final_obs, log_prob)
        )
        obs = result.obs
    return data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=30)
    parser.add_argument("--settings", type=int, default=100)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--loop-learners", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tiles = TileCoder((-1.2, -0.07), (0.6, 0.07), (4, 4), 8)
    data = collect(args.streams, args.steps)
    features = [(tiles(o), a, r, te, tr, tiles(no), lp) for o, a, r, te, tr, no, lp in data]
    population_size = args.streams * args.settings
    stream_of = torch.arange(args.streams).repeat_interleave(args.settings)
    exponents = torch.arange(args.settings) % 10
    alpha_actor = (2.0 ** -exponents.float()).repeat(args.streams)
    alpha_critic = (2.0 ** -(exponents.float() // 2)).repeat(args.streams)

    agent = ActorCritic.from_preset(
        "ace",
        tiles,
        3,
        population_size,
        stream_of=stream_of,
        num_streams=args.streams,
        alpha_actor=alpha_actor,
        alpha_critic=alpha_critic,
        critic="tdrc",
        critic_lambda=0.5,
        gamma=0.95,
    )
    agent.update_step(*features[0])  # warm-up
    start = time.perf_counter()
    for step in features[1:]:
        agent.update_step(*step)
    population_seconds = time.perf_counter() - start
    population_rate = population_size * (len(features) - 1) / population_seconds

    loop_learners = min(args.loop_learners, population_size)
    members = torch.linspace(0, population_size - 1, loop_learners).long()
    singles = []
    for p in members.tolist():
        singles.append(
            ActorCritic.from_preset(
                "ace",
                tiles,
                3,
                1,
                alpha_actor=float(alpha_actor[p]),
                alpha_critic=float(alpha_critic[p]),
                critic="tdrc",
                critic_lambda=0.5,
                gamma=0.95,
            )
        )
    streams = [[int(stream_of[p])] for p in members.tolist()]
    for single, r in zip(singles, streams, strict=True):  # the same warm-up step as the population
        single.update_step(*(t[r] for t in features[0]))
    start = time.perf_counter()
    for step in features[1:]:
        for single, r in zip(singles, streams, strict=True):
            single.update_step(*(t[r] for t in step))
    loop_seconds = time.perf_counter() - start
    loop_rate = loop_learners * (len(features) - 1) / loop_seconds

    # the same learners agree (sanity check, not timed)
    for single, p in zip(singles, members.tolist(), strict=True):
        single_theta = single.policy.theta[0]
        if not torch.allclose(single_theta, agent.policy.theta[p], rtol=1e-4, atol=1e-4):
            raise SystemExit(f"population member {p} differs from its single run")

    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"threads {args.threads}"
    )
    print("env: native mountain-car (emphatic_rl.envs), uniform behaviour; ACE (followon, eta 1), TDRC(0.5)")
    print(f"{'mode':<28} {'learners':>9} {'steps':>6} {'seconds':>9} {'learner-steps/s':>16}")
    print(
        f"{'population (one batch)':<28} {population_size:>9} {len(features) - 1:>6} {population_seconds:>9.3f} "
        f"{population_rate:>16.0f}"
    )
    print(
        f"{'per-learner Python loop':<28} {loop_learners:>9} {len(features) - 1:>6} {loop_seconds:>9.3f} "
        f"{loop_rate:>16.0f}"
    )
    print(f"speed-up: {population_rate / loop_rate:.0f}x per learner-step")


if __name__ == "__main__":
    main()
