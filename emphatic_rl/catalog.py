"""What ``emphatic-rl list`` shows: every agent and env with a one-line description, its options (default, type,
allowed values) and which agents run on which envs.

The command reads ``catalog.json`` (shipped next to this module) so that it answers without importing torch or
building anything. The file is made from the live registries by::

    python -m emphatic_rl.cli.catalog            # rewrite emphatic_rl/catalog.json
    python -m emphatic_rl.cli.catalog --check    # exit 1 if it differs from the registries

and ``tests/test_cli_fast.py`` fails when it is stale. How each field is found:

- ``description``: the registry's one-line description;
- ``options``: the agent's options dataclass fields / the env factory's keyword arguments, with defaults and
  annotated types;
- ``allowed``: for options whose default is a string, the values the option's own check names when given a value
  it does not know (``"... allowed: a, b, c"``), else none;
- ``runs_on``: for each (agent, env) pair, whether ``train.build_run`` builds a one-member run of the agent on the
  env with default options (what ``emphatic-rl train --agent A --env E`` does before training); if not, the first
  line of the reason.

This module imports nothing heavy at import time.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "build_catalog",
    "load_catalog",
    "merge_live_registrations",
    "serialise_catalog",
    "CATALOG_FILE",
    "CATALOG_PATH",
]

CATALOG_FILE = "catalog.json"
#: the shipped file (next to this module)
CATALOG_PATH = Path(__file__).with_name(CATALOG_FILE)
_PROBE = "probe-value"
_GYM_NOTE = "any Gymnasium env id through its vector API (e.g. gym:MinAtar/Breakout-v1); options: gym.make's keywords"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _type_name(annotation: Any, default: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    if text in ("Any", "", "inspect._empty", "_empty") or annotation is inspect.Parameter.empty:
        return type(default).__name__ if default is not None else "any"
    return text.replace("typing.", "")


def _allowed_from(message: str) -> list[str] | None:
    """The allowed values an error message names: ``allowed: a, b``, ``must be one of a, b, got ...``,
    ``must be 'a' or 'b'``, ``a name in ['a', 'b'] or ...``."""
    match = re.search(r"(?:allowed:|must be one of|must be|a name in)\s*(.+?)(?:[,;]\s*got\b|$)", message)
    if not match:
        return None
    text = match.group(1)
    if "[" in text and "]" in text:
        text = text[text.index("[") + 1 : text.index("]")]
    values = [v.strip().strip("'\"") for v in re.split(r",\s*|\s+or\s+", text)]
    values = [v for v in values if re.fullmatch(r"[\w.+-]+", v) and v != _PROBE]
    return values or None


def _probe(build: Any) -> list[str] | None:
    try:
        build()
    except Exception as error:  # noqa: BLE001 (any check that names its allowed values will do)
        return _allowed_from(str(error).splitlines()[0] if str(error) else "")
    return None


def _option_rows(fields: list[tuple[str, Any, Any]], probe: Any) -> dict[str, dict[str, Any]]:
    rows = {}
    for name, annotation, default in fields:
        row: dict[str, Any] = {"default": _jsonable(default), "type": _type_name(annotation, default)}
        if isinstance(default, str) or "str" in row["type"]:
            allowed = probe(name)
            if allowed:
                row["allowed"] = allowed
        rows[name] = row
    return rows


def _one_line(description: str) -> str:
    """A registry description as one short line (no reST markup, no pointer to the module docstring)."""
    text = description.replace("``", "").split(" (see the module docstring")[0].strip()
    return text if len(text) <= 100 else text[:97].rstrip() + "..."


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def build_catalog(compatibility: bool = True) -> dict[str, Any]:
    """The catalog from the live registries (imports torch and every agent; builds runs for ``runs_on``)."""
    import torch

    from emphatic_rl.agents import AGENT_REGISTRY, load_agents
    from emphatic_rl.config import TrainConfig
    from emphatic_rl.envs import ENV_REGISTRY
    from emphatic_rl.envs.base import DiscreteSpec
    from emphatic_rl.studies import find_studies

    torch.set_num_threads(1)
    load_agents()
    import gymnasium as gym

    gym_ids: dict[str, list[str]] = {}
    for gym_id, spec in sorted(gym.registry.items()):
        if gym_id.startswith("emphatic_rl/") and isinstance(spec.kwargs, dict) and "env_name" in spec.kwargs:
            gym_ids.setdefault(spec.kwargs["env_name"], []).append(gym_id)

    agents: dict[str, Any] = {}
    for name in sorted(AGENT_REGISTRY):
        entry = AGENT_REGISTRY[name]
        defaults = entry.default_options()
        fields = [(f.name, f.type, defaults[f.name]) for f in dataclasses.fields(entry.options_class)]

        def agent_probe(option: str, entry: Any = entry) -> list[str] | None:
            return _probe(lambda: entry.options_class(**{option: _PROBE}))

        agents[name] = {"description": _one_line(entry.description), "options": _option_rows(fields, agent_probe)}

    envs: dict[str, Any] = {}
    for name in sorted(ENV_REGISTRY):
        env_entry = ENV_REGISTRY[name]
        signature = inspect.signature(env_entry.factory)
        defaults = env_entry.options()
        fields = [(key, signature.parameters[key].annotation, defaults[key]) for key in defaults]

        def env_probe(option: str, entry: Any = env_entry) -> list[str] | None:
            return _probe(lambda: entry.factory(num_envs=1, device="cpu", **{option: _PROBE}))

        probe_env = env_entry.factory(num_envs=1, device="cpu")
        action = probe_env.action_spec
        observation = probe_env.observation_spec
        envs[name] = {
            "description": _one_line(env_entry.description),
            "options": _option_rows(fields, env_probe),
            "actions": f"discrete({action.n})" if isinstance(action, DiscreteSpec) else f"box{tuple(action.shape)}",
            "observations": f"{str(observation.dtype).replace('torch.', '')}{list(observation.shape)}",
            "gymnasium_ids": gym_ids.get(name, []),
        }

    if compatibility:
        from emphatic_rl.train import build_run

        def builds(agent: str, env: str, **agent_options: Any) -> None:
            config = TrainConfig(agent=agent, env=env, steps=10, eval_episodes=1, progress=False)
            config.agent_options = dict(agent_options)
            build_run(config)

        for agent in agents:
            runs_on, not_on = [], {}
            for env in envs:
                try:
                    builds(agent, env)
                except Exception as error:  # noqa: BLE001 (the reason is recorded, whatever it is)
                    not_on[env] = _first_line(error)
                else:
                    runs_on.append(env)
            agents[agent]["runs_on"] = runs_on
            agents[agent]["not_on"] = not_on
            for option, row in agents[agent]["options"].items():  # checked when the agent is built
                if (isinstance(row["default"], str) or "str" in row["type"]) and "allowed" not in row and runs_on:
                    allowed = _probe(lambda a=agent, e=runs_on[0], o=option: builds(a, e, **{o: _PROBE}))
                    if allowed:
                        row["allowed"] = allowed
        for env in envs:
            envs[env]["agents"] = [agent for agent in agents if env in agents[agent]["runs_on"]]

    studies = {
        info.name: {"kind": info.kind, "description": info.description, "command": info.command, "file": info.path.name}
        for info in find_studies()
    }
    return {"agents": agents, "envs": envs, "gym": _GYM_NOTE, "studies": studies}


def load_catalog() -> dict[str, Any]:
    """The shipped ``catalog.json`` (agents and envs, plus any registered since in this process: see
    :func:`merge_live_registrations`; studies are read from the shipped TOMLs)."""
    from emphatic_rl.studies import find_studies

    catalog = merge_live_registrations(json.loads(resources.files("emphatic_rl").joinpath(CATALOG_FILE).read_text()))
    catalog["studies"] = {
        info.name: {"kind": info.kind, "description": info.description, "command": info.command, "file": info.path.name}
        for info in find_studies()
    }
    return catalog


def merge_live_registrations(catalog: dict[str, Any]) -> dict[str, Any]:
    """Add agents and envs registered in this process but not in the shipped file (plugins imported before
    ``list``), with their descriptions and options; their compatibility is not probed. Imports nothing."""
    agents = sys.modules.get("emphatic_rl.agents.registry")
    if agents is not None:
        for name, entry in agents.AGENT_REGISTRY.items():
            if name not in catalog["agents"]:
                defaults = entry.default_options()
                fields = [(f.name, f.type, defaults[f.name]) for f in dataclasses.fields(entry.options_class)]
                catalog["agents"][name] = {
                    "description": _one_line(entry.description),
                    "options": _option_rows(fields, lambda option: None),
                }
    envs = sys.modules.get("emphatic_rl.envs.registry")
    if envs is not None:
        for name, entry in envs.ENV_REGISTRY.items():
            if name not in catalog["envs"]:
                defaults = entry.options()
                parameters = inspect.signature(entry.factory).parameters
                fields = [(key, parameters[key].annotation, defaults[key]) for key in defaults]
                catalog["envs"][name] = {
                    "description": _one_line(entry.description),
                    "options": _option_rows(fields, lambda option: None),
                    "actions": "?",
                    "observations": "?",
                    "gymnasium_ids": [],
                }
    return catalog


def serialise_catalog(catalog: dict[str, Any]) -> str:
    shipped = {key: value for key, value in catalog.items() if key != "studies"}
    return json.dumps(shipped, indent=1, sort_keys=True) + "\n"
