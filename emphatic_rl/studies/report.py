"""``emphatic-rl report DIR``: a sweep's best settings, learning curves with confidence intervals, a table.

Reads every run folder under ``DIR`` that has a ``members.json`` (written by ``emphatic-rl sweep``) and its
``metrics.csv``. The curve of a member is its ``eval/exact_J`` (when the env is a tabular MDP) or ``eval/return``
at each evaluation step.

Selection (as in the papers' protocols: J23 = Graves, Imani, Kumaraswamy and White 2023 ranks settings by the area under
the curve, N18 = Imani, Graves and White 2018 by the final value). For setting ``c`` and run ``r``, the run's score is
the area under its curve, the mean over checkpoints (``select = "auc"``, J23), or its last value (``select = "final"``,
N18). A run that diverged (its ``diverged`` flag was ever set, or a curve value is NaN) makes its whole setting
ineligible, as with the authors' ``nanargmax`` over run means. The best setting of a variant maximises the mean score
over runs.

Confidence intervals are 95% t-intervals over runs, ``mean +- t_{0.975, n-1} * sd / sqrt(n)``, from
:mod:`emphatic_rl.stats`.

Outputs in ``--out`` (default ``DIR``): ``report.md`` (per variant: best hyperparameters, AUC +- CI, final value
+- CI, eligible settings, the reference value if the study gives one), ``summary.csv`` (every setting),
``curves.png`` (each variant's best setting, mean and CI band, the study's reference values as dashed lines) and
``sensitivity.png`` (score against ``alpha_actor``, best over the other grid keys, with CI bars); the figures follow
:mod:`emphatic_rl.plots` (n and the interval in the title, legends outside the axes, a distinct style per variant).

``split`` (``--split KEY`` or the study's ``[report] split``) reports each value of a grid key as its own variant,
named ``variant[key=value]`` (e.g. one variant per eta).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emphatic_rl.config import ConfigError
from emphatic_rl.logging import atomic_write_bytes
from emphatic_rl.stats import mean_ci, t_interval

SELECT_KINDS = ("auc", "final")
#: the divergence flag's name, and its name in run folders written before the namespaced names
DIVERGED_METRICS = ("train/diverged", "diverged")
@dataclass
class VariantResults:
    """One variant's evaluation curves: ``curves [C, R, K]`` (NaN where a member diverged) at ``steps [K]``."""

    name: str
    settings: list[dict[str, float]]
    steps: np.ndarray
    curves: np.ndarray
    diverged: np.ndarray  # bool [C, R]


@dataclass
class SettingSummary:
    setting: int
    values: dict[str, float]
    eligible: bool
    score: float  # mean over runs of the selection score (AUC or final), NaN if not eligible
    auc: tuple[float, float]
    final: tuple[float, float]


def _read_member_curves(
    metrics_path: Path, metric: str, num_members: int
) -> tuple[dict[int, dict[int, float]], np.ndarray, bool]:
    """``{step: {member: value}}`` for ``metric``, ``diverged bool[P]``, whether the metric was present at all."""
    by_step: dict[int, dict[int, float]] = {}
    diverged = np.zeros(num_members, dtype=bool)
    found = False
    with metrics_path.open(newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        for row in reader:
            if len(row) != 4:
                continue
            name = row[1]
            if name == metric:
                found = True
                member = int(row[2])
                if 0 <= member < num_members:
                    by_step.setdefault(int(row[0]), {})[member] = float(row[3])
            elif name in DIVERGED_METRICS:
                member = int(row[2])
                if 0 <= member < num_members and float(row[3]) > 0:
                    diverged[member] = True
    return by_step, diverged, found


def _choose_metric(folders: list[Path]) -> str:
    for folder in folders:
        with (folder / "metrics.csv").open() as f:
            for line in f:
                if ",eval/exact_J," in line:
                    return "eval/exact_J"
    return "eval/return"


def unfinished_folders(directory: str | Path) -> list[Path]:
    """Run folders under ``directory`` that a sweep started but did not finish (no ``done.json``)."""
    return sorted(p.parent for p in Path(directory).rglob("members.json") if not (p.parent / "done.json").is_file())


def progress_notes(root: Path, study: dict[str, Any], include_unfinished: bool) -> list[str]:
    """Report lines that say which reported folders are truncated (``--include-unfinished``: the step each reached
    of its configured steps) and which variants of the study have no run folder yet."""
    from emphatic_rl.logging import read_metrics

    lines: list[str] = []
    if include_unfinished:
        partial = []
        for folder in unfinished_folders(root):
            try:
                steps = json.loads((folder / "config.json").read_text()).get("steps", "?")
            except (OSError, ValueError):
                steps = "?"
            rows = read_metrics(folder / "metrics.csv") if (folder / "metrics.csv").is_file() else []
            last = max((row[0] for row in rows), default=0)
            partial.append(f"`{folder.relative_to(root)}` at step {last} of {steps}")
        if partial:
            lines += ["", "Included although unfinished (truncated curves, fewer evaluations than the others): "
                      + ", ".join(partial) + "."]
    started = set()
    for path in root.rglob("members.json"):
        try:
            started.add(json.loads(path.read_text())["variant"])
        except (OSError, ValueError, KeyError):
            continue
    missing = [v["name"] for v in study.get("variants", []) if v.get("name") not in started]
    if missing:
        lines += ["", "Not started (variants of the study without a run folder): "
                  + ", ".join(f"`{name}`" for name in missing) + "."]
    return lines


def load_results(
    directory: str | Path, metric: str | None = None, include_unfinished: bool = False
) -> tuple[dict[str, VariantResults], str]:
    """Every finished variant under ``directory`` (from ``members.json`` + ``metrics.csv``) and the metric used.

    Folders without ``done.json`` (a sweep still running, or killed) are skipped unless ``include_unfinished``;
    a variant split in chunks is reported only if every chunk finished.

    Raises:
        ConfigError: no sweep results there, or a folder's files do not fit together.
    """
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"{str(root)!r} is not a folder")
    folders = sorted(p.parent for p in root.rglob("members.json") if (p.parent / "metrics.csv").is_file())
    if not include_unfinished:
        unfinished = set(unfinished_folders(root))
        unfinished_variants = {json.loads((f / "members.json").read_text())["variant"] for f in unfinished}
        folders = [
            f
            for f in folders
            if f not in unfinished
            and json.loads((f / "members.json").read_text())["variant"] not in unfinished_variants
        ]
    if not folders:
        raise ConfigError(f"{str(root)!r} holds no sweep results (run folders with members.json and metrics.csv)")
    metric = metric or _choose_metric(folders)
    grouped: dict[str, list[tuple[dict[str, Any], Path]]] = {}
    for folder in folders:
        record = json.loads((folder / "members.json").read_text())
        grouped.setdefault(record["variant"], []).append((record, folder))
    results: dict[str, VariantResults] = {}
    for name, parts in grouped.items():
        runs = parts[0][0]["runs"]
        settings: dict[int, dict[str, float]] = {}
        entries = []  # (setting, run, step -> value, diverged)
        all_steps: set[int] = set()
        for record, folder in parts:
            members = record["members"]
            by_step, diverged, found = _read_member_curves(folder / "metrics.csv", metric, len(members))
            if not found:
                raise ConfigError(f"{str(folder)!r} has no {metric!r} rows; metrics there: see its metrics.csv")
            all_steps.update(by_step)
            for m in members:
                settings[m["setting"]] = m["values"]
                entries.append((m["setting"], m["run"], m["member"], by_step, bool(diverged[m["member"]])))
        steps = np.array(sorted(all_steps))
        setting_ids = sorted(settings)
        index_of = {s: i for i, s in enumerate(setting_ids)}
        curves = np.full((len(setting_ids), runs, len(steps)), np.nan)
        flags = np.zeros((len(setting_ids), runs), dtype=bool)
        for setting, run, member, by_step, was_diverged in entries:
            c = index_of[setting]
            for k, step in enumerate(steps):
                curves[c, run, k] = by_step.get(int(step), {}).get(member, math.nan)
            flags[c, run] = was_diverged
        curves[flags] = np.nan
        results[name] = VariantResults(name, [settings[s] for s in setting_ids], steps, curves, flags)
    return results, metric


def _format_value(value: float) -> str:
    return f"{value:g}"


def split_variants(results: dict[str, VariantResults], keys: list[str]) -> dict[str, VariantResults]:
    """Report each value of the grid ``keys`` as its own variant ``name[key=value,...]``; others untouched."""
    out: dict[str, VariantResults] = {}
    for name, vr in results.items():
        present = [k for k in keys if vr.settings and k in vr.settings[0]]
        if not present:
            out[name] = vr
            continue
        groups: dict[tuple[float, ...], list[int]] = {}
        for c, values in enumerate(vr.settings):
            groups.setdefault(tuple(values[k] for k in present), []).append(c)
        for combo, indices in groups.items():
            label = ",".join(f"{k}={_format_value(v)}" for k, v in zip(present, combo, strict=True))
            out[f"{name}[{label}]"] = VariantResults(
                f"{name}[{label}]",
                [{k: v for k, v in vr.settings[c].items() if k not in present} for c in indices],
                vr.steps,
                vr.curves[indices],
                vr.diverged[indices],
            )
    return out


def summarise_settings(vr: VariantResults, select: str = "auc") -> list[SettingSummary]:
    """Per setting: eligibility (no diverged / NaN run), selection score, AUC and final value with CIs."""
    if select not in SELECT_KINDS:
        raise ConfigError(f"unknown selection {select!r}; allowed: {', '.join(SELECT_KINDS)}")
    auc = vr.curves.mean(axis=2)  # [C, R]; NaN if any checkpoint is NaN
    final = vr.curves[:, :, -1]
    summaries = []
    for c, values in enumerate(vr.settings):
        eligible = bool(np.isfinite(auc[c]).all()) and not bool(vr.diverged[c].any())
        score_runs = auc[c] if select == "auc" else final[c]
        summaries.append(
            SettingSummary(
                c,
                values,
                eligible,
                float(score_runs.mean()) if eligible else math.nan,
                mean_ci(auc[c]) if eligible else (math.nan, math.nan),
                mean_ci(final[c]) if eligible else (math.nan, math.nan),
            )
        )
    return summaries


def best_setting(summaries: list[SettingSummary]) -> SettingSummary | None:
    """The eligible setting with the highest score (first on ties); None if every setting diverged."""
    eligible = [s for s in summaries if s.eligible]
    if not eligible:
        return None
    return max(eligible, key=lambda s: s.score)


def sensitivity(summaries: list[SettingSummary], key: str = "alpha_actor") -> list[tuple[float, SettingSummary]]:
    """For each value of ``key``: the best eligible setting over the other keys (sorted by the value)."""
    best: dict[float, SettingSummary] = {}
    for s in summaries:
        if not s.eligible or key not in s.values:
            continue
        v = s.values[key]
        if v not in best or s.score > best[v].score:
            best[v] = s
    return sorted(best.items())


def _pm(pair: tuple[float, float], digits: int) -> str:
    mean, half = pair
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if math.isfinite(half) else f"{mean:.{digits}f}"


def _digits(results: dict[str, VariantResults]) -> int:
    finite = np.concatenate([vr.curves[np.isfinite(vr.curves)] for vr in results.values()] + [np.zeros(1)])
    return 3 if np.abs(finite).max() < 10 else 1


def write_report(
    directory: str | Path,
    out_dir: str | Path | None = None,
    metric: str | None = None,
    select: str | None = None,
    split: list[str] | None = None,
    include_unfinished: bool = False,
) -> Path:
    """Write ``report.md``, ``summary.csv``, ``curves.png``, ``sensitivity.png``; returns the report's path."""
    root = Path(directory)
    study: dict[str, Any] = {}
    if (root / "sweep.json").is_file():
        study = json.loads((root / "sweep.json").read_text())
    options = study.get("report", {})
    metric = metric or options.get("metric")
    select = select or options.get("select", "auc")
    if select not in SELECT_KINDS:
        raise ConfigError(f"unknown selection {select!r}; allowed: {', '.join(SELECT_KINDS)}")
    split = split if split else list(options.get("split", []))
    raw, metric = load_results(root, metric, include_unfinished)
    unfinished = [] if include_unfinished else unfinished_folders(root)
    order = [v["name"] for v in study.get("variants", [])]  # the study's order, then any others
    raw = {name: raw[name] for name in sorted(raw, key=lambda n: (order.index(n) if n in order else len(order), n))}
    results = split_variants(raw, split)
    out = Path(out_dir) if out_dir else root
    out.mkdir(parents=True, exist_ok=True)
    digits = _digits(results)
    # [report] reference (+ reference_label) is for the default metric; reference_by_metric.<metric> (a table with
    # values and an optional "label") for others, e.g. eval/excursions_return
    by_metric = options.get("reference_by_metric", {}).get(metric)
    if by_metric is not None:
        references = {k: v for k, v in by_metric.items() if k != "label"}
        reference_label = by_metric.get("label", "reference")
    elif metric == options.get("metric", metric) and not metric.startswith("eval/excursions"):
        references = options.get("reference", {})
        reference_label = options.get("reference_label", "reference")
    else:
        references, reference_label = {}, "reference"
    summaries = {name: summarise_settings(vr, select) for name, vr in results.items()}
    bests = {name: best_setting(s) for name, s in summaries.items()}

    # summary.csv: every setting
    lines = ["variant,setting,values,eligible,score,auc_mean,auc_ci,final_mean,final_ci"]
    for name, rows in summaries.items():
        for s in rows:
            values = ";".join(f"{k}={_format_value(v)}" for k, v in s.values.items())
            lines.append(f"{name},{s.setting},{values},{int(s.eligible)},{s.score!r},{s.auc[0]!r},{s.auc[1]!r},"
                         f"{s.final[0]!r},{s.final[1]!r}")
    atomic_write_bytes(out / "summary.csv", ("\n".join(lines) + "\n").encode())

    base = study.get("base", {})
    any_vr = next(iter(results.values()))
    runs = any_vr.curves.shape[1]
    _plot_curves(results, bests, metric, out / "curves.png", study.get("name", root.name), references,
                 reference_label)
    _plot_sensitivity(summaries, metric, select, out / "sensitivity.png", study.get("name", root.name), runs)
    md = [f"# {study.get('name', root.name)}: sweep report", ""]
    md.append(
        f"Env `{base.get('env', '?')}`, {base.get('steps', '?')} steps per run, {runs} runs (behaviour streams, "
        f"shared by every setting and variant), {len(any_vr.steps)} evaluations (steps {int(any_vr.steps[0])}.."
        f"{int(any_vr.steps[-1])}), metric `{metric}`"
        + (f" ({base.get('eval_episodes', '?')} rollouts per member, capped at {base.get('eval_max_steps', '?')} steps)"
           if metric == "eval/return" else "")
        + (" (the excursions objective: one rollout from each of a fixed set of states drawn from the behaviour's "
           f"data, capped at {base.get('eval_max_steps', '?')} steps)" if metric == "eval/excursions_return" else "")
        + "."
    )
    md.append(
        "Best setting per variant by "
        + ("area under the curve (mean over checkpoints)" if select == "auc" else "final value") + ", "
        "mean over runs; settings with a diverged run are excluded. ± is the 95% t-interval over runs."
    )
    md.append("")
    ref_col = bool(references)
    header = "| variant | best hyperparameters | AUC | final | eligible settings |"
    if ref_col:
        header += f" {reference_label} |"
    md += [header, "|" + "---|" * (header.count("|") - 1)]
    for name, best in bests.items():
        total = len(summaries[name])
        eligible = sum(s.eligible for s in summaries[name])
        if best is None:
            row = f"| {name} | (all settings diverged) | n/a | n/a | 0/{total} |"
        else:
            hyper = ", ".join(f"{k} = {_format_value(v)}" for k, v in best.values.items()) or "(no grid)"
            row = f"| {name} | {hyper} | {_pm(best.auc, digits)} | {_pm(best.final, digits)} | {eligible}/{total} |"
        if ref_col:
            ref = references.get(name)
            row += f" {ref if ref is not None else ''} |"
        md.append(row)
    if unfinished:
        md += ["", "Not reported (run folders without done.json: still running or killed): "
               + ", ".join(f"`{f.relative_to(root)}`" for f in unfinished) + "."]
    md += progress_notes(root, study, include_unfinished)
    md += ["", "![learning curves of the best settings](curves.png)", "",
           "![sensitivity to the actor step size](sensitivity.png)", ""]
    for baseline, compared in _baseline_groups(options.get("baseline"), list(bests)).items():
        if bests.get(baseline) is None or not compared:
            continue
        md.append(f"Against `{baseline}` (score = {'AUC' if select == 'auc' else 'final value'}; the 95% intervals "
                  "of the best settings):")
        md.append("")
        base_best = bests[baseline]
        base_pair = base_best.auc if select == "auc" else base_best.final
        for name in compared:
            best = bests[name]
            if best is None:
                continue
            pair = best.auc if select == "auc" else best.final
            lo, hi = pair[0] - pair[1], pair[0] + pair[1]
            blo, bhi = base_pair[0] - base_pair[1], base_pair[0] + base_pair[1]
            if lo > bhi:
                verdict = "better (intervals do not overlap)"
            elif hi < blo:
                verdict = "worse (intervals do not overlap)"
            else:
                verdict = "not distinguishable (intervals overlap)"
            md.append(f"- `{name}`: {pair[0] - base_pair[0]:+.{digits}f}, {verdict}")
        md.append("")
    atomic_write_bytes(out / "report.md", ("\n".join(md) + "\n").encode())
    return out / "report.md"


def _baseline_groups(baseline: str | list[str] | None, names: list[str]) -> dict[str, list[str]]:
    """Which variants each baseline is compared with.

    ``[report] baseline`` is one variant name (every other variant is compared with it) or a list of names: then a
    variant is compared with the baseline that ends with the same ``-suffix`` (``offpac-tdrc`` for
    ``ace-direct-uniform-tdrc``), else with the first baseline. Split variants (``name[key=value]``) match by the
    part before ``[``.
    """
    if baseline is None:
        return {}
    baselines = [baseline] if isinstance(baseline, str) else baseline
    if not isinstance(baselines, list) or not baselines or not all(isinstance(b, str) for b in baselines):
        raise ConfigError(f"[report] baseline must be a variant name or a list of names, got {baseline!r}")
    groups: dict[str, list[str]] = {b: [] for b in baselines}
    for name in names:
        if name in groups:
            continue
        stem = name.split("[", 1)[0]
        suffix = stem.rsplit("-", 1)[-1] if "-" in stem else None
        same_suffix = [b for b in baselines if suffix is not None and b.split("[", 1)[0].endswith(f"-{suffix}")]
        groups[same_suffix[0] if same_suffix else baselines[0]].append(name)
    return groups


def _plot_curves(results, bests, metric, path: Path, title: str, references=None, reference_label="reference"):
    from emphatic_rl import plots

    plt = plots.figure()
    shown = {name: vr for name, vr in results.items() if bests[name] is not None}
    styles = plots.variant_styles(list(results))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    means, halves = {}, {}
    for name, vr in shown.items():
        means[name], halves[name] = t_interval(vr.curves[bests[name].setting], axis=0)  # over runs [R, K]
    labels = plots.curve_labels(means)
    for index, (name, vr) in enumerate(shown.items()):
        plots.plot_band(ax, vr.steps, means[name], halves[name], labels[name], styles[name], index)
    plots.reference_lines(ax, {k: v for k, v in (references or {}).items() if k in shown}, styles, reference_label)
    runs = next(iter(results.values())).curves.shape[1]
    ax.set_xlabel("training steps")
    ax.set_ylabel(metric)
    ax.set_title(f"{title}: best setting per variant\n{plots.interval_label(runs)}", fontsize=10)
    ax.grid(alpha=0.3)
    plots.legend_outside(ax)
    plots.save(fig, path, dpi=100)


def _plot_sensitivity(summaries, metric, select, path: Path, title: str, runs: int) -> None:
    from emphatic_rl import plots

    plt = plots.figure()
    styles = plots.variant_styles(list(summaries))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for index, (name, rows) in enumerate(summaries.items()):
        points = sensitivity(rows)
        if not points:
            continue
        xs = np.array([v for v, _ in points]) * 2 ** (0.04 * (index - len(summaries) / 2))  # dodge equal points
        pairs = [s.auc if select == "auc" else s.final for _, s in points]
        ax.errorbar(xs, [p[0] for p in pairs], yerr=[0 if not math.isfinite(p[1]) else p[1] for p in pairs],
                    capsize=3, label=name, markersize=4, lw=1.2, **styles[name])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("alpha_actor (best over the other hyperparameters; points dodged sideways)")
    ax.set_ylabel(f"{'AUC' if select == 'auc' else 'final'} of {metric}")
    ax.set_title(f"{title}: step-size sensitivity (diverged settings omitted)\n{plots.interval_label(runs)}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    plots.legend_outside(ax)
    plots.save(fig, path, dpi=100)
