"""Interrupted runs: Ctrl-C / SIGTERM save a checkpoint and exit cleanly; kill -9 at random moments (during
checkpoint writes too) loses nothing beyond the last checkpoint, and the resumed run ends bit-identical to an
uninterrupted one; a run killed before its first checkpoint can be rerun or resumed.

The killed runs are forked from the test process (no import cost) or, for Ctrl-C, started as the real command.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from emphatic_rl import checkpoints
from emphatic_rl.checkpoints import load_checkpoint
from emphatic_rl.cli import main
from emphatic_rl.logging import read_metrics

STEPS = 240
ARGS = ["--agent", "dqn", "--env", "cartpole", "--no-progress", "--num-envs", "2", "--set", "eval_every=80",
        "--set", "eval_episodes=2", "--set", "eval_max_steps=50", "--set", "log_every=10",
        "--set", "checkpoint_every=40", "--set", "agent.learning_starts=20", "--set", "agent.batch_size=8",
        "--set", "agent.target_update_every=30", "--set", "agent.hidden=[16]"]


def _rows(path: Path) -> list[tuple]:
    return [row for row in read_metrics(path) if not row[1].startswith("time/")]


def _assert_same_run(a: Path, b: Path) -> None:
    """Same metrics rows (wall-clock rows aside) and the same final agent, buffer, env and loop state."""
    assert _rows(a / "metrics.csv") == _rows(b / "metrics.csv")
    first, second = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert first["step"] == second["step"]

    def compare(x, y, path):
        if isinstance(x, dict):
            assert set(x) == set(y), path
            for key in x:
                compare(x[key], y[key], f"{path}/{key}")
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), path
        elif isinstance(x, (list, tuple)):
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                compare(u, v, f"{path}/{i}")
        else:
            assert x == y, path

    for key in ("agent", "buffer", "env", "loop_generator", "episode_stats", "obs", "diverged", "last_eval"):
        compare(first[key], second[key], key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", "--out", str(out), "--steps", str(STEPS), *ARGS]) == 0
    return out


def _fork(args: list[str], log: Path, before=None) -> int:
    """Run ``emphatic-rl ARGS`` in a forked child (stdout and stderr to ``log``); returns its pid."""
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        code = 70
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)  # not pytest's
            if before is not None:
                before()
            code = main(args)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the run never reached the expected point")
        time.sleep(0.005)


def _logged_step(out: Path) -> int:
    try:
        rows = read_metrics(out / "metrics.csv")
    except (OSError, ValueError, IndexError):
        return 0
    return max((row[0] for row in rows), default=0)


def _kill_and_reap(pid: int) -> int:
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def _slow_checkpoint_renames(marker: Path):
    """In the child: every checkpoint write stops for a while after its data is written and fsynced, before the
    rename, and says so through ``marker`` (so that the parent kills it in the middle of the write)."""

    def install():
        real_replace = checkpoints.os.replace

        def slow_replace(src, dst):
            if str(dst).endswith("checkpoint.pt"):
                marker.write_text(str(dst))
                time.sleep(30)
            return real_replace(src, dst)

        checkpoints.os.replace = slow_replace

    return install


def _killed_during_write(out: Path, tmp_path: Path, resume: bool, steps: int = STEPS) -> None:
    marker = tmp_path / f"writing-{time.monotonic_ns()}"
    args = ["train", "--resume", str(out), "--no-progress"] if resume else \
        ["train", "--out", str(out), "--steps", str(steps), *ARGS]
    pid = _fork(args, tmp_path / "child.log", before=_slow_checkpoint_renames(marker))
    _wait_for(marker.exists)
    _kill_and_reap(pid)
    assert list(out.glob(".checkpoint.pt.*.tmp")), "the kill came before the temporary file was complete"


def _killed_at_random(out: Path, tmp_path: Path, rng: random.Random, resume: bool) -> None:
    args = ["train", "--resume", str(out), "--no-progress"] if resume else \
        ["train", "--out", str(out), "--steps", str(STEPS), *ARGS]
    start = _logged_step(out)
    pid = _fork(args, tmp_path / "child.log")
    target = start + rng.randrange(10, 80)
    _wait_for(lambda: _logged_step(out) >= min(target, STEPS - 10) or os.waitpid(pid, os.WNOHANG) != (0, 0))
    time.sleep(rng.uniform(0.0, 0.02))
    try:
        _kill_and_reap(pid)
    except (ProcessLookupError, ChildProcessError):
        pass


def test_kill_9_at_random_moments_and_during_checkpoint_writes_resumes_bit_identically(reference, tmp_path, capsys):
    rng = random.Random(15)
    out = tmp_path / "drilled"
    _killed_during_write(out, tmp_path, resume=False)  # the first checkpoint never lands: no checkpoint at all
    assert (out / "config.json").is_file() and not (out / "checkpoint.pt").exists()
    _killed_at_random(out, tmp_path, rng, resume=True)  # "--resume" of a run without a checkpoint starts over
    _killed_during_write(out, tmp_path, resume=True)
    _killed_at_random(out, tmp_path, rng, resume=True)
    _killed_during_write(out, tmp_path, resume=True)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert not list(out.glob(".*.tmp"))
    _assert_same_run(reference, out)  # every row there: 0 lost beyond the last checkpoint


def test_a_run_killed_before_its_first_checkpoint_can_be_rerun_in_place(reference, tmp_path, capsys):
    out = tmp_path / "rerun"
    _killed_during_write(out, tmp_path, resume=False)
    assert (out / "metrics.csv").is_file() and not (out / "checkpoint.pt").exists()
    assert (out / "tensorboard").is_dir()
    assert main(["train", "--out", str(out), "--steps", str(STEPS), *ARGS]) == 0  # the same command again
    capsys.readouterr()
    _assert_same_run(reference, out)
    events = list((out / "tensorboard").glob("events.*"))
    assert len(events) == 1  # the killed attempt's events are gone: no duplicated points


def test_sigterm_writes_a_checkpoint_and_resumes_bit_identically(reference, tmp_path, capsys):
    out = tmp_path / "terminated"
    pid = _fork(["train", "--out", str(out), "--steps", str(STEPS), *ARGS], tmp_path / "child.log")
    _wait_for(lambda: _logged_step(out) >= 70)
    os.kill(pid, signal.SIGTERM)
    status = os.waitpid(pid, 0)[1]
    log = (tmp_path / "child.log").read_text()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 143, log
    assert "stopped by SIGTERM at step" in log and "Traceback" not in log
    step = load_checkpoint(out / "checkpoint.pt")["step"]
    assert f"stopped by SIGTERM at step {step};" in log and 70 <= step < STEPS
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    _assert_same_run(reference, out)


def test_ctrl_c_on_the_command_saves_a_checkpoint_and_exits_without_a_traceback(tmp_path):
    out = tmp_path / "interrupted"
    command = [sys.executable, "-m", "emphatic_rl.cli", "train", "--out", str(out), "--steps", "100000", *ARGS]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _logged_step(out) >= 30, timeout=120)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    step = load_checkpoint(out / "checkpoint.pt")["step"]
    assert f"stopped by SIGINT at step {step}; checkpoint saved" in stdout
    assert f"emphatic-rl train --resume {out}" in stdout


@pytest.mark.slow
def test_kill_9_drill_with_many_kills(reference, tmp_path, capsys):
    """The larger drill: 24 kills (8 during checkpoint writes) over as many drilled runs as they take."""
    rng = random.Random(24)
    moments = ["random"] * 16 + ["write"] * 8
    rng.shuffle(moments)
    runs, out = 0, tmp_path / "drilled-0"
    for moment in moments:
        if (out / "checkpoint.pt").is_file() and load_checkpoint(out / "checkpoint.pt")["step"] >= STEPS:
            _assert_same_run(reference, out)
            runs += 1
            out = tmp_path / f"drilled-{runs}"
        resume = (out / "config.json").is_file()
        if moment == "write":
            _killed_during_write(out, tmp_path, resume=resume)
        else:
            _killed_at_random(out, tmp_path, rng, resume=resume)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert not list(out.glob(".*.tmp"))
    _assert_same_run(reference, out)
