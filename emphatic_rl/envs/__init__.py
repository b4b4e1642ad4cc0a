"""Batched torch environments (``TensorEnv``), their registry, and Gymnasium adapters.

Importing this package registers every native env by name (``make_env("cartpole")``) and with Gymnasium
(``gymnasium.make("emphatic_rl/CartPole-v1")``).
"""

# Native env modules register themselves on import (one import line per module; ``registration`` adds the
# Gymnasium ids and sorts after the native env modules).
import emphatic_rl.envs.catcher  # noqa: F401,E402
import emphatic_rl.envs.classic  # noqa: F401,E402
import emphatic_rl.envs.counterexamples  # noqa: F401,E402
import emphatic_rl.envs.gridworld  # noqa: F401,E402
import emphatic_rl.envs.minatar  # noqa: F401,E402
import emphatic_rl.envs.office  # noqa: F401,E402
import emphatic_rl.envs.puddle_world  # noqa: F401,E402
import emphatic_rl.envs.registration  # noqa: F401,E402
from emphatic_rl.envs.base import BoxSpec, DiscreteSpec, StepResult, TensorEnv
from emphatic_rl.envs.registry import ENV_REGISTRY, env_names, make_env, register_env

__all__ = [
    "BoxSpec",
    "DiscreteSpec",
    "StepResult",
    "TensorEnv",
    "ENV_REGISTRY",
    "env_names",
    "make_env",
    "register_env",
]
