"""``emphatic-rl sweep STUDY``: the command's arguments and how they map onto :mod:`emphatic_rl.studies.sweep`
(``load_study``, ``plan_study``, ``validate_study``, ``run_study``) and :mod:`emphatic_rl.studies.sweep_ray`."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from emphatic_rl.checkpoints import RunInterrupted
from emphatic_rl.cli import _fail, describe_write_error
from emphatic_rl.config import ConfigError, parse_set_arguments
from emphatic_rl.studies.sweep import _check_int, load_study, plan_study, print_estimate, run_study, validate_study


def check_ray_arguments(args: argparse.Namespace) -> None:
    """Raise ``ConfigError`` (one line) for ``--backend ray`` without Ray installed, or bad Ray flags."""
    if getattr(args, "backend", "local") != "ray":
        if getattr(args, "address", None) is not None:
            raise ConfigError("--address is for --backend ray (the local backend runs on this machine)")
        return
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(
            "--backend ray needs Ray, which is not installed: pip install 'emphatic-rl[ray]' (or 'ray>=2.9'); "
            "or use --backend local"
        )
    cpus = getattr(args, "cpus_per_task", 1)
    if not isinstance(cpus, int) or cpus < 1:
        raise ConfigError(f"--cpus-per-task must be an integer >= 1, got {cpus!r}")


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "study", help="a shipped study's name (j23-mountain-car; see `emphatic-rl list studies`) or a study TOML"
    )
    parser.add_argument("--out", help="results folder; default runs/sweeps/<study name>[-full]")
    parser.add_argument("--full", action="store_true", help="the full protocol: [full_grid], full_runs, [full_base]")
    parser.add_argument("--only", action="append", default=[], metavar="VARIANT",
                        help="run only this variant (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a [base] key: steps=2000, env.max_episode_steps=500, agent.critic=\"etd\"")
    parser.add_argument("--runs", type=int, help="override the number of runs")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and print the plan and an estimated run time (from a short calibration of "
                        "each population run: a few training steps and evaluation steps), train nothing")
    parser.add_argument("--calibrate", type=float, default=0.5, metavar="SECONDS",
                        help="--dry-run: seconds of training steps timed per population run (default 0.5)")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a progress bar per population run (default: on; --no-progress turns them off)",
    )
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="local: population runs one after another here; ray: each a Ray task (pip install "
                        "'emphatic-rl[ray]'; --out on a filesystem every node sees)")
    parser.add_argument("--address", help="--backend ray: the cluster (ray://HOST:10001, HOST:6379 or auto); default "
                        "a local Ray instance on this machine's CPUs")
    parser.add_argument("--cpus-per-task", type=int, default=1, metavar="N",
                        help="--backend ray: CPUs (and torch/numba threads) per population run (default 1)")


def run_sweep(args: argparse.Namespace) -> int:
    """The ``sweep`` command. Returns the exit code (2 for a user mistake, before any work)."""
    ray_backend = getattr(args, "backend", "local") == "ray"
    try:
        if ray_backend or getattr(args, "address", None) is not None:
            check_ray_arguments(args)
        study = load_study(args.study, full=args.full, base_overrides=parse_set_arguments(args.set))
        if args.runs is not None:
            study.runs = _check_int(args.runs, "--runs")
        if args.only:
            names = [v.name for v in study.variants]
            missing = [n for n in args.only if n not in names]
            if missing:
                raise ConfigError(f"--only {missing[0]!r} is not a variant of this study; allowed: {', '.join(names)}")
            study.variants = [v for v in study.variants if v.name in args.only]
        chunks = plan_study(study)
        validate_study(chunks)
    except (ConfigError, ValueError) as error:
        print(f"emphatic-rl: error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/sweeps/{study.name}{'-full' if args.full else ''}")
    for chunk in chunks:
        print(f"  {chunk.folder}: {chunk.config.agent}, {len(chunk.settings)} settings x {study.runs} runs "
              f"= P {chunk.config.population_size}; grid "
              + ", ".join(f"{k} ({len(v)})" if len(v) > 4 else f"{k} {v}" for k, v in chunk.variant.grid.items()))
    if args.dry_run:
        print(f"emphatic-rl sweep: plan valid ({len(chunks)} population runs); nothing trained")
        try:
            print_estimate(study, chunks, args.calibrate)
        except (ConfigError, ValueError) as error:
            print(f"emphatic-rl: error: {error}", file=sys.stderr)
            return 2
        return 0
    try:
        if ray_backend:
            from emphatic_rl.studies.sweep_ray import ChunkFailed, run_study_ray

            try:
                run_study_ray(study, out, address=args.address, cpus_per_task=args.cpus_per_task,
                              log=lambda m: print(m, flush=True), imports=getattr(args, "imports", []))
            except ChunkFailed as error:
                print(f"emphatic-rl sweep: {error}", file=sys.stderr)
                return 1
        else:
            run_study(study, out, progress=args.progress, log=lambda m: print(m, flush=True))
    except ConfigError as error:
        print(f"emphatic-rl: error: {error}", file=sys.stderr)
        return 2
    except RunInterrupted as stopped:
        print(f"emphatic-rl sweep: {stopped.message}", flush=True)
        return 130 if stopped.signal_name == "SIGINT" else 143
    except KeyboardInterrupt:
        print("emphatic-rl sweep: interrupted between population runs; rerun the same command to continue",
              file=sys.stderr)
        return 130
    except OSError as error:
        print(f"emphatic-rl: error: {describe_write_error(error, out)}; finished runs and the last checkpoints are "
              "kept", file=sys.stderr)
        return 1
    print(f"emphatic-rl sweep: results in {out}; next: emphatic-rl report {out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from emphatic_rl.studies import resolve_study

    try:
        args.study = str(resolve_study(args.study, kind="sweep"))
    except ValueError as error:
        return _fail(str(error))
    return run_sweep(args)
