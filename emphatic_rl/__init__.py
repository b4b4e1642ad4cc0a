"""emphatic-rl: off-policy policy-gradient research in PyTorch.

The Python API (``emphatic_rl.make_agent``, ``emphatic_rl.load``, ``emphatic_rl.Model``; see
:mod:`emphatic_rl.api`) is imported on first use, so ``import emphatic_rl`` stays light.
"""

from typing import Any

__version__ = "0.1.0"

# Registers the native envs by name (make_env) and with Gymnasium (gymnasium.make("emphatic_rl/CartPole-v1")).
import emphatic_rl.envs  # noqa: E402,F401

_API = ("Model", "load", "make_agent")


def __getattr__(name: str) -> Any:
    if name in _API:
        from emphatic_rl import api

        return getattr(api, name)
    raise AttributeError(f"module 'emphatic_rl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["Model", "load", "make_agent", "__version__"]
