"""``emphatic-rl dyna`` and ``emphatic-rl dyna-fa``: the Dyna study programs' arguments, mapped onto
:mod:`emphatic_rl.studies.dyna` and :mod:`emphatic_rl.studies.dyna_fa` (``load_config``, ``write_study``)."""

from __future__ import annotations

import argparse
import sys
import tomllib

from emphatic_rl.cli import _fail


def add_study_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    """The arguments of the ``dyna`` (``kind="dyna"``) or ``dyna-fa`` (``kind="dyna-fa"``) command."""
    if kind == "dyna":
        shipped, out, example = "dyna-gridworld, see `emphatic-rl list studies`", "experiments/results/dyna", "seeds=5"
    else:
        shipped = "dyna-fa-cartpole, dyna-fa-catcher, dyna-fa-puddle-world"
        out, example = "experiments/results/dyna-fa", "seeds=3 --set 'doses=[0, 0.5]'"
    parser.add_argument("config", help=f"a shipped study's name ({shipped}) or a TOML file")
    parser.add_argument("--out", default=out, help=f"output folder; default {out}")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a study key, value parsed as TOML (e.g. --set {example})",
    )
    if kind == "dyna-fa":
        parser.add_argument(
            "--sweep",
            nargs="?",
            const="sweep",
            default=None,
            metavar="NAME",
            help="run one of the file's sweeps instead: alone, its [sweep] table (step sizes x rollout lengths); "
            "with a NAME, its [sweep-NAME] table (the shipped studies have `--sweep target-tau`); the table's keys "
            "override [study]",
        )


def run_study_command(args: argparse.Namespace, kind: str) -> int:
    """Run the ``dyna`` / ``dyna-fa`` command; returns the exit status (2 on bad input, before any work)."""
    import torch

    from emphatic_rl.studies import dyna, dyna_fa, parse_set_overrides, resolve_study

    torch.set_num_threads(1)
    try:
        overrides = parse_set_overrides(args.set)
        path = resolve_study(args.config, kind=kind)
        fa_config = dyna_fa.load_config(path, overrides, sweep=args.sweep or False) if kind == "dyna-fa" else None
        config = dyna.load_config(path, overrides) if fa_config is None else None
    except (ValueError, TypeError, OSError, tomllib.TOMLDecodeError) as error:
        return _fail(str(error))
    if fa_config is not None:
        seconds = dyna_fa.write_study(fa_config, args.out)
    else:
        assert config is not None  # loaded above when the kind is "dyna"
        seconds = dyna.write_study(config, args.out)
    figures = "" if fa_config is not None and fa_config.is_sweep else " and figures"
    print(f"emphatic-rl {kind}: wrote {args.out}/summary.md, results.json{figures} in {seconds:.0f} s", file=sys.stderr)
    return 0


def cmd_dyna(args: argparse.Namespace) -> int:
    return run_study_command(args, "dyna")


def cmd_dyna_fa(args: argparse.Namespace) -> int:
    return run_study_command(args, "dyna-fa")
