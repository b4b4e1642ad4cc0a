"""The Hallucinating-Value study on the Bordered Gridworld: four Dyna variants, a p_h sweep, many seeds, one program.

Run::

    emphatic-rl dyna experiments/dyna_gridworld.toml --out experiments/results/dyna

For each variant the whole population (seeds x p_h values x step sizes) is one ``DynaAgent`` with ``Q[P, S, A]``
learning in ``N = P`` gridworld copies; ``p_h`` and ``alpha`` are per-member values. The model-free baseline is the
same agent with ``planning_steps = 0``; the perfect-model controls are the ``p_h = 0`` members. Each population is
one training run (:func:`population_config`) on the library's loop, :class:`emphatic_rl.runner.Runner`, with the
:class:`~emphatic_rl.runner.Evaluate` callback and this study's :class:`StudyCurves`; population ``k`` is seeded
from the ``population`` stream of :mod:`emphatic_rl.seeding`.

Measured per member:
- online return, every ``eval_every`` real steps: the mean return of the behaviour (epsilon-greedy) episodes that
  ended in that window (carried over when none ended);
- greedy return, every ``eval_every`` real steps: the return of one episode of the greedy policy (first arg-max)
  from the start cell in an evaluation copy of the env, at most ``max_episode_steps`` steps (the env is
  deterministic, so this is exact);
- the planning instruments (fractions of updates whose target bootstraps from simulated/hallucinated states...).

Outputs (in ``--out``): ``results.json`` (every number), ``summary.md`` (tables with mean and 95% CI over seeds),
``learning_curves_online.png``, ``learning_curves_greedy.png``, ``dose_response.png``, ``value_maps.png``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emphatic_rl.agents.dyna.tabular import PLANNING_COUNTERS, VARIANTS, DynaAgent, DynaOptions
from emphatic_rl.config import TrainConfig
from emphatic_rl.envs.gridworld import ACTION_OFFSETS, BorderedGridworld
from emphatic_rl.runner import Callback, Evaluate, Runner
from emphatic_rl.seeding import stream_seed
from emphatic_rl.train import build_run

BASELINE = "model-free"


@dataclass
class StudyConfig:
    """The ``[study]`` table of the TOML (every key optional)."""

    seeds: int = 30
    steps: int = 2000
    eval_every: int = 50
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    hallucination_probabilities: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.25])
    step_sizes: list[float] = field(default_factory=lambda: [0.1, 0.5])
    planning_steps: int = 5
    rollout_length: int = 3
    gamma: float = 0.95
    epsilon: float = 0.1
    q_init: float = 0.0
    baseline: bool = True
    height: int = 6
    width: int = 6
    max_episode_steps: int = 100
    seed: int = 0
    value_map_p_h: float = 0.1
    metric: str = "online"
    border_physics: str = "closed"
    value_function: str = "tabular"
    hidden: int = 64
    learning_rate: float = 1e-3
    replay_batch: int = 16
    model: str = "given"  # "learned": neural forward/backward models (p_h must be [0.0]); see DynaOptions
    model_hidden: int = 64
    model_learning_rate: float = 3e-3
    model_batch: int = 32
    model_features: str = "one-hot"
    model_sampling: str = "sample"

    def model_options(self) -> dict[str, Any]:
        """The ``DynaOptions`` keys of the model."""
        keys = ("model", "model_hidden", "model_learning_rate", "model_batch", "model_features", "model_sampling")
        return {key: getattr(self, key) for key in keys}

    def __post_init__(self) -> None:
        for key in ("seeds", "steps", "eval_every", "height", "width", "max_episode_steps"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"study.{key} must be an integer >= 1, got {value!r}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"study.variants must be a non-empty list of {', '.join(VARIANTS)}; got {self.variants}")
        for p_h in self.hallucination_probabilities:
            if not 0.0 <= float(p_h) <= 1.0:
                raise ValueError(f"study.hallucination_probabilities must lie in [0, 1], got {p_h!r}")
        if self.border_physics not in ("closed", "open"):
            raise ValueError(f"study.border_physics must be 'closed' or 'open', got {self.border_physics!r}")
        if self.value_function == "mlp" and len(self.step_sizes) != 1:
            raise ValueError(
                "study.step_sizes is the tabular alpha sweep; with value_function = 'mlp' give one entry "
                f"(it is unused; the network learns with study.learning_rate), got {self.step_sizes}"
            )
        DynaOptions(
            value_function=self.value_function,
            hidden=self.hidden,
            learning_rate=self.learning_rate,
            replay_batch=self.replay_batch,
        )
        DynaOptions(**self.model_options())
        if self.model == "learned" and any(float(p_h) != 0.0 for p_h in self.hallucination_probabilities):
            raise ValueError(
                "study.hallucination_probabilities must be [0.0] with model = 'learned' (p_h is the given model's "
                f"injected error), got {self.hallucination_probabilities}"
            )
        if self.metric not in ("online", "greedy"):
            raise ValueError(f"study.metric must be 'online' or 'greedy', got {self.metric!r}")
        if not self.hallucination_probabilities or not self.step_sizes:
            raise ValueError("study.hallucination_probabilities and study.step_sizes must be non-empty")
        # The agent options validate planning_steps, rollout_length, gamma, epsilon, step sizes.
        for alpha in self.step_sizes:
            DynaOptions(
                planning_steps=self.planning_steps,
                rollout_length=self.rollout_length,
                step_size=alpha,
                gamma=self.gamma,
                epsilon=self.epsilon,
            )


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read ``[study]`` from a TOML file; unknown keys raise one clear error."""
    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    unknown_tables = sorted(set(data) - {"study"})
    if unknown_tables:
        raise ValueError(f"{path}: unknown table(s) {', '.join(unknown_tables)}; allowed: study")
    table = dict(data.get("study", {}))
    table.update(overrides or {})
    allowed = set(StudyConfig.__dataclass_fields__)
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ValueError(
            f"{path}: unknown key(s) study.{', study.'.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    return StudyConfig(**table)


class StudyCurves(Callback):
    """The study's per-member learning curves, every ``every`` loop steps (and before the first):

    - ``online``: the mean return of the training (epsilon-greedy) episodes that ended in the window, from the
      runner's episode statistics; a member with none keeps its last value, and before any episode has ended it is
      the worst possible return (``worst``, a truncated episode);
    - ``greedy``: the last evaluation return (``runner.last_eval``; place this after an ``Evaluate(every,
      at_start=True)`` whose eval env runs one greedy episode per member).

    After the run, ``online`` and ``greedy`` are lists of ``[P]`` tensors, point ``k`` at step ``k * every``.
    """

    def __init__(self, every: int, worst: float) -> None:
        self.every, self.worst = every, worst
        self.online: list[torch.Tensor] = []
        self.greedy: list[torch.Tensor] = []

    def on_start(self, runner: Runner) -> None:
        self._last_online = torch.full((runner.population_size,), self.worst)
        self._record(runner)

    def on_step(self, runner: Runner) -> None:
        if runner.step % self.every == 0:
            window = runner.stats.flush().get("rollout/ep_rew_mean")
            if window is not None:
                self._last_online = torch.where(torch.isnan(window), self._last_online, window.cpu())
            self._record(runner)

    def _record(self, runner: Runner) -> None:
        self.online.append(self._last_online.clone())
        self.greedy.append(runner.last_eval.clone())


def population_config(
    config: StudyConfig, variant: str, planning_steps: int, p_h: torch.Tensor, alpha: torch.Tensor, seed: int
) -> TrainConfig:
    """The ``TrainConfig`` of one population of the study: agent ``dyna`` with one ``(p_h, alpha)`` per member on
    the Bordered Gridworld, one env copy per member, one greedy evaluation episode per member (``max_episode_steps``
    steps at most: the greedy return of a deterministic env, exact)."""
    options = {
        "variant": variant,
        "planning_steps": planning_steps,
        "rollout_length": config.rollout_length,
        "gamma": config.gamma,
        "epsilon": config.epsilon,
        "q_init": config.q_init,
        "border_physics": config.border_physics,
        "value_function": config.value_function,
        "hidden": config.hidden,
        "learning_rate": config.learning_rate,
        "replay_batch": config.replay_batch,
        "buffer_size": config.steps,  # the network's replay keeps every real step of the study
        "step_size": alpha.tolist(),
        "hallucination_probability": p_h.tolist(),
        **config.model_options(),
    }
    return TrainConfig(
        agent="dyna",
        env="bordered-gridworld",
        env_options={"height": config.height, "width": config.width, "max_episode_steps": config.max_episode_steps},
        agent_options=options,
        steps=config.steps,
        population_size=p_h.numel(),
        num_envs=1,
        eval_every=config.eval_every,
        eval_episodes=1,
        eval_max_steps=config.max_episode_steps,
        seed=seed,
        progress=False,
    )


def run_population(
    config: StudyConfig, variant: str, planning_steps: int, p_h: torch.Tensor, alpha: torch.Tensor, seed: int
) -> dict[str, torch.Tensor]:
    """Train one population (``P = len(p_h)``) of one variant with the ``Runner``.

    Returns ``online_curve`` and ``greedy_curve`` (``[evaluations, P]``, evaluation ``k`` at real step
    ``k * eval_every``), the final ``q [P, S, A]`` and the planning fractions ``[P]``.
    """
    run = build_run(population_config(config, variant, planning_steps, p_h, alpha, seed))
    env, agent = run.env, run.agent
    assert isinstance(env, BorderedGridworld) and isinstance(agent, DynaAgent)
    curves = StudyCurves(config.eval_every, -float(config.max_episode_steps) * abs(env.step_reward))
    runner = Runner(run)
    runner.run(config.steps, [Evaluate(config.eval_every, at_start=True), curves])
    return {
        "online_curve": torch.stack(curves.online),
        "greedy_curve": torch.stack(curves.greedy),
        "q": agent.q.clone(),
        **agent.planning_statistics(),
    }


def mean_ci(values: torch.Tensor) -> tuple[float, float]:
    """Mean and the half-width of a 95% t-interval over the seeds (``values: [seeds]``), by
    :func:`emphatic_rl.stats.mean_ci`."""
    from emphatic_rl.stats import mean_ci as t_mean_ci

    return t_mean_ci(values)


def run_study(config: StudyConfig, progress: bool = True) -> dict[str, Any]:
    """All populations of the study; returns the raw tensors organised by condition."""
    torch.manual_seed(config.seed)
    seeds, p_hs, alphas = config.seeds, config.hallucination_probabilities, config.step_sizes
    # Members laid out [p_h, alpha, seed].
    grid_p_h = torch.tensor(p_hs, dtype=torch.float32).view(-1, 1, 1).expand(len(p_hs), len(alphas), seeds)
    grid_alpha = torch.tensor(alphas, dtype=torch.float32).view(1, -1, 1).expand(len(p_hs), len(alphas), seeds)
    runs: dict[str, Any] = {}
    jobs = [(variant, config.planning_steps, grid_p_h, grid_alpha) for variant in config.variants]
    if config.baseline:
        # p_h is irrelevant without planning: one p_h slot.
        jobs.append((BASELINE, 0, grid_p_h[:1], grid_alpha[:1]))
    for index, (name, planning, p_h, alpha) in enumerate(jobs):
        started = time.time()
        variant = config.variants[0] if name == BASELINE else name
        result = run_population(
            config,
            variant,
            planning,
            p_h.reshape(-1).contiguous(),
            alpha.reshape(-1).contiguous(),
            stream_seed(config.seed, "population", index=index),
        )
        shape = p_h.shape
        runs[name] = {
            key: value.reshape(value.shape[0], *shape)
            if key.endswith("_curve")
            else value.reshape(*shape, *value.shape[1:])
            for key, value in result.items()
        }
        if progress:
            print(f"[dyna-study] {name}: {p_h.numel()} members, {time.time() - started:.1f}s", file=sys.stderr)
    return runs


METRICS = ("online", "greedy")


def summarise(config: StudyConfig, runs: dict[str, Any]) -> dict[str, Any]:
    """Mean and 95% CI over seeds per (variant, p_h, alpha) of each metric's AUC and final value.

    ``auc`` is the curve averaged over every evaluation (learning speed); ``final`` averages the evaluations in
    the last 10% of the steps. The best step size per (variant, p_h) maximises the AUC of ``config.metric``.
    """
    last = max(1, math.ceil(0.1 * (config.steps // config.eval_every)))
    rows = []
    for name, result in runs.items():
        p_h_values = config.hallucination_probabilities if name != BASELINE else [None]
        for i, p_h in enumerate(p_h_values):
            for j, alpha in enumerate(config.step_sizes):
                row: dict[str, Any] = {"variant": name, "p_h": p_h, "step_size": alpha}
                for metric in METRICS:
                    member_curve = result[f"{metric}_curve"][:, i, j]  # [evaluations, seeds]
                    row[f"{metric}_auc_mean"], row[f"{metric}_auc_ci"] = mean_ci(member_curve.mean(0))
                    row[f"{metric}_final_mean"], row[f"{metric}_final_ci"] = mean_ci(member_curve[-last:].mean(0))
                    row[f"{metric}_curve_mean"] = member_curve.mean(1).tolist()
                    row[f"{metric}_curve_ci"] = [mean_ci(member_curve[k])[1] for k in range(member_curve.shape[0])]
                for counter in (*PLANNING_COUNTERS[1:], "model_outputs_hallucinated"):
                    row[f"fraction_{counter}"] = float(result[f"fraction_{counter}"][i, j].mean())
                rows.append(row)
    key_metric = f"{config.metric}_auc_mean"
    best: dict[tuple[str, Any], dict[str, Any]] = {}
    for row in rows:
        key = (row["variant"], row["p_h"])
        if key not in best or row[key_metric] > best[key][key_metric]:
            best[key] = row
    return {"rows": rows, "best": list(best.values()), "final_window_evals": last}


def _fmt(mean: float, ci: float) -> str:
    return f"{mean:.1f} ± {ci:.1f}"


def _metric_cells(row: dict[str, Any]) -> str:
    return " | ".join(_fmt(row[f"{m}_{k}_mean"], row[f"{m}_{k}_ci"]) for m in METRICS for k in ("auc", "final"))


def write_summary(config: StudyConfig, summary: dict[str, Any], out: Path, seconds: float) -> None:
    header = [
        "| variant | p_h | alpha | online AUC | online final | greedy AUC | greedy final |",
        "|---|---|---|---|---|---|---|",
    ]
    lines = [
        "# Dyna on the Bordered Gridworld: hallucinated value",
        "",
        f"Generated by `emphatic-rl dyna` in {seconds:.0f} s. {config.seeds} seeds per condition, "
        f"{config.steps} real steps, {config.height}x{config.width} interior (optimal return "
        f"{-(config.height + config.width - 2)}), planning steps {config.planning_steps}, n = "
        f"{config.rollout_length}, gamma {config.gamma}, epsilon {config.epsilon}, Q init {config.q_init}, "
        f"model '{config.model}'"
        + (
            f" (hidden {config.model_hidden}, lr {config.model_learning_rate}, batch {config.model_batch}, "
            f"features {config.model_features}, sampling {config.model_sampling}), "
            if config.model == "learned"
            else ", "
        )
        + f"border physics of the given model '{config.border_physics}', "
        f"step sizes swept {config.step_sizes}. Mean ± 95% CI (t) over seeds.",
        "",
        f"- **online**: mean return of the epsilon-greedy training episodes that ended in each {config.eval_every}-"
        "step window (the return the learner actually gets).",
        "- **greedy**: exact return of the greedy policy (first arg-max) from the start, evaluated every "
        f"{config.eval_every} steps (capped at {config.max_episode_steps} steps, so a looping policy scores "
        f"-{config.max_episode_steps}).",
        f"- **AUC**: the curve averaged over all evaluations (learning speed); **final**: over the last "
        f"{summary['final_window_evals']} evaluations (last 10% of the steps).",
        "- `p_h = 0` rows are the perfect-model controls; `model-free` is the same agent with 0 planning steps.",
        "",
        f"## Best step size per variant and p_h (chosen by {config.metric} AUC)",
        "",
        *header,
    ]
    for row in sorted(summary["best"], key=lambda r: (r["variant"] != BASELINE, r["variant"], r["p_h"] or 0)):
        p_h = "-" if row["p_h"] is None else f"{row['p_h']:g}"
        lines.append(f"| {row['variant']} | {p_h} | {row['step_size']:g} | {_metric_cells(row)} |")
    lines += [
        "",
        "## Planning instruments (fraction of planning value updates, best alpha)",
        "",
        "Columns: the updated entry is simulated / hallucinated; the target bootstraps from a simulated / "
        "hallucinated state; a real (reachable) entry is updated toward a simulated / hallucinated state's value; "
        "a real entry's target was computed through a hallucinated state (its bootstrap state, or a state on the "
        "multi-step rollout / backward chain between the updated entry and the bootstrap state). Last column: "
        "the fraction of all states the model returned during planning that are not real.",
        "",
        "| variant | p_h | upd. sim. | upd. halluc. | boot. sim. | boot. halluc. | real->sim. | real->halluc. "
        "| real via halluc. | model outputs halluc. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(summary["best"], key=lambda r: (r["variant"], r["p_h"] or 0)):
        if row["variant"] == BASELINE:
            continue
        values = " | ".join(
            f"{row[f'fraction_{c}']:.3f}" for c in (*PLANNING_COUNTERS[1:], "model_outputs_hallucinated")
        )
        lines.append(f"| {row['variant']} | {row['p_h']:g} | {values} |")
    lines += ["", "## All step sizes", "", *header]
    for row in summary["rows"]:
        p_h = "-" if row["p_h"] is None else f"{row['p_h']:g}"
        lines.append(f"| {row['variant']} | {p_h} | {row['step_size']:g} | {_metric_cells(row)} |")
    lines += [
        "",
        "Figures: `learning_curves_online.png`, `learning_curves_greedy.png`, `dose_response.png`, `value_maps.png`.",
        "",
    ]
    _atomic_write(out / "summary.md", "\n".join(lines))


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def plot(config: StudyConfig, runs: dict[str, Any], summary: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = {(row["variant"], row["p_h"]): row for row in summary["best"]}
    optimal = -(config.height + config.width - 2)
    evaluations = len(summary["rows"][0]["online_curve_mean"])
    steps = [k * config.eval_every for k in range(evaluations)]
    from emphatic_rl import plots

    styles = plots.variant_styles(list(VARIANTS))
    styles[BASELINE] = {"color": "k", "linestyle": "--", "marker": "x"}
    band = plots.interval_label(config.seeds)
    p_hs = config.hallucination_probabilities
    for metric in METRICS:
        figure, axes = plt.subplots(1, len(p_hs), figsize=(4.2 * len(p_hs), 3.8), sharey=True, squeeze=False)
        for axis, p_h in zip(axes[0], p_hs, strict=True):
            for name in [*config.variants, BASELINE]:
                row = best.get((name, None if name == BASELINE else p_h))
                if row is None:
                    continue
                plots.plot_band(
                    axis,
                    steps,
                    row[f"{metric}_curve_mean"],
                    row[f"{metric}_curve_ci"],
                    f"{name} (α={row['step_size']:g})",
                    styles[name],
                    index=[*VARIANTS, BASELINE].index(name),
                )
            axis.axhline(optimal, color="0.4", lw=0.8, linestyle=(0, (5, 3)), label=f"optimal return {optimal}")
            axis.set_title(f"p_h = {p_h:g}" + (" (perfect model)" if p_h == 0 else ""))
            axis.set_xlabel("real environment steps")
            axis.grid(alpha=0.3)
        axes[0][0].set_ylabel(f"{metric} return")
        plots.legend_outside(axes[0][-1], fontsize=7)
        figure.suptitle(f"Bordered Gridworld: {metric} return vs real steps ({band}, one run = one seed)")
        figure.tight_layout()
        plots.save(figure, out / f"learning_curves_{metric}.png")

    figure, axes = plt.subplots(1, 2 * len(METRICS), figsize=(19, 4.2))
    for axis_index, (metric, kind) in enumerate((m, k) for m in METRICS for k in ("auc", "final")):
        axis = axes[axis_index]
        for name in config.variants:
            rows = [best[(name, p_h)] for p_h in p_hs]
            axis.errorbar(
                p_hs,
                [r[f"{metric}_{kind}_mean"] for r in rows],
                yerr=[r[f"{metric}_{kind}_ci"] for r in rows],
                label=name,
                capsize=3,
                markersize=4,
                **styles[name],
            )
        if config.baseline:
            row = best[(BASELINE, None)]
            mean, ci = row[f"{metric}_{kind}_mean"], row[f"{metric}_{kind}_ci"]
            axis.axhline(mean, color="k", linestyle="--", label=BASELINE)
            axis.axhspan(mean - ci, mean + ci, color="k", alpha=0.1)
        axis.set_xlabel("hallucination probability p_h")
        axis.set_title(f"{metric} return, {'AUC' if kind == 'auc' else 'final 10%'}", fontsize=10)
        axis.grid(alpha=0.3)
    plots.legend_outside(axes[-1], fontsize=7)
    figure.suptitle(f"Dose-response (best α per variant and p_h by {config.metric} AUC; {band})")
    figure.tight_layout()
    plots.save(figure, out / "dose_response.png")

    plot_value_maps(config, runs, best, out)


def plot_value_maps(config: StudyConfig, runs: dict[str, Any], best: dict, out: Path) -> None:
    """Seed-mean ``max_a Q`` per cell (border ring included) and the most common greedy action per interior cell.

    Every panel uses one colour scale (one colour bar), so colours compare across variants and p_h."""
    from emphatic_rl import plots

    plt = plots.figure()

    env = BorderedGridworld(height=config.height, width=config.width)
    p_hs = config.hallucination_probabilities
    show = [0.0, config.value_map_p_h] if 0.0 in p_hs and config.value_map_p_h in p_hs else [p_hs[0]]
    names = [*config.variants] + ([BASELINE] if config.baseline else [])
    figure, axes = plt.subplots(len(show), len(names), figsize=(3.2 * len(names), 3.2 * len(show)), squeeze=False)
    panels = []  # (axis, name, p_h, condition, q): every panel first, so that they share one colour scale
    for row_index, p_h in enumerate(show):
        for column, name in enumerate(names):
            axis = axes[row_index][column]
            if name == BASELINE and row_index > 0:
                axis.axis("off")  # the model-free agent has no model: one panel is enough
                continue
            condition = best[(name, None if name == BASELINE else p_h)]
            i = 0 if name == BASELINE else p_hs.index(p_h)
            j = config.step_sizes.index(condition["step_size"])
            panels.append((axis, name, p_h, condition, runs[name]["q"][i, j]))  # q: [seeds, S, A]
    maps = [q.max(dim=-1).values.mean(0).view(env.grid_rows, env.grid_cols) for *_, q in panels]
    norm = plots.shared_norm([value.numpy() for value in maps])
    image = None
    for (axis, name, p_h, condition, q), value in zip(panels, maps, strict=True):
        greedy = q.argmax(dim=-1)  # [seeds, S]
        counts = torch.nn.functional.one_hot(greedy, env.num_actions).sum(0)  # [S, A]
        mode = counts.argmax(-1)
        agreement = counts.max(-1).values.float() / q.shape[0]
        image = axis.imshow(value.numpy(), cmap="viridis", norm=norm)
        for cell in torch.nonzero(env.real_state_mask).squeeze(1).tolist():
            if cell == env.goal_state:
                axis.text(
                    cell % env.grid_cols,
                    cell // env.grid_cols,
                    "G",
                    ha="center",
                    va="center",
                    color="w",
                    fontsize=9,
                    weight="bold",
                )
                continue
            d_row, d_col = ACTION_OFFSETS[int(mode[cell])]
            axis.arrow(
                cell % env.grid_cols - 0.25 * d_col,
                cell // env.grid_cols - 0.25 * d_row,
                0.4 * d_col,
                0.4 * d_row,
                head_width=0.18,
                length_includes_head=True,
                color="w",
                alpha=float(0.3 + 0.7 * agreement[cell]),
            )
        axis.add_patch(plt.Rectangle((0.5, 0.5), env.width, env.height, fill=False, edgecolor="r", lw=1.5))
        label = BASELINE if name == BASELINE else f"{name}\np_h={p_h:g}"
        axis.set_title(f"{label} (α={condition['step_size']:g})", fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
    if image is not None:  # one colour scale for every panel
        figure.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, pad=0.02, label="seed-mean max_a Q")
    figure.suptitle(
        f"Seed-mean max_a Q over {config.seeds} seeds (one colour scale; border ring outside the red box) and most "
        "common greedy action (arrow opacity = agreement across seeds)",
        fontsize=9,
    )
    plots.save(figure, out / "value_maps.png")


def write_study(config: StudyConfig, out: str | Path) -> float:
    """Run the study of ``config`` and write ``summary.md``, ``results.json`` and the figures in ``out`` (made if
    missing); returns the seconds it took."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    runs = run_study(config)
    summary = summarise(config, runs)
    seconds = time.time() - started
    _atomic_write(out / "results.json", json.dumps({"config": config.__dict__, **summary}, indent=1))
    write_summary(config, summary, out, seconds)
    plot(config, runs, summary, out)
    return seconds
