"""``emphatic-rl sweep --backend ray``: the same folders and report as the local backend, on a local Ray cluster of two
worker processes started by the test, also when a worker is killed mid-study."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from emphatic_rl.logging import read_metrics
from emphatic_rl.studies.report import write_report
from emphatic_rl.studies.sweep import load_study, plan_study, run_study

TINY = """
name = "tiny"
runs = 2
max_population = 4

[base]
env = "counterexample-three-state"
steps = 40
eval_every = 20
eval_episodes = 1
eval_max_steps = 5
log_every = 20
checkpoint_every = 20
progress = false
[base.env_options]
observation = "state"
[base.agent_options]
critic = "oracle"

[grid]
alpha_actor = [0.5, 0.2]

[[variants]]
name = "offpac"
agent = "offpac"

[[variants]]
name = "ace-eta"
agent = "ace"
grid = { eta = [0.0, 1.0] }
"""


def test_import_and_local_sweep_never_import_ray(tmp_path):
    """Ray is optional: the package and the local sweep run without importing it."""
    study = tmp_path / "study.toml"
    study.write_text(TINY)
    code = (
        "import sys; import emphatic_rl; from emphatic_rl.cli import main; "
        f"assert main(['sweep', {str(study)!r}, '--out', {str(tmp_path / 'out')!r}]) == 0; "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


def test_ray_backend_without_ray_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import importlib.util

    from emphatic_rl.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    study = tmp_path / "study.toml"
    study.write_text(TINY)
    out = tmp_path / "out"
    assert main(["sweep", str(study), "--backend", "ray", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'emphatic-rl[ray]'" in err[0]
    assert not out.exists()
    assert main(["sweep", str(study), "--address", "auto", "--out", str(out)]) == 2
    assert "--address is for --backend ray" in capsys.readouterr().err
    assert not out.exists()


ray = pytest.importorskip("ray", reason="the Ray backend's tests need ray (pip install 'emphatic-rl[ray]')")

from emphatic_rl.studies.sweep_ray import ChunkFailed, run_study_ray  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of two CPUs: two task workers at a time."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()


def _folder_contents(root: Path) -> dict[str, object]:
    """Everything of a sweep folder that the results depend on (not wall-clock rows and times, not TensorBoard event
    files)."""
    contents: dict[str, object] = {"sweep.json": json.loads((root / "sweep.json").read_text())}
    for members in sorted(root.rglob("members.json")):
        folder = members.parent
        name = str(folder.relative_to(root))
        done = json.loads((folder / "done.json").read_text())
        contents[name] = {
            "members": json.loads(members.read_text()),
            "config": json.loads((folder / "config.json").read_text()),
            "metrics": [row for row in read_metrics(folder / "metrics.csv") if not row[1].startswith("time/")],
            "done": {k: v for k, v in done.items() if "seconds" not in k and k != "attempts"},
        }
    return contents


def _report_text(root: Path) -> str:
    return write_report(root).read_text().replace(str(root), "DIR")


def test_ray_backend_same_folders_and_report_as_local(cluster, tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(TINY)
    study = load_study(path)
    assert len(plan_study(study)) == 3  # ace-eta (4 settings x 2 runs) is split into two chunks
    run_study(load_study(path), tmp_path / "local", log=lambda m: None)
    lines: list[str] = []
    folders = run_study_ray(load_study(path), tmp_path / "ray", log=lines.append)
    assert [f.relative_to(tmp_path / "ray").as_posix() for f in folders] == [
        "offpac",
        "ace-eta/chunk-0",
        "ace-eta/chunk-1",
    ]
    assert _folder_contents(tmp_path / "ray") == _folder_contents(tmp_path / "local")
    assert _report_text(tmp_path / "ray") == _report_text(tmp_path / "local")
    # rerun (a driver that died after the tasks): every chunk is skipped
    lines.clear()
    run_study_ray(load_study(path), tmp_path / "ray", log=lines.append)
    assert sum("already finished, skipped" in line for line in lines) == 3


def _task_worker_pids() -> list[int]:
    """Processes executing a sweep task (Ray names a worker process after the task it runs: run_study_ray names
    the tasks emphatic-rl-sweep:FOLDER)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"ray::emphatic-rl-sweep:"):
                pids.append(int(entry.name))
    return pids


def _long_study(tmp_path: Path) -> Path:
    """Two chunks (ace-eta) of a few seconds each, a checkpoint every 100 steps."""
    steps, every = 600, 100
    text = TINY.replace("steps = 40", f"steps = {steps}")
    text = text.replace("checkpoint_every = 20", f"checkpoint_every = {every}")
    text = text.replace("eval_every = 20", f"eval_every = {2 * every}")
    text = text.replace("log_every = 20", f"log_every = {every}")
    text = text.replace('name = "offpac"\nagent = "offpac"', 'name = "offpac"\nagent = "offpac"\nfull_only = true')
    path = tmp_path / "study.toml"
    path.write_text(text)
    assert [chunk.folder for chunk in plan_study(load_study(path))] == ["ace-eta/chunk-0", "ace-eta/chunk-1"]
    return path


def _run_killing_workers(path: Path, out: Path, **options) -> tuple[list[str], list[BaseException], list[int]]:
    """Run the study on Ray in a thread; once a chunk has a checkpoint and is not done, SIGKILL every worker that
    runs a sweep task. Returns the driver's log lines, its exceptions and the pids killed."""
    lines: list[str] = []
    errors: list[BaseException] = []

    def drive():
        try:
            run_study_ray(load_study(path), out, log=lines.append, **options)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    driver = threading.Thread(target=drive)
    driver.start()
    killed: list[int] = []
    deadline = time.monotonic() + 120
    while not killed and driver.is_alive() and time.monotonic() < deadline:
        started = [p for p in out.rglob("checkpoint.pt") if not (p.parent / "done.json").exists()]
        pids = _task_worker_pids()
        if started and pids:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed = pids
        time.sleep(0.05)
    driver.join(timeout=180)
    assert not driver.is_alive()
    assert killed, "no worker was caught mid-chunk (the chunks finished too fast)"
    return lines, errors, killed


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the task's worker in /proc")


@linux_only
def test_ray_backend_survives_a_killed_worker(cluster, tmp_path):
    """SIGKILL the workers while they train (after a checkpoint): Ray reruns the tasks, which resume from the
    checkpoints; the study finishes with results identical to an uninterrupted local run."""
    path = _long_study(tmp_path)
    lines, errors, _ = _run_killing_workers(path, tmp_path / "ray")
    assert not errors, errors
    assert any(": resuming " in line for line in lines), lines  # a rerun task resumed from its checkpoint
    run_study(load_study(path), tmp_path / "local", log=lambda m: None)
    assert _folder_contents(tmp_path / "ray") == _folder_contents(tmp_path / "local")
    assert _report_text(tmp_path / "ray") == _report_text(tmp_path / "local")


@pytest.mark.slow
@linux_only
def test_ray_backend_rerun_after_failed_tasks_resumes(cluster, tmp_path):
    """With no retries a killed task fails the sweep (ChunkFailed, naming the chunk; other tasks finish); running
    the same study again -- as after a driver that died -- resumes the chunks and ends identical to a local run."""
    path = _long_study(tmp_path)
    _, errors, _ = _run_killing_workers(path, tmp_path / "ray", max_retries=0)
    assert len(errors) == 1 and isinstance(errors[0], ChunkFailed), errors
    assert "ace-eta/chunk-" in str(errors[0]) and "rerun the same command" in str(errors[0])
    unfinished = [
        f for f in ("ace-eta/chunk-0", "ace-eta/chunk-1") if not (tmp_path / "ray" / f / "done.json").exists()
    ]
    assert unfinished
    lines: list[str] = []
    run_study_ray(load_study(path), tmp_path / "ray", log=lines.append)
    assert any(": resuming " in line for line in lines), lines
    run_study(load_study(path), tmp_path / "local", log=lambda m: None)
    assert _folder_contents(tmp_path / "ray") == _folder_contents(tmp_path / "local")
    assert _report_text(tmp_path / "ray") == _report_text(tmp_path / "local")
