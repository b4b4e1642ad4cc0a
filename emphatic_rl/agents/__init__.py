"""Agents: the ``Agent`` protocol, the agent registry and the agents themselves.

Shared pieces live here (``base``, ``registry``, ``policies``, ``networks``, ``action_boxes``, ``emphasis``); the
agents are grouped by kind: ``linear/`` (linear actor-critics and their critics), ``deep/`` (replay-based deep
agents) and ``dyna/`` (Dyna agents and their models)."""

from emphatic_rl.agents.base import (
    ActionOutput,
    Agent,
    Behaviour,
    FixedDiscreteBehaviour,
    UniformRandomBehaviour,
)
from emphatic_rl.agents.registry import AGENT_REGISTRY, AgentContext, agent_names, make_agent, register_agent


def load_agents() -> None:
    """Import every agent module so that each registers its name (kept lazy: ``import emphatic_rl`` stays light)."""
    import emphatic_rl.agents.deep.ace
    import emphatic_rl.agents.deep.ddpg
    import emphatic_rl.agents.deep.dqn
    import emphatic_rl.agents.deep.gaussian
    import emphatic_rl.agents.dyna.function_approx
    import emphatic_rl.agents.dyna.tabular
    import emphatic_rl.agents.linear.ace  # noqa: F401


__all__ = [
    "ActionOutput",
    "Agent",
    "Behaviour",
    "FixedDiscreteBehaviour",
    "UniformRandomBehaviour",
    "AGENT_REGISTRY",
    "AgentContext",
    "agent_names",
    "load_agents",
    "make_agent",
    "register_agent",
]
