"""Checkpoint safety: a crafted checkpoint never runs code, corrupted files are refused in one line, writes are
atomic (temporary file, fsync, rename, cleaned on failure) and carry a checksum."""

from __future__ import annotations

import builtins
import errno
import os
import random
import stat

import pytest
import torch

from emphatic_rl import checkpoints
from emphatic_rl.checkpoints import CheckpointError, DiskFullError, load_checkpoint, save_checkpoint, split_checksum
from emphatic_rl.cli import main

SMALL = ["--agent", "dqn", "--env", "cartpole", "--steps", "40", "--no-progress", "--set", "eval_every=20",
         "--set", "eval_episodes=2", "--set", "log_every=10", "--set", "checkpoint_every=20",
         "--set", "agent.learning_starts=10", "--set", "agent.batch_size=8"]


class _WritesMarker:
    """Unpickling this object (without ``weights_only``) creates the file ``path``: arbitrary code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def _cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A finished 40-step DQN run (checkpoints at 20 and 40)."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--out", str(out), *SMALL]) == 0
    return out


def _copy_run(run_folder, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(run_folder, target)
    return target


def test_a_checkpoint_round_trips_and_stays_a_plain_torch_archive(tmp_path):
    state = {"step": 7, "weights": torch.arange(6.0).view(2, 3), "generator": torch.Generator().get_state(),
             "nested": {"flag": True, "values": [1, 2.5, None], "name": "x"}}
    path = tmp_path / "c.pt"
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and torch.equal(loaded["weights"], state["weights"])
    assert loaded["nested"] == state["nested"]
    assert torch.load(path, weights_only=True)["step"] == 7  # an ordinary torch archive
    _, digest = split_checksum(path.read_bytes())
    assert digest is not None and len(digest) == 64


def test_a_malicious_checkpoint_is_refused_and_never_executed(run_folder, tmp_path, capsys):
    run = _copy_run(run_folder, tmp_path)
    marker, proof = tmp_path / "executed", tmp_path / "proof"
    # the crafted file is really dangerous: an unsafe load runs its code
    torch.save({"step": 1, "payload": _WritesMarker(str(proof))}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert proof.exists()

    original = load_checkpoint(run / "checkpoint.pt")
    original["agent"]["payload"] = _WritesMarker(str(marker))
    torch.save(original, run / "checkpoint.pt")
    code, _, err = _cli(["train", "--resume", str(run), "--steps", "60", "--no-progress"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "refused" in err and str(run / "checkpoint.pt") in err, err
    assert "Traceback" not in err
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(run / "checkpoint.pt")
    # with a valid checksum too: the checksum is no licence to unpickle code
    save_checkpoint_bytes = checkpoints.checkpoint_bytes(original)
    (run / "checkpoint.pt").write_bytes(save_checkpoint_bytes)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(run / "checkpoint.pt")
    assert not marker.exists()


def test_a_malicious_theta_file_is_refused_by_gradients(tmp_path, capsys):
    marker = tmp_path / "executed"
    torch.save(_WritesMarker(str(marker)), tmp_path / "theta.pt")
    code = main(["gradients", "--env", "counterexample-three-state", "--theta", str(tmp_path / "theta.pt")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "refused" in err
    assert not marker.exists()


def _flip_byte_in_tensor_data(data: bytes) -> bytes:
    archive, _ = split_checksum(data)
    garbled = bytearray(data)
    position = len(archive) // 2  # inside the stored tensors (the archive's bulk)
    garbled[position] ^= 0x10
    return bytes(garbled)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: b"", "is empty"),
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: data[:-40], "truncated"),
        (lambda data: random.Random(0).randbytes(4096), "garbled or not a checkpoint"),
        (lambda data: bytes([0x80, 2]) + random.Random(1).randbytes(4094), "not a checkpoint"),
        (lambda data: b"PK\x03\x04" + random.Random(2).randbytes(2000), "truncated or not a checkpoint"),
        (_flip_byte_in_tensor_data, "corrupted"),
    ],
    ids=["empty", "half", "tail-cut", "random-bytes", "pickle-header-then-random", "fake-zip", "garbled-tensor-bytes"],
)
def test_a_damaged_checkpoint_is_one_clear_line(run_folder, tmp_path, capsys, damage, message):
    run = _copy_run(run_folder, tmp_path)
    path = run / "checkpoint.pt"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    code, _, err = _cli(["train", "--resume", str(run), "--steps", "60", "--no-progress"], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err and str(path) in err, err


def test_a_checkpoint_of_another_shape_is_one_clear_line(run_folder, tmp_path, capsys):
    run = _copy_run(run_folder, tmp_path)
    config = (run / "config.json").read_text().replace('"population_size": 1', '"population_size": 2')
    (run / "config.json").write_text(config)
    code, _, err = _cli(["train", "--resume", str(run), "--steps", "60", "--no-progress"], capsys)
    assert code == 2 and err.count("\n") == 1 and "does not match the run's config" in err, err


def test_a_failed_write_keeps_the_old_checkpoint_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"step": 1}, path)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.os, "fsync", no_space)
    with pytest.raises(DiskFullError, match="is full"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_files_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint({"step": 1}, tmp_path / "checkpoint.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "checkpoint.pt").stat().st_mode) == 0o644


def test_a_full_disk_during_training_is_one_line(tmp_path, monkeypatch, capsys):
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > 2:  # config.json goes through; the first checkpoint meets a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(checkpoints.os, "fsync", fsync)
    code, _, err = _cli(["train", "--out", str(tmp_path / "run"), *SMALL], capsys)
    assert code == 1 and err.count("\n") == 1 and "is full" in err and "Traceback" not in err, err
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_stale_temporary_files_of_a_killed_write_are_removed_on_resume(run_folder, tmp_path, capsys):
    run = _copy_run(run_folder, tmp_path)
    stale = run / ".checkpoint.pt.0123abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert _cli(["train", "--resume", str(run), "--steps", "50", "--no-progress"], capsys)[0] == 0
    assert not stale.exists()


def test_an_old_learned_model_dyna_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    """Tabular Dyna with learned models once kept its own replay ring (``model_replay_*`` in the agent's state) and a
    one-row trajectory buffer; its models now train from the loop's buffer, so such a checkpoint cannot continue as
    it would have. Resuming it is one line naming the file and why, exit code 2, and nothing is written."""
    out = tmp_path / "run"
    args = ["--agent", "dyna", "--env", "bordered-gridworld", "--steps", "40", "--population", "1",
            "--set", "eval_every=0", "--set", "eval_episodes=1", "--set", "progress=false",
            "--set", "agent.model=\"learned\"", "--set", "agent.model_replay_size=1"]
    assert main(["train", *args, "--out", str(out)]) == 0
    path = out / "checkpoint.pt"
    state = load_checkpoint(path)
    population, capacity = 1, 8  # the old ring: obs, action, next_obs and reward, terminated of the last steps
    state["agent"].update(
        model_replay_states=torch.zeros(population, capacity, 3, dtype=torch.int64),
        model_replay_values=torch.zeros(population, capacity, 2),
        model_replay_cursor=torch.tensor(0),
        model_replay_size=torch.tensor(capacity),
    )
    save_checkpoint(state, path)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--steps", "80"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "cannot be resumed" in err and "checkpoint.pt" in err and "model_replay_" in err and "start it again" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    from emphatic_rl.agents.dyna.tabular import DynaAgent

    for key in DynaAgent.OLD_MODEL_REPLAY_KEYS:  # the same checkpoint in today's format resumes
        state["agent"].pop(key)
    save_checkpoint(state, path)
    assert main(["train", "--resume", str(out), "--steps", "80"]) == 0
