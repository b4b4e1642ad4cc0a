"""The ``emphatic-rl`` command: ``train``, ``list``, ``gradients``, ``sweep``, ``report``, ``dyna``, ``dyna-fa``.

The command line lives in this package only: each command's module here builds its ``argparse`` arguments and maps
the parsed ``Namespace`` onto the library's typed functions (``emphatic_rl.train``, ``emphatic_rl.studies.*``,
``emphatic_rl.gradients``); library modules parse no arguments. ``python -m emphatic_rl.cli.catalog [--check]``
rewrites (checks) the catalog that ``list`` reads.

User mistakes (unknown names, bad values, unwritable folders) end with one line on stderr and exit code 2, before any
work starts; nothing half-written is left behind.

Plugins (``emphatic_rl.plugins``): every command loads the installed entry points of the group
``emphatic_rl.plugins``; ``train``, ``sweep``, ``list`` and ``gradients`` also take ``--import MODULE``
(repeatable), so agents, envs and estimators registered by a user's own module are known by name. A plugin that
fails to import is one line naming it, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


def add_import_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import this module first, so that the agents, envs and estimators it registers can "
                        "be named (repeatable; the module must be on sys.path / PYTHONPATH)")


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
    parser.add_argument(
        "--config", help="a TOML config file (see emphatic_rl/config.py) or a shipped train config's name"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key: steps=5000, agent.learning_rate=1e-3, env.max_episode_steps=200")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_import_argument(parser)


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
        from emphatic_rl.studies import resolve_study

        apply_overrides(config, load_config_file(resolve_study(args.config, kind="train")))
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
    board = f"TensorBoard: tensorboard --logdir {out_dir}/tensorboard, " if (out_dir / "tensorboard").is_dir() else ""
    print(f"emphatic-rl: logs: {out_dir}/metrics.csv, {board}checkpoint: {out_dir}/checkpoint.pt")
    return 0


def summarise_eta_comparison(config: TrainConfig, out_dir: Path) -> list[str]:
    """Two lines saying who won when a population holds OffPAC (eta = 0) and ACE (eta = 1) members, else nothing.

    Uses each member's last ``eval/exact_J`` (the exact objective, on tabular MDPs) or else its last ``eval/return``.
    """
    from emphatic_rl.agents import AGENT_REGISTRY
    from emphatic_rl.logging import read_metrics

    eta = config.agent_options.get("eta")
    entry = AGENT_REGISTRY.get(config.agent)
    if entry is None or "eta" not in entry.per_member_ranges() or not isinstance(eta, list):
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
LIST_SECTIONS = ("agents", "envs", "studies")


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name",
        nargs="?",
        help="agents | envs | studies (one section), or an agent, env or study name (all its details); "
        "default: everything, one line each",
    )
    parser.add_argument("--filter", "-f", metavar="WORD", help="only entries whose name or description contains WORD")


def _format_option(key: str, row: dict) -> str:
    allowed = f"  [{' | '.join(row['allowed'])}]" if row.get("allowed") else ""
    return f"      {key} = {row['default']!r}  ({row['type']}){allowed}"


def _describe_agent(name: str, entry: dict) -> list[str]:
    runs_on = ", ".join(entry["runs_on"]) or "-" if "runs_on" in entry else "not checked (registered in this process)"
    lines = [f"agent {name}: {entry['description']}", f"  runs on: {runs_on}"]
    not_on = entry.get("not_on", {})
    if not_on:
        lines.append("  does not run on:")
        by_reason: dict[str, list[str]] = {}
        for env, reason in not_on.items():  # one line per reason (the env's name in it made generic)
            by_reason.setdefault(reason.replace(f"'{env}'", "'<env>'"), []).append(env)
        lines += [f"      {', '.join(envs)}: {reason}" for reason, envs in by_reason.items()]
    lines.append("  options (--set agent.KEY=VALUE; default, type, allowed values):")
    lines += [_format_option(key, row) for key, row in entry["options"].items()]
    return lines


def _describe_env(name: str, entry: dict) -> list[str]:
    lines = [
        f"env {name}: {entry['description']}",
        f"  actions {entry['actions']}, observations {entry['observations']}",
        "  Gymnasium ids: " + (", ".join(entry["gymnasium_ids"]) or "-"),
        "  agents: " + (", ".join(entry.get("agents", [])) or "-"),
        "  options (--set env.KEY=VALUE; default, type, allowed values):",
    ]
    lines += [_format_option(key, row) for key, row in entry["options"].items()]
    return lines


def cmd_list(args: argparse.Namespace) -> int:
    """``emphatic-rl list [agents|envs|studies|NAME] [--filter WORD]``, from the shipped catalog (no torch)."""
    from emphatic_rl.catalog import load_catalog

    catalog = load_catalog()
    name = args.name
    if name is not None and name not in LIST_SECTIONS:
        lines: list[str] = []
        if name in catalog["agents"]:
            lines += _describe_agent(name, catalog["agents"][name])
        if name in catalog["envs"]:
            lines += _describe_env(name, catalog["envs"][name])
        if name in catalog["studies"]:
            study = catalog["studies"][name]
            lines += [f"study {name} ({study['kind']}): {study['description']}", f"  run: {study['command']}"]
        if not lines:
            known = sorted(set(catalog["agents"]) | set(catalog["envs"]) | set(catalog["studies"]))
            return _fail(f"unknown name {name!r} for list; allowed: {', '.join(LIST_SECTIONS + tuple(known))}")
        print("\n".join(lines))
        return 0
    word = (args.filter or "").lower()

    def keep(key: str, description: str) -> bool:
        return not word or word in key.lower() or word in description.lower()

    sections = LIST_SECTIONS if name is None else (name,)
    out: list[str] = []
    if "agents" in sections:
        rows = [(k, v) for k, v in catalog["agents"].items() if keep(k, v["description"])]
        out.append("Agents (--agent NAME; `emphatic-rl list NAME` for its options and envs):")
        out += [f"  {k:24s} {v['description']}" for k, v in rows]
    if "envs" in sections:
        rows = [(k, v) for k, v in catalog["envs"].items() if keep(k, v["description"])]
        out.append("Envs (--env NAME; agents that run on each):")
        for k, v in rows:
            out.append(f"  {k:24s} {v['description']}")
            out.append(f"  {'':24s}   agents: {', '.join(v.get('agents', [])) or '-'}")
        if keep("gym:<id>", catalog["gym"]):
            out.append(f"  {'gym:<id>':24s} {catalog['gym']}")
    if "studies" in sections:
        rows = [(k, v) for k, v in catalog["studies"].items() if keep(k, v["description"] + " " + v["kind"])]
        out.append(
            "Studies shipped with the package, run by name (sweep: emphatic-rl sweep NAME; train: emphatic-rl train "
            "--config NAME; dyna: emphatic-rl dyna NAME; dyna-fa: emphatic-rl dyna-fa NAME):"
        )
        out += [f"  {k:33s} {v['kind']:6s} {v['description']}" for k, v in rows]
    print("\n".join(out))
    return 0


# ---------------------------------------------------------------------------------------------------- main
def _build_train(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)
    parser.set_defaults(handler=cmd_train)


def _build_list(parser: argparse.ArgumentParser) -> None:
    add_list_arguments(parser)
    add_import_argument(parser)
    parser.set_defaults(handler=cmd_list)


def _build_sweep(parser: argparse.ArgumentParser) -> None:
    from emphatic_rl.cli.sweep import add_sweep_arguments, cmd_sweep

    add_sweep_arguments(parser)
    add_import_argument(parser)
    parser.set_defaults(handler=cmd_sweep)


def _build_report(parser: argparse.ArgumentParser) -> None:
    from emphatic_rl.cli.report import add_report_arguments, run_report

    add_report_arguments(parser)
    parser.set_defaults(handler=run_report)


def _build_gradients(parser: argparse.ArgumentParser) -> None:
    from emphatic_rl.cli.gradients import add_gradients_arguments, run_gradients

    add_gradients_arguments(parser)
    add_import_argument(parser)
    parser.set_defaults(handler=run_gradients)


def _build_dyna(parser: argparse.ArgumentParser) -> None:
    from emphatic_rl.cli.studies import add_study_arguments, cmd_dyna

    add_study_arguments(parser, "dyna")
    parser.set_defaults(handler=cmd_dyna)


def _build_dyna_fa(parser: argparse.ArgumentParser) -> None:
    from emphatic_rl.cli.studies import add_study_arguments, cmd_dyna_fa

    add_study_arguments(parser, "dyna-fa")
    parser.set_defaults(handler=cmd_dyna_fa)


#: the commands: name -> (one-line help, function that adds the command's arguments). A command's module is
#: imported only when that command is run (or asked for its --help), so `emphatic-rl --help` imports no torch.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "train": ("train an agent (no arguments: a small default run)", _build_train),
    "list": ("agents, envs, studies, their options and which agents run on which envs", _build_list),
    "sweep": ("run a study (a shipped study's name or a TOML): variants x grid x runs as populations", _build_sweep),
    "report": ("best settings, curves with CIs, report.md of a sweep", _build_report),
    "gradients": ("exact gradients and estimators on tabular MDPs", _build_gradients),
    "dyna": ("run a tabular Dyna study (a shipped study's name or a TOML): runs, summary.md, figures", _build_dyna),
    "dyna-fa": ("run a Dyna-FA dose-response study (a shipped study's name or a TOML)", _build_dyna_fa),
}


class _LazySubParsersAction(argparse._SubParsersAction):
    """Sub-commands whose arguments are added when the command is parsed (see :data:`COMMANDS`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.builders: dict[str, Callable[[argparse.ArgumentParser], None]] = {}

    def build(self, name: str) -> argparse.ArgumentParser:
        """The parser of ``name`` with its arguments (added on first call)."""
        builder = self.builders.pop(name, None)
        if builder is not None:
            builder(self._name_parser_map[name])
        return self._name_parser_map[name]

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if values and values[0] in self._name_parser_map:
            self.build(values[0])
        super().__call__(parser, namespace, values, option_string)


def build_parser() -> argparse.ArgumentParser:
    """The ``emphatic-rl`` parser: the commands' arguments are added lazily (see :data:`COMMANDS`)."""
    parser = argparse.ArgumentParser(
        prog="emphatic-rl",
        description="Off-policy policy-gradient research: train agents, run and report studies, compute exact "
        "gradients.",
        epilog="`emphatic-rl COMMAND --help` for a command's options; `emphatic-rl list` for agents, envs, studies.",
    )
    parser.register("action", "parsers", _LazySubParsersAction)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, builder) in COMMANDS.items():
        commands.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        commands.builders[name] = builder
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from emphatic_rl.plugins import PluginError, load_plugins

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        load_plugins(getattr(args, "imports", []))
    except PluginError as error:
        return _fail(str(error))
    try:
        return args.handler(args)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which saves a checkpoint and returns instead)
        print("emphatic-rl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `emphatic-rl list | head`: the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
