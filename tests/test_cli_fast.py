"""The command line's front door: a light `--help`, `list`, the shipped studies, and the wheel that carries them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from emphatic_rl.catalog import build_catalog, load_catalog
from emphatic_rl.cli import COMMANDS, main
from emphatic_rl.studies import STUDY_DIR, find_studies, resolve_study

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "gymnasium")


def _run_python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["list", "ace"], ["list", "studies"], ["train", "--help"]])
def test_help_and_list_import_no_torch_numpy_or_gymnasium(argv):
    code = (
        "import sys, contextlib, io\n"
        "from emphatic_rl.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        f"        code = main({argv!r})\n"
        "    except SystemExit as stop:\n"
        "        code = stop.code\n"
        f"print(code, out.getvalue().count(chr(10)) > 3, [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    completed = _run_python(code)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split("\n")[0] in ("0 True []", "None True []")


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in COMMANDS)


def test_import_emphatic_rl_then_gymnasium_registers_the_ids():
    completed = _run_python(
        "import sys, emphatic_rl\n"
        "assert 'torch' not in sys.modules\n"
        "import gymnasium\n"
        "env = gymnasium.make('emphatic_rl/CartPole-v1')\n"
        "print(env.reset(seed=0)[0].shape, emphatic_rl.envs.make_env('cartpole').num_envs)\n"
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "(4,) 1"


# ------------------------------------------------------------------------------------------------------ list
def test_list_shows_sections_descriptions_and_compatibility(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "Agents (" in text and "Envs (" in text and "Studies shipped" in text
    assert "  ace                      ACE: linear actor-critic" in text
    line = next(line for line in text.splitlines() if line.startswith("  pendulum "))
    following = text.splitlines()[text.splitlines().index(line) + 1]
    assert "agents: dpg, gaussian-ace, gaussian-offpac" in following
    assert "gym:<id>" in text and "j23-mountain-car" in text


def test_list_one_agent_has_every_option_allowed_values_and_envs(capsys):
    assert main(["list", "ace"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("agent ace: ACE")
    assert "runs on: " in text and "cartpole" in text.split("does not run on")[0]
    assert "pendulum: agent 'ace' needs a discrete action space" in text
    assert "critic = 'tdrc'  (str)  [td | tdc | gtd | tdrc | etd | gq | oracle]" in text
    catalog = load_catalog()
    assert all(f"      {key} = " in text for key in catalog["agents"]["ace"]["options"])


def test_list_one_env_and_one_study(capsys):
    assert main(["list", "acrobot"]) == 0
    text = capsys.readouterr().out
    assert "Gymnasium ids: emphatic_rl/Acrobot-v1" in text and "book_or_nips = 'book'  (str)  [book | nips]" in text
    assert main(["list", "j23-mountain-car"]) == 0
    assert "run: emphatic-rl sweep j23-mountain-car" in capsys.readouterr().out


def test_list_filter_and_sections(capsys):
    assert main(["list", "envs", "--filter", "minatar"]) == 0
    text = capsys.readouterr().out
    names = [line.split()[0] for line in text.splitlines()[1:] if not line.startswith("    ")]
    minatar = [f"minatar-{g}" for g in ("asterix", "breakout", "freeway", "seaquest", "space-invaders")]
    assert names[:5] == minatar and set(names[5:]) <= {"gym:<id>"}  # its example id is a MinAtar one
    assert main(["list", "studies", "-f", "dyna"]) == 0
    assert "j23" not in capsys.readouterr().out


def test_list_unknown_name_is_one_line_exit_2(capsys):
    assert main(["list", "no-such-thing"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown name 'no-such-thing' for list; allowed: agents, envs, studies" in err


def test_shipped_catalog_matches_the_registries():
    """Names, descriptions, options, defaults, types, allowed values, spaces and Gymnasium ids; the slow test
    below checks the agent-env compatibility too (it builds every pair)."""
    live = build_catalog(compatibility=False)
    shipped = load_catalog()
    compat = {"runs_on", "not_on", "agents"}
    for section in ("agents", "envs"):
        assert sorted(shipped[section]) == sorted(live[section]), "run: python -m emphatic_rl.cli.catalog"
        for name, entry in live[section].items():
            stored = {k: v for k, v in shipped[section][name].items() if k not in compat}
            for key, row in entry["options"].items():  # values checked only when the agent is built: slow test
                if "allowed" not in row and section == "agents":
                    stored["options"][key].pop("allowed", None)
            assert json.loads(json.dumps(entry)) == stored, f"{name}: run python -m emphatic_rl.cli.catalog"


def test_list_shows_agents_registered_in_the_process(capsys):
    """A plugin registered before `list` runs (e.g. imported by the user) is listed with its options."""
    from dataclasses import dataclass

    from emphatic_rl.agents.registry import AGENT_REGISTRY, register_agent

    @dataclass
    class PluginOptions:
        mode: str = "fast"

    register_agent("plugin-agent-for-list", PluginOptions, "a plugin agent")(lambda context, options: None)
    try:
        assert main(["list", "plugin-agent-for-list"]) == 0
        text = capsys.readouterr().out
        assert "agent plugin-agent-for-list: a plugin agent" in text and "mode = 'fast'  (str)" in text
    finally:
        AGENT_REGISTRY.pop("plugin-agent-for-list")


@pytest.mark.slow
def test_shipped_catalog_is_up_to_date_with_compatibility():
    completed = subprocess.run(
        [sys.executable, "-m", "emphatic_rl.catalog", "--check"], capture_output=True, text=True, timeout=1800
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


# ------------------------------------------------------------------------------------------------------ studies
def test_every_experiments_toml_is_shipped_with_the_package():
    originals = {path.name: path.read_bytes() for path in (ROOT / "experiments").glob("*.toml")}
    shipped = {path.name: path.read_bytes() for path in STUDY_DIR.glob("*.toml")}
    assert originals == shipped, "link each new experiments/*.toml into emphatic_rl/studies/"


def test_studies_resolve_by_name_and_kind():
    assert resolve_study("j23-mountain-car").name == "j23_mountain_car.toml"
    assert resolve_study("n18_three_state.toml", kind="sweep").name == "n18_three_state.toml"
    assert resolve_study("dpg-pendulum", kind="train").name == "dpg_pendulum.toml"
    assert resolve_study("dyna-gridworld", kind="dyna").name == "dyna_gridworld.toml"
    with pytest.raises(ValueError, match="neither a file nor a shipped sweep study; shipped: j23-mountain-car"):
        resolve_study("dpg-pendulum", kind="sweep")
    kinds = {info.name: info.kind for info in find_studies()}
    assert kinds["j23-puddle-world"] == "sweep" and kinds["dyna-gridworld"] == "dyna"
    for info in find_studies("sweep"):  # the study's own name is the name it is run by
        assert tomllib.loads(info.path.read_text()).get("name", info.name) == info.name


def test_sweep_by_name_dry_run_and_unknown_name(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "n18-three-state", "--out", str(out), "--dry-run", "--runs", "1", "--calibrate", "0.01"]) == 0
    assert "plan valid" in capsys.readouterr().out and not out.exists()
    assert main(["sweep", "no-such-study", "--dry-run"]) == 2
    assert "'no-such-study' is neither a file nor a shipped sweep study" in capsys.readouterr().err


def test_sweep_shows_progress_by_default_and_can_turn_it_off():
    from emphatic_rl.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["sweep", "x"]).progress is True
    assert parser.parse_args(["sweep", "x", "--no-progress"]).progress is False
    assert parser.parse_args(["train"]).no_progress is False


# ------------------------------------------------------------------------------------------------------ the wheel
def _build_wheel(folder: Path) -> Path:
    """``pip wheel . --no-deps`` on a copy of the repository (a build in place would leave ``build/`` behind)."""
    source = folder / "source"
    skip = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "runs", "results")
    shutil.copytree(ROOT, source, symlinks=True, ignore=skip)
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-w", str(folder), "-q"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    return next(folder.glob("emphatic_rl-*.whl"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_ships_the_studies_and_the_catalog(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for path in STUDY_DIR.glob("*.toml"):
            member = f"emphatic_rl/studies/{path.name}"
            assert member in names
            assert archive.read(member) == path.read_bytes()  # the file itself, not a link
        assert json.loads(archive.read("emphatic_rl/catalog.json"))["agents"]


@pytest.mark.slow
def test_sweep_by_name_and_report_from_the_wheel_outside_the_clone(wheel, tmp_path):
    """A fresh venv outside the clone: torch (CPU) and the wheel with its dependencies, then a shipped study by
    name and its report, run from an empty folder."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q"]
    for command in (pip + ["torch==2.13.0"], pip + [str(wheel)]):
        completed = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        assert completed.returncode == 0, completed.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run(
        [str(python), "-c", "import emphatic_rl; print(emphatic_rl.__file__)"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=120,
    )
    assert str(env_dir) in where.stdout and str(ROOT) not in where.stdout
    cli = str(env_dir / "bin" / "emphatic-rl")
    sweep = subprocess.run(
        [cli, "sweep", "n18-three-state", "--runs", "2", "--set", "steps=200", "--out", "sweep", "--no-progress"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=1200,
    )
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    report = subprocess.run(
        [cli, "report", "sweep", "--out", "report"], capture_output=True, text=True, cwd=work, env=env, timeout=600
    )
    assert report.returncode == 0, report.stderr[-2000:]
    text = (work / "report" / "report.md").read_text()
    assert "ace" in text and (work / "report" / "summary.csv").is_file()
