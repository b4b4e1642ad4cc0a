"""emphatic-rl: off-policy policy-gradient research in PyTorch.

``import emphatic_rl`` is light (no torch, numpy or Gymnasium), so that the ``emphatic-rl`` command starts fast.
Subpackages load on first use (``emphatic_rl.envs``, ``emphatic_rl.agents``, ...), and the native envs register
their Gymnasium ids (``gymnasium.make("emphatic_rl/CartPole-v1")``) as soon as Gymnasium is imported, before or
after ``emphatic_rl``. The Python API (``emphatic_rl.make_agent``, ``emphatic_rl.load``, ``emphatic_rl.Model``;
see :mod:`emphatic_rl.api`) is imported on first use as well.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"


#: The Python API (``emphatic_rl.api``), imported on first use: ``emphatic_rl.make_agent("dqn", env="cartpole")``.
_API = ("Model", "load", "make_agent")


def __getattr__(name: str) -> Any:
    """The Python API (``make_agent``, ``load``, ``Model``) and the submodules, imported on first access."""
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.api"), name)
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register_gymnasium_ids() -> None:
    importlib.import_module("emphatic_rl.envs")  # each env module registers its ids


class _RegisterWhenGymnasiumLoads(importlib.abc.MetaPathFinder):
    """Registers our Gymnasium ids right after ``gymnasium`` itself is imported (then steps aside)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "gymnasium":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module: Any) -> None:
            original_exec(module)
            _register_gymnasium_ids()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if "gymnasium" in sys.modules:
    _register_gymnasium_ids()
elif not any(isinstance(finder, _RegisterWhenGymnasiumLoads) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenGymnasiumLoads())
