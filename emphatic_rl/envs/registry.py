"""Names of the batched environments, as used on the command line (``--env cartpole``).

Each native env module registers its class with ``@register_env("name")``. ``make_env("gym:<id>")`` wraps any
Gymnasium id with :class:`~emphatic_rl.envs.gym_adapter.GymnasiumAdapter`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from emphatic_rl.envs.base import TensorEnv


@dataclass(frozen=True)
class EnvEntry:
    name: str
    factory: Callable[..., TensorEnv]
    description: str

    def options(self) -> dict[str, Any]:
        """Keyword options the factory accepts beyond ``num_envs`` and ``device``, with their defaults."""
        signature = inspect.signature(self.factory)
        skip = {"self", "num_envs", "device"}
        return {
            name: (None if p.default is inspect.Parameter.empty else p.default)
            for name, p in signature.parameters.items()
            if name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }


ENV_REGISTRY: dict[str, EnvEntry] = {}


def register_env(name: str, description: str = "") -> Callable:
    """Class or function decorator that makes ``make_env(name, ...)`` build it."""

    def decorate(factory: Callable[..., TensorEnv]) -> Callable[..., TensorEnv]:
        if name in ENV_REGISTRY:
            raise ValueError(f"env name {name!r} is registered twice")
        doc = description or (inspect.getdoc(factory) or "").split("\n")[0]
        ENV_REGISTRY[name] = EnvEntry(name, factory, doc)
        return factory

    return decorate


def env_names() -> list[str]:
    """Registered native env names, sorted, plus the ``gym:<id>`` form."""
    return sorted(ENV_REGISTRY) + ["gym:<id>"]


def make_env(name: str, num_envs: int = 1, device: torch.device | str = "cpu", **options: Any) -> TensorEnv:
    """Build a batched env by its command-line name.

    Args:
        name: a registered name (see ``env_names()``) or ``"gym:<gymnasium id>"``.
        num_envs: number of copies ``N``.
        device: torch device.
        **options: env-specific keyword options (see ``ENV_REGISTRY[name].options()``).

    Raises:
        ValueError: unknown name or unknown option, naming the allowed values.
    """
    if name.startswith("gym:"):
        from emphatic_rl.envs.gym_adapter import GymnasiumAdapter

        return GymnasiumAdapter(name[len("gym:"):], num_envs=num_envs, device=device, **options)
    if name not in ENV_REGISTRY:
        raise ValueError(f"unknown env {name!r}; allowed: {', '.join(env_names())}")
    entry = ENV_REGISTRY[name]
    allowed = entry.options()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for env {name!r}; allowed: {', '.join(sorted(allowed)) or 'none'}"
        )
    return entry.factory(num_envs=num_envs, device=device, **options)


def check_env_option_types(name: str, options: dict[str, Any], where: str = "env") -> None:
    """One ``ConfigError`` for an option whose value does not match the annotation of the env constructor's
    parameter (``env.<option> must be ..., got ...``); names that are not registered envs are left alone."""
    import typing

    from emphatic_rl.config import check_typed_options

    entry = ENV_REGISTRY.get(name)
    if entry is None:
        return
    target = entry.factory.__init__ if inspect.isclass(entry.factory) else entry.factory
    try:
        annotations = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: leave the values to the constructor's own checks
        return
    check_typed_options(annotations, options, where, entry.options())
