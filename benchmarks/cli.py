"""Wall time of ``emphatic-rl --help`` and ``emphatic-rl list`` (targets: median under 1 s and 2 s).

Each round runs every command once as a fresh process (the console script of the current environment), in
alternating order, so a burst of load on a shared machine hits every command alike; the table gives the median
and the spread over rounds. ``python -X importtime`` of the same commands shows where the time goes.

Usage::

    python benchmarks/cli.py [--rounds 15] [--out benchmarks/results/cli_cpu.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "emphatic-rl --help": (["--help"], 1.0),
    "emphatic-rl list": (["list"], 2.0),
    "emphatic-rl list ace": (["list", "ace"], 2.0),
    "emphatic-rl train --help": (["train", "--help"], 1.0),
}


def console_script() -> list[str]:
    """The installed ``emphatic-rl`` next to this Python, else ``python -m emphatic_rl.cli``."""
    script = Path(sys.executable).with_name("emphatic-rl")
    if script.is_file():
        return [str(script)]
    found = shutil.which("emphatic-rl")
    return [found] if found else [sys.executable, "-m", "emphatic_rl.cli"]


def time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    completed = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {completed.stderr.strip()[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default="benchmarks/results/cli_cpu.md")
    args = parser.parse_args()
    base = console_script()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for argv, _ in COMMANDS.values():  # warm the file cache
        time_once(base + argv)
    load_before = os.getloadavg()[0]
    for round_index in range(args.rounds):
        order = list(COMMANDS) if round_index % 2 == 0 else list(reversed(COMMANDS))
        for name in order:
            times[name].append(time_once(base + COMMANDS[name][0]))
    load_after = os.getloadavg()[0]
    rows = []
    for name, (_, target) in COMMANDS.items():
        median = statistics.median(times[name])
        rows.append((name, median, min(times[name]), max(times[name]), target))
        print(
            f"{name:28s} median {median:.3f} s  (min {min(times[name]):.3f}, max {max(times[name]):.3f}); "
            f"target < {target:.0f} s: {'met' if median < target else 'NOT met'}"
        )
    lines = [
        "# Start-up time of the command line",
        "",
        f"`python benchmarks/cli.py --rounds {args.rounds}`: each command as a fresh process through the console "
        f"script, {args.rounds} interleaved rounds (alternating order), wall time. Python "
        f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{load_before:.1f} before and {load_after:.1f} after the run (a shared machine).",
        "",
        "| command | median (s) | min (s) | max (s) | target | met |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, median, low, high, target in rows:
        met = "yes" if median < target else "no"
        lines.append(f"| `{name}` | {median:.3f} | {low:.3f} | {high:.3f} | < {target:.0f} s | {met} |")
    lines += [
        "",
        "Why it is fast: `import emphatic_rl` imports neither torch, numpy nor Gymnasium (the Gymnasium ids are "
        "registered when Gymnasium is imported); the parser knows the commands from static metadata and adds a "
        "command's arguments, importing its module, only when that command runs; `list` reads the shipped "
        "`emphatic_rl/catalog.json` (made from the registries by `python -m emphatic_rl.cli.catalog`, checked by the "
        "tests). Before, building the parser imported torch and every command: `emphatic-rl --help` took 8-10 s.",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
