"""``emphatic-rl gradients``: the command's arguments, mapped onto :class:`emphatic_rl.gradients.GradientsOptions`
(:func:`~emphatic_rl.gradients.build_lab`, :func:`~emphatic_rl.gradients.compute`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

from emphatic_rl.envs.counterexamples import MDP_BUILDERS
from emphatic_rl.exact.lab import ESTIMATORS, INTERESTS
from emphatic_rl.exact.sampled import SAMPLED_ESTIMATORS
from emphatic_rl.gradients import POLICIES, GradientsOptions, build_lab, compute, format_table, plot_ascents


def add_gradients_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``gradients`` options to ``parser``."""
    parser.add_argument("--env", required=True, help=f"tabular env: {', '.join(MDP_BUILDERS)}")
    parser.add_argument(
        "--env-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="env builder option, e.g. middle_steps=3 (repeatable)",
    )
    parser.add_argument(
        "--policy",
        default="auto",
        help=f"policy class: {', '.join(POLICIES)} (auto: softmax for "
        "discrete actions; for continuous actions deterministic unless a stochastic estimator is asked)",
    )
    parser.add_argument("--theta", default="zeros", help="zeros | random | FILE (.json list, .pt or .npy)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --theta random and of --samples")
    parser.add_argument("--eta", type=float, default=1.0, help="ACE's eta (1: emphatic, 0: OffPAC)")
    parser.add_argument("--interest", default="uniform", help=f"interest function: {', '.join(INTERESTS)}")
    parser.add_argument(
        "--estimators", default=None, help=f"comma-separated, from {', '.join(ESTIMATORS)} (default: all that apply)"
    )
    parser.add_argument("--ascent", action="store_true", help="follow each estimator's expected update")
    parser.add_argument("--steps", type=int, default=300, help="ascent steps")
    parser.add_argument("--lr", type=float, default=20.0, help="ascent step size")
    parser.add_argument(
        "--samples",
        type=int,
        default=0,
        help=f"Monte Carlo check with this many sampled updates ({', '.join(SAMPLED_ESTIMATORS)})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a progress bar over the estimators with --ascent or --samples (default: on; --no-progress)",
    )
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="plot J along each ascent (needs --ascent)")


def run_gradients(args: argparse.Namespace) -> int:
    """Run the ``gradients`` command; returns the exit status (2 on bad input, with one message on stderr)."""
    torch.set_num_threads(1)  # the lab's tensors are tiny: one thread is the fastest
    try:
        options = GradientsOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GradientsOptions)})
        lab, estimators = build_lab(options)
        report = compute(options, lab, estimators)
    except ValueError as error:
        print(f"emphatic-rl gradients: error: {error}", file=sys.stderr)
        return 2
    if args.plot:
        plot_ascents(args.plot, lab, report)
    for entry in report["estimators"].values():
        entry.pop("_thetas", None)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_table(report))
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0
