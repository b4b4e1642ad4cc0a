"""Reliability drills: bad inputs by class, kill -9 at random moments and during checkpoint writes, malicious and
damaged checkpoints, diverged members in every agent family. Prints a Markdown report and writes it to
``benchmarks/results/reliability.md``.

    python benchmarks/reliability_drills.py [--kills 16] [--write-kills 8] [--seed 0]

Bad inputs run the real command (``emphatic_rl.cli.main``) in this process; each outcome is classed as a *clear
error* (exit code 1 or 2 and exactly one line on stderr, no traceback, no run folder written for input that is
refused before work), a *traceback* (an exception escaped or a traceback was printed) or *accepted silently*
(exit code 0). Kills fork a training run and send it SIGKILL at a random moment, or in the middle of a checkpoint
write (after the temporary file is written and fsynced, before the rename), then resume; the drilled run is
compared, row by row and tensor by tensor, with an uninterrupted one. POSIX only (``os.fork``).
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import datetime
import errno
import io
import json
import math
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emphatic_rl import checkpoints
from emphatic_rl import train as train_module
from emphatic_rl.checkpoints import load_checkpoint
from emphatic_rl.cli import main
from emphatic_rl.config import TrainConfig
from emphatic_rl.logging import read_metrics

RUN_ARGS = ["--agent", "dqn", "--env", "cartpole", "--no-progress", "--num-envs", "2", "--set", "eval_every=80",
            "--set", "eval_episodes=2", "--set", "eval_max_steps=50", "--set", "log_every=10",
            "--set", "checkpoint_every=40", "--set", "agent.learning_starts=20", "--set", "agent.batch_size=8",
            "--set", "agent.target_update_every=30", "--set", "agent.hidden=[16]"]
DRILL_STEPS = 240


class _WritesMarker:
    """Unpickled without ``weights_only``, this object creates the file ``path`` (arbitrary code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


# ---------------------------------------------------------------------------------------------------- bad inputs
def run_command(args: list[str]) -> tuple[int | None, str, str]:
    """``(exit code or None if an exception escaped, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
        except Exception:
            traceback.print_exc(file=err)
            code = None
    return code, out.getvalue(), err.getvalue()


def classify(code: int | None, err: str, folder: Path | None = None) -> str:
    if code is None or "Traceback" in err:
        return "traceback"
    if code == 0:
        return "accepted"
    lines = [line for line in err.splitlines() if line.strip()]
    clear = code in (1, 2) and len(lines) == 1 and folder_ok(folder)
    return "clear" if clear else "unclear"


def folder_ok(folder: Path | None) -> bool:
    return folder is None or not folder.exists()


def train_cases() -> list[tuple[str, list[str]]]:
    typed = ["agent.hidden=64", 'agent.hidden=[64, "wide"]', "agent.hidden=[16.5]", "agent.hidden=[true]",
             "agent.gamma=abc", "agent.gamma=[0.9]", "agent.gamma=true", "agent.batch_size=12.5",
             "agent.batch_size=true", "agent.batch_size=\"8\"", "agent.buffer_size=true", "agent.buffer_size=1e5",
             "agent.learning_rate=[0.1, 0.2]", "agent.learning_rate={a = 1}", "agent.double_q=1",
             "agent.double_q=\"yes\"", "agent.target_update_every=2.5", "env.max_episode_steps=12.5",
             "env.max_episode_steps=true", "env.max_episode_steps=[10]"]
    ranges = ["agent.learning_rate=inf", "agent.learning_rate=-inf", "agent.learning_rate=nan",
              "agent.learning_rate=-0.1", "agent.learning_rate=0", "agent.gamma=1.5", "agent.gamma=-0.1",
              "agent.batch_size=0", "agent.batch_size=-4", "agent.buffer_size=0", "agent.epsilon_start=2",
              "agent.max_grad_norm=inf", "steps=0", "steps=-5", "num_envs=0", "eval_episodes=0", "log_every=0",
              "eval_every=-1", "checkpoint_every=-1", "num_threads=-1", "env.max_episode_steps=0"]
    top = ["steps=[1, 2]", "steps=12.5", "steps=true", 'steps="forty"', "seed=-1", "seed=99999999999999999999",
           "seed=4294967296", "num_envs=2.0", "device=3", 'device="nope"', "agent_options=[1]", "stepz=5",
           'agent="nope"', 'env="nope"', "agent.nope=1", "env.nope=1", "population_size=0", 'behaviour="nope"',
           "behaviour=[0.5, -0.5]", "behaviour=[]"]
    other_agents = [("deep-ace", "cartpole", "agent.actor_learning_rate=inf"),
                    ("deep-ace", "cartpole", "agent.hidden=64"),
                    ("deep-offpac", "cartpole", "agent.critic_learning_rate=nan"),
                    ("dpg", "pendulum", "agent.actor_learning_rate=inf"),
                    ("dpg", "pendulum", "agent.batch_size=12.5"),
                    ("gaussian-ace", "pendulum", "agent.hidden=[64, 64.5]"),
                    ("gaussian-offpac", "pendulum", "agent.actor_learning_rate=inf"),
                    ("ace", "counterexample-three-state", "agent.num_tilings=2.5"),
                    ("ace", "counterexample-three-state", "agent.gamma=abc"),
                    ("offpac", "counterexample-three-state", "agent.stream_of=[0.5]"),
                    ("dyna", "gridworld", "agent.step_size=inf")]
    base = ["--steps", "40", "--no-progress", "--set", "eval_every=20", "--set", "eval_episodes=2"]
    cases: list[tuple[str, list[str]]] = []
    for klass, settings in (("wrong-typed options", typed), ("out-of-range / non-finite options", ranges),
                            ("top-level config keys and flags", top)):
        cases += [(klass, ["--agent", "dqn", "--env", "cartpole", *base, "--set", s]) for s in settings]
    cases += [("wrong-typed options", ["--agent", a, "--env", e, *base, "--set", s]) for a, e, s in other_agents]
    cases += [("top-level config keys and flags", ["--agent", "dqn", *base[:-4], "--seed", str(2**70)]),
              ("top-level config keys and flags", ["--agent", "dqn", *base[:-4], "--steps", "-3"]),
              ("top-level config keys and flags", ["--agent", "dqn", *base[:-4], "--population", "0"])]
    return cases


def drill_bad_inputs(work: Path, seed: int) -> dict[str, dict[str, int]]:
    results: dict[str, dict[str, int]] = {}

    def record(klass: str, outcome: str) -> None:
        counts = results.setdefault(klass, {"cases": 0, "clear": 0, "traceback": 0, "accepted": 0, "unclear": 0})
        counts["cases"] += 1
        counts[outcome] += 1
        if outcome != "clear":
            print(f"  [{klass}] {outcome}", file=sys.stderr)

    for index, (klass, args) in enumerate(train_cases()):
        out = work / f"bad-{index}"
        code, _, err = run_command(["train", "--out", str(out), *args])
        outcome = classify(code, err, out)
        if outcome != "clear":
            print(f"  train {' '.join(args[-2:])}: {err.strip()[:200]}", file=sys.stderr)
        record(klass, outcome)

    # a finished run to damage
    reference = work / "reference-small"
    assert main(["train", "--out", str(reference), "--steps", "40", *RUN_ARGS]) == 0

    def fresh_copy(name: str) -> Path:
        target = work / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(reference, target)
        return target

    def resume(folder: Path, steps: int = 60) -> tuple[int | None, str]:
        code, _, err = run_command(["train", "--resume", str(folder), "--steps", str(steps), "--no-progress"])
        return code, err

    rng = random.Random(seed)
    original = (reference / "checkpoint.pt").read_bytes()
    archive, _ = checkpoints.split_checksum(original)
    damages = [("empty", lambda d: b""), ("random bytes", lambda d: os.urandom(4096)),
               ("fake zip", lambda d: b"PK\x03\x04" + os.urandom(3000)), ("one byte", lambda d: d[:1])]
    damages += [(f"truncated at {f:.0%}", lambda d, f=f: d[: int(len(d) * f)]) for f in (0.1, 0.5, 0.9, 0.99)]
    damages += [(f"cut {n} bytes from the end", lambda d, n=n: d[:-n]) for n in (1, 40, 100)]
    for _ in range(8):
        position = rng.randrange(len(archive))
        damages.append((f"byte {position} flipped", lambda d, p=position: d[:p] + bytes([d[p] ^ 0x5A]) + d[p + 1:]))
    for _name, damage in damages:
        folder = fresh_copy("damaged")
        (folder / "checkpoint.pt").write_bytes(damage(original))
        code, err = resume(folder)
        record("damaged checkpoints", classify(code, err))

    executed = 0
    for where in ("agent", "buffer", "top"):
        folder = fresh_copy("malicious")
        marker = work / f"executed-{where}"
        state = load_checkpoint(reference / "checkpoint.pt")
        if where == "top":
            state["evil"] = _WritesMarker(str(marker))
        else:
            state[where]["evil"] = _WritesMarker(str(marker))
        torch.save(state, folder / "checkpoint.pt")
        record("malicious checkpoints", classify(*resume(folder)))
        (folder / "checkpoint.pt").write_bytes(checkpoints.checkpoint_bytes(state))  # with a valid checksum
        record("malicious checkpoints", classify(*resume(folder)))
        executed += marker.exists()
    marker = work / "executed-theta"
    torch.save(_WritesMarker(str(marker)), work / "theta.pt")
    code, _, err = run_command(["gradients", "--env", "counterexample-three-state", "--theta", str(work / "theta.pt")])
    record("malicious checkpoints", classify(code, err))
    executed += marker.exists()
    results["malicious checkpoints"]["executed"] = executed

    saved = json.loads((reference / "config.json").read_text())
    edits = [{**saved, "bogus": 1}, {**saved, "steps": "forty"}, {**saved, "steps": 12.5}, {**saved, "seed": -1},
             {**saved, "agent_options": [1]}, {**saved, "agent_options": {**saved["agent_options"], "hidden": 64}},
             {**saved, "agent_options": {**saved["agent_options"], "bogus": 1}}, [saved], "text",
             {**saved, "population_size": 2}, {**saved, "num_envs": 3},
             {**saved, "agent_options": {**saved["agent_options"], "hidden": [32]}},
             {**saved, "env": "acrobot"}]
    for edit in edits:
        folder = fresh_copy("config")
        (folder / "config.json").write_text(json.dumps(edit))
        record("saved config.json", classify(*resume(folder)))
    for text in ("{broken", "", "\x00\x01", '{"agent": "dqn",}'):
        folder = fresh_copy("config")
        (folder / "config.json").write_text(text)
        record("saved config.json", classify(*resume(folder)))
    folder = fresh_copy("steps")
    record("saved config.json", classify(*resume(folder, steps=20)))  # --steps below the steps done

    real_available = train_module.available_memory_bytes
    try:
        for population in (64, 4096):
            train_module.available_memory_bytes = lambda device: 2**24
            out = work / f"memory-{population}"
            code, _, err = run_command(["train", "--agent", "dqn", "--population", str(population), "--out",
                                        str(out), "--steps", "40", "--no-progress"])
            record("population too large for memory", classify(code, err, out))
    finally:
        train_module.available_memory_bytes = real_available
    real_make_agent = train_module.make_agent

    def refuse(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    train_module.make_agent = refuse
    try:
        out = work / "memory-alloc"
        code, _, err = run_command(["train", "--agent", "dqn", "--population", "100000000", "--out", str(out),
                                    "--steps", "40", "--no-progress"])
        record("population too large for memory", classify(code, err, out))
    finally:
        train_module.make_agent = real_make_agent

    real_fsync = checkpoints.os.fsync
    for fail_at in (1, 3, 5):
        calls = {"n": 0}

        def fsync(fd, calls=calls, fail_at=fail_at):
            calls["n"] += 1
            if calls["n"] >= fail_at:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_fsync(fd)

        checkpoints.os.fsync = fsync
        try:
            out = work / f"full-{fail_at}"
            code, _, err = run_command(["train", "--out", str(out), "--steps", "80", *RUN_ARGS])
        finally:
            checkpoints.os.fsync = real_fsync
        outcome = classify(code, err)
        if outcome == "clear" and "is full" not in err:
            outcome = "unclear"
        record("full disk", outcome)
    real_write_bytes = Path.write_bytes
    for name in ("resume", "resume with more steps"):
        folder = fresh_copy("readonly")

        def read_only(self, data, folder=folder):
            if self.parent == folder:
                raise OSError(errno.EROFS, "Read-only file system")
            return real_write_bytes(self, data)

        Path.write_bytes = read_only
        try:
            code, err = resume(folder, 60 if name == "resume" else 100)
        finally:
            Path.write_bytes = real_write_bytes
        record("read-only folder on resume", classify(code, err))

    theta_files = {"t.json": b"[[1, 2], [3", "u.json": b'[["a"]]', "v.json": b"[[1, 2, 3]]", "w.json": b"{}",
                   "t.pt": b"not torch", "u.pt": b"", "t.npy": b"\x93NUMPY garbage", "t.txt": b"1 2 3 4"}
    object_npy = work / "objects.npy"
    np.save(object_npy, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for name, content in theta_files.items():
        (work / name).write_bytes(content)
    for path in [*(work / name for name in theta_files), object_npy, work / "missing.json"]:
        code, _, err = run_command(["gradients", "--env", "counterexample-three-state", "--theta", str(path)])
        record("gradients inputs", classify(code, err))
    for eta in ("2", "-0.5", "nan", "inf", "1.0000001"):
        code, _, err = run_command(["gradients", "--env", "counterexample-three-state", "--eta", eta])
        record("gradients inputs", classify(code, err))

    study = work / "study.toml"
    base_study = STUDY
    studies = [("gamma = \"abc\"", "ace"), ("num_tilings = 2.5", "ace"), ("", ".."), ("", "."), ("", "a/b"),
               ("", ".hidden"), ("", ""), ("", "a\\\\b")]
    for extra, name in studies:
        study.write_text(base_study.format(extra=extra, name=name))
        out = work / "sweep-out"
        code, _, err = run_command(["sweep", str(study), "--out", str(out)])
        record("study files and sweep resume", classify(code, err, out))
    study.write_text(base_study.format(extra="", name="ace"))
    out = work / "sweep-changed"
    assert run_command(["sweep", str(study), "--out", str(out)])[0] == 0
    for old, new in (("alpha_actor = [0.5]", "alpha_actor = [0.25]"), ("steps = 20", "steps = 30"),
                     ("runs = 2", "runs = 3")):
        study.write_text(base_study.format(extra="", name="ace").replace(old, new))
        code, _, err = run_command(["sweep", str(study), "--out", str(out)])
        record("study files and sweep resume", classify(code, err))
    return results


STUDY = """
name = "drill"
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
alpha_actor = [0.5]
[[variants]]
name = "{name}"
agent = "ace"
"""


# ---------------------------------------------------------------------------------------------------- kills
def _fork(args: list[str], log: Path, before=None) -> int:
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
            if before is not None:
                before()
            code = main(args)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def _logged_step(out: Path) -> int:
    try:
        return max((row[0] for row in read_metrics(out / "metrics.csv")), default=0)
    except (OSError, ValueError, IndexError):
        return 0


def _rows(path: Path) -> list[tuple]:
    return [row for row in read_metrics(path) if not row[1].startswith("time/")]


def _same_state(x, y) -> bool:
    if isinstance(x, dict):
        return set(x) == set(y) and all(_same_state(x[k], y[k]) for k in x)
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and torch.equal(x, y)
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(_same_state(u, v) for u, v in zip(x, y, strict=True))
    return x == y


def drill_kills(work: Path, kills: int, write_kills: int, seed: int) -> dict[str, int]:
    """Kill -9 drilled runs at random moments and during checkpoint writes; each drilled run, once finished (by a
    last resume), is compared with the uninterrupted reference; a new drilled run starts until every kill is spent."""
    reference = work / "reference"
    assert main(["train", "--out", str(reference), "--steps", str(DRILL_STEPS), *RUN_ARGS]) == 0
    reference_rows = _rows(reference / "metrics.csv")
    reference_state = load_checkpoint(reference / "checkpoint.pt")
    rng = random.Random(seed)
    log = work / "child.log"
    moments = ["random"] * kills + ["write"] * write_kills
    rng.shuffle(moments)
    totals = {"kills": 0, "during_writes": 0, "rows_lost": 0, "rows_duplicated": 0, "bit_identical": 1,
              "max_steps_redone": 0, "stale_temporaries": 0, "runs": 0}

    def finish(out: Path) -> None:
        code, _, err = run_command(["train", "--resume", str(out), "--no-progress"])
        assert code == 0, err
        drilled_rows = _rows(out / "metrics.csv")
        totals["rows_lost"] += len(set(reference_rows) - set(drilled_rows))
        totals["rows_duplicated"] += len(drilled_rows) - len(set(drilled_rows))
        state = load_checkpoint(out / "checkpoint.pt")
        identical = reference_rows == drilled_rows and all(
            _same_state(reference_state[k], state[k])
            for k in ("agent", "buffer", "env", "loop_generator", "episode_stats", "obs"))
        totals["bit_identical"] &= int(identical)
        totals["stale_temporaries"] += len(list(out.glob(".*.tmp")))
        totals["runs"] += 1

    out = work / "drilled-0"
    for moment in moments:
        done_before = load_checkpoint(out / "checkpoint.pt")["step"] if (out / "checkpoint.pt").is_file() else 0
        if done_before >= DRILL_STEPS:  # this drilled run is complete: check it, start another
            finish(out)
            out = work / f"drilled-{totals['runs']}"
        started = (out / "config.json").is_file()
        args = ["train", "--resume", str(out), "--no-progress"] if started else \
            ["train", "--out", str(out), "--steps", str(DRILL_STEPS), *RUN_ARGS]
        if moment == "write":
            marker = work / f"writing-{time.monotonic_ns()}"

            def install(marker=marker):
                real_replace = checkpoints.os.replace

                def slow_replace(src, dst):
                    if str(dst).endswith("checkpoint.pt"):
                        marker.write_text(str(dst))
                        time.sleep(30)
                    return real_replace(src, dst)

                checkpoints.os.replace = slow_replace

            pid = _fork(args, log, before=install)
            while not marker.exists() and os.waitpid(pid, os.WNOHANG) == (0, 0):
                time.sleep(0.002)
            totals["during_writes"] += bool(list(out.glob(".checkpoint.pt.*.tmp")))
        else:
            pid = _fork(args, log)
            target = _logged_step(out) + rng.randrange(5, 60)
            while _logged_step(out) < target and os.waitpid(pid, os.WNOHANG) == (0, 0):
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.03))
        logged = _logged_step(out)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        kept = load_checkpoint(out / "checkpoint.pt")["step"] if (out / "checkpoint.pt").is_file() else 0
        totals["max_steps_redone"] = max(totals["max_steps_redone"], logged - kept)
        totals["kills"] += 1
    finish(out)
    return totals


def drill_signals(work: Path) -> dict[str, str]:
    results = {}
    for name in ("SIGINT", "SIGTERM"):
        out = work / f"signal-{name}"
        log = work / f"signal-{name}.log"
        pid = _fork(["train", "--out", str(out), "--steps", str(DRILL_STEPS), *RUN_ARGS], log)
        while _logged_step(out) < 50:
            time.sleep(0.002)
        os.kill(pid, getattr(signal, name))
        status = os.waitpid(pid, 0)[1]
        text = log.read_text()
        step = load_checkpoint(out / "checkpoint.pt")["step"]
        code, _, _ = run_command(["train", "--resume", str(out), "--no-progress"])
        identical = code == 0 and _rows(out / "metrics.csv") == _rows(work / "reference" / "metrics.csv")
        clean = os.WIFEXITED(status) and "Traceback" not in text and f"stopped by {name} at step {step}" in text
        outcome = "bit-identical" if identical else "DIFFERS"
        results[name] = (f"exit {os.WEXITSTATUS(status)}, checkpoint at step {step}, "
                         f"{'no traceback' if clean else 'NOT CLEAN'}, resume {outcome}")
    return results


# ---------------------------------------------------------------------------------------------------- divergence
FAMILIES = {"dqn": "cartpole", "deep-ace": "cartpole", "deep-offpac": "cartpole", "dpg": "pendulum",
            "gaussian-ace": "pendulum", "gaussian-offpac": "pendulum", "ace": "counterexample-three-state",
            "offpac": "counterexample-three-state", "ace-direct": "counterexample-three-state"}


def drill_divergence(work: Path) -> dict[str, str]:
    results = {}
    for agent, env in FAMILIES.items():
        linear = env == "counterexample-three-state"
        options = {"critic": "oracle"} if linear else {"learning_starts": 5, "batch_size": 8}
        env_options = {"observation": "state"} if linear else {}

        def run(poison: bool, agent=agent, env=env, options=options, env_options=env_options, linear=linear):
            config = TrainConfig(agent=agent, env=env, steps=40, population_size=3, num_envs=3 if linear else 1,
                                 eval_every=20, eval_episodes=2, eval_max_steps=30, log_every=10,
                                 checkpoint_every=0, progress=False, agent_options=dict(options),
                                 env_options=env_options)
            built = train_module.build_run(config)
            update = built.agent.update

            def poisoning(buffer, step):
                metrics = update(buffer, step)
                if poison and step == 15:
                    with torch.no_grad():
                        tensors = [p for m in vars(built.agent).values() if isinstance(m, nn.Module)
                                   for p in m.parameters()]
                        if not tensors:  # linear agents: the policy parameters theta [P, ...]
                            tensors = [built.agent.policy.theta]
                        for tensor in tensors:
                            tensor[1] = math.nan
                return metrics

            built.agent.update = poisoning
            result = train_module.train(config, work / f"div-{agent}-{poison}", run=built)
            return result, built.agent.state_dict()

        try:
            poisoned, state = run(True)
            clean, clean_state = run(False)
        except Exception as error:  # the drill records a crash instead of stopping
            results[agent] = f"CRASHED: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
            continue

        def rows(state, members=(0, 2)):
            found = []

            def walk(x, path=""):
                if isinstance(x, dict):
                    for k, v in x.items():
                        walk(v, f"{path}/{k}")
                elif isinstance(x, (list, tuple)):
                    for i, v in enumerate(x):
                        walk(v, f"{path}/{i}")
                elif isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] == 3:
                    found.append((path, x[list(members)]))

            walk(state)
            return found

        same = all(torch.equal(u, v) for (_, u), (_, v) in zip(rows(state), rows(clean_state), strict=True))
        same &= torch.equal(poisoned.final_eval_return[[0, 2]], clean.final_eval_return[[0, 2]])
        frozen = poisoned.diverged.tolist() == [False, True, False]
        results[agent] = (f"{'member 1 frozen' if frozen else 'NOT FROZEN'}, members 0 and 2 "
                          f"{'bit-identical to a run without divergence' if same else 'CHANGED'}")
    return results


# ---------------------------------------------------------------------------------------------------- report
def markdown(bad: dict, kills: dict, signals: dict, divergence: dict, seconds: float, args) -> str:
    total = {k: sum(v[k] for v in bad.values()) for k in ("cases", "clear", "traceback", "accepted", "unclear")}
    lines = [
        "# Reliability drills",
        "",
        f"`python benchmarks/reliability_drills.py --kills {args.kills} --write-kills {args.write_kills} "
        f"--seed {args.seed}`, {datetime.date.today()}, {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {seconds:.0f} s.",
        "",
        "## Bad input",
        "",
        "| class | cases | clear one-line error | traceback | accepted silently | other |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for klass, counts in bad.items():
        lines.append(f"| {klass} | {counts['cases']} | {counts['clear']} | {counts['traceback']} | "
                     f"{counts['accepted']} | {counts['unclear']} |")
    lines.append(f"| **all {len(bad)} classes** | **{total['cases']}** | **{total['clear']}** | "
                 f"**{total['traceback']}** | **{total['accepted']}** | **{total['unclear']}** |")
    lines += [
        "",
        f"Malicious checkpoints executed: **{bad['malicious checkpoints']['executed']}** (never).",
        "",
        "## Kills",
        "",
        "| kill -9 survived | of them during a checkpoint write | drilled runs | rows lost | rows duplicated "
        "| resume bit-identical | most steps redone after a kill | temporary files left |",
        "|---:|---:|---:|---:|---:|---|---:|---:|",
        f"| {kills['kills']} | {kills['during_writes']} | {kills['runs']} | {kills['rows_lost']} | "
        f"{kills['rows_duplicated']} | "
        f"{'yes' if kills['bit_identical'] else 'NO'} | {kills['max_steps_redone']} (checkpoint every 40) | "
        f"{kills['stale_temporaries']} |",
        "",
        "| signal | outcome |",
        "|---|---|",
    ]
    lines += [f"| {name} | {text} |" for name, text in signals.items()]
    lines += ["", "## A diverged member (NaN parameters in member 1 of 3, mid-run)", "",
              "| agent | outcome |", "|---|---|"]
    lines += [f"| {agent} | {text} |" for agent, text in divergence.items()]
    return "\n".join(lines) + "\n"


def main_drills() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=16, help="kill -9 at random moments")
    parser.add_argument("--write-kills", type=int, default=8, help="kill -9 in the middle of checkpoint writes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "reliability.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        bad = drill_bad_inputs(work, args.seed)
        kills = drill_kills(work, args.kills, args.write_kills, args.seed)
        signals = drill_signals(work)
        divergence = drill_divergence(work)
    text = markdown(bad, kills, signals, divergence, time.perf_counter() - start, args)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main_drills()
