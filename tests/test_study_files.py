"""Every sweep study TOML under ``experiments/`` plans and builds as committed (reduced), and plans with ``--full``."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from emphatic_rl.studies.sweep import load_study, plan_study, validate_study

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(
    path for path in (ROOT / "experiments").rglob("*.toml") if "variants" in tomllib.loads(path.read_text())
)


def test_the_j23_and_n18_studies_are_found():
    expected = {"j23_mountain_car.toml", "j23_puddle_world.toml", "j23_virtual_office.toml", "n18_three_state.toml"}
    assert expected <= {path.name for path in STUDIES}


@pytest.mark.parametrize("path", STUDIES, ids=lambda path: str(path.relative_to(ROOT)))
def test_study_builds_reduced_and_plans_full(path):
    validate_study(plan_study(load_study(path)))  # builds every variant's env, agent and behaviour: no training
    full = plan_study(load_study(path, full=True))
    assert full and all(chunk.config.population_size >= 1 for chunk in full)
