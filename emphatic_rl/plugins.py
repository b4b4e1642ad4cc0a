"""Plugins: agents, envs and lab estimators registered by a user's own package reach the command line.

A plugin is any importable module that registers things when imported:

- agents with ``emphatic_rl.agents.register_agent`` (give the options per-member fields and ``stream_of`` to make
  the agent sweepable, see ``emphatic_rl.agents.registry.per_member``);
- envs with ``emphatic_rl.envs.register_env``;
- exact-lab estimators with ``emphatic_rl.exact.register_estimator``.

Two ways to load one:

- ``emphatic-rl train --import my_package.my_agent ...`` (repeatable; also on ``sweep``, ``list`` and
  ``gradients``), for a module on ``sys.path`` / ``PYTHONPATH``;
- an entry point in the group ``emphatic_rl.plugins`` of an installed distribution, loaded by every command::

      [project.entry-points."emphatic_rl.plugins"]
      my_agent = "my_package.my_agent"

A plugin that fails to import stops the command with one line naming the module and the error (exit code 2).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Sequence

ENTRY_POINT_GROUP = "emphatic_rl.plugins"


class PluginError(Exception):
    """A plugin module could not be imported."""


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def import_modules(names: Sequence[str]) -> list[str]:
    """Import each module of ``names`` (in order); returns their names.

    Raises:
        PluginError: one line naming the first module that failed and why.
    """
    loaded = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise PluginError(f"--import expects a module name, got {name!r}")
        try:
            importlib.import_module(name.strip())
        except Exception as error:  # any error in the user's module: report it in one line
            raise PluginError(f"--import {name!r} failed: {_describe(error)}") from error
        loaded.append(name.strip())
    return loaded


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Load every entry point of ``group`` (installed distributions); returns their names.

    Raises:
        PluginError: one line naming the first entry point that failed and why.
    """
    loaded = []
    for entry_point in importlib.metadata.entry_points(group=group):
        try:
            entry_point.load()
        except Exception as error:
            raise PluginError(
                f"plugin {entry_point.name!r} ({entry_point.value}, entry point group {group!r}) failed to load: "
                f"{_describe(error)}"
            ) from error
        loaded.append(entry_point.name)
    return loaded


def load_plugins(modules: Sequence[str] = (), entry_points: bool = True) -> list[str]:
    """Load the installed entry-point plugins (``entry_points``) and then ``modules``; returns what was loaded."""
    loaded = load_entry_points() if entry_points else []
    return loaded + import_modules(modules)
