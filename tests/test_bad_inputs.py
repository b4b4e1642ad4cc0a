"""Bad input gives one clear line naming the key, the value and what is allowed, exit code 2, before any folder.

One test per class: wrong-typed options (``train`` and ``sweep``), a broken saved ``config.json``, a population too
large for memory, a read-only run folder on resume, ``gradients`` inputs, ``--resume --steps`` below the steps done.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from emphatic_rl import train as train_module
from emphatic_rl.cli import main

SMALL = ["--steps", "40", "--no-progress", "--set", "eval_every=20", "--set", "eval_episodes=2",
         "--set", "checkpoint_every=20", "--set", "agent.learning_starts=10", "--set", "agent.batch_size=8"]


def _cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line(code, err, *fragments):
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("emphatic-rl"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# ---------------------------------------------------------------------------------------------- typed options
TYPED_CASES = [
    ("dqn", "cartpole", "agent.hidden=64", ["agent.hidden must be", "got 64", "a list of integers"]),
    ("dqn", "cartpole", "agent.hidden=[64, \"wide\"]", ["agent.hidden", "a list of integers"]),
    ("dqn", "cartpole", "agent.gamma=abc", ["agent.gamma must be", "got \"abc\"", "a number"]),
    ("dqn", "cartpole", "agent.batch_size=12.5", ["agent.batch_size must be", "got 12.5", "an integer"]),
    ("dqn", "cartpole", "agent.buffer_size=true", ["agent.buffer_size must be", "got true", "an integer"]),
    ("dqn", "cartpole", "agent.learning_rate=inf", ["agent.learning_rate must be", "got inf", "finite"]),
    ("dqn", "cartpole", "agent.learning_rate=nan", ["agent.learning_rate must be", "got nan", "finite"]),
    ("dqn", "cartpole", "agent.learning_rate=[0.1, 0.2]",
     ["agent.learning_rate must be", "got [0.1, 0.2]", "a number"]),
    ("dqn", "cartpole", "agent.double_q=1", ["agent.double_q must be", "got 1", "true or false"]),
    ("deep-ace", "cartpole", "agent.actor_learning_rate=inf",
     ["agent.actor_learning_rate must be", "got inf", "finite"]),
    ("dpg", "pendulum", "agent.actor_learning_rate=inf", ["agent.actor_learning_rate must be", "got inf", "finite"]),
    ("dpg", "pendulum", "agent.hidden=64", ["agent.hidden must be", "got 64", "a list of integers"]),
    ("gaussian-ace", "pendulum", "agent.batch_size=true", ["agent.batch_size must be", "got true", "an integer"]),
    ("dqn", "cartpole", "env.max_episode_steps=12.5", ["env.max_episode_steps must be", "got 12.5", "an integer"]),
    ("dqn", "cartpole", "steps=[1, 2]", ["steps must be an integer", "[1, 2]"]),
    ("dqn", "cartpole", "seed=99999999999999999999", ["seed must be an integer in [0, 4294967295]"]),
    ("dqn", "cartpole", "num_envs=2.0", ["num_envs must be an integer"]),
    ("dqn", "cartpole", "device=3", ["device must be a string"]),
    ("dqn", "cartpole", "agent_options=[1]", ["agent_options must be a table"]),
]


@pytest.mark.parametrize("agent, env, setting, fragments", TYPED_CASES, ids=[c[2] for c in TYPED_CASES])
def test_a_wrong_typed_option_is_one_line_before_any_folder(agent, env, setting, fragments, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = _cli(["train", "--agent", agent, "--env", env, "--out", str(out), *SMALL, "--set", setting], capsys)
    _assert_one_line(code, err, *fragments)
    assert not out.exists()


def test_a_huge_seed_flag_is_one_line(tmp_path, capsys):
    code, _, err = _cli(["train", "--agent", "dqn", "--seed", str(2**64), "--out", str(tmp_path / "r"), *SMALL],
                        capsys)
    _assert_one_line(code, err, "seed must be an integer in [0, 4294967295]")
    assert not (tmp_path / "r").exists()


def test_the_largest_seed_runs(tmp_path, capsys):
    args = ["train", "--agent", "dqn", "--seed", str(2**32 - 1), "--out", str(tmp_path / "r"), *SMALL]
    assert _cli(args, capsys)[0] == 0


STUDY = """
name = "typed"
runs = 2
[base]
env = "counterexample-three-state"
steps = 20
eval_every = 10
eval_episodes = 2
progress = false
[base.env_options]
observation = "state"
[base.agent_options]
critic = "oracle"
{extra}
[grid]
alpha_actor = [0.1]
[[variants]]
name = "{name}"
agent = "ace"
"""


@pytest.mark.parametrize(
    "extra, name, set_args, fragments",
    [
        ("gamma = \"abc\"", "ace", [], ["agent.gamma must be", "got \"abc\"", "a number"]),
        ("", "ace", ["--set", "agent.num_tilings=2.5"], ["agent.num_tilings must be", "got 2.5", "an integer"]),
        ("", "ace", ["--set", "steps=12.5"], ["steps must be an integer"]),
        ("", "..", [], ["variants[0].name", "'..'"]),
        ("", ".", [], ["variants[0].name", "'.'"]),
        ("", "a/b", [], ["variants[0].name", "'a/b'"]),
    ],
    ids=["toml-gamma", "set-num-tilings", "set-steps", "name-dotdot", "name-dot", "name-slash"],
)
def test_a_bad_study_is_one_line_before_any_folder(extra, name, set_args, fragments, tmp_path, capsys):
    study = tmp_path / "study.toml"
    study.write_text(STUDY.format(extra=extra, name=name))
    out = tmp_path / "out"
    code, _, err = _cli(["sweep", str(study), "--out", str(out), *set_args], capsys)
    _assert_one_line(code, err, *fragments)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- saved config.json
@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--agent", "dqn", "--env", "cartpole", "--out", str(out), *SMALL]) == 0
    return out


def _copy(run_folder, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run_folder, target)
    return target


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (lambda d: {**d, "bogus": 1}, ["config.json", "unknown config key 'bogus'"]),
        (lambda d: {**d, "steps": "forty"}, ["config.json", "steps must be an integer", "'forty'"]),
        (lambda d: {**d, "agent_options": {**d["agent_options"], "hidden": 64}},
         ["config.json", "agent.hidden must be", "got 64"]),
        (lambda d: {**d, "agent_options": [1]}, ["config.json", "agent_options must be a table"]),
        (lambda d: [d], ["config.json", "must hold a table"]),
        (lambda d: {**d, "population_size": 2}, ["checkpoint.pt", "does not match the run's config"]),
        (lambda d: {**d, "agent_options": {**d["agent_options"], "hidden": [16, 16]}},
         ["checkpoint.pt", "does not match the run's config"]),
        (None, ["config.json", "is not valid JSON"]),
    ],
    ids=["extra-key", "wrong-type", "wrong-option-type", "options-not-table", "not-a-table", "changed-population",
         "changed-shape", "invalid-json"],
)
def test_a_broken_config_json_is_one_line_naming_the_file(run_folder, tmp_path, capsys, edit, fragments):
    run = _copy(run_folder, tmp_path)
    path = run / "config.json"
    if edit is None:
        path.write_text(path.read_text()[:-10])
    else:
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    before = sorted(p.name for p in run.iterdir())
    code, _, err = _cli(["train", "--resume", str(run), "--steps", "60", "--no-progress"], capsys)
    _assert_one_line(code, err, *fragments)
    assert sorted(p.name for p in run.iterdir()) == before


def test_resume_steps_below_the_steps_done_is_one_line(run_folder, tmp_path, capsys):
    run = _copy(run_folder, tmp_path)
    code, _, err = _cli(["train", "--resume", str(run), "--steps", "20", "--no-progress"], capsys)
    _assert_one_line(code, err, "--steps 20 is below the 40 steps")


def test_resume_with_more_steps_records_them_in_config_json(run_folder, tmp_path, capsys):
    run = _copy(run_folder, tmp_path)
    assert _cli(["train", "--resume", str(run), "--steps", "50", "--no-progress"], capsys)[0] == 0
    assert json.loads((run / "config.json").read_text())["steps"] == 50


# ---------------------------------------------------------------------------------------------- folders and memory
def test_resume_in_a_read_only_folder_is_one_line(run_folder, tmp_path, capsys, monkeypatch):
    run = _copy(run_folder, tmp_path)
    real_write_bytes = Path.write_bytes

    def read_only(self, data):
        if self.parent == run:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    code, _, err = _cli(["train", "--resume", str(run), "--steps", "60", "--no-progress"], capsys)
    _assert_one_line(code, err, str(run), "is read-only")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_resume_in_a_chmod_read_only_folder_is_one_line(run_folder, tmp_path, capsys):
    run = _copy(run_folder, tmp_path)
    run.chmod(0o555)
    try:
        code, _, err = _cli(["train", "--resume", str(run), "--steps", "60", "--no-progress"], capsys)
    finally:
        run.chmod(0o755)
    _assert_one_line(code, err, str(run), "is read-only")


def test_a_population_too_large_for_memory_is_refused_before_allocation(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_module, "available_memory_bytes", lambda device: 2**20)
    allocated = []
    original = train_module.TrajectoryBuffer
    monkeypatch.setattr(train_module, "TrajectoryBuffer", lambda *a, **k: allocated.append(1) or original(*a, **k))
    code, _, err = _cli(["train", "--agent", "dqn", "--env", "cartpole", "--population", "64",
                         "--out", str(tmp_path / "r"), *SMALL], capsys)
    _assert_one_line(code, err, "the replay buffer would need about", "population_size 64", "GiB free")
    assert not allocated and not (tmp_path / "r").exists()


def test_an_allocator_failure_while_building_is_one_line(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(train_module, "make_agent", refuse)
    code, _, err = _cli(["train", "--agent", "dqn", "--env", "cartpole", "--population", "100000000",
                         "--out", str(tmp_path / "r"), *SMALL], capsys)
    _assert_one_line(code, err, "population_size 100000000", "does not fit in the memory")


# ---------------------------------------------------------------------------------------------- gradients
def _gradients(args, capsys):
    code = main(["gradients", "--env", "counterexample-three-state", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("eta", ["2", "-0.5", "nan", "inf"])
def test_gradients_eta_outside_the_unit_interval_is_one_line(eta, capsys):
    code, err = _gradients(["--eta", eta], capsys)
    assert code == 2 and err.count("\n") == 1 and "--eta must be in [0, 1]" in err, err


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("theta.json", b"[[1, 2], [3", "does not hold an array of numbers"),
        ("theta.json", b'[["a"]]', "does not hold an array of numbers"),
        ("theta.json", b"[[1, 2, 3]]", "theta has shape"),
        ("theta.pt", b"not a torch file at all", "is garbled or not a checkpoint"),
        ("theta.pt", b"", "is empty"),
        ("theta.npy", b"\x93NUMPY garbage", "does not hold an array of numbers"),
        ("theta.txt", b"1 2 3 4", "must end in .json, .pt or .npy"),
    ],
)
def test_gradients_theta_bad_file_is_one_line(name, content, fragment, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(content)
    code, err = _gradients(["--theta", str(path)], capsys)
    assert code == 2 and err.count("\n") == 1 and fragment in err, err


def test_gradients_theta_npy_with_objects_is_refused(tmp_path, capsys):
    path = tmp_path / "theta.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, err = _gradients(["--theta", str(path)], capsys)
    assert code == 2 and err.count("\n") == 1 and "does not hold an array of numbers" in err, err


def test_gradients_theta_good_files_load(tmp_path, capsys):
    torch.save(torch.zeros(2, 2, dtype=torch.float64), tmp_path / "theta.pt")
    assert _gradients(["--theta", str(tmp_path / "theta.pt")], capsys)[0] == 0
