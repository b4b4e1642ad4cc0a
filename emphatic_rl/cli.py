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


def describe_write_error(error: OSError, folder: Path | str) -> str:
    """One line for an ``OSError`` met while a run writes its folder (a full disk says so)."""
    import errno

    from emphatic_rl.checkpoints import DiskFullError

    if isinstance(error, DiskFullError):
        return str(error.strerror)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk holding {str(folder)!r} is full (no space left on device)"
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write in {str(folder)!r}: it is read-only or not writable ({error.strerror})"
    return str(error.strerror or error)


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


#: What `emphatic-rl train` runs when neither --agent, --env nor --config is given: ACE against OffPAC on the N18
#: three-state counterexample, 30 runs each, one population of 60 learners fed by 30 behaviour streams, with the
#: oracle critic (exact v_pi) so that only the actor's gradient estimator differs. About a minute on a CPU.
DEMO_RUNS = 30
DEMO_CONFIG = {
    "agent": "ace",
    "env": "counterexample-three-state",
    "steps": 5000,
    "num_envs": DEMO_RUNS,
    "population_size": 2 * DEMO_RUNS,
    "eval_every": 500,
    "eval_episodes": 5,
    "log_every": 500,
    "checkpoint_every": 1000,
    "env_options": {"observation": "state"},
    "agent_options": {"critic": "oracle", "alpha_actor": 0.1, "eta": [0.0] * DEMO_RUNS + [1.0] * DEMO_RUNS},
}


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    config = TrainConfig()
    if args.agent is None and args.env is None and args.config is None:
        apply_overrides(config, {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEMO_CONFIG.items()})
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
        try:
            run = build_run(config)
        except (ConfigError, ValueError) as error:
            if args.resume:  # the saved config itself is wrong (edited by hand, or of another version)
                raise ConfigError(f"{str(out_dir / 'config.json')!r}: {error}") from None
            raise
        if not args.resume:
            prepare_out_dir(out_dir, resume=False)
    except (ConfigError, ValueError, UserError) as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        return _fail("interrupted before training started; nothing was written")
    print(f"emphatic-rl: {'resuming' if args.resume else 'training'} {config.agent} on {config.env}, "
          f"{config.steps} steps, population {config.population_size}, device {config.device}; logs in {out_dir}")
    try:
        result = train(config, out_dir, resume=bool(args.resume), run=run)
    except ConfigError as error:  # a checkpoint that cannot be used, --steps below the steps done
        return _fail(str(error))
    except OSError as error:  # a full disk, a folder that became read-only: one line, the last checkpoint kept
        print(f"emphatic-rl: error: {describe_write_error(error, out_dir)}; the last checkpoint in {str(out_dir)!r} "
              "is kept", file=sys.stderr)
        return 1
    if result.interrupted:
        print(f"emphatic-rl: stopped by {result.interrupted} at step {result.steps}; checkpoint saved. Continue with: "
              f"emphatic-rl train --resume {out_dir}")
        return 130 if result.interrupted == "SIGINT" else 143
    final = result.final_eval_return
    print(f"emphatic-rl: done at step {result.steps}; final eval return per member: "
          f"{', '.join(f'{v:.2f}' for v in final.tolist()[:8])}{' ...' if final.numel() > 8 else ''}")
    if bool(result.diverged.any()):
        print(f"emphatic-rl: members {result.diverged.nonzero().flatten().tolist()} diverged and were frozen")
    for line in summarise_eta_comparison(config, out_dir):
        print(f"emphatic-rl: {line}")
    print(f"emphatic-rl: logs: {out_dir}/metrics.csv, TensorBoard: tensorboard --logdir {out_dir}/tensorboard, "
          f"checkpoint: {out_dir}/checkpoint.pt")
    return 0


def summarise_eta_comparison(config: TrainConfig, out_dir: Path) -> list[str]:
    """Two lines saying who won when a population holds OffPAC (eta = 0) and ACE (eta = 1) members, else nothing.

    Uses each member's last ``eval/exact_J`` (the exact objective, on tabular MDPs) or else its last ``eval/return``.
    """
    from emphatic_rl.logging import read_metrics

    eta = config.agent_options.get("eta")
    if config.agent not in ("ace", "ace-direct", "offpac") or not isinstance(eta, list):
        return []
    if sorted(set(eta)) != [0.0, 1.0]:
        return []
    rows = read_metrics(Path(out_dir) / "metrics.csv")
    metric = "eval/exact_J" if any(name == "eval/exact_J" for _, name, _, _ in rows) else "eval/return"
    last: dict[int, tuple[int, float]] = {}
    for step, name, member, value in rows:
        if name == metric and (member not in last or step >= last[member][0]):
            last[member] = (step, value)
    groups: dict[float, list[float]] = {0.0: [], 1.0: []}
    for member, (_, value) in last.items():
        if member < len(eta) and value == value:  # skip NaN (diverged)
            groups[float(eta[member])].append(value)
    if not groups[0.0] or not groups[1.0]:
        return []
    offpac, ace = (sum(v) / len(v) for v in (groups[0.0], groups[1.0]))
    what = "exact J_mu" if metric == "eval/exact_J" else "evaluation return"
    winner = "ACE wins" if ace > offpac else ("OffPAC wins" if offpac > ace else "a tie")
    return [
        f"{winner}: ACE (eta = 1) reached {what} {ace:.3f}, OffPAC (eta = 0) {offpac:.3f} "
        f"(means of {len(groups[1.0])} and {len(groups[0.0])} runs on {config.env}).",
        "why: OffPAC weights its update by the behaviour's state distribution instead of the emphatic weighting m, "
        "dropping how the policy changes future states; with aliased states that semi-gradient settles on the "
        "wrong action, while ACE's follow-on trace estimates m and follows the true gradient of J_mu.",
    ]


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
    try:
        from emphatic_rl.report import add_report_arguments, run_report
        from emphatic_rl.sweep import add_sweep_arguments, run_sweep
    except ImportError:
        pass
    else:
        sweep_parser = commands.add_parser("sweep", help="run a study TOML: variants x grid x runs as populations")
        add_sweep_arguments(sweep_parser)
        sweep_parser.set_defaults(handler=lambda a: run_sweep(a))
        report_parser = commands.add_parser("report", help="best settings, curves with CIs, report.md of a sweep")
        add_report_arguments(report_parser)
        report_parser.set_defaults(handler=lambda a: run_report(a))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which saves a checkpoint and returns instead)
        print("emphatic-rl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
