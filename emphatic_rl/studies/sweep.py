"""``emphatic-rl sweep STUDY.toml``: a study (variants x hyperparameter grid x runs) as a few batched population runs.

A study TOML::

    name = "j23-mountain-car"      # optional; default the file's stem
    runs = 5                       # behaviour streams R = independent runs
    full_runs = 30                 # optional: runs with --full
    max_population = 400           # optional: largest batch P; bigger variants are split into chunks of settings

    [base]                         # a TrainConfig table (see emphatic_rl/config.py), shared by every variant
    env = "mountain-car"
    steps = 30000
    eval_every = 2000
    [base.env_options]
    max_episode_steps = 100000000
    [base.agent_options]           # options common to every variant (agents ace / ace-direct / offpac)
    critic = "etd"

    [full_base]                    # optional: base overrides with --full (e.g. steps = 100000)

    [grid]                         # per-member hyperparameters: every combination is one setting
    alpha_actor = [1.0, 0.25]
    alpha_critic = [0.125]

    [full_grid]                    # optional: the grid with --full (default: [grid])

    [[variants]]
    name = "offpac"
    agent = "offpac"
    [[variants]]
    name = "ace-direct-uniform"
    agent = "ace-direct"
    agent_options = { interest = "uniform" }
    grid = { alpha_emphasis = [0.25, 0.0625] }        # merged over [grid] for this variant ([] drops a key)
    full_grid = { alpha_emphasis = [1.0, 0.5, 0.25] }  # merged over [full_grid] with --full
    [[variants]]
    name = "ace-ideal-uniform"
    agent = "ace"
    agent_options = { emphasis = "ideal" }
    full_only = true                                    # run only with --full (default false)

    [excursions]                   # optional: also evaluate the excursions objective (J23)
    starts = 20                    # start states (full_starts with --full), each after `spacing` behaviour steps
    spacing = 1000

    [report]                       # read by `emphatic-rl report` (optional)
    split = ["eta"]                # report each value of these grid keys as its own variant
    reference = { offpac = -255.1 }  # a number to print next to each variant (e.g. the paper's)
    reference_label = "J23 paper"

Layout of one variant (one population run): ``C`` settings (the grid's combinations) x ``R`` runs, ``P = C * R``
members; member ``p = r * C + c`` is setting ``c`` fed by behaviour stream ``r`` (``stream_of[p] = r``: the members
that learn from one stream are adjacent, which lets the compiled linear engine read their weights as one block). With a
fixed behaviour policy the data depend only on the seed, so every setting of every variant learns from exactly the
same ``R`` streams of experience (the papers' protocol: data generated once and shared by all algorithms).

If ``C * R > max_population`` the settings are split into chunks of at most ``max_population // R`` settings, each
its own run folder ``<variant>/chunk-<k>`` (same seed, so the same data); ``members.json`` holds global setting
indices, so ``report`` does not care.

Everything (every key, every value, every variant's env and agent) is checked by building each variant's ``Run``
before any variant starts. Outputs, in ``--out``: ``sweep.json`` (the resolved study) and per run folder the usual
``metrics.csv``/``config.json``/``checkpoint.pt`` plus ``members.json`` (member -> setting values and run index) and
``done.json`` when finished. Re-running the same command skips finished folders and resumes unfinished ones from
their checkpoint.

Evaluation. The training loop's: ``eval_episodes`` rollouts from the env's start distribution (the *episodic*
objective of J23), capped at ``eval_max_steps`` (``eval/return``; tabular MDPs also log the exact
``eval/exact_J``). With ``[excursions]``, also the *excursions* objective (``eval/excursions_return``): after every
``eval_every`` steps, one rollout of the target policy from each of ``starts`` states drawn from the behaviour's data
(final states of independent behaviour trajectories of ``spacing`` steps, not the training data), set through the
env's ``state_names`` tensors. It is evaluated by the ``emphatic_rl.runner.Excursions`` callback of the training
loop, right after the episodic evaluation.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emphatic_rl.checkpoints import RunInterrupted
from emphatic_rl.config import ConfigError, TrainConfig, apply_overrides, load_config_file
from emphatic_rl.seeding import stream_generator, stream_seed

# Which agents a study may run and which keys its grid may hold come from the agent registry: an agent is sweepable
# when its options declare per-member fields (``emphatic_rl.agents.registry.per_member``) and a ``stream_of`` option,
# so an agent registered by a user's own package (``--import MODULE``) is sweepable without editing this module.
STUDY_KEYS = (
    "name", "runs", "full_runs", "max_population", "base", "full_base", "grid", "full_grid", "variants", "report",
    "excursions",
)
EXCURSION_KEYS = ("starts", "full_starts", "spacing")
EXCURSIONS_METRIC = "eval/excursions_return"  # emphatic_rl.runner.Excursions.metric
VARIANT_KEYS = ("name", "agent", "agent_options", "grid", "full_grid", "full_only")
MEMBERS_NAME = "members.json"
DONE_NAME = "done.json"
SWEEP_NAME = "sweep.json"
ATTEMPTS_NAME = "attempts.json"
VARIANT_NAME = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9._+=-]{0,127}")


@dataclass
class Variant:
    """One algorithm of a study: an agent, its options and its grid (already merged with the study's)."""

    name: str
    agent: str
    agent_options: dict[str, Any]
    grid: dict[str, list[float]]


@dataclass
class Study:
    name: str
    runs: int
    max_population: int | None
    base: dict[str, Any]
    variants: list[Variant]
    report: dict[str, Any] = field(default_factory=dict)
    #: excursions objective: ``(number of start states, behaviour steps before each)``, or None (episodic only)
    excursions: tuple[int, int] | None = None


@dataclass
class Chunk:
    """One population run: settings ``setting_indices`` of a variant, each with ``runs`` members."""

    variant: Variant
    folder: str
    setting_indices: list[int]
    settings: list[dict[str, float]]
    config: TrainConfig


def check_variant_name(name: Any, where: str = "variant name") -> str:
    """A variant name is a folder name under ``--out``: letters, digits, ``-``, ``_``, ``.``, ``+``, ``=``, not
    starting with ``.`` (so never ``.`` or ``..``), no slashes."""
    if not isinstance(name, str) or not VARIANT_NAME.fullmatch(name):
        raise ConfigError(
            f"{where} must be a folder name (letters, digits, - _ . + =, not starting with '.' and without "
            f"slashes), got {name!r}"
        )
    return name


def _check_table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table, got {value!r}")
    return value


def _check_int(value: Any, where: str, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _agent_ranges(agent: Any, vname: str) -> dict[str, Any]:
    """The per-member option ranges of a sweepable registered agent; one error naming the sweepable ones else."""
    from emphatic_rl.agents import AGENT_REGISTRY, load_agents
    from emphatic_rl.agents.registry import sweepable_agent_names

    load_agents()
    entry = AGENT_REGISTRY.get(agent) if isinstance(agent, str) else None
    if entry is None or not entry.sweepable():
        raise ConfigError(
            f"variant {vname!r}: agent {agent!r} is not sweepable; allowed: {', '.join(sweepable_agent_names())} "
            "(an agent is sweepable when its options declare per-member fields and stream_of)"
        )
    return entry.per_member_ranges()


def check_grid(grid: dict[str, Any], where: str = "grid", ranges: dict[str, Any] | None = None,
               agent: str | None = None) -> dict[str, list[float]]:
    """Check that ``grid`` maps keys to non-empty lists of numbers (and, given the agent's per-member ``ranges``,
    that each key is one of them and each value in range); returns a clean copy.

    An empty list means "no such key" (used to drop a key of the study grid in one variant).
    """
    grid = _check_table(grid, where)
    clean: dict[str, list[float]] = {}
    for key, values in grid.items():
        if ranges is not None and key not in ranges:
            raise ConfigError(
                f"{where} key {key!r} is not a per-member hyperparameter; allowed: {', '.join(ranges)}"
                + (f" (agent {agent!r})" if agent else "")
            )
        if isinstance(values, (int, float)) and not isinstance(values, bool):
            values = [values]
        if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            raise ConfigError(f"{where}.{key} must be a number or a list of numbers, got {values!r}")
        if ranges is not None:
            for v in values:
                if not ranges[key].contains(v):
                    raise ConfigError(f"{where}.{key} value {v!r} is outside {ranges[key].describe()}")
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}.{key} has repeated values: {values!r}")
        if values:
            clean[key] = [float(v) for v in values]
    return clean


def expand_grid(grid: dict[str, list[float]]) -> list[dict[str, float]]:
    """Every combination of the grid's values, the first key varying slowest (an empty grid is one setting)."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def member_layout(num_settings: int, runs: int) -> list[tuple[int, int]]:
    """``[(setting, run)]`` for members ``p = run * num_settings + setting``; ``stream_of[p] = run``.

    Run-major: the members fed by one behaviour stream are adjacent. The compiled linear engine keeps each
    feature's weights of all members in one row (feature-major), so adjacent members that read the same active
    features read contiguous memory; with this layout a step streams through memory instead of jumping.
    """
    return [(c, r) for r in range(runs) for c in range(num_settings)]


def load_study(path: str | Path, full: bool = False, base_overrides: dict[str, Any] | None = None) -> Study:
    """Read and check a study TOML (shapes and names; agents and envs are checked by ``plan_study``)."""
    data = load_config_file(path)
    unknown = [k for k in data if k not in STUDY_KEYS]
    if unknown:
        raise ConfigError(f"unknown study key {unknown[0]!r} in {str(path)!r}; allowed: {', '.join(STUDY_KEYS)}")
    name = data.get("name", Path(path).stem)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"name must be a non-empty string, got {name!r}")
    runs = _check_int(data.get("full_runs", data.get("runs", 1)) if full else data.get("runs", 1), "runs")
    max_population = data.get("max_population")
    if max_population is not None:
        _check_int(max_population, "max_population")
    base = copy.deepcopy(_check_table(data.get("base", {}), "[base]"))
    if full:
        base.update(copy.deepcopy(_check_table(data.get("full_base", {}), "[full_base]")))
    if base_overrides:
        base = _apply_base_overrides(base, base_overrides)
    for key in ("agent", "population_size", "num_envs"):
        if key in base:
            raise ConfigError(
                f"[base] must not set {key!r}: the agent comes from each variant, population_size = runs x settings "
                "and num_envs = runs"
            )
    study_grid_key = "full_grid" if full and "full_grid" in data else "grid"
    study_grid = check_grid(data.get(study_grid_key, {}), f"[{study_grid_key}]")
    raw_variants = data.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise ConfigError("a study needs at least one [[variants]] table (name, agent, agent_options)")
    if not full and all(isinstance(v, dict) and v.get("full_only") is True for v in raw_variants):
        raise ConfigError("every variant has full_only = true; run the study with --full or make one variant reduced")
    variants: list[Variant] = []
    names: set[str] = set()  # every variant's, full_only ones included
    for index, raw in enumerate(raw_variants):
        raw = _check_table(raw, f"variants[{index}]")
        bad = [k for k in raw if k not in VARIANT_KEYS]
        if bad:
            raise ConfigError(f"unknown key {bad[0]!r} in variants[{index}]; allowed: {', '.join(VARIANT_KEYS)}")
        vname = check_variant_name(raw.get("name"), f"variants[{index}].name")
        if vname in names:
            raise ConfigError(f"variant name {vname!r} is used twice")
        names.add(vname)
        full_only = raw.get("full_only", False)
        if not isinstance(full_only, bool):
            raise ConfigError(f"variant {vname!r}: full_only must be true or false, got {full_only!r}")
        agent = raw.get("agent")
        ranges = _agent_ranges(agent, vname)
        assert isinstance(agent, str)  # _agent_ranges accepts registered names only
        check_grid(study_grid, f"[{study_grid_key}]", ranges, agent)
        per_member_in_base = [k for k in base.get("agent_options", {}) if k in ranges]
        options = {**copy.deepcopy(base.get("agent_options", {})), **_check_table(raw.get("agent_options", {}),
                                                                                   f"variant {vname!r} agent_options")}
        grid = dict(study_grid)
        # --full: the variant's full_grid merged over the study's [full_grid]; a variant without full_grid gets the
        # study's [full_grid] as it is (its reduced grid only when the study has no [full_grid] either)
        if full and ("full_grid" in raw or "full_grid" in data):
            variant_grid_key = "full_grid"
        else:
            variant_grid_key = "grid"
        extra = check_grid(raw.get(variant_grid_key, {}), f"variant {vname!r} {variant_grid_key}", ranges, agent)
        for key in raw.get(variant_grid_key, {}):
            grid.pop(key, None)
        grid.update(extra)
        for key in ("stream_of",):
            if key in options:
                raise ConfigError(
                    f"variant {vname!r}: {key} is set by the sweep "
                    "(member p = run * settings + setting reads stream run)"
                )
        clash = [k for k in grid if k in options]
        if clash:
            where = "[base.agent_options]" if clash[0] in per_member_in_base else f"variant {vname!r} agent_options"
            raise ConfigError(
                f"variant {vname!r}: {clash[0]!r} is both in the grid and in {where}; set it in one place"
            )
        if full_only and not full:
            continue  # its keys are checked above; its agent options when it runs (--full)
        variants.append(Variant(vname, agent, options, grid))
    report = _check_table(data.get("report", {}), "[report]")
    excursions = None
    if "excursions" in data:
        table = _check_table(data["excursions"], "[excursions]")
        bad = [k for k in table if k not in EXCURSION_KEYS]
        if bad:
            raise ConfigError(f"unknown key {bad[0]!r} in [excursions]; allowed: {', '.join(EXCURSION_KEYS)}")
        starts = table.get("full_starts", table.get("starts", 50)) if full else table.get("starts", 50)
        excursions = (_check_int(starts, "[excursions] starts"), _check_int(table.get("spacing", 1000),
                                                                             "[excursions] spacing"))
    return Study(name, runs, max_population, base, variants, report, excursions)


def _apply_base_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    probe = TrainConfig()
    apply_overrides(probe, {k: v for k, v in overrides.items()})  # unknown keys: one clear error
    base = copy.deepcopy(base)
    for key, value in overrides.items():
        if key.startswith("agent."):
            base.setdefault("agent_options", {})[key[len("agent."):]] = value
        elif key.startswith("env."):
            base.setdefault("env_options", {})[key[len("env."):]] = value
        elif key.startswith("eval_env."):
            base.setdefault("eval_env_options", {})[key[len("eval_env."):]] = value
        else:
            base[key] = value
    return base


def _chunks_of(num_settings: int, runs: int, max_population: int | None) -> list[list[int]]:
    if max_population is None or num_settings * runs <= max_population:
        return [list(range(num_settings))]
    per_chunk = max(1, max_population // runs)
    return [list(range(s, min(s + per_chunk, num_settings))) for s in range(0, num_settings, per_chunk)]


def plan_study(study: Study) -> list[Chunk]:
    """The population runs of ``study``: one per variant (or per chunk of settings). Builds nothing."""
    chunks: list[Chunk] = []
    for variant in study.variants:
        settings = expand_grid(variant.grid)
        groups = _chunks_of(len(settings), study.runs, study.max_population)
        for k, indices in enumerate(groups):
            chunk_settings = [settings[i] for i in indices]
            P = len(chunk_settings) * study.runs
            options = dict(variant.agent_options)
            layout = member_layout(len(chunk_settings), study.runs)
            for key in variant.grid:
                options[key] = [chunk_settings[c][key] for c, _ in layout]
            options["stream_of"] = [r for _, r in layout]
            config = TrainConfig()
            apply_overrides(config, {k: copy.deepcopy(v) for k, v in study.base.items() if k != "agent_options"})
            config.agent = variant.agent
            config.agent_options = options
            config.num_envs = study.runs
            config.population_size = P
            folder = variant.name if len(groups) == 1 else f"{variant.name}/chunk-{k}"
            chunks.append(Chunk(variant, folder, indices, chunk_settings, config))
    return chunks


def validate_study(chunks: list[Chunk]) -> None:
    """Build every chunk's ``Run`` (env, agent, behaviour): any bad key or value fails here, before any training."""
    from emphatic_rl.train import build_run

    for chunk in chunks:
        try:
            build_run(chunk.config)
        except (ConfigError, ValueError) as error:
            raise ConfigError(f"variant {chunk.variant.name!r}: {error}") from None


def members_record(study: Study, chunk: Chunk) -> dict[str, Any]:
    """What ``members.json`` holds: member -> (global setting index, run index, grid values)."""
    members = []
    for p, (c, r) in enumerate(member_layout(len(chunk.settings), study.runs)):
        members.append({"member": p, "setting": chunk.setting_indices[c], "run": r, "values": chunk.settings[c]})
    return {
        "study": study.name,
        "variant": chunk.variant.name,
        "agent": chunk.variant.agent,
        "agent_options": {k: v for k, v in chunk.variant.agent_options.items()},
        "grid": chunk.variant.grid,
        "runs": study.runs,
        "members": members,
    }


def run_study(study: Study, out_dir: str | Path, progress: bool = False, log=print,
              only: list[str] | None = None, record: bool = True) -> list[Path]:
    """Validate every variant, then train each chunk (skipping finished ones, resuming unfinished ones).

    ``only``: train (and validate) only the chunks with these folders (``Chunk.folder``; default all); ``record``:
    write ``sweep.json`` (checked against the folder's earlier record either way). A distributed backend
    (``emphatic_rl.studies.sweep_ray``) writes the record once (``only=[]``) and trains each chunk in a task
    (``only=[folder], record=False``)."""
    from emphatic_rl.checkpoints import atomic_write_bytes
    from emphatic_rl.runner import Excursions
    from emphatic_rl.train import CHECKPOINT_NAME, build_run, prepare_out_dir, train

    chunks = [chunk for chunk in plan_study(study) if only is None or chunk.folder in only]
    validate_study(chunks)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = {
        "name": study.name,
        "runs": study.runs,
        "max_population": study.max_population,
        "base": study.base,
        "variants": [dataclasses.asdict(v) for v in study.variants],
        "report": study.report,
        "excursions": None if study.excursions is None else list(study.excursions),
    }
    previous = out / SWEEP_NAME
    resolved = check_study_unchanged(previous, resolved)
    if record:
        atomic_write_bytes(previous, json.dumps(resolved, indent=2).encode())
    folders = []
    for chunk in chunks:
        folder = out / chunk.folder
        folders.append(folder)
        if (folder / DONE_NAME).is_file():
            log(f"emphatic-rl sweep: {chunk.folder}: already finished, skipped")
            continue
        config = copy.deepcopy(chunk.config)
        config.progress = progress
        resume = (folder / CHECKPOINT_NAME).is_file()
        if not resume and (folder / "metrics.csv").exists():
            (folder / "metrics.csv").unlink()  # killed before its first checkpoint: start over
        prepare_out_dir(folder, resume=resume)
        atomic_write_bytes(folder / MEMBERS_NAME, json.dumps(members_record(study, chunk), indent=1).encode())
        log(f"emphatic-rl sweep: {chunk.folder}: {'resuming' if resume else 'training'} {config.agent}, "
            f"{len(chunk.settings)} settings x {study.runs} runs = P {config.population_size}, {config.steps} steps")
        attempts = _start_attempt(folder)
        start = time.perf_counter()
        run = build_run(config)
        extra = []
        if study.excursions is not None:
            extra.append(Excursions(config.eval_every, *study.excursions))
        result = train(config, folder, resume=resume, run=run, callbacks=extra)
        if result.interrupted:
            raise RunInterrupted(result.interrupted, f"{chunk.folder}: stopped by {result.interrupted} at step "
                                 f"{result.steps}; checkpoint saved; rerun the same command to continue")
        seconds = time.perf_counter() - start
        earlier = sum(a.get("seconds", 0.0) for a in attempts[:-1])
        atomic_write_bytes(
            folder / DONE_NAME,
            json.dumps({"steps": result.steps, "seconds": earlier + seconds, "attempts": len(attempts),
                        "last_attempt_seconds": seconds,
                        "diverged": result.diverged.nonzero().flatten().tolist()}).encode(),
        )
        log(f"emphatic-rl sweep: {chunk.folder}: done in {earlier + seconds:.0f} s"
            f"{f' over {len(attempts)} attempts' if len(attempts) > 1 else ''}; "
            f"{int(result.diverged.sum())} of {config.population_size} members diverged")
    return folders


def study_fingerprint(resolved: dict[str, Any]) -> dict[str, str]:
    """SHA-256 of what the results of a sweep folder depend on: ``"common"`` (base config, runs, max_population,
    excursions) and one per variant (agent, options, grid)."""

    def digest(value: Any) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()

    common = {k: resolved.get(k) for k in ("base", "runs", "max_population", "excursions")}
    fingerprint = {"common": digest(common)}
    for variant in resolved.get("variants", []):
        fingerprint[f"variant:{variant['name']}"] = digest(variant)
    return fingerprint


def check_study_unchanged(path: Path, resolved: dict[str, Any]) -> dict[str, Any]:
    """Refuse (one ``ConfigError``) to continue a sweep folder whose study was edited since it started: another base
    config, run count, population cap or excursions, or a variant of the same name with another agent, options or
    grid. Variants only in the old record (``--only``) are kept. Returns the record to write (old and new merged)."""
    resolved = json.loads(json.dumps(resolved, default=str))
    resolved["sha256"] = study_fingerprint(resolved)
    if not path.is_file():
        return resolved
    try:
        old = json.loads(path.read_text())
        if not isinstance(old, dict):
            raise ValueError("not a table")
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"{str(path)!r} is not valid JSON ({error}); use another --out") from None
    if "sha256" not in old:  # written before fingerprints: it did not record the excursions
        old = {**old, "excursions": resolved.get("excursions")}
    old_fingerprint = old.get("sha256") or study_fingerprint(old)
    where = str(path.parent)
    if old_fingerprint.get("common") != resolved["sha256"]["common"]:
        changed = [k for k in ("base", "runs", "max_population", "excursions") if old.get(k) != resolved.get(k)]
        raise ConfigError(
            f"{where!r} holds a sweep of another version of this study ({', '.join(changed) or 'its settings'} "
            "changed since it started); continuing would mix results: use another --out"
        )
    for key, value in resolved["sha256"].items():
        if key in old_fingerprint and old_fingerprint[key] != value:
            raise ConfigError(
                f"{where!r} holds a sweep of another version of this study (variant {key.split(':', 1)[1]!r} "
                "changed since it started: agent, options or grid); continuing would mix results: use another --out"
            )
    names = {v["name"] for v in resolved["variants"]}
    resolved["variants"] = [v for v in old.get("variants", []) if v.get("name") not in names] + resolved["variants"]
    resolved["sha256"] = {**old_fingerprint, **resolved["sha256"]}
    return resolved


def _start_attempt(folder: Path) -> list[dict[str, Any]]:
    """Record a new attempt at a chunk in ``attempts.json``; a killed earlier attempt is credited with the seconds up
    to its last checkpoint (the file's modification time). Returns the attempts, this one last."""
    from emphatic_rl.checkpoints import atomic_write_bytes
    from emphatic_rl.train import CHECKPOINT_NAME

    path = folder / ATTEMPTS_NAME
    attempts: list[dict[str, Any]] = []
    if path.is_file():  # earlier attempts, killed (an attempt killed before any checkpoint kept nothing: 0 s)
        try:
            attempts = list(json.loads(path.read_text()))
        except (ValueError, TypeError):
            attempts = []
    if attempts and "seconds" not in attempts[-1]:
        checkpoint = folder / CHECKPOINT_NAME
        end = checkpoint.stat().st_mtime if checkpoint.is_file() else attempts[-1]["start"]
        attempts[-1]["seconds"] = max(0.0, end - attempts[-1]["start"])
    attempts.append({"start": time.time()})
    atomic_write_bytes(path, json.dumps(attempts).encode())
    return attempts


# ---------------------------------------------------------------------------------------------------- estimate
@dataclass
class ChunkEstimate:
    """Estimated seconds of one chunk, extrapolated from a short calibration of its own population.

    ``setup_seconds``: building the Run, the first two training steps and the first evaluation (compilation).
    ``train_seconds``: seconds per training step (measured) x steps. ``eval_seconds``: an upper bound, every
    evaluation episode running to ``eval_max_steps``: ``evaluations`` x (seconds per evaluation call + cap x
    seconds per evaluation step of the ``P x eval_episodes`` copies, scaled by width for the excursion rollouts).
    """

    train_seconds: float
    eval_seconds: float
    step_seconds: float
    evaluations: int
    calibration_seconds: float
    #: building the Run and the first (compiling) training step and evaluation, which a real run pays too
    setup_seconds: float = 0.0

    @property
    def total_seconds(self) -> float:
        return self.setup_seconds + self.train_seconds + self.eval_seconds


def _calibration_key(chunk: Chunk) -> str:
    """Chunks with the same key cost the same per step (the same agent, options, population and evaluation)."""
    config = chunk.config.to_dict()
    per_member_keys = {*chunk.variant.grid, "stream_of"}
    config["agent_options"] = {k: (len(v) if k in per_member_keys else v)
                               for k, v in config["agent_options"].items()}
    return json.dumps({k: v for k, v in config.items() if k != "steps"}, sort_keys=True, default=str)


def estimate_chunk(chunk: Chunk, excursions: tuple[int, int] | None, budget_seconds: float = 0.5,
                   max_steps: int = 200, rates: dict[str, Any] | None = None) -> ChunkEstimate:
    """Estimate a chunk's run time without training it: build its ``Run`` (the full population), time up to
    ``max_steps`` training steps (about ``budget_seconds``, at least 3, after 2 warm-up steps that include any
    compilation) and two short evaluations (``eval_max_steps`` 2 and 12, every member's ``eval_episodes``
    copies) with the untrained policy, then extrapolate. Writes nothing. ``rates`` caches the measured rates
    per ``_calibration_key``."""
    import dataclasses as dc

    from emphatic_rl.runner import Runner
    from emphatic_rl.train import build_run, evaluate

    start = time.perf_counter()
    config = chunk.config
    key = _calibration_key(chunk)
    if rates is not None and key in rates:
        step_seconds, call_seconds, eval_step_seconds, setup_seconds = rates[key]
    else:
        config = copy.deepcopy(config)
        config.progress = False
        run = build_run(config)
        if run.agent.acts_in_env or run.behaviour is None:
            raise ConfigError(f"variant {chunk.variant.name!r}: no time estimate for an agent that acts in the env")
        runner = Runner(run)  # the training loop itself, without callbacks
        runner.reset()

        def train_steps(count: int, first: int) -> None:
            runner.run(first + count - 1)

        with torch.no_grad():
            train_steps(2, 1)  # warm-up: compilation, first allocations
            setup_seconds = time.perf_counter() - start
            timed, begin = 0, time.perf_counter()
            while timed < max_steps and (timed < 3 or time.perf_counter() - begin < budget_seconds):
                train_steps(1, 3 + timed)
                timed += 1
            step_seconds = (time.perf_counter() - begin) / timed

        def evaluation_seconds(cap: int) -> float:
            capped = dc.replace(run, config=dc.replace(config, eval_max_steps=min(cap, config.eval_max_steps)))
            begin = time.perf_counter()
            evaluate(capped, 0)
            return time.perf_counter() - begin

        setup_seconds += evaluation_seconds(2)  # warm-up (compilation)
        short, long = evaluation_seconds(2), evaluation_seconds(12)
        eval_step_seconds = max(long - short, 0.0) / 10
        call_seconds = max(short - 2 * eval_step_seconds, 0.0)
        if rates is not None:
            rates[key] = (step_seconds, call_seconds, eval_step_seconds, setup_seconds)
    evaluations = math.ceil(config.steps / config.eval_every) if config.eval_every else 1
    per_evaluation = call_seconds + config.eval_max_steps * eval_step_seconds
    if excursions is not None:  # one rollout from each start: the same per-copy cost, width S instead of E
        per_evaluation *= 1 + excursions[0] / config.eval_episodes
    return ChunkEstimate(step_seconds * config.steps, evaluations * per_evaluation, step_seconds, evaluations,
                         time.perf_counter() - start, setup_seconds)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.2f} s"


def print_estimate(study: Study, chunks: list[Chunk], budget_seconds: float = 0.5) -> float:
    """Print each chunk's estimated time and the study's total; returns the total in seconds."""
    rates: dict[str, Any] = {}
    total = calibration = 0.0
    for chunk in chunks:
        estimate = estimate_chunk(chunk, study.excursions, budget_seconds, rates=rates)
        calibration += estimate.calibration_seconds
        total += estimate.total_seconds
        config = chunk.config
        print(f"  {chunk.folder}: estimated ~{_minutes(estimate.total_seconds)}: setup ~"
              f"{_minutes(estimate.setup_seconds)}, training ~{_minutes(estimate.train_seconds)} ({config.steps} "
              f"steps x {estimate.step_seconds * 1e3:.3g} ms for P {config.population_size}), evaluation "
              f"<= {_minutes(estimate.eval_seconds)}")
    config = chunks[0].config
    evaluations = math.ceil(config.steps / config.eval_every) if config.eval_every else 1
    bound = f"{config.eval_episodes} episodes"
    if study.excursions is not None:
        bound += f" + {study.excursions[0]} excursion starts"
    print(f"emphatic-rl sweep: estimated ~{_minutes(total)} in all (from a {calibration:.0f}-second calibration; "
          f"evaluation bounded by {evaluations} evaluations x ({bound}) per member x {config.eval_max_steps} "
          "steps, every episode at the cap; logging and checkpoints not counted)")
    return total


# ---------------------------------------------------------------------------------------------------- excursions
def excursion_start_states(config: TrainConfig, num_starts: int, spacing: int) -> dict[str, Any]:
    """States drawn from the behaviour's data (the excursions objective of Graves et al. 2023).

    ``num_starts`` independent behaviour trajectories (env copies) from the start distribution, each run for
    ``spacing`` steps with their own seed (not the training data's); their final states are the start states. (The
    authors take every ``spacing``-th state of one separate behaviour trajectory; both sample ``d_mu``
    approximately.) Returns the env's state tensors ``{name: [num_starts, ...]}``.
    """
    from emphatic_rl.envs import make_env
    from emphatic_rl.train import make_behaviour

    env = make_env(config.env, num_envs=num_starts, device=config.device, **config.env_options)
    if not env.supports_excursions:
        raise ConfigError(f"env {config.env!r} exposes no state tensors (state_names); no excursions objective")
    behaviour = make_behaviour(config, env)
    generator = stream_generator(config.seed, "excursion_data", env.device)
    obs = env.reset(seed=stream_seed(config.seed, "excursion_data"))
    with torch.no_grad():
        for _ in range(spacing):
            action, _ = behaviour.act(obs, generator)
            obs = env.step(action).obs
    return {name: getattr(env, name).clone() for name in env.state_names}


@torch.no_grad()
def evaluate_excursions(run: Any, starts: dict[str, Any], step: int, backend: str = "auto") -> Any:
    """Mean undiscounted return ``[P]`` of each member's target policy, one rollout from every start state, each
    capped at ``eval_max_steps``. Copies are member-major: member ``p`` owns copies ``p*S ... p*S + S - 1``.
    ``backend``: as ``train.evaluate``'s (``"auto"``: the compiled rollouts where they apply, else torch)."""
    from emphatic_rl.agents.linear.rollouts import fused_excursions
    from emphatic_rl.envs import make_env
    from emphatic_rl.runner import rollout_returns

    fused = fused_excursions(run, starts, step, backend)
    if fused is not None:
        return fused
    config, agent = run.config, run.agent
    num_starts = next(iter(starts.values())).shape[0]
    P = config.population_size
    env = make_env(config.env, num_envs=P * num_starts, device=run.device, **config.evaluation_env_options())
    env.reset(seed=stream_seed(config.seed, "excursions", step))
    for name, value in starts.items():
        state = getattr(env, name)
        state.copy_(value.to(run.device).repeat(P, *([1] * (value.dim() - 1))))
    env.elapsed_steps.zero_()
    obs = env._observe()
    episode_return, _ = rollout_returns(agent, env, obs, P, num_starts, config.eval_max_steps)
    return episode_return.mean(dim=1)
