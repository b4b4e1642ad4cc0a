"""Scalars to ``metrics.csv``, TensorBoard and optionally Weights & Biases or MLflow; atomic file writes.

**Names.** One name per scalar everywhere (``metrics.csv``, TensorBoard, W&B, MLflow), namespaced with the
conventions of Stable-Baselines3:

- ``rollout/ep_rew_mean``, ``rollout/ep_len_mean``: mean return and length of the training episodes that ended in
  the log window; ``rollout/exploration_rate``: epsilon of epsilon-greedy agents;
- ``train/<name>``: what the agent's ``update`` returns (``train/loss``, ``train/q_mean``, ``train/actor_loss``...);
  a name without a ``/`` gets the ``train/`` prefix here, so no algorithm scalar lands at the root;
  ``train/diverged``: 1 for a member whose parameters became non-finite (then frozen);
- ``eval/return``, ``eval/length``, ``eval/exact_J`` (tabular MDPs), ``eval/excursions_return`` (sweeps);
- ``time/fps``: environment steps per second over the log window, all env copies together.

**metrics.csv** is in long ("tidy") form, one scalar a row: ``step,metric,member,value``. ``member`` is the
population index, or ``-1`` for a population aggregate. Rows are appended and flushed as they come, so a killed run's
log stays readable; on resume the rows past the checkpoint are dropped so the file ends exactly as an uninterrupted
run's would. (Files written before these names: ``train/episode_return``, ``train/episode_length``,
``time/steps_per_second``, ``diverged`` and unprefixed agent scalars such as ``loss``; the report reads both.)

**Populations in TensorBoard.** Up to :data:`PER_MEMBER_TENSORBOARD_LIMIT` members: one curve per member
(``eval/return/member_3``). More members with the same hyperparameters: ``<name>/mean``, ``/min``, ``/max``. More
members with different per-member hyperparameters (an option given as a list of ``P`` values, e.g. ACE's ``eta`` in
the default demo, or a sweep's grid): one TensorBoard run per distinct setting, in ``tensorboard/<setting>/`` (e.g.
``tensorboard/eta=1/``), holding the mean over that setting's members under the plain name, so TensorBoard overlays
the settings on one chart per metric, and never averages members with different hyperparameters. W&B and MLflow get
the same means as ``<name>/<setting>``.

**Hyperparameters** are recorded at the start of a run with TensorBoard's hparams plugin (the config's scalar
fields and options; per-member options as their distinct values), per setting in each setting's run, and as the
W&B run config / MLflow params.

**Backends** (``logger`` in the config, e.g. ``--set logger=wandb`` or ``logger = ["tensorboard", "mlflow"]``):
``"tensorboard"`` (default), ``"wandb"`` (``pip install 'emphatic-rl[wandb]'``; project from ``WANDB_PROJECT``, else
``emphatic-rl``), ``"mlflow"`` (``pip install 'emphatic-rl[mlflow]'``; tracking URI and experiment from
``MLFLOW_TRACKING_URI`` / ``MLFLOW_EXPERIMENT_NAME``), or ``"none"``. ``metrics.csv`` is always written. A backend's
package is imported only when it is chosen.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from emphatic_rl.checkpoints import atomic_write_bytes, save_checkpoint

if TYPE_CHECKING:
    from emphatic_rl.config import TrainConfig

CSV_HEADER = ["step", "metric", "member", "value"]
#: populations up to this size get one TensorBoard curve per member; larger ones get means (per setting).
PER_MEMBER_TENSORBOARD_LIMIT = 8
#: the ``logger`` choices and the package (and extra) each needs.
LOGGER_BACKENDS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "none": None}
#: per-member agent options that are not hyperparameters (a member's behaviour stream, i.e. its run).
NOT_HYPERPARAMETERS = frozenset({"stream_of"})
#: metrics shown in TensorBoard's hparams table.
HPARAM_METRICS = ("eval/return", "eval/exact_J", "rollout/ep_rew_mean")


def metric_name(name: str) -> str:
    """The logged name of an agent's scalar: unchanged if it has a namespace (``a/b``), else ``train/<name>``."""
    return name if "/" in name else f"train/{name}"


def logger_backends(choice: str | Sequence[str]) -> list[str]:
    """The backends of a ``logger`` config value (a name or a list of names), checked.

    Raises:
        ValueError: an unknown name, ``"none"`` with others, or a backend whose package is not installed (one line
            naming the extra to install).
    """
    names = [choice] if isinstance(choice, str) else list(choice) if isinstance(choice, list | tuple) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"logger must be a backend name or a list of them ({', '.join(LOGGER_BACKENDS)}), got {choice!r}"
        )
    for name in names:
        if name not in LOGGER_BACKENDS:
            raise ValueError(f"unknown logger {name!r}; allowed: {', '.join(LOGGER_BACKENDS)}")
    if "none" in names and len(names) > 1:
        raise ValueError(f"logger 'none' cannot be combined with others, got {names!r}")
    for name in names:
        package = LOGGER_BACKENDS[name]
        if package is None or package in sys.modules:
            continue
        if importlib.util.find_spec(package) is None:
            extra = f" (pip install 'emphatic-rl[{name}]')" if name != "tensorboard" else " (pip install tensorboard)"
            raise ValueError(f"logger {name!r} needs the {package!r} package, which is not installed{extra}")
    return [n for n in dict.fromkeys(names) if n != "none"]


def _hparam_value(value: Any) -> int | float | str | bool:
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def run_hyperparameters(config: Any) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """``(shared, per_member)`` hyperparameters of a ``TrainConfig``.

    ``shared``: the top-level fields and ``agent.<option>`` / ``env.<option>`` / ``eval_env.<option>`` values
    (TensorBoard-friendly: numbers, strings, booleans; other values as text). ``per_member``: for populations with
    per-member options (an agent option given as a list of ``population_size`` values whose default is not a
    list), each member's values of those options, ``[P]`` dicts; ``None`` when every member has the same ones.
    """
    population = config.population_size
    list_defaults: set[str] = set()
    try:
        from emphatic_rl.agents.registry import get_agent_entry

        list_defaults = {
            k for k, v in get_agent_entry(config.agent).default_options().items() if isinstance(v, list | tuple)
        }
    except Exception:  # an agent outside the registry: judge by the values alone
        pass
    shared: dict[str, Any] = {}
    per_member_keys: list[str] = []
    for key, value in config.to_dict().items():
        if key in ("agent_options", "env_options", "eval_env_options"):
            continue
        shared[key] = _hparam_value(value)
    for key, value in config.agent_options.items():
        if (
            isinstance(value, list)
            and len(value) == population
            and key not in list_defaults
            and all(isinstance(v, bool | int | float | str) for v in value)
        ):
            if key in NOT_HYPERPARAMETERS:
                continue
            if len(set(value)) > 1:
                per_member_keys.append(key)
                shared[f"agent.{key}"] = "per member: " + ", ".join(
                    f"{v:g}" if isinstance(v, float) else str(v) for v in sorted(set(value), key=str)
                )
                continue
            value = value[0]
        shared[f"agent.{key}"] = _hparam_value(value)
    for prefix, options in (("env", config.env_options), ("eval_env", config.eval_env_options)):
        for key, value in options.items():
            shared[f"{prefix}.{key}"] = _hparam_value(value)
    if not per_member_keys:
        return shared, None
    return shared, [{key: config.agent_options[key][p] for key in per_member_keys} for p in range(population)]


def setting_label(values: dict[str, Any]) -> str:
    """``"alpha_actor=0.25,eta=1"``: a setting's per-member hyperparameters, sorted by name."""
    return ",".join(
        f"{k}={v:g}" if isinstance(v, float | int) and not isinstance(v, bool) else f"{k}={v}"
        for k, v in sorted(values.items())
    )


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``emphatic_rl.checkpoints.save_checkpoint``: atomic, with a stored checksum."""
    save_checkpoint(obj, path)


# ---------------------------------------------------------------------------------------------------- backends
class _Backend(Protocol):
    """What the logger asks of an experiment tracker besides TensorBoard and the CSV."""

    def __init__(self, out_dir: Path, resume: bool) -> None: ...
    def hyperparameters(self, values: dict[str, Any]) -> None: ...
    def scalars(self, step: int, values: dict[str, float]) -> None: ...
    def text(self, step: int, tag: str, message: str) -> None: ...
    def close(self) -> None: ...


class _WandbBackend:
    """Weights & Biases: one W&B run per run folder (its id kept in ``wandb_run_id`` so a resume continues it)."""

    def __init__(self, out_dir: Path, resume: bool) -> None:
        wandb = importlib.import_module("wandb")
        id_file = out_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "emphatic-rl"),
            name=out_dir.name,
            dir=str(out_dir),
            id=run_id,
            resume="allow" if run_id else None,
        )
        if run_id is None and getattr(self._run, "id", None):
            atomic_write_bytes(id_file, str(self._run.id).encode())

    def hyperparameters(self, values: dict[str, Any]) -> None:
        self._run.config.update(values, allow_val_change=True)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._run.log(values, step=step)

    def text(self, step: int, tag: str, message: str) -> None:
        self._run.log({tag: message}, step=step)

    def close(self) -> None:
        self._run.finish()


class _MlflowBackend:
    """MLflow: one MLflow run per run folder (its id kept in ``mlflow_run_id`` so a resume continues it)."""

    _invalid = str.maketrans({"=": "_", ",": "__"})

    def __init__(self, out_dir: Path, resume: bool) -> None:
        self._mlflow = importlib.import_module("mlflow")
        id_file = out_dir / "mlflow_run_id"
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
        if os.environ.get("MLFLOW_EXPERIMENT_NAME") is None and run_id is None:
            self._mlflow.set_experiment("emphatic-rl")
        self._run = self._mlflow.start_run(run_id=run_id, run_name=None if run_id else out_dir.name)
        if run_id is None:
            atomic_write_bytes(id_file, str(self._run.info.run_id).encode())

    def hyperparameters(self, values: dict[str, Any]) -> None:
        self._mlflow.log_params({k.translate(self._invalid): str(v)[:500] for k, v in values.items()})

    def scalars(self, step: int, values: dict[str, float]) -> None:
        finite = {k.translate(self._invalid): v for k, v in values.items() if math.isfinite(v)}
        if finite:
            self._mlflow.log_metrics(finite, step=step)

    def text(self, step: int, tag: str, message: str) -> None:
        self._mlflow.log_text(message, f"{tag.translate(self._invalid)}/step_{step}.txt")

    def close(self) -> None:
        self._mlflow.end_run()


_BACKEND_CLASSES: dict[str, type[_Backend]] = {"wandb": _WandbBackend, "mlflow": _MlflowBackend}


class Logger:
    """Writes scalars for a population of ``P`` members.

    Args:
        out_dir: run folder; writes ``metrics.csv`` and TensorBoard events under ``tensorboard/``.
        population_size: ``P``.
        resume_step: when resuming, drop CSV rows with ``step > resume_step`` and purge TensorBoard events after it.
        tensorboard: write TensorBoard events (needs the ``tensorboard`` package).
        backends: other backends, ``"wandb"`` and/or ``"mlflow"`` (see the module docstring).
        member_settings: per-member hyperparameters ``[P]`` (from :func:`run_hyperparameters`); populations larger
            than :data:`PER_MEMBER_TENSORBOARD_LIMIT` are then charted as one mean per distinct setting.
    """

    def __init__(
        self,
        out_dir: str | Path,
        population_size: int,
        resume_step: int | None = None,
        tensorboard: bool = True,
        backends: Sequence[str] = (),
        member_settings: list[dict[str, Any]] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.population_size = population_size
        self.csv_path = self.out_dir / "metrics.csv"
        if resume_step is not None and self.csv_path.exists():
            self._truncate_csv(resume_step)
        new_file = not self.csv_path.exists()
        self._csv_file = self.csv_path.open("a", newline="")
        self._csv = csv.writer(self._csv_file)
        if new_file:
            self._csv.writerow(CSV_HEADER)
            self._csv_file.flush()
        # settings: label -> member indices (only when charts are grouped by setting)
        self._groups: dict[str, torch.Tensor] = {}
        self._group_values: dict[str, dict[str, Any]] = {}
        if member_settings is not None and population_size > PER_MEMBER_TENSORBOARD_LIMIT:
            if len(member_settings) != population_size:
                raise ValueError(f"member_settings has {len(member_settings)} entries for {population_size} members")
            members: dict[str, list[int]] = {}
            for p, values in enumerate(member_settings):
                label = setting_label(values)
                members.setdefault(label, []).append(p)
                self._group_values[label] = values
            if len(members) > 1:
                self._groups = {label: torch.tensor(m) for label, m in members.items()}
        self._tb = None
        self._tb_groups: dict[str, Any] = {}
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=purge)
            for label in self._groups:
                self._tb_groups[label] = SummaryWriter(str(self.out_dir / "tensorboard" / label), purge_step=purge)
        self._backends = [_BACKEND_CLASSES[name](self.out_dir, resume_step is not None) for name in backends]

    @classmethod
    def from_config(cls, out_dir: str | Path, config: TrainConfig, resume_step: int | None = None) -> Logger:
        """The logger of a ``TrainConfig`` run: its ``logger`` backends, its per-member settings; a new run (no
        ``resume_step``) records the hyperparameters at once."""
        backends = logger_backends(config.logger)
        shared, per_member = run_hyperparameters(config)
        logger = cls(
            out_dir,
            config.population_size,
            resume_step=resume_step,
            tensorboard="tensorboard" in backends,
            backends=[b for b in backends if b != "tensorboard"],
            member_settings=per_member,
        )
        if resume_step is None:
            logger.log_hyperparameters(shared)
        return logger

    @property
    def settings(self) -> dict[str, list[int]]:
        """``{setting label: member indices}`` when charts are grouped by setting, else empty."""
        return {label: members.tolist() for label, members in self._groups.items()}

    def log_hyperparameters(self, hyperparameters: dict[str, Any], metrics: Sequence[str] = HPARAM_METRICS) -> None:
        """Record ``hyperparameters`` (TensorBoard hparams plugin, W&B config, MLflow params); in TensorBoard each
        setting's run gets the shared values and its own. ``metrics``: the scalars the hparams table shows."""
        values = {k: _hparam_value(v) for k, v in hyperparameters.items()}
        if self._tb is not None:
            from torch.utils.tensorboard.summary import hparams

            metric_dict = dict.fromkeys(metrics, math.nan)
            writers = [(self._tb, values)] + [
                (writer, {**values, **{f"agent.{k}": _hparam_value(v) for k, v in self._group_values[label].items()}})
                for label, writer in self._tb_groups.items()
            ]
            for writer, run_values in writers:
                for summary in hparams(run_values, metric_dict):
                    writer.file_writer.add_summary(summary)
        for backend in self._backends:
            backend.hyperparameters(values)

    def _truncate_csv(self, resume_step: int) -> None:
        kept: list[list[str]] = []
        with self.csv_path.open(newline="") as f:
            for row in csv.reader(f):
                if row == CSV_HEADER:
                    kept.append(row)
                    continue
                if len(row) != 4:
                    continue  # a partial last line from a killed run
                try:
                    if int(row[0]) <= resume_step:
                        kept.append(row)
                except ValueError:
                    continue
        text = "".join(",".join(row) + "\r\n" for row in kept)
        atomic_write_bytes(self.csv_path, text.encode())

    def log(self, step: int, metrics: dict[str, torch.Tensor | float]) -> None:
        """Log ``metrics``: each value a tensor ``[P]`` (one per member) or a scalar (a population aggregate).

        Names without a namespace get ``train/`` (:func:`metric_name`)."""
        charts: dict[str, float] = {}  # the main run's scalars (TensorBoard and the other backends)
        by_setting: dict[str, dict[str, float]] = {}  # setting -> name -> mean over its members
        for raw_name, value in metrics.items():
            name = metric_name(raw_name)
            values = torch.as_tensor(value).detach().double().cpu().flatten()
            if values.numel() == 1 and self.population_size != 1:
                self._csv.writerow([step, name, -1, repr(float(values[0]))])
                charts[name] = float(values[0])
                continue
            for member, v in enumerate(values.tolist()):
                self._csv.writerow([step, name, member, repr(v)])
            if self.population_size == 1:
                charts[name] = float(values[0])
            elif self.population_size <= PER_MEMBER_TENSORBOARD_LIMIT:
                charts.update({f"{name}/member_{m}": v for m, v in enumerate(values.tolist())})
            elif self._groups:
                for label, members in self._groups.items():
                    group = values[members]
                    finite = group[torch.isfinite(group)]
                    if finite.numel():
                        by_setting.setdefault(label, {})[name] = float(finite.mean())
            else:
                finite = values[torch.isfinite(values)]
                if finite.numel():
                    charts[f"{name}/mean"] = float(finite.mean())
                    charts[f"{name}/min"] = float(finite.min())
                    charts[f"{name}/max"] = float(finite.max())
        self._csv_file.flush()
        if self._tb is not None:
            for tag, v in charts.items():
                self._tb.add_scalar(tag, v, step)
            for label, scalars in by_setting.items():
                for tag, v in scalars.items():
                    self._tb_groups[label].add_scalar(tag, v, step)
        if self._backends:
            flat = {**charts, **{f"{tag}/{label}": v for label, s in by_setting.items() for tag, v in s.items()}}
            for backend in self._backends:
                backend.scalars(step, flat)

    def text(self, step: int, tag: str, message: str) -> None:
        if self._tb is not None:
            self._tb.add_text(tag, message, step)
        for backend in self._backends:
            backend.text(step, tag, message)

    def close(self) -> None:
        self._csv_file.close()
        for writer in [self._tb, *self._tb_groups.values()]:
            if writer is not None:
                writer.flush()
                writer.close()
        for backend in self._backends:
            backend.close()


def read_metrics(path: str | Path) -> list[tuple[int, str, int, float]]:
    """Rows of a ``metrics.csv`` as ``(step, metric, member, value)``."""
    rows = []
    with Path(path).open(newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        for row in reader:
            if len(row) == 4:
                rows.append((int(row[0]), row[1], int(row[2]), float(row[3])))
    return rows
