"""Run configuration: one dataclass, read from TOML, overridden by ``--set key=value``, validated before any work.

A config file looks like::

    agent = "dqn"
    env = "cartpole"
    steps = 100000
    seed = 1

    [agent_options]          # keys checked against the agent's options dataclass
    learning_rate = 0.001

    [env_options]            # keys checked against the env's constructor
    max_episode_steps = 500

    [eval_env_options]       # optional: options of the evaluation env only, over env_options
    max_episode_steps = 1000

``--set`` keys: a top-level field (``steps=5000``), or ``agent.<option>`` / ``env.<option>`` /
``eval_env.<option>``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOP_LEVEL_KEYS_DOC = {
    "agent": "agent name (see `emphatic-rl list`)",
    "env": "env name (see `emphatic-rl list`), or gym:<id>",
    "steps": "environment steps per env copy (loop iterations)",
    "seed": "run seed; every generator is seeded from it",
    "num_envs": "env copies per population member (agents that act) or behaviour streams (fixed behaviour)",
    "population_size": "number of learners P run as one batch",
    "device": "torch device: cpu, cuda, cuda:1, ...",
    "behaviour": "fixed behaviour policy (agents that do not act): 'default' (the env's own, else uniform), "
    "'uniform', or a list of action probabilities",
    "eval_every": "evaluate the target policy every this many steps (0: only at the end)",
    "eval_episodes": "evaluation episodes per member",
    "eval_max_steps": "cap on an evaluation episode's length",
    "checkpoint_every": "save a checkpoint every this many steps (0: only at the end)",
    "log_every": "log training metrics every this many steps",
    "progress": "show a progress bar",
    "num_threads": "torch CPU threads (small networks are fastest on 1; 0 keeps torch's default)",
    "logger": "where scalars go besides metrics.csv: 'tensorboard' (default), 'wandb', 'mlflow', 'none', or a list "
    "such as ['tensorboard', 'wandb'] (wandb/mlflow need the extras of the same names)",
}


@dataclass
class TrainConfig:
    """Everything a training run needs. See ``TOP_LEVEL_KEYS_DOC`` for each field's meaning."""

    agent: str = "dqn"
    env: str = "cartpole"
    steps: int = 20_000
    seed: int = 0
    num_envs: int = 1
    population_size: int = 1
    device: str = "cpu"
    behaviour: Any = "default"
    eval_every: int = 2_000
    eval_episodes: int = 10
    eval_max_steps: int = 1_000
    checkpoint_every: int = 5_000
    log_every: int = 500
    progress: bool = True
    num_threads: int = 1
    logger: Any = "tensorboard"
    agent_options: dict[str, Any] = field(default_factory=dict)
    env_options: dict[str, Any] = field(default_factory=dict)
    #: options of the evaluation env that differ from ``env_options`` (merged over them), e.g. another time limit,
    #: or ``normalize_observation = false`` to reproduce the Virtual Office authors' evaluation quirk.
    eval_env_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def evaluation_env_options(self) -> dict[str, Any]:
        """The options of the evaluation env: ``env_options`` with ``eval_env_options`` merged over them."""
        return {**self.env_options, **self.eval_env_options}


class ConfigError(ValueError):
    """A user mistake in a config file, an override or a command-line value."""


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def parse_value(text: str) -> Any:
    """Parse an override value as TOML (``5``, ``1e-3``, ``true``, ``[1, 2]``, ``"x"``), else keep the string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """Set top-level fields and ``agent.<key>`` / ``env.<key>`` options; unknown top-level keys are an error."""
    for key, value in overrides.items():
        if key.startswith("agent."):
            config.agent_options[key[len("agent."):]] = value
        elif key.startswith("env."):
            config.env_options[key[len("env."):]] = value
        elif key.startswith("eval_env."):
            config.eval_env_options[key[len("eval_env."):]] = value
        elif key in ("agent_options", "env_options", "eval_env_options"):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a table of options, got {value!r}")
            getattr(config, key).update(value)
        elif key in _FIELDS:
            setattr(config, key, value)
        else:
            allowed = ", ".join(list(TOP_LEVEL_KEYS_DOC) + ["agent.<option>", "env.<option>", "eval_env.<option>"])
            raise ConfigError(f"unknown config key {key!r}; allowed: {allowed}")
    return config


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None


def parse_set_arguments(items: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, _, text = item.partition("=")
        overrides[key.strip()] = parse_value(text.strip())
    return overrides


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def validate_config(config: TrainConfig) -> None:
    """Check the types and ranges of the top-level fields (agent and env options are checked by their builders)."""
    _check_int("steps", config.steps, 1)
    _check_int("seed", config.seed, 0)
    _check_int("num_envs", config.num_envs, 1)
    _check_int("population_size", config.population_size, 1)
    _check_int("eval_every", config.eval_every, 0)
    _check_int("eval_episodes", config.eval_episodes, 1)
    _check_int("eval_max_steps", config.eval_max_steps, 1)
    _check_int("checkpoint_every", config.checkpoint_every, 0)
    _check_int("log_every", config.log_every, 1)
    _check_int("num_threads", config.num_threads, 0)
    if not isinstance(config.agent, str) or not isinstance(config.env, str):
        raise ConfigError("agent and env must be names (strings)")
    if not isinstance(config.device, str):
        raise ConfigError(f"device must be a string such as 'cpu' or 'cuda', got {config.device!r}")
    if not isinstance(config.progress, bool):
        raise ConfigError(f"progress must be true or false, got {config.progress!r}")
    from emphatic_rl.logging import logger_backends

    try:
        logger_backends(config.logger)
    except ValueError as error:
        raise ConfigError(str(error)) from None
