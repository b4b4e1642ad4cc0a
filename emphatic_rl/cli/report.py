"""``emphatic-rl report DIRECTORY``: the command's arguments, mapped onto
:func:`emphatic_rl.studies.report.write_report`."""

from __future__ import annotations

import argparse
import sys

from emphatic_rl.config import ConfigError
from emphatic_rl.studies.report import SELECT_KINDS, write_report


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="a sweep's results folder (emphatic-rl sweep --out)")
    parser.add_argument("--out", help="where to write report.md, summary.csv and PNGs; default DIRECTORY")
    parser.add_argument("--metric", help="metric of the curves; default eval/exact_J if logged, else eval/return")
    parser.add_argument("--select", choices=SELECT_KINDS, help="rank settings by auc (default) or final value")
    parser.add_argument("--split", action="append", default=[], metavar="KEY",
                        help="report each value of this grid key as its own variant (repeatable)")
    parser.add_argument("--include-unfinished", action="store_true",
                        help="also report run folders without done.json (a running or killed sweep)")


def run_report(args: argparse.Namespace) -> int:
    """The ``report`` command. Returns the exit code (2 for a user mistake)."""
    try:
        path = write_report(args.directory, args.out, args.metric, args.select, args.split, args.include_unfinished)
    except ConfigError as error:
        print(f"emphatic-rl: error: {error}", file=sys.stderr)
        return 2
    print(path.read_text())
    print(f"emphatic-rl report: wrote {path} and its PNGs and summary.csv")
    return 0
