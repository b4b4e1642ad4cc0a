"""The ``emphatic-rl`` command: ``train``, ``list``, ``gradients``.

User mistakes (unknown names, bad values, unwritable folders) end with one line on stderr and exit code 2, before any
work starts; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from emphatic_rl.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    load_config_file,
    parse_set_arguments,
)


class UserError(Exception):
    """An error to report in one line (exit code 2)."""


def _fail(message: str) -> int:
    print(f"emphatic-rl: error: {message}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------------------------------- train
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agent", help="agent name (see `emphatic-rl list`); default dqn")
    parser.add_argument("--env", help="env name (see `emphatic-rl list`) or gym:<id>; default cartpole")
    parser.add_argument("--steps", type=int, help="steps per env copy; default 20000")
    parser.add_argument("--seed", type=int, help="run seed; default 0")
    parser.add_argument("--num-envs", type=int, help="env copies per member, or behaviour streams; default 1")
    parser.add_argument("--population", type=int, help="learners P run as one batch; default 1")
    parser.add_argument("--device", help="torch device; default cpu")
    parser.add_argument("--out", help="run folder; default runs/<agent>-<env>-<time>")
    parser.add_argument("--config", help="a TOML config file (see emphatic_rl/config.py)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key: steps=5000, agent.learning_rate=1e-3, env.max_episode_steps=200")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    config = TrainConfig()
    if args.config:
        apply_overrides(config, load_config_file(args.config))
    flags = {
        "agent": args.agent,
        "env": args.env,
        "steps": args.steps,
        "seed": args.seed,
        "num_envs": args.num_envs,
        "population_size": args.population,
        "device": args.device,
    }
    apply_overrides(config, {k: v for k, v in flags.items() if v is not None})
    apply_overrides(config, parse_set_arguments(args.set))
    if args.no_progress:
        config.progress = False
    return config


def cmd_train(args: argparse.Namespace) -> int:
    from emphatic_rl.train import build_run, load_run_config, prepare_out_dir, train

    try:
        if args.resume:
            if args.config or args.set or any(
                getattr(args, k) is not None for k in ("agent", "env", "seed", "num_envs", "population", "device")
            ):
                raise UserError("--resume takes the saved config; only --steps (to extend the run) may be given")
            prepare_out_dir(args.resume, resume=True)
            config = load_run_config(args.resume)
            if args.steps is not None:
                config.steps = args.steps
            if args.no_progress:
                config.progress = False
            out_dir = Path(args.resume)
        else:
            config = _config_from_args(args)
            out_dir = Path(args.out or f"runs/{config.agent}-{config.env}-{time.strftime('%Y%m%d-%H%M%S')}")
        run = build_run(config)
        if not args.resume:
            prepare_out_dir(out_dir, resume=False)
    except (ConfigError, ValueError, UserError) as error:
        return _fail(str(error))
    print(f"emphatic-rl: {'resuming' if args.resume else 'training'} {config.agent} on {config.env}, "
          f"{config.steps} steps, population {config.population_size}, device {config.device}; logs in {out_dir}")
    result = train(config, out_dir, resume=bool(args.resume), run=run)
    final = result.final_eval_return
    print(f"emphatic-rl: done at step {result.steps}; final eval return per member: "
          f"{', '.join(f'{v:.2f}' for v in final.tolist()[:8])}{' ...' if final.numel() > 8 else ''}")
    if bool(result.diverged.any()):
        print(f"emphatic-rl: members {result.diverged.nonzero().flatten().tolist()} diverged and were frozen")
    print(f"emphatic-rl: logs: {out_dir}/metrics.csv, TensorBoard: tensorboard --logdir {out_dir}/tensorboard, "
          f"checkpoint: {out_dir}/checkpoint.pt")
    return 0


# ---------------------------------------------------------------------------------------------------- list
def cmd_list(args: argparse.Namespace) -> int:
    from emphatic_rl.agents import AGENT_REGISTRY, load_agents
    from emphatic_rl.envs import ENV_REGISTRY

    load_agents()
    print("Agents (--agent NAME, options with --set agent.KEY=VALUE):")
    for name in sorted(AGENT_REGISTRY):
        entry = AGENT_REGISTRY[name]
        print(f"  {name:24s} {entry.description}")
        for key, value in entry.default_options().items():
            print(f"      {key} = {value!r}")
    print("\nEnvs (--env NAME, options with --set env.KEY=VALUE):")
    for name in sorted(ENV_REGISTRY):
        entry = ENV_REGISTRY[name]
        print(f"  {name:24s} {entry.description}")
        for key, value in entry.options().items():
            print(f"      {key} = {value!r}")
    print("  gym:<id>                 any Gymnasium env id, through its vector API (e.g. gym:MinAtar/Breakout-v1)")
    return 0


# ---------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emphatic-rl", description="Off-policy policy-gradient research: train agents, compute exact gradients."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train an agent (no arguments: a small default run)")
    add_train_arguments(train_parser)
    train_parser.set_defaults(handler=cmd_train)
    list_parser = commands.add_parser("list", help="agents, envs and their options")
    list_parser.set_defaults(handler=cmd_list)
    try:
        from emphatic_rl.gradients import add_gradients_arguments, run_gradients
    except ImportError:
        pass
    else:
        gradients_parser = commands.add_parser("gradients", help="exact gradients and estimators on tabular MDPs")
        add_gradients_arguments(gradients_parser)
        gradients_parser.set_defaults(handler=lambda a: run_gradients(a))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
