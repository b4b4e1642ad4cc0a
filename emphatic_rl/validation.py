"""The checks every options class shares: one clear ``ValueError`` (or the ``error`` class given) per bad value.

Agents' options dataclasses call these in ``__post_init__``; the run configuration (``emphatic_rl.config``) uses
them for its top-level fields. Messages name the option, what is allowed and the value given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "check_positive",
    "check_unit_interval",
    "check_switches",
    "check_count",
    "check_number",
    "check_choice",
]


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """One clear error for a step size, count or rate that must be > 0 (or >= 0)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def check_unit_interval(name: str, value: float) -> None:
    """One clear error unless ``0 <= value <= 1``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def check_switches(options: Any, names: Sequence[str]) -> None:
    """One clear error unless each named attribute of ``options`` is a ``bool`` (switches such as the emphatic
    ``fit_start_state`` / ``clip_followon_at_zero`` are Python bools, constant per agent)."""
    for name in names:
        value = getattr(options, name)
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")


def check_count(
    name: str, value: Any, minimum: int = 1, maximum: int | None = None, error: type[ValueError] = ValueError
) -> None:
    """One clear ``error`` unless ``value`` is an integer (not a bool) ``>= minimum`` (and ``<= maximum``)."""
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise error(f"{name} must be an integer {allowed}, got {value!r}")


def check_number(name: str, value: Any) -> None:
    """One clear error unless ``value`` is a real number (an int or a float, not a bool)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    """One clear error unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(str(a) for a in allowed)}")
