"""Hallucinated value beyond the gridworld: the four Dyna variants with a neural Q on CartPole, Catcher, Puddle World.

One command per benchmark::

    emphatic-rl dyna-fa experiments/dyna_fa_cartpole.toml --out experiments/results/dyna-fa/cartpole

Per variant, one batched population holds the perfect model (``dose = 0``), the perfect model with injected error at
each ``dose`` and the model-free baseline (members that do not plan: the same agent, the same real budget), every
condition x step size x seed; a second population of the same variant holds the learned-model members (their neural
models are trained only where they are used). Outputs: ``results.json`` (every number), ``summary.md`` (tables),
``learning_curves.png`` and ``dose_response.png``.

The sweeps are the same program: ``learning_rate`` and ``target_tau`` may be lists (their product is one more member
axis of every population, the *settings*) and ``rollout_length`` a list (one population per value for the
multi-step variants). A study TOML holds its shipped sweeps as tables whose keys override ``[study]``: ``[sweep]``
(step sizes x rollout lengths) and ``[sweep-target-tau]`` (the target network's step, at the step sizes and
rollout lengths the first one picked)::

    emphatic-rl dyna-fa dyna-fa-cartpole --sweep --out experiments/results/dyna-fa/sweep/cartpole
    emphatic-rl dyna-fa dyna-fa-cartpole --sweep target-tau --out experiments/results/dyna-fa/sweep-target-tau/cartpole

A sweep writes ``summary.md`` and ``results.json`` with the AUC of every (variant, rollout length, condition,
setting) and the values its rule picks, each method at its best: the model-free baseline's setting (step size,
target step) is the one with its best AUC (pooled over the sweep's populations); each variant's (setting, rollout
length) the one with its best perfect-model AUC. The main study takes ``learning_rate`` and ``target_tau`` per
variant and for ``model-free``, and ``rollout_length`` per multi-step variant, as tables
(``rollout_length = { multi-step-successor = 2, multi-step-predecessor = 5 }``); a single number holds for all.

Instrument of value divergence: per member, the mean over the direct update's replayed batch of the bootstrap value
``max_a Q_target(S', a)``, sampled at the end of each window (``max_q``: its peak over the run and its last value).

Metric: *online return*, the mean return of the epsilon-greedy training episodes that end in each window of
``eval_every`` real steps (a member with no episode ending in a window keeps its previous value; windows before a
member's first episode end take that first value). *AUC* = the curve averaged over all windows (learning speed);
*final* = its last 20% of windows. Intervals: 95% Student-t over seeds (independent runs); a difference of two
conditions gets a Welch-style interval with the smaller sample's degrees of freedom.

Bad input (an unknown key, variant or env, a dose outside ``[0, 1]``, a model kind the env cannot give) ends with
one line on stderr and exit code 2, before any work.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emphatic_rl.agents.dyna.function_approx import DynaFAOptions, make_dyna_fa_for_env
from emphatic_rl.agents.dyna.tabular import VARIANTS
from emphatic_rl.agents.dyna.vector_models import vector_dynamics_envs
from emphatic_rl.config import TrainConfig
from emphatic_rl.envs import ENV_REGISTRY, make_env
from emphatic_rl.runner import Callback, Runner
from emphatic_rl.seeding import stream_seed
from emphatic_rl.stats import mean_ci, t_quantile
from emphatic_rl.train import build_run

BASELINE = "model-free"
MULTI_STEP = ("multi-step-successor", "multi-step-predecessor")
COUNTERS = (
    "fraction_bootstrap_simulated",
    "fraction_bootstrap_hallucinated",
    "fraction_real_toward_simulated",
    "fraction_real_toward_hallucinated",
    "fraction_real_via_hallucinated",
    "fraction_updated_hallucinated",
    "fraction_model_outputs_hallucinated",
)


@dataclass
class FAStudyConfig:
    """The ``[study]`` table of a study TOML (see ``experiments/dyna_fa_*.toml``)."""

    env: str = "cartpole"
    env_options: dict[str, Any] = field(default_factory=dict)
    seeds: int = 10
    steps: int = 3000
    eval_every: int = 100
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    doses: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.2, 0.5])
    learned: bool = True
    baseline: bool = True
    planning_steps: int = 5
    planning_batch: int = 16
    rollout_length: int | list[int] | dict[str, int] = 3
    learning_rate: float | list[float] | dict[str, float] = 1e-3
    target_tau: float | list[float] | dict[str, float] = 0.05
    gamma: float = 0.99
    epsilon: float = 0.1
    hidden: int = 32
    replay_batch: int = 32
    warmup: int = 100
    model_hidden: int = 64
    model_learning_rate: float = 1e-3
    search_control: str = "queue"
    predecessor_start: str = "next-state"
    predecessor_action: str = "uniform"
    predecessor_state: str = "model"
    successor_action: str = "replayed"
    planning_update: str = "mixed"
    seed: int = 0

    def __post_init__(self) -> None:
        factory = ENV_REGISTRY[self.env].factory if self.env in ENV_REGISTRY else None
        if not getattr(factory, "has_vector_dynamics", False):
            raise ValueError(
                f"env {self.env!r} cannot give the perfect and learned models and the hallucination detector this "
                f"study needs (it declares no vector dynamics); allowed: {', '.join(vector_dynamics_envs())}"
            )
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"variants must be a non-empty list of {', '.join(VARIANTS)}; got {self.variants!r}")
        if not self.doses or 0.0 not in [float(d) for d in self.doses]:
            raise ValueError(f"doses must include 0 (the perfect model); got {self.doses!r}")
        for dose in self.doses:
            if not isinstance(dose, (int, float)) or isinstance(dose, bool) or not 0.0 <= dose <= 1.0:
                raise ValueError(f"each dose must be a number in [0, 1]; got {dose!r}")
        for key in ("seeds", "steps", "eval_every"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        if self.seeds < 2:
            raise ValueError(f"seeds must be >= 2 (intervals need two runs), got {self.seeds}")
        if self.steps < 2 * self.eval_every:
            raise ValueError(f"steps ({self.steps}) must be at least 2 x eval_every ({self.eval_every})")
        self._check_per_name("learning_rate", lambda r: 0 < r < math.inf, "a number > 0")
        self._check_per_name("target_tau", lambda t: 0 < t <= 1, "a number in (0, 1]")
        n = self.rollout_length
        if isinstance(n, dict):
            bad = sorted(set(n) - set(MULTI_STEP))
            if bad or not n:
                raise ValueError(
                    f"rollout_length as a table maps {', '.join(MULTI_STEP)} to a length; got key(s) {bad or n!r}"
                )
            values = list(n.values())
        else:
            values = n if isinstance(n, list) else [n]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise ValueError(
                f"rollout_length must be an integer >= 1, a non-empty list of them or a table per multi-step variant; "
                f"got {n!r}"
            )
        # The agent's and env's own checks, now: unknown env options, a model kind the env cannot give.
        env = make_env(self.env, num_envs=1, **self.env_options)
        make_dyna_fa_for_env(
            env, self.env, 1, self.agent_options(self.variants[0], self.rollout_lengths(self.variants[0])[0])
        )

    def _check_per_name(self, key: str, valid: Any, allowed: str) -> None:
        """``key`` is a number, a non-empty list of them (a sweep axis) or a table naming each studied variant and
        ``model-free``; every value ``valid``."""
        value = getattr(self, key)
        if isinstance(value, dict):
            names = [*self.variants, *([BASELINE] if self.baseline else [])]
            missing, extra = [v for v in names if v not in value], sorted(set(value) - set(VARIANTS) - {BASELINE})
            if missing or extra:
                raise ValueError(
                    f"{key} as a table maps each studied variant and {BASELINE!r} to a value; "
                    f"missing {missing}, unknown {extra}"
                )
            values = list(value.values())
        else:
            values = value if isinstance(value, list) else [value]
        if not values or not all(_number(v) and valid(v) for v in values):
            raise ValueError(f"{key} must be {allowed}, a non-empty list of them or a table per variant; got {value!r}")

    @staticmethod
    def _axis(value: Any) -> list[float | None]:
        return [float(v) for v in value] if isinstance(value, list) else [None]

    @property
    def settings(self) -> list[tuple[float | None, float | None]]:
        """The member axis of every population: (step size, target step) pairs, the product of the ``learning_rate``
        and ``target_tau`` lists; an entry is ``None`` where its key is not a list (then :meth:`learning_rate_of` /
        :meth:`target_tau_of` give it per variant)."""
        return [(rate, tau) for rate in self._axis(self.learning_rate) for tau in self._axis(self.target_tau)]

    def _of(self, key: str, name: str, swept: float | None) -> float:
        if swept is not None:
            return swept
        value = getattr(self, key)
        return float(value[name]) if isinstance(value, dict) else float(value)

    def learning_rate_of(self, name: str, setting: tuple[float | None, float | None]) -> float:
        """The step size of ``name``'s members (a variant, or ``"model-free"`` for the baseline's) in ``setting``."""
        return self._of("learning_rate", name, setting[0])

    def target_tau_of(self, name: str, setting: tuple[float | None, float | None]) -> float:
        """The target step of ``name``'s members (a variant, or ``"model-free"`` for the baseline's) in ``setting``."""
        return self._of("target_tau", name, setting[1])

    def rollout_lengths(self, variant: str) -> list[int]:
        """The rollout lengths ``variant`` runs with (one population each; one-step variants: the first, unused)."""
        n = self.rollout_length
        if isinstance(n, dict):
            return [int(n.get(variant, 3))]
        values = n if isinstance(n, list) else [n]
        return [int(v) for v in values] if variant in MULTI_STEP else [int(values[0])]

    @property
    def is_sweep(self) -> bool:
        """More than one setting (step size x target step) or rollout length: a sweep (its own summary)."""
        n = self.rollout_length
        return len(self.settings) > 1 or (isinstance(n, list) and len(n) > 1)

    def agent_options(self, variant: str, rollout_length: int) -> DynaFAOptions:
        return DynaFAOptions(
            variant=variant,
            planning_steps=self.planning_steps,
            planning_batch=self.planning_batch,
            rollout_length=rollout_length,
            model="perfect",
            learning_rate=self.learning_rate_of(variant, self.settings[0]),
            gamma=self.gamma,
            epsilon=self.epsilon,
            hidden=self.hidden,
            replay_batch=self.replay_batch,
            warmup=self.warmup,
            target_tau=self.target_tau_of(variant, self.settings[0]),
            model_hidden=self.model_hidden,
            model_learning_rate=self.model_learning_rate,
            search_control=self.search_control,
            predecessor_start=self.predecessor_start,
            predecessor_action=self.predecessor_action,
            predecessor_state=self.predecessor_state,
            successor_action=self.successor_action,
            planning_update=self.planning_update,
        )

    @property
    def conditions(self) -> list[str]:
        names = ["perfect" if float(d) == 0 else f"dose {float(d):g}" for d in self.doses]
        return names + (["learned"] if self.learned else []) + ([BASELINE] if self.baseline else [])


def _planning_setup(config: FAStudyConfig) -> str:
    """How much the variants plan per real step and how those updates reach the optimizer, in words."""
    how = (
        "each planning step its own Adam step after the direct update's"
        if config.planning_update == "separate"
        else "all in one Adam step with the direct update (each batch's loss weighted equally)"
    )
    return f"{config.planning_steps} planning steps x {config.planning_batch} updates per real step, {how}"


def _predecessor_setup(config: FAStudyConfig) -> str:
    """How the predecessor variants plan, in words (the summaries' header)."""
    reached = config.predecessor_start == "next-state"
    start = "the state each real transition reached" if reached else "the state it left"
    text = (
        f"the predecessor variants plan back from {start} (search control {config.search_control}, predecessor "
        f"action {config.predecessor_action})"
    )
    if config.predecessor_state != "model":  # the defaults are not named, so earlier summaries read the same
        text += f", the first predecessor's state {config.predecessor_state}"
    if config.successor_action != "replayed":
        text += f", the successor variants' planning action {config.successor_action}"
    return text


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None, sweep: bool | str = False) -> FAStudyConfig:
    """Read the ``[study]`` table of a TOML file, then (``sweep``) a sweep table — ``True`` or ``"sweep"``:
    ``[sweep]``; a name: ``[sweep-<name>]`` — then ``overrides``; one ``ValueError`` per bad key or value."""
    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    table = data.get("study")
    if not isinstance(table, dict):
        raise ValueError(f"{path}: no [study] table")
    if sweep:
        name = "sweep" if sweep is True or sweep == "sweep" else f"sweep-{sweep}"
        sweep_table = data.get(name)
        if not isinstance(sweep_table, dict):
            shipped = [key for key, value in data.items() if key.startswith("sweep") and isinstance(value, dict)]
            flags = ", ".join("--sweep" if k == "sweep" else f"--sweep {k[len('sweep-') :]}" for k in shipped)
            raise ValueError(
                f"{path}: no [{name}] table (keys that override [study]); this file's sweeps: {flags or 'none'}"
            )
        table = {**table, **sweep_table}
    table = {**table, **(overrides or {})}
    allowed = {f.name for f in dataclasses.fields(FAStudyConfig)}
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ValueError(f"unknown study key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return FAStudyConfig(**table)


class OnlineReturn(Callback):
    """The study's per-member learning curve: every ``every`` loop steps, the mean return of the training
    (epsilon-greedy) episodes that ended in the window, from the runner's episode statistics (a member with none
    keeps its previous value; NaN before its first episode ends). After the run, ``curve`` is a list of ``[P]``
    tensors, point ``k`` at step ``(k + 1) * every``."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.curve: list[torch.Tensor] = []

    def on_start(self, runner: Runner) -> None:
        self._online = torch.full((runner.population_size,), float("nan"))

    def on_step(self, runner: Runner) -> None:
        if runner.step % self.every == 0:
            window = runner.stats.flush().get("rollout/ep_rew_mean")
            if window is not None:
                self._online = torch.where(torch.isnan(window.cpu()), self._online, window.cpu())
            self.curve.append(self._online.clone())


class ReplayMaxQ(Callback):
    """The instrument of value divergence: every ``every`` loop steps, each member's
    :attr:`~emphatic_rl.agents.dyna.function_approx.DynaFAAgent.replay_max_q`. After the run, ``curve`` is a list of
    ``[P]`` tensors aligned with :class:`OnlineReturn`'s."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.curve: list[torch.Tensor] = []

    def on_step(self, runner: Runner) -> None:
        if runner.step % self.every == 0:
            self.curve.append(runner.agent.replay_max_q.detach().cpu().clone())  # type: ignore[attr-defined]


class _StudyProgress(Callback):
    def __init__(self, every: int, label: str, total: int) -> None:
        self.every, self.label, self.total = every, label, total

    def on_step(self, runner: Runner) -> None:
        if runner.step % self.every == 0:
            print(f"[dyna-fa-study] {self.label}: step {runner.step}/{self.total}", file=sys.stderr, flush=True)


def population_config(
    config: FAStudyConfig, variant: str, seed: int, conditions: list[str], rollout_length: int
) -> TrainConfig:
    """The ``TrainConfig`` of one population of the study: agent ``dyna-fa`` with ``conditions`` x settings x seeds
    members (in that order; the conditions all perfect-model ones, or ``["learned"]``), one env copy per member."""
    s, settings = config.seeds, config.settings
    c_count, l_count = len(conditions), len(settings)
    doses = {("perfect" if float(d) == 0 else f"dose {float(d):g}"): float(d) for d in config.doses}

    def per_member(values: list[Any]) -> list[Any]:
        return [value for value in values for _ in range(l_count * s)]

    options = dataclasses.asdict(config.agent_options(variant, rollout_length))
    options.update(
        model="learned" if conditions == ["learned"] else "perfect",
        dose=per_member([doses.get(c, 0.0) for c in conditions]),
        plans=per_member([c != BASELINE for c in conditions]),
        learning_rate=[
            config.learning_rate_of(BASELINE if c == BASELINE else variant, setting)
            for c in conditions
            for setting in settings
            for _ in range(s)
        ],
        target_tau=[
            config.target_tau_of(BASELINE if c == BASELINE else variant, setting)
            for c in conditions
            for setting in settings
            for _ in range(s)
        ],
    )
    return TrainConfig(
        agent="dyna-fa",
        env=config.env,
        env_options=dict(config.env_options),
        agent_options=options,
        steps=config.steps,
        population_size=c_count * l_count * s,
        num_envs=1,
        eval_episodes=1,
        seed=seed,
        progress=False,
        logger="none",
    )


def run_population(
    config: FAStudyConfig,
    variant: str,
    seed: int,
    conditions: list[str],
    rollout_length: int,
    progress_every: int = 0,
) -> dict[str, torch.Tensor]:
    """Train one population of ``variant`` holding ``conditions`` x settings x seeds (members in that order; the
    conditions all perfect-model ones, or ``["learned"]``) with the library's ``Runner``.

    Returns ``online_curve`` and ``max_q_curve`` ``[windows, C, L, seeds]`` (L: :attr:`FAStudyConfig.settings`) and
    each planning fraction / count as ``[C, L, seeds]``.
    """
    c_count, l_count, s = len(conditions), len(config.settings), config.seeds
    run = build_run(population_config(config, variant, seed, conditions, rollout_length))
    curve, max_q = OnlineReturn(config.eval_every), ReplayMaxQ(config.eval_every)
    callbacks: list[Callback] = [curve, max_q]
    if progress_every:
        length = f" n={rollout_length}" if variant in MULTI_STEP else ""
        label = f"{config.env} {variant}{length} {conditions}"
        callbacks.append(_StudyProgress(progress_every, label, config.steps))
    Runner(run).run(config.steps, callbacks)
    online_curve = torch.stack(curve.curve)  # [W, P]
    # Windows before a member's first finished episode take its first value.
    first = torch.where(torch.isnan(online_curve), float("inf"), 0.0).argmin(dim=0)  # first finite window
    first_value = online_curve.gather(0, first.unsqueeze(0)).squeeze(0)
    online_curve = torch.where(torch.isnan(online_curve), first_value.unsqueeze(0), online_curve)
    stats = run.agent.planning_statistics()  # type: ignore[attr-defined]
    out = {
        "online_curve": online_curve.view(-1, c_count, l_count, s),
        "max_q_curve": torch.stack(max_q.curve).view(-1, c_count, l_count, s),
    }
    for key, value in stats.items():
        out[key] = value.view(c_count, l_count, s)
    return out


def run_label(variant: str, rollout_length: int, config: FAStudyConfig) -> str:
    """The name of one variant's runs: the variant, with ``n=...`` where a sweep runs it at several lengths."""
    return f"{variant} n={rollout_length}" if len(config.rollout_lengths(variant)) > 1 else variant


def run_study(config: FAStudyConfig, progress: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """Every population of the study; per label (:func:`run_label`) the conditions of ``config.conditions`` joined:
    ``online_curve`` and ``max_q_curve`` ``[W, C, L, seeds]``, the instruments ``[C, L, seeds]``."""
    runs = {}
    conditions = config.conditions
    groups = [[c for c in conditions if c != "learned"]] + ([["learned"]] if "learned" in conditions else [])
    for index, variant in enumerate(config.variants):
        for n_index, n in enumerate(config.rollout_lengths(variant)):
            parts: dict[str, dict[str, torch.Tensor]] = {}
            for g_index, group in enumerate(groups):
                started = time.time()
                seed = stream_seed(
                    stream_seed(stream_seed(config.seed, "population", index=index), "rollout_length", index=n_index),
                    "model_group",
                    index=g_index,
                )
                out = run_population(config, variant, seed, group, n, 500 if progress else 0)
                for c, condition in enumerate(group):
                    parts[condition] = {k: v[:, c] if k.endswith("_curve") else v[c] for k, v in out.items()}
                if progress:
                    members = len(group) * len(config.settings) * config.seeds
                    print(
                        f"[dyna-fa-study] {config.env} {variant}{f' n={n}' if variant in MULTI_STEP else ''} {group}: "
                        f"{members} members, "
                        f"{time.time() - started:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
            runs[run_label(variant, n, config)] = {
                key: torch.stack([parts[c][key] for c in conditions], dim=1 if key.endswith("_curve") else 0)
                for key in parts[conditions[0]]
            }
    return runs


def _only_setting(runs: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    """Drop the settings axis of a study with one setting: ``[W, C, seeds]`` and ``[C, seeds]``."""
    return {label: {k: v.select(-2, 0) for k, v in run.items()} for label, run in runs.items()}


def _t(df: int) -> float:
    """The two-sided 95% Student-t quantile (:func:`emphatic_rl.stats.t_quantile`)."""
    return float(t_quantile(max(int(df), 1)))


def difference_ci(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """``mean(a) - mean(b)`` and a 95% half-width (Welch standard error, ``min(n) - 1`` degrees of freedom)."""
    se = math.sqrt(float(a.var(unbiased=True)) / a.numel() + float(b.var(unbiased=True)) / b.numel())
    return float(a.mean() - b.mean()), _t(min(a.numel(), b.numel()) - 1) * se


def summarise(config: FAStudyConfig, runs: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
    """AUC / final online return per (variant, condition), the instruments, and the comparisons of the issue."""
    conditions = config.conditions
    windows = next(iter(runs.values()))["online_curve"].shape[0]
    tail = max(1, windows // 5)
    table: dict[str, dict[str, Any]] = {}
    per_seed: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    baseline_auc, baseline_final, baseline_q_peak, baseline_q_last = [], [], [], []
    for variant, run in runs.items():
        curve, max_q = run["online_curve"], run["max_q_curve"]
        for c, condition in enumerate(conditions):
            auc, final = curve[:, c].mean(0), curve[-tail:, c].mean(0)
            q_peak, q_last = max_q[:, c].max(0).values, max_q[-1, c]
            if condition == BASELINE:
                baseline_auc.append(auc)
                baseline_final.append(final)
                baseline_q_peak.append(q_peak)
                baseline_q_last.append(q_last)
                continue
            per_seed[(variant, condition)] = {"auc": auc, "final": final}
            row: dict[str, Any] = {
                "auc": mean_ci(auc),
                "final": mean_ci(final),
                **_value_magnitude(q_peak, q_last),
            }
            for counter in COUNTERS:
                row[counter] = mean_ci(run[counter][c])
            updates = run["planning_updates"][c]
            row["planning_updates"] = float(updates.sum())
            row["count_real_toward_simulated"] = float((run["fraction_real_toward_simulated"][c] * updates).sum())
            row["count_bootstrap_simulated"] = float((run["fraction_bootstrap_simulated"][c] * updates).sum())
            row["count_real_toward_hallucinated"] = float((run["fraction_real_toward_hallucinated"][c] * updates).sum())
            table.setdefault(variant, {})[condition] = row
    out: dict[str, Any] = {"conditions": conditions, "windows": windows, "tail_windows": tail, "table": table}
    if baseline_auc:
        b_auc, b_final = torch.cat(baseline_auc), torch.cat(baseline_final)
        out["baseline"] = {
            "auc": mean_ci(b_auc),
            "final": mean_ci(b_final),
            **_value_magnitude(torch.cat(baseline_q_peak), torch.cat(baseline_q_last)),
            "runs": int(b_auc.numel()),
        }
        out["perfect_minus_baseline"] = {
            v: {
                "auc": difference_ci(per_seed[(v, "perfect")]["auc"], b_auc),
                "final": difference_ci(per_seed[(v, "perfect")]["final"], b_final),
            }
            for v in runs
        }
    # Does multi-step predecessor stay ahead of the others under error, and do the others fall with the dose?
    error_conditions = [c for c in conditions if c not in ("perfect", BASELINE)]
    for suffix, metric in (("", "final"), ("_auc", "auc")):
        if "multi-step-predecessor" in runs:
            out["v4_minus_other" + suffix] = {
                c: {
                    v: difference_ci(per_seed[("multi-step-predecessor", c)][metric], per_seed[(v, c)][metric])
                    for v in runs
                    if v != "multi-step-predecessor"
                }
                for c in error_conditions
            }
        out["condition_minus_perfect" + suffix] = {
            v: {c: difference_ci(per_seed[(v, c)][metric], per_seed[(v, "perfect")][metric]) for c in error_conditions}
            for v in runs
        }
    # The dose response as one number: the least-squares slope of each run's metric on its dose (perfect = 0).
    doses = [float(d) for d in config.doses]
    names = ["perfect" if d == 0 else f"dose {d:g}" for d in doses]
    if len(set(doses)) > 1:
        out["dose_slope"] = {
            v: {
                metric: slope_ci(
                    torch.cat([torch.full((config.seeds,), d) for d in doses]),
                    torch.cat([per_seed[(v, n)][metric] for n in names]),
                )
                for metric in ("auc", "final")
            }
            for v in runs
        }
    out["per_seed"] = {
        v: {c: {m: per_seed[(v, c)][m].tolist() for m in ("auc", "final")} for c in conditions if c != BASELINE}
        for v in runs
    }
    if baseline_auc:
        out["per_seed"][BASELINE] = {"auc": b_auc.tolist(), "final": b_final.tolist()}
    return out


def _value_magnitude(peak: torch.Tensor, last: torch.Tensor) -> dict[str, Any]:
    """The value instrument over runs: mean ± CI of the peak and the last value over the runs whose values stayed
    finite, and how many runs' values became non-finite (NaN / inf: the Q-network diverged)."""
    finite = torch.isfinite(peak) & torch.isfinite(last)
    nan = (math.nan, math.nan)
    return {
        "max_q_peak": mean_ci(peak[finite]) if bool(finite.any()) else nan,
        "max_q_last": mean_ci(last[finite]) if bool(finite.any()) else nan,
        "max_q_nonfinite_runs": int((~finite).sum()),
    }


def _magnitude_cell(row: dict[str, Any]) -> str:
    cell = f"{_fmt(row['max_q_peak'])} / {_fmt(row['max_q_last'])}"
    return cell + (f" ({row['max_q_nonfinite_runs']} non-finite)" if row["max_q_nonfinite_runs"] else "")


def slope_ci(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """The least-squares slope of ``y`` on ``x`` and its 95% half-width (Student-t, ``n - 2`` degrees of freedom)."""
    x, y = x.double(), y.double()
    dx = x - x.mean()
    sxx = float(dx.square().sum())
    slope = float((dx * (y - y.mean())).sum()) / sxx
    residual = y - y.mean() - slope * dx
    se = math.sqrt(float(residual.square().sum()) / max(x.numel() - 2, 1) / sxx)
    return slope, _t(x.numel() - 2) * se


def _fmt(pair: tuple[float, float], digits: int = 1) -> str:
    mean, ci = pair
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"


def write_summary(config: FAStudyConfig, summary: dict[str, Any], out: Path, seconds: float) -> None:
    conditions = [c for c in config.conditions if c != BASELINE]
    lines = [
        f"# Dyna with function approximation on {config.env}",
        "",
        f"{config.seeds} seeds per cell; {config.steps} real steps; online return (epsilon = {config.epsilon}) in "
        f"windows of {config.eval_every} steps; final = last {summary['tail_windows']} windows; 95% t-intervals. "
        f"Adam step size {_per_name(config.learning_rate)}, target step {_per_name(config.target_tau)}, "
        f"n = {_lengths(config)}, "
        f"{_planning_setup(config)}, Q-network 2 x {config.hidden}, gamma {config.gamma}, "
        f"{_predecessor_setup(config)}. Env options: {config.env_options}. "
        f"Wall time {seconds:.0f} s.",
        "",
    ]
    if "baseline" in summary:
        b = summary["baseline"]
        lines += [
            f"Model-free baseline ({b['runs']} runs): AUC {_fmt(b['auc'])}, final {_fmt(b['final'])}; "
            f"max_q peak / last {_magnitude_cell(b)}.",
            "",
        ]
    for metric in ("final", "auc"):
        lines += [f"## Online return, {metric}", "", "| variant | " + " | ".join(conditions) + " |"]
        lines.append("|---" * (len(conditions) + 1) + "|")
        for variant, rows in summary["table"].items():
            lines.append(f"| {variant} | " + " | ".join(_fmt(rows[c][metric]) for c in conditions) + " |")
        lines.append("")
    lines += [
        "## Instruments (fraction of planning updates; mean ± 95% CI over seeds; counts summed over seeds)",
        "",
        "| variant | condition | bootstraps from simulated | real toward simulated (count) | "
        "real toward hallucinated (count) | updated hallucinated | model outputs hallucinated |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, rows in summary["table"].items():
        for c in conditions:
            r = rows[c]
            lines.append(
                f"| {variant} | {c} | {_fmt(r['fraction_bootstrap_simulated'], 3)} | "
                f"{_fmt(r['fraction_real_toward_simulated'], 3)} ({r['count_real_toward_simulated']:.0f}) | "
                f"{_fmt(r['fraction_real_toward_hallucinated'], 3)} ({r['count_real_toward_hallucinated']:.0f}) | "
                f"{_fmt(r['fraction_updated_hallucinated'], 3)} | {_fmt(r['fraction_model_outputs_hallucinated'], 3)} |"
            )
    lines.append("")
    bound = 1.0 / (1.0 - config.gamma) if config.gamma < 1 else math.inf
    lines += [
        "## Value magnitude: mean over the replayed batch of max_a Q_target(S', a), peak over the run / last "
        f"(mean ± 95% CI over the runs whose values stayed finite, the others counted; a return of rewards at most r "
        f"per step is at most r / (1 - gamma) = {bound:g} r)",
        "",
        "| variant | " + " | ".join(conditions) + " |",
        "|---" * (len(conditions) + 1) + "|",
    ]
    for variant, rows in summary["table"].items():
        lines.append(f"| {variant} | " + " | ".join(_magnitude_cell(rows[c]) for c in conditions) + " |")
    lines.append("")
    if "perfect_minus_baseline" in summary:
        lines += ["## Perfect model minus model-free (difference, 95% CI)", "", "| variant | AUC | final |"]
        lines.append("|---|---|---|")
        for v, d in summary["perfect_minus_baseline"].items():
            lines.append(f"| {v} | {_fmt(d['auc'])} | {_fmt(d['final'])} |")
        lines.append("")
    if "v4_minus_other" in summary:
        others = [v for v in summary["table"] if v != "multi-step-predecessor"]
        lines += ["## Multi-step predecessor minus each other variant, final return (95% CI)", ""]
        lines += ["| condition | " + " | ".join(others) + " |", "|---" * (len(others) + 1) + "|"]
        for c, d in summary["v4_minus_other"].items():
            lines.append(f"| {c} | " + " | ".join(_fmt(d[v]) for v in others) + " |")
        lines.append("")
    if "v4_minus_other_auc" in summary:
        others = [v for v in summary["table"] if v != "multi-step-predecessor"]
        lines += ["## Multi-step predecessor minus each other variant, AUC (95% CI)", ""]
        lines += ["| condition | " + " | ".join(others) + " |", "|---" * (len(others) + 1) + "|"]
        for c, d in summary["v4_minus_other_auc"].items():
            lines.append(f"| {c} | " + " | ".join(_fmt(d[v]) for v in others) + " |")
        lines.append("")
    errs = [c for c in conditions if c != "perfect"]
    for key, metric in (("condition_minus_perfect", "final return"), ("condition_minus_perfect_auc", "AUC")):
        lines += [f"## Each condition minus the perfect model, {metric} (95% CI)", ""]
        lines += ["| variant | " + " | ".join(errs) + " |", "|---" * (len(errs) + 1) + "|"]
        for v, d in summary[key].items():
            lines.append(f"| {v} | " + " | ".join(_fmt(d[c]) for c in errs) + " |")
        lines.append("")
    if "dose_slope" in summary:
        lines += [
            "## Dose response: least-squares slope of the return on the injected dose (per unit dose, 95% CI)",
            "",
            "| variant | AUC | final |",
            "|---|---|---|",
        ]
        for v, d in summary["dose_slope"].items():
            lines.append(f"| {v} | {_fmt(d['auc'])} | {_fmt(d['final'])} |")
        lines.append("")
    _atomic_write(out / "summary.md", "\n".join(lines))


def _per_name(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v:g}" for k, v in value.items()) + "}"
    return str(value)


def _setting_label(setting: tuple[float | None, float | None]) -> str:
    rate, tau = setting
    parts = ([f"lr {rate:g}"] if rate is not None else []) + ([f"tau {tau:g}"] if tau is not None else [])
    return ", ".join(parts) or "-"


def _lengths(config: FAStudyConfig) -> str:
    return ", ".join(f"{v}: {config.rollout_lengths(v)[0]}" for v in config.variants if v in MULTI_STEP) or "-"


# ---------------------------------------------------------------------------------------------------- the sweep
def summarise_sweep(config: FAStudyConfig, runs: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
    """AUC / final per (label, condition, setting), the baseline's AUC per setting (pooled over the labels), and the
    rule's choice, each method at its best: the baseline's setting with its best AUC; per variant the (setting,
    rollout length) with its best perfect-model AUC (higher mean wins; the first on a tie). Only the swept keys are
    chosen (``learning_rate`` / ``target_tau`` as tables per variant and ``model-free``)."""
    conditions, settings = config.conditions, config.settings
    windows = next(iter(runs.values()))["online_curve"].shape[0]
    tail = max(1, windows // 5)
    table: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for label, run in runs.items():
        curve = run["online_curve"]  # [W, C, L, S]
        table[label] = {}
        for c, condition in enumerate(conditions):
            cells = []
            for r in range(len(settings)):
                cell = {
                    "auc": mean_ci(curve[:, c, r].mean(0)),
                    "final": mean_ci(curve[-tail:, c, r].mean(0)),
                    **_value_magnitude(run["max_q_curve"][:, c, r].max(0).values, run["max_q_curve"][-1, c, r]),
                }
                if condition != BASELINE:
                    cell["fraction_real_toward_simulated"] = mean_ci(run["fraction_real_toward_simulated"][c, r])
                cells.append(cell)
            table[label][condition] = cells
    out: dict[str, Any] = {
        "conditions": conditions,
        "settings": [{"learning_rate": rate, "target_tau": tau} for rate, tau in settings],
        "windows": windows,
        "table": table,
    }
    if BASELINE in conditions:
        b = conditions.index(BASELINE)
        pooled = [
            torch.cat([run["online_curve"][:, b, r].mean(0) for run in runs.values()]) for r in range(len(settings))
        ]
        out["baseline_auc"] = [mean_ci(x) for x in pooled]
    else:
        out["baseline_auc"] = None
    out["chosen"] = choose(config, out)
    return out


def choose(config: FAStudyConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """The sweep's rule on a sweep summary (``table`` and ``baseline_auc`` of :func:`summarise_sweep`, also as read
    back from its ``results.json``), each method at its best: the baseline's setting with its best pooled AUC; per
    variant the (setting, rollout length) with its best perfect-model AUC (higher mean wins; the first on a tie).
    Returns ``rollout_length`` per multi-step variant and, for each swept key (``learning_rate``, ``target_tau``), a
    table per variant and ``model-free``."""
    settings, table = config.settings, summary["table"]
    best: dict[str, int] = {}
    if summary["baseline_auc"] is not None:
        best[BASELINE] = max(range(len(settings)), key=lambda r: summary["baseline_auc"][r][0])
    lengths: dict[str, int] = {}
    for variant in config.variants if "perfect" in config.conditions else []:
        pairs = [(r, n) for r in range(len(settings)) for n in config.rollout_lengths(variant)]
        r, n = max(pairs, key=lambda pair: table[run_label(variant, pair[1], config)]["perfect"][pair[0]]["auc"][0])
        best[variant] = r
        if variant in MULTI_STEP:
            lengths[variant] = n
    chosen: dict[str, Any] = {"rollout_length": lengths}
    for key, index in (("learning_rate", 0), ("target_tau", 1)):
        if isinstance(getattr(config, key), list):
            chosen[key] = {name: settings[r][index] for name, r in best.items()}
    return chosen


def write_sweep_summary(config: FAStudyConfig, summary: dict[str, Any], out: Path, seconds: float) -> None:
    settings = config.settings
    header = " | ".join(_setting_label(s) for s in settings)
    lines = [
        f"# Sweep of Dyna with function approximation on {config.env}",
        "",
        f"{config.seeds} seeds per cell; {config.steps} real steps; online return (epsilon = {config.epsilon}) in "
        f"windows of {config.eval_every} steps; AUC = mean over all windows; 95% t-intervals. Step sizes "
        f"{_per_name(config.learning_rate)}, target steps {_per_name(config.target_tau)}, rollout lengths "
        f"{_per_name(config.rollout_length)} "
        f"(multi-step variants), {_planning_setup(config)}, Q-network 2 x {config.hidden}, "
        f"{_predecessor_setup(config)}. "
        f"Env options: {config.env_options}. Wall time {seconds:.0f} s.",
        "",
        "Rule (each method at its best): the model-free baseline takes the setting with its best AUC (pooled over "
        "every population of the sweep); each variant the setting (and, multi-step, the rollout length) with its "
        "best perfect-model AUC.",
        "",
    ]
    if summary["baseline_auc"] is not None:
        lines += ["## Model-free baseline, AUC", "", f"| | {header} |", "|---" * (len(settings) + 1) + "|"]
        lines.append("| model-free (pooled) | " + " | ".join(_fmt(x) for x in summary["baseline_auc"]) + " |")
        lines.append("")
    chosen = summary["chosen"]
    names = [*([BASELINE] if summary["baseline_auc"] is not None else []), *config.variants]
    lines += ["## Chosen", "", "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in ("learning_rate", "target_tau", "rollout_length"):
        if key in chosen and chosen[key]:
            cells = [f"{chosen[key][v]:g}" if v in chosen[key] else "-" for v in names]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines.append("")
    for metric in ("auc", "final", "max_q_peak"):
        title = "peak of the mean max_a Q_target(S', a) over the run" if metric == "max_q_peak" else metric
        lines += [f"## Online return, {title}" if metric != "max_q_peak" else f"## Value magnitude, {title}", ""]
        lines += [f"| variant | condition | {header} |"]
        lines.append("|---|---" + "|---" * len(settings) + "|")
        for label, rows in summary["table"].items():
            for condition, cells in rows.items():
                if condition == BASELINE:
                    continue
                lines.append(f"| {label} | {condition} | " + " | ".join(_fmt(cell[metric]) for cell in cells) + " |")
        lines.append("")
    _atomic_write(out / "summary.md", "\n".join(lines))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def plot(config: FAStudyConfig, runs: dict[str, dict[str, torch.Tensor]], summary: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = config.conditions
    panels = [c for c in conditions if c != BASELINE]
    x = torch.arange(1, summary["windows"] + 1) * config.eval_every
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), sharey=True, squeeze=False)
    colors = {v: f"C{i}" for i, v in enumerate(VARIANTS)}

    def band(ax, curves, label, color, style="-"):
        mean = curves.mean(1)
        n = curves.shape[1]
        half = _t(n - 1) * curves.std(1, unbiased=True) / math.sqrt(n)
        ax.plot(x, mean, style, color=color, label=label, lw=1.4)
        ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.18)

    baseline = None
    if BASELINE in conditions:
        b = conditions.index(BASELINE)
        baseline = torch.cat([run["online_curve"][:, b] for run in runs.values()], dim=1)
    for ax, condition in zip(axes[0], panels, strict=True):
        c = conditions.index(condition)
        for variant, run in runs.items():
            band(ax, run["online_curve"][:, c], variant, colors[variant])
        if baseline is not None:
            band(ax, baseline, BASELINE, "k", "--")
        ax.set_title(condition)
        ax.set_xlabel("real steps")
    axes[0][0].set_ylabel("online return (95% CI)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"Dyna with a neural Q on {config.env}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110)
    plt.close(fig)

    doses = [float(d) for d in config.doses]
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for variant in runs:
        rows = summary["table"][variant]
        names = ["perfect" if d == 0 else f"dose {d:g}" for d in doses]
        means = [rows[n]["final"][0] for n in names]
        cis = [rows[n]["final"][1] for n in names]
        ax.errorbar(doses, means, yerr=cis, marker="o", capsize=3, color=colors[variant], label=variant)
    if "baseline" in summary:
        ax.axhline(summary["baseline"]["final"][0], color="k", ls="--", label=BASELINE)
    ax.set_xlabel("injected dose (probability per model output)")
    ax.set_ylabel("final online return (95% CI)")
    ax.set_title(config.env, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "dose_response.png", dpi=110)
    plt.close(fig)


def write_study(config: FAStudyConfig, out: str | Path) -> float:
    """Run the study (or sweep, :attr:`FAStudyConfig.is_sweep`) of ``config`` and write ``summary.md``,
    ``results.json`` and (a study) the figures in ``out`` (made if missing); returns the seconds it took."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    runs = run_study(config)
    seconds = time.time() - started
    if config.is_sweep:
        summary = summarise_sweep(config, runs)
        _atomic_write(out / "results.json", json.dumps({"config": dataclasses.asdict(config), **summary}, indent=1))
        write_sweep_summary(config, summary, out, seconds)
    else:
        runs = _only_setting(runs)
        summary = summarise(config, runs)
        _atomic_write(out / "results.json", json.dumps({"config": dataclasses.asdict(config), **summary}, indent=1))
        write_summary(config, summary, out, seconds)
        plot(config, runs, summary, out)
    return seconds
