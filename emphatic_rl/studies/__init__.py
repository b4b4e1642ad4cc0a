"""Studies: many runs and their reports, on top of the training loop, and the studies shipped with the package.

Modules: :mod:`.sweep` and :mod:`.sweep_ray` (variants x grid x runs as populations, locally or on Ray),
:mod:`.report` (best settings, curves with CIs, ``report.md``), :mod:`.dyna` and :mod:`.dyna_fa` (the Dyna study
programs). This package's own module (imported by ``emphatic-rl list``) finds the shipped studies by name.

The shipped studies are runnable by name from any folder.

Every TOML of the repository's ``experiments/`` folder is installed here (in a clone each file of this folder is a
link to its ``experiments/`` original, in a wheel a copy), under its file name; the study's name is the file name
without ``.toml``, with ``-`` for ``_``::

    emphatic-rl list studies
    emphatic-rl sweep j23-mountain-car --out runs/sweeps/j23-mountain-car      # = experiments/j23_mountain_car.toml
    emphatic-rl train --config dpg-pendulum                                    # a train config
    emphatic-rl dyna dyna-gridworld                                            # the Dyna study program

Four kinds: ``sweep`` (a study of variants x grid x runs, for ``emphatic-rl sweep``), ``train`` (one run's
config, for ``emphatic-rl train --config``), ``dyna`` (for ``emphatic-rl dyna``) and ``dyna-fa`` (for
``emphatic-rl dyna-fa``).

This module imports nothing heavy (``tomllib`` only).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["StudyInfo", "STUDY_DIR", "find_studies", "resolve_study", "study_kind"]

#: the folder of the shipped study TOMLs
STUDY_DIR = Path(__file__).resolve().parent

_RUN_WITH = {
    "sweep": "emphatic-rl sweep {name}",
    "train": "emphatic-rl train --config {name}",
    "dyna": "emphatic-rl dyna {name}",
    "dyna-fa": "emphatic-rl dyna-fa {name}",
}


@dataclass(frozen=True)
class StudyInfo:
    """One shipped study: ``name`` (``j23-mountain-car``), ``path``, ``kind`` and the first line of its header."""

    name: str
    path: Path
    kind: str
    description: str

    @property
    def command(self) -> str:
        """How to run it."""
        return _RUN_WITH[self.kind].format(name=self.name)


def study_kind(data: dict) -> str:
    """``"sweep"``, ``"dyna"``, ``"dyna-fa"`` or ``"train"`` for a parsed study TOML."""
    if "variants" in data:
        return "sweep"
    if "study" in data:
        return "dyna-fa" if "doses" in data["study"] else "dyna"
    return "train"


def _description(text: str) -> str:
    """The header comment's first sentence (up to 100 characters)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        stripped = line.lstrip("#").strip()
        if not stripped or stripped.startswith(("emphatic-rl ", "python ")):
            break
        lines.append(stripped)
    header = " ".join(lines)
    sentence = re.split(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\.\s+(?=[A-Z])", header)[0].rstrip(".") if header else ""
    return sentence if len(sentence) <= 100 else sentence[:97].rstrip() + "..."


def _name_of(path: Path) -> str:
    return path.stem.replace("_", "-")


def find_studies(kind: str | None = None) -> list[StudyInfo]:
    """Every shipped study (of one ``kind`` if given), sorted by name."""
    studies = []
    for path in sorted(STUDY_DIR.glob("*.toml")):
        text = path.read_text()
        info = StudyInfo(_name_of(path), path, study_kind(tomllib.loads(text)), _description(text))
        if kind is None or info.kind == kind:
            studies.append(info)
    return studies


def resolve_study(name_or_path: str | Path, kind: str | None = None) -> Path:
    """The TOML file for ``name_or_path``: an existing file as given, else a shipped study's name.

    Names match with ``-`` or ``_`` and with or without ``.toml`` (``j23-mountain-car``, ``j23_mountain_car.toml``).

    Raises:
        ValueError: neither a file nor a shipped study (of ``kind``), naming the shipped ones.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    wanted = path.name.removesuffix(".toml").replace("_", "-")
    studies = find_studies(kind)
    for info in studies:
        if info.name == wanted and (str(name_or_path) == path.name):
            return info.path
    what = f"{kind} study" if kind else "study"
    raise ValueError(
        f"{str(name_or_path)!r} is neither a file nor a shipped {what}; shipped: "
        f"{', '.join(info.name for info in studies)} (see `emphatic-rl list studies`)"
    )


def parse_set_overrides(items: list[str]) -> dict:
    """``--set KEY=VALUE`` items of a study command as ``{key: value}``, each value parsed as TOML (``3``,
    ``[0, 0.5]``, ``"text"``). Raises ``ValueError`` for an item without ``=`` and ``tomllib.TOMLDecodeError`` for a
    value that is not TOML."""
    overrides = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = tomllib.loads(f"v = {value}")["v"]
    return overrides
