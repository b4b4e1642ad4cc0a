"""A sweep folder is continued only with the study it was started with; killed chunks lose no rows (excursion rows
included) and keep no events of the killed attempt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emphatic_rl.agents.linear import actor_critic
from emphatic_rl.cli import main
from emphatic_rl.config import ConfigError
from emphatic_rl.logging import read_metrics
from emphatic_rl.studies import sweep
from emphatic_rl.studies.sweep import load_study, run_study

TINY = """
name = "tiny"
runs = 2

[base]
env = "counterexample-three-state"
steps = 40
eval_every = 20
eval_episodes = 1
eval_max_steps = 5
log_every = 10
checkpoint_every = 40
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
EXCURSIONS = TINY.replace("runs = 2", "runs = 2\n[excursions]\nstarts = 3\nspacing = 5")


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs."""


def _write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _rows(folder: Path) -> list[tuple]:
    return sorted(row for row in read_metrics(folder / "metrics.csv") if not row[1].startswith("time/"))


def _quiet(message: str) -> None:
    pass


@pytest.mark.parametrize(
    "old, new, fragment",
    [
        ("alpha_actor = [0.5, 0.2]", "alpha_actor = [0.5, 0.1]", "base config, runs"),
        ("steps = 40", "steps = 60", "base"),
        ("runs = 2", "runs = 3", "runs"),
        ('grid = { eta = [0.0, 1.0] }', 'grid = { eta = [0.0, 0.5] }', "variant 'ace-eta' changed"),
    ],
    ids=["study-grid", "base-steps", "runs", "variant-grid"],
)
def test_a_sweep_refuses_to_continue_after_its_study_changed(tmp_path, capsys, old, new, fragment):
    out = tmp_path / "out"
    assert main(["sweep", str(_write(tmp_path, TINY)), "--out", str(out), "--only", "ace-eta"]) == 0
    capsys.readouterr()
    edited = _write(tmp_path, TINY.replace(old, new), "edited.toml")
    before = sorted(str(p) for p in out.rglob("*"))
    assert main(["sweep", str(edited), "--out", str(out), "--only", "ace-eta"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "changed since it started" in err and "use another --out" in err, err
    if fragment.startswith("variant"):
        assert fragment in err
    assert sorted(str(p) for p in out.rglob("*")) == before  # nothing touched


def test_other_variants_of_the_same_study_may_join_the_folder(tmp_path, capsys):
    out = tmp_path / "out"
    study = str(_write(tmp_path, TINY))
    assert main(["sweep", study, "--out", str(out), "--only", "offpac"]) == 0
    assert main(["sweep", study, "--out", str(out), "--only", "ace-eta"]) == 0
    assert main(["sweep", study, "--out", str(out)]) == 0  # everything done: skipped
    record = json.loads((out / "sweep.json").read_text())
    assert sorted(v["name"] for v in record["variants"]) == ["ace-eta", "offpac"]
    assert set(record["sha256"]) == {"common", "variant:offpac", "variant:ace-eta"}
    assert "already finished, skipped" in capsys.readouterr().out


def test_a_kill_between_a_checkpoint_and_its_excursions_loses_no_rows(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    run_study(load_study(_write(tmp_path, EXCURSIONS)), reference, log=_quiet)

    for kill_at in (20, 40):  # after the first segment's checkpoint, and after the last one's
        out = tmp_path / f"killed-{kill_at}"
        real = sweep.evaluate_excursions

        def killing(run, starts, step, backend="auto", kill_at=kill_at, real=real):
            if step == kill_at:
                raise Killed
            return real(run, starts, step, backend)

        monkeypatch.setattr(sweep, "evaluate_excursions", killing)
        with pytest.raises(Killed):
            run_study(load_study(_write(tmp_path, EXCURSIONS)), out, log=_quiet)
        monkeypatch.setattr(sweep, "evaluate_excursions", real)
        run_study(load_study(_write(tmp_path, EXCURSIONS)), out, log=_quiet)
        for variant in ("offpac", "ace-eta"):
            assert _rows(out / variant) == _rows(reference / variant), (kill_at, variant)
        assert json.loads((out / "ace-eta" / "done.json").read_text())["attempts"] == 1
        assert json.loads((out / "offpac" / "done.json").read_text())["attempts"] == (2 if kill_at else 1)


def test_a_chunk_killed_before_its_first_checkpoint_restarts_without_stale_events(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    run_study(load_study(_write(tmp_path, TINY)), reference, log=_quiet)
    out = tmp_path / "killed"
    real = actor_critic.ActorCritic.update

    def killing(self, buffer, step):
        if step == 30:  # after the rows of steps 10, 20 and 30 - 1, before the step-40 checkpoint
            raise Killed
        return real(self, buffer, step)

    monkeypatch.setattr(actor_critic.ActorCritic, "update", killing)
    with pytest.raises(Killed):
        run_study(load_study(_write(tmp_path, TINY)), out, log=_quiet)
    assert (out / "offpac" / "metrics.csv").is_file() and not (out / "offpac" / "checkpoint.pt").exists()
    monkeypatch.setattr(actor_critic.ActorCritic, "update", real)
    run_study(load_study(_write(tmp_path, TINY)), out, log=_quiet)
    for variant in ("offpac", "ace-eta"):
        assert _rows(out / variant) == _rows(reference / variant)
        assert len(list((out / variant / "tensorboard").glob("events.*"))) == 1
    done = json.loads((out / "offpac" / "done.json").read_text())
    assert done["attempts"] == 2 and done["seconds"] >= done["last_attempt_seconds"]


def test_a_sweep_json_that_is_not_json_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text("{broken")
    assert main(["sweep", str(_write(tmp_path, TINY)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sweep.json" in err and "is not valid JSON" in err


def test_check_study_unchanged_accepts_the_same_study(tmp_path):
    path = tmp_path / "sweep.json"
    record = {"name": "x", "runs": 2, "max_population": None, "base": {"steps": 4}, "excursions": None,
              "variants": [{"name": "a", "agent": "ace", "agent_options": {}, "grid": {}}], "report": {}}
    merged = sweep.check_study_unchanged(path, record)
    path.write_text(json.dumps(merged))
    assert sweep.check_study_unchanged(path, record)["sha256"] == merged["sha256"]
    with pytest.raises(ConfigError, match="runs"):
        sweep.check_study_unchanged(path, {**record, "runs": 3})


def test_report_flags_truncated_and_unstarted_variants(tmp_path, monkeypatch):
    from emphatic_rl.studies.report import write_report

    out = tmp_path / "out"
    real = actor_critic.ActorCritic.update

    def killing(self, buffer, step):
        if step == 45:  # after the step-40 checkpoint of a 60-step run
            raise Killed
        return real(self, buffer, step)

    monkeypatch.setattr(actor_critic.ActorCritic, "update", killing)
    study = load_study(_write(tmp_path, TINY.replace("steps = 40", "steps = 60")))
    study.variants = study.variants[:1]  # only offpac starts; ace-eta is in sweep.json but never runs
    record = {"name": "tiny", "variants": [{"name": "offpac"}, {"name": "ace-eta"}]}
    with pytest.raises(Killed):
        run_study(study, out, log=_quiet)
    (out / "sweep.json").write_text(json.dumps({**json.loads((out / "sweep.json").read_text()), **record}))
    text = write_report(out, include_unfinished=True).read_text()
    assert "Included although unfinished" in text and "`offpac` at step 40 of 60" in text
    assert "Not started (variants of the study without a run folder): `ace-eta`." in text
