"""Agent names as used on the command line (``--agent dqn``) and their typed, validated options.

Each agent module registers a factory and an options dataclass with ``@register_agent``. ``make_agent`` checks every
option key against the dataclass fields (one error naming the unknown key and the allowed ones) and lets the
dataclass's ``__post_init__`` check the values, all before anything is built.

Sweeps. An option that takes one value per population member declares its range with :func:`per_member`
(``alpha_actor: Any = per_member(0.01, low=0.0, low_open=True)``); an agent whose options have such fields and a
``stream_of`` option (member -> behaviour stream) can be swept by ``emphatic-rl sweep`` with a grid over those keys,
with nothing to edit in the library (:meth:`AgentEntry.per_member_ranges`, :meth:`AgentEntry.sweepable`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from emphatic_rl.agents.base import Agent
from emphatic_rl.envs.base import Spec
from emphatic_rl.validation import check_positive, check_switches, check_unit_interval

__all__ = [
    "AgentContext",
    "AgentEntry",
    "AGENT_REGISTRY",
    "MemberRange",
    "per_member",
    "register_agent",
    "agent_names",
    "sweepable_agent_names",
    "get_agent_entry",
    "make_agent",
    # the shared option checks, re-exported from emphatic_rl.validation
    "check_positive",
    "check_switches",
    "check_unit_interval",
]


@dataclass(frozen=True)
class MemberRange:
    """The allowed values of a per-member option: ``low < v`` (``low_open``) or ``low <= v``, and ``v <= high``."""

    low: float
    high: float | None = None
    low_open: bool = False

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if value <= self.low if self.low_open else value < self.low:
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low}, {'inf)' if self.high is None else f'{self.high}]'}"


PER_MEMBER_METADATA = "emphatic_rl.per_member"


def per_member(default: Any, low: float = 0.0, high: float | None = None, low_open: bool = False) -> Any:
    """A dataclass field for an option that accepts one value per population member (a number or a list of ``P``
    numbers), with the range a sweep grid's values must lie in. Use as the field's default."""
    return dataclasses.field(default=default, metadata={PER_MEMBER_METADATA: MemberRange(low, high, low_open)})


@dataclass(frozen=True)
class AgentContext:
    """What an agent factory is told about the run.

    - ``observation_spec``, ``action_spec``: the env's specs.
    - ``population_size``: ``P`` learners.
    - ``envs_per_member``: ``E``, env copies that feed each member (agents that act in the env).
    - ``num_streams``: ``R``, behaviour streams (agents that learn from a fixed behaviour).
    - ``device``, ``seed``, ``total_steps`` (steps per stream of the whole run).
    - ``env``: a one-copy instance of the env, for agents that read more than its specs (tabular MDPs' features).
    """

    observation_spec: Spec
    action_spec: Spec
    population_size: int
    envs_per_member: int
    num_streams: int
    device: torch.device
    seed: int
    total_steps: int
    env_name: str = ""
    env: Any = None


@dataclass(frozen=True)
class AgentEntry:
    name: str
    factory: Callable[[AgentContext, Any], Agent]
    options_class: type
    description: str

    def default_options(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options_class())

    def per_member_ranges(self) -> dict[str, MemberRange]:
        """The options that take one value per member (declared with :func:`per_member`), with their ranges."""
        return {
            f.name: f.metadata[PER_MEMBER_METADATA]
            for f in dataclasses.fields(self.options_class)
            if PER_MEMBER_METADATA in f.metadata
        }

    def sweepable(self) -> bool:
        """True when ``emphatic-rl sweep`` can run this agent: per-member options and a ``stream_of`` option."""
        names = {f.name for f in dataclasses.fields(self.options_class)}
        return "stream_of" in names and bool(self.per_member_ranges())

    def build_options(self, options: dict[str, Any]) -> Any:
        allowed = [f.name for f in dataclasses.fields(self.options_class)]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(unknown)} for agent {self.name!r}; allowed: {', '.join(allowed)}"
            )
        from emphatic_rl.config import check_dataclass_options

        check_dataclass_options(self.options_class, options, "agent")  # wrong types: one error naming the key
        return self.options_class(**options)


AGENT_REGISTRY: dict[str, AgentEntry] = {}


def register_agent(name: str, options_class: type, description: str = "") -> Callable:
    """Decorator for ``factory(context: AgentContext, options) -> Agent``."""

    def decorate(factory):
        if name in AGENT_REGISTRY:
            raise ValueError(f"agent name {name!r} is registered twice")
        AGENT_REGISTRY[name] = AgentEntry(name, factory, options_class, description)
        return factory

    return decorate


def agent_names() -> list[str]:
    return sorted(AGENT_REGISTRY)


def sweepable_agent_names() -> list[str]:
    """Registered agents that ``emphatic-rl sweep`` can run (see :meth:`AgentEntry.sweepable`)."""
    return [name for name in agent_names() if AGENT_REGISTRY[name].sweepable()]


def get_agent_entry(name: str) -> AgentEntry:
    if name not in AGENT_REGISTRY:
        raise ValueError(f"unknown agent {name!r}; allowed: {', '.join(agent_names())}")
    return AGENT_REGISTRY[name]


def make_agent(name: str, context: AgentContext, **options: Any) -> Agent:
    """Validate ``options`` for agent ``name`` and build it."""
    entry = get_agent_entry(name)
    return entry.factory(context, entry.build_options(options))
