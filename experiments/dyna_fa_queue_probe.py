"""Why one-step predecessor planning with a learned backward model fails: the states its queue holds, over time.

    python experiments/dyna_fa_queue_probe.py --study dyna-fa-cartpole --steps 3000
    python experiments/dyna_fa_queue_probe.py --study dyna-fa-catcher --steps 3000

One population of the study's learned-model members of the one-step predecessor variant (the study's settings for
that variant, ``--seeds`` runs), on the library's ``Runner``. Every ``--every`` real steps it prints, per run, the
value instrument (the mean over the replayed batch of ``max_a Q_target(S', a)``), the largest absolute coordinate of
the states in the run's predecessor queue and whether the Q-network's and the learned model's parameters are
finite. The one-step predecessor variant pushes the model's predecessors back into its queue, so the learned
backward model is applied to its own outputs again and again; an unbounded regression then drives the states far
outside anything real and the Q-network's values to infinity (``experiments/results/dyna-fa/REPORT.md``).
"""

from __future__ import annotations

import argparse

import torch

from emphatic_rl.runner import Callback, Runner
from emphatic_rl.studies import resolve_study
from emphatic_rl.studies.dyna_fa import load_config, population_config
from emphatic_rl.train import build_run


class _Watch(Callback):
    def __init__(self, every: int) -> None:
        self.every = every

    def on_step(self, runner: Runner) -> None:
        if runner.step % self.every:
            return
        agent = runner.agent
        states = agent.queue.states.flatten(1).abs().amax(dim=1)  # type: ignore[attr-defined]
        q_finite = torch.isfinite(agent.q_flat).all(dim=1)  # type: ignore[attr-defined]
        model_finite = agent.learned_network.parameters_finite()  # type: ignore[attr-defined]
        runs = [
            f"max_q {q:9.3g}  |state| {s:9.3g}  {'finite' if qf else 'NON-FINITE Q'}"
            + ("" if mf else ", non-finite model")
            for q, s, qf, mf in zip(
                agent.replay_max_q.tolist(),  # type: ignore[attr-defined]
                states.tolist(),
                q_finite.tolist(),
                model_finite.tolist(),
                strict=True,
            )
        ]
        print(f"step {runner.step:6d}  " + "  |  ".join(runs), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", default="dyna-fa-cartpole", help="a shipped dyna-fa study (or its TOML)")
    parser.add_argument("--steps", type=int, default=3000, help="real steps (default 3000)")
    parser.add_argument("--seeds", type=int, default=2, help="runs (default 2)")
    parser.add_argument("--every", type=int, default=250, help="print every this many real steps (default 250)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(resolve_study(args.study, kind="dyna-fa"), {"seeds": args.seeds, "steps": args.steps})
    run = build_run(population_config(config, "one-step-predecessor", 0, ["learned"], 1))
    Runner(run).run(args.steps, [_Watch(args.every)])


if __name__ == "__main__":
    main()
