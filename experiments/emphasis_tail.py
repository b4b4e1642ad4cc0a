"""How heavy-tailed is the emphasis F_t that ACE's actor and the ETD critic use? A diagnostic for a study's variants.

Trains the study's variants exactly as ``emphatic-rl sweep`` would (same configs, same behaviour streams, the
library's ``Runner``; no evaluation, nothing written but the table) and records, per setting and per window of
steps, the distribution of the per-step emphasis ``F_t`` over all runs of that setting: quantiles, the largest value
and the share of the window's total emphasis carried by its largest 1% of steps. With the ETD critic, ``F_t`` (times
rho_t) scales every critic step, so a share near 1 means that a few steps make most of the critic's learning.

    python experiments/emphasis_tail.py experiments/results/j23-puddle-world/emphasis-tail/pw_etd.toml \
        --out experiments/results/j23-puddle-world/emphasis-tail/pw_etd.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from emphatic_rl.runner import Callback, Runner
from emphatic_rl.studies.sweep import load_study, member_layout, plan_study
from emphatic_rl.train import build_run

QUANTILES = (0.5, 0.9, 0.99, 0.999)


def window_rows(emphasis: torch.Tensor, setting_of: torch.Tensor) -> list[tuple[int, list[float], float, float]]:
    """Per setting: ``(setting, quantiles, max, top-1% share)`` of ``emphasis [T, P]`` pooled over its members."""
    rows = []
    for setting in setting_of.unique().tolist():
        values = emphasis[:, setting_of == setting].flatten().double()
        values = values[torch.isfinite(values)]
        if values.numel() == 0:
            rows.append((setting, [float("nan")] * len(QUANTILES), float("nan"), float("nan")))
            continue
        quantiles = torch.quantile(values, torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
        top = values.sort(descending=True).values
        share = float(top[: max(1, top.numel() // 100)].sum() / top.sum()) if float(top.sum()) > 0 else float("nan")
        rows.append((setting, quantiles, float(values.max()), share))
    return rows


class EmphasisWindows(Callback):
    """Records the update's ``emphasis [P]`` every step and, every ``window`` steps (and at the last), appends one
    table row per setting of ``chunk`` to ``lines`` (and prints it)."""

    def __init__(self, window: int, chunk: Any, runs: int, lines: list[str]) -> None:
        self.window, self.chunk, self.lines = window, chunk, lines
        self.setting_of = torch.tensor([c for c, _ in member_layout(len(chunk.settings), runs)])
        self.values: list[torch.Tensor] = []

    def on_start(self, runner: Runner) -> None:
        self.started = time.perf_counter()

    def on_step(self, runner: Runner) -> None:
        self.values.append(runner.metrics["followon"].detach().cpu())
        if not runner.due(self.window):
            return
        step = runner.step
        for setting, quantiles, largest, share in window_rows(torch.stack(self.values), self.setting_of):
            values = ", ".join(f"{k} = {v:g}" for k, v in self.chunk.settings[setting].items())
            cells = " | ".join(f"{q:.3g}" for q in quantiles)
            self.lines.append(
                f"| {self.chunk.variant.name} | {values} | {step - len(self.values) + 1}-{step} | {cells} | "
                f"{largest:.3g} | {share:.2f} |"
            )
        print(self.lines[-1], f"({time.perf_counter() - self.started:.0f} s)", flush=True)
        self.values = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help="a study TOML (emphatic-rl sweep format)")
    parser.add_argument("--only", nargs="*", help="variant names (default: all)")
    parser.add_argument("--window", type=int, default=20000, help="steps per window (default 20000)")
    parser.add_argument("--out", help="write the Markdown table here as well")
    args = parser.parse_args()

    torch.set_num_threads(1)
    study = load_study(args.study)
    lines = [
        f"Emphasis F_t fed to the critic, `{args.study}` ({study.runs} runs per setting, pooled), "
        f"per window of {args.window} steps. Reproduce: `python experiments/emphasis_tail.py {args.study}`.",
        "",
        "| variant | setting | steps | F q50 | q90 | q99 | q99.9 | max | share of the top 1% of steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for chunk in plan_study(study):
        if args.only and chunk.variant.name not in args.only:
            continue
        run = build_run(chunk.config)
        windows = EmphasisWindows(args.window, chunk, study.runs, lines)
        Runner(run).run(chunk.config.steps, [windows])  # the training loop of emphatic-rl sweep, no evaluation
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
