"""Agents: the ``Agent`` protocol, the agent registry and the agents themselves."""

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
    from emphatic_rl.agents import ace, deep_ace, deep_gaussian, dpg, dqn, dyna, dyna_fa  # noqa: F401


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
