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
import math
import tomllib
import types
import typing
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
            config.agent_options[key[len("agent.") :]] = value
        elif key.startswith("env."):
            config.env_options[key[len("env.") :]] = value
        elif key.startswith("eval_env."):
            config.eval_env_options[key[len("eval_env.") :]] = value
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


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    from emphatic_rl.validation import check_count

    check_count(name, value, minimum, maximum, error=ConfigError)


#: the largest run seed: every generator is seeded from seed + small offsets, and numpy-seeded envs take 32 bits
MAX_SEED = 2**32 - 1


def validate_config(config: TrainConfig) -> None:
    """Check the types and ranges of the top-level fields (agent and env options are checked by their builders)."""
    _check_int("steps", config.steps, 1)
    _check_int("seed", config.seed, 0, MAX_SEED)
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
    behaviour = config.behaviour
    if behaviour not in ("default", "uniform") and not (
        isinstance(behaviour, list)
        and behaviour
        and all(
            isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and p >= 0 for p in behaviour
        )
    ):
        raise ConfigError(
            f"behaviour must be 'default', 'uniform' or a list of action probabilities, got {behaviour!r}"
        )
    for name in ("agent_options", "env_options", "eval_env_options"):
        value = getattr(config, name)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{name} must be a table of options (key = value), got {value!r}")
    from emphatic_rl.logging import logger_backends

    try:
        logger_backends(config.logger)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def config_from_dict(data: Any, where: str = "config") -> TrainConfig:
    """A checked ``TrainConfig`` from a plain dict (a saved ``config.json``): unknown keys, wrong types and bad
    values are one ``ConfigError`` naming ``where``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a table of config keys, got a {type(data).__name__}")
    unknown = [k for k in data if k not in _FIELDS]
    if unknown:
        raise ConfigError(f"{where}: unknown config key {unknown[0]!r}; allowed: {', '.join(_FIELDS)}")
    config = TrainConfig(**data)
    try:
        validate_config(config)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    return config


# ---------------------------------------------------------------------------------------------------- typed options
def describe_type(annotation: Any) -> str:
    """Words for a type annotation: ``int`` -> "an integer", ``tuple[int, ...]`` -> "a list of integers"..."""
    if annotation is Any:
        return "any value"
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "a string"
    if annotation is type(None):
        return "none"
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        words = [describe_type(a) for a in arguments if a is not type(None)]
        return " or ".join(words) if words else "none"
    if origin in (list, tuple):
        if origin is tuple and arguments and (len(arguments) != 2 or arguments[1] is not Ellipsis):
            return f"a list of {len(arguments)} values ({', '.join(describe_type(a) for a in arguments)})"
        item = arguments[0] if arguments else Any
        plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
        return f"a list of {plural.get(item, describe_type(item))}"
    if origin is dict or annotation is dict:
        return "a table (key = value)"
    return getattr(annotation, "__name__", str(annotation))


def conforms(value: Any, annotation: Any, allow_infinite: bool = False) -> bool:
    """Whether ``value`` (as TOML / JSON give it: lists for sequences) is of type ``annotation``. Floats must be
    finite unless ``allow_infinite``; integers are accepted for floats, booleans never for numbers."""
    if annotation is Any or annotation is object:
        return True
    if annotation is type(None) or annotation is None:
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        return allow_infinite and not math.isnan(value) or math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a, allow_infinite) for a in arguments)
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and arguments and not (len(arguments) == 2 and arguments[1] is Ellipsis):
            return len(value) == len(arguments) and all(
                conforms(v, a, allow_infinite) for v, a in zip(value, arguments, strict=True)
            )
        item = arguments[0] if arguments else Any
        return all(conforms(v, item, allow_infinite) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # an annotation this checker does not know: left to the class's own checks


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, (list, tuple)) and any(_has_non_finite(v) for v in value)


def _is_infinite_number(value: Any) -> bool:
    return isinstance(value, float) and math.isinf(value)


def check_typed_options(
    annotations: dict[str, Any], options: dict[str, Any], where: str, defaults: dict[str, Any] | None = None
) -> None:
    """One ``ConfigError`` for the first option whose value does not match its annotation.

    Args:
        annotations: ``{name: type}`` (``typing.get_type_hints`` of an options dataclass or a constructor).
        options: the values given, ``{name: value}``; names without an annotation are not checked here.
        where: the prefix in the message, e.g. ``"agent"`` gives ``agent.hidden``.
        defaults: the defaults; a float option whose default is infinite may be set to an infinite value.
    """
    defaults = defaults or {}
    for name, value in options.items():
        if name not in annotations:
            continue
        annotation = annotations[name]
        default = defaults.get(name)
        allow_infinite = _is_infinite_number(default) or (
            isinstance(default, (list, tuple)) and any(_is_infinite_number(v) for v in default)
        )
        if not conforms(value, annotation, allow_infinite):
            example = ""
            if default is not None and not isinstance(default, bool) and conforms(default, annotation):
                example = f" (default {_toml(default)})"
            allowed = describe_type(annotation)
            if _has_non_finite(value):  # inf / nan where a finite number is expected
                allowed = allowed.replace("a number", "a finite number").replace("of numbers", "of finite numbers")
            raise ConfigError(f"{where}.{name} must be {allowed}{example}, got {_toml(value)}")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def check_dataclass_options(options_class: type, options: dict[str, Any], where: str) -> None:
    """Typed check of ``options`` against the fields of the dataclass ``options_class`` (before it is built)."""
    try:
        annotations = typing.get_type_hints(options_class)
    except Exception:  # unresolvable annotations (a user's class): leave the values to the class's own checks
        return
    defaults = {}
    for f in dataclasses.fields(options_class):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    check_typed_options(
        {f.name: annotations.get(f.name, Any) for f in dataclasses.fields(options_class)}, options, where, defaults
    )
