"""``emphatic-rl sweep``: grid expansion, member mapping, validation before any work, shared behaviour data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emphatic_rl.cli import main
from emphatic_rl.config import ConfigError
from emphatic_rl.logging import read_metrics
from emphatic_rl.studies.sweep import expand_grid, load_study, member_layout, plan_study, run_study, validate_study

TINY = """
name = "tiny"
runs = 2

[base]
env = "counterexample-three-state"
steps = 40
eval_every = 20
eval_episodes = 1
eval_max_steps = 5
log_every = 20
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


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_expand_grid_is_the_product_first_key_slowest():
    settings = expand_grid({"alpha_actor": [1.0, 2.0], "eta": [0.0, 0.5, 1.0]})
    assert len(settings) == 6
    assert settings[0] == {"alpha_actor": 1.0, "eta": 0.0}
    assert settings[2] == {"alpha_actor": 1.0, "eta": 1.0}
    assert settings[3] == {"alpha_actor": 2.0, "eta": 0.0}
    assert expand_grid({}) == [{}]


def test_member_layout_and_per_member_options(tmp_path):
    study = load_study(write(tmp_path, TINY))
    chunks = plan_study(study)
    assert [c.folder for c in chunks] == ["offpac", "ace-eta"]
    ace = chunks[1]
    # 2 alphas x 2 etas = 4 settings, x 2 runs: P = 8, member p = run * settings + setting (run-major)
    assert ace.config.population_size == 8 and ace.config.num_envs == 2
    assert member_layout(4, 2)[5] == (1, 1)
    assert member_layout(4, 2)[2] == (2, 0)
    options = ace.config.agent_options
    assert options["stream_of"] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert options["alpha_actor"] == [0.5, 0.5, 0.2, 0.2] * 2
    assert options["eta"] == [0.0, 1.0, 0.0, 1.0] * 2
    assert options["critic"] == "oracle"  # common agent options from [base.agent_options]


def test_chunks_split_settings_and_keep_global_indices(tmp_path):
    study = load_study(write(tmp_path, TINY.replace("runs = 2", "runs = 2\nmax_population = 4")))
    chunks = [c for c in plan_study(study) if c.variant.name == "ace-eta"]
    assert [c.folder for c in chunks] == ["ace-eta/chunk-0", "ace-eta/chunk-1"]
    assert [c.setting_indices for c in chunks] == [[0, 1], [2, 3]]
    assert all(c.config.population_size == 4 for c in chunks)


def test_full_uses_full_grid_runs_and_base(tmp_path):
    text = TINY.replace("runs = 2", "runs = 2\nfull_runs = 3") + (
        "\n[full_base]\nsteps = 60\n\n[full_grid]\nalpha_actor = [0.1, 0.2, 0.3]\n"
    )
    study = load_study(write(tmp_path, text), full=True)
    assert study.runs == 3 and study.base["steps"] == 60
    offpac, ace = plan_study(study)
    assert offpac.config.population_size == 3 * 3
    assert ace.variant.grid == {"alpha_actor": [0.1, 0.2, 0.3]}  # the variant's reduced grid is not used


def test_full_only_variant_runs_only_with_full(tmp_path):
    text = TINY + (
        '\n[[variants]]\nname = "ideal"\nagent = "ace"\nagent_options = { emphasis = "ideal" }\nfull_only = true\n'
    )
    assert [v.name for v in load_study(write(tmp_path, text)).variants] == ["offpac", "ace-eta"]
    assert [v.name for v in load_study(write(tmp_path, text), full=True).variants] == ["offpac", "ace-eta", "ideal"]
    only_full = TINY.replace('agent = "offpac"', 'agent = "offpac"\nfull_only = true').replace(
        'agent = "ace"', 'agent = "ace"\nfull_only = true'
    )
    with pytest.raises(ConfigError, match="every variant has full_only = true; run the study with --full"):
        load_study(write(tmp_path, only_full))
    with pytest.raises(ConfigError, match="variant name 'offpac' is used twice"):  # even when skipped
        load_study(write(tmp_path, text.replace('name = "ideal"', 'name = "offpac"')))


@pytest.mark.parametrize(
    ("replace", "by", "message"),
    [
        ("alpha_actor = [0.5, 0.2]", "gamma = [0.9]",
         "'gamma' is not a per-member hyperparameter; allowed: alpha_actor"),
        ("eta = [0.0, 1.0]", "eta = [0.0, 1.5]", "eta value 1.5 is outside [0.0, 1.0]"),
        ("alpha_actor = [0.5, 0.2]", "critic_lambda = [-0.1]", "critic_lambda value -0.1 is outside [0.0, 1.0]"),
        ("alpha_actor = [0.5, 0.2]", "alpha_actor = [0.0]", "alpha_actor value 0.0 is outside (0.0, inf)"),
        ('name = "ace-eta"', 'name = "offpac"', "variant name 'offpac' is used twice"),
        ('agent = "ace"', 'agent = "dqn"', "agent 'dqn' is not sweepable"),
        ("runs = 2", "runs = 0", "runs must be an integer >= 1"),
        ('agent = "offpac"', 'agent = "offpac"\nfull_only = 1', "variant 'offpac': full_only must be true or false"),
        ('name = "tiny"', 'name = "tiny"\nbogus = 1', "unknown study key 'bogus'"),
        ('env = "counterexample-three-state"', 'env = "counterexample-three-state"\nnum_envs = 3',
         "[base] must not set 'num_envs'"),
        ('grid = { eta = [0.0, 1.0] }', 'grid = { eta = [0.0, 1.0] }\nagent_options = { eta = 1.0 }',
         "'eta' is both in the grid and in variant 'ace-eta' agent_options"),
    ],
)
def test_bad_study_is_one_clear_error(tmp_path, replace, by, message):
    assert replace in TINY
    with pytest.raises(ConfigError) as error:
        load_study(write(tmp_path, TINY.replace(replace, by)))
    assert message in str(error.value)


def test_every_variant_is_validated_before_any_runs(tmp_path, capsys):
    # the second variant is bad (all-actions needs the gq critic): nothing may be trained, not even the first
    text = TINY + (
        '\n[[variants]]\nname = "all-actions"\nagent = "ace"\nagent_options = { actor_update = "all_actions" }\n'
    )
    study = load_study(write(tmp_path, text))
    with pytest.raises(ConfigError, match="variant 'all-actions': actor_update 'all_actions' needs critic 'gq'"):
        validate_study(plan_study(study))
    out = tmp_path / "out"
    code = main(["sweep", str(tmp_path / "study.toml"), "--out", str(out)])
    assert code == 2
    assert "needs critic 'gq'" in capsys.readouterr().err
    assert not out.exists()


def test_unknown_agent_option_is_caught_before_work(tmp_path):
    study = load_study(write(tmp_path, TINY.replace('critic = "oracle"', 'critic = "oracle"\nbogus_option = 1')))
    with pytest.raises(ConfigError, match="bogus_option"):
        validate_study(plan_study(study))


def test_tiny_sweep_shares_data_and_maps_members(tmp_path):
    study = load_study(write(tmp_path, TINY))
    out = tmp_path / "out"
    messages: list[str] = []
    run_study(study, out, log=messages.append)
    record = json.loads((out / "ace-eta" / "members.json").read_text())
    assert record["runs"] == 2 and len(record["members"]) == 8
    # run-major: member p = run * 4 + setting
    assert record["members"][6] == {"member": 6, "setting": 2, "run": 1, "values": {"alpha_actor": 0.2, "eta": 0.0}}
    assert (out / "ace-eta" / "done.json").is_file() and (out / "sweep.json").is_file()

    def exact_j(folder: str) -> dict[tuple[int, int], float]:
        return {(s, m): v for s, name, m, v in read_metrics(out / folder / "metrics.csv") if name == "eval/exact_J"}

    offpac, ace = exact_j("offpac"), exact_j("ace-eta")
    assert {m for _, m in offpac} == set(range(4)) and {m for _, m in ace} == set(range(8))
    # OffPAC is ACE with eta = 0: same behaviour data (same seed, stream_of = run) -> identical learning, member for
    # member (offpac member alpha 0.2/run 1 = 3; ace-eta member alpha 0.2/eta 0/run 1 = 6)
    for step in (20, 40):
        assert offpac[(step, 0)] == ace[(step, 0)]
        assert offpac[(step, 3)] == ace[(step, 6)]
    # and eta = 1 learns differently from eta = 0 on the same data (settings 1, 3 have eta = 1)
    assert any(ace[(40, m)] != ace[(40, m - 1)] for m in (1, 3, 5, 7))

    # a second call skips finished folders
    messages.clear()
    run_study(study, out, log=messages.append)
    assert all("already finished, skipped" in m for m in messages) and len(messages) == 2


def test_cli_dry_run_trains_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sweep", str(write(tmp_path, TINY)), "--out", str(out), "--dry-run", "--set", "steps=10"])
    assert code == 0
    assert "plan valid (2 population runs)" in capsys.readouterr().out
    assert not out.exists()


def test_cli_dry_run_prints_an_estimate_from_a_calibration(tmp_path, capsys):
    out = tmp_path / "out"
    path = write(tmp_path, TINY.replace("runs = 2", "runs = 2\n[excursions]\nstarts = 3\nspacing = 5"))
    code = main(["sweep", str(path), "--out", str(out), "--dry-run", "--calibrate", "0.05"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    per_chunk = [line for line in lines if line.strip().startswith(("offpac: estimated ~", "ace-eta: estimated ~"))]
    assert len(per_chunk) == 2 and all("training ~" in line and "evaluation <= " in line for line in per_chunk)
    total = [line for line in lines if line.startswith("emphatic-rl sweep: estimated ~")]
    assert len(total) == 1
    assert "-second calibration; evaluation bounded by 2 evaluations x (1 episodes + 3 excursion starts)" in total[0]
    assert not out.exists()  # no run folder, nothing trained


def test_cli_only_and_bad_override(tmp_path, capsys):
    path = write(tmp_path, TINY)
    assert main(["sweep", str(path), "--only", "nope", "--dry-run"]) == 2
    assert "--only 'nope' is not a variant of this study; allowed: offpac, ace-eta" in capsys.readouterr().err
    assert main(["sweep", str(path), "--set", "stepz=10", "--dry-run"]) == 2
    assert "unknown config key 'stepz'" in capsys.readouterr().err


def test_excursions_segments_match_one_run_and_log_the_objective(tmp_path):
    text = TINY.replace("runs = 2", "runs = 2\n[excursions]\nstarts = 3\nspacing = 5")
    study = load_study(write(tmp_path, text))
    assert study.excursions == (3, 5)
    run_study(study, tmp_path / "exc", log=lambda m: None)
    plain = load_study(write(tmp_path, TINY, "plain.toml"))
    run_study(plain, tmp_path / "plain", log=lambda m: None)

    def rows(root: str, metric: str) -> dict[tuple[int, int], float]:
        return {(s, m): v for s, name, m, v in read_metrics(tmp_path / root / "ace-eta" / "metrics.csv")
                if name == metric}

    # training in eval_every segments (resume) is bit-identical to one call
    assert rows("exc", "eval/exact_J") == rows("plain", "eval/exact_J")
    excursions = rows("exc", "eval/excursions_return")
    assert sorted({s for s, _ in excursions}) == [20, 40] and len(excursions) == 16
    # the three-state MDP's rewards are 0, 1 or 2 per episode; rollouts may start in the aliased states
    assert all(0.0 <= v <= 2.0 for v in excursions.values())
    assert json.loads((tmp_path / "exc" / "ace-eta" / "config.json").read_text())["steps"] == 40


def test_bad_excursions_table(tmp_path):
    text = TINY.replace("runs = 2", "runs = 2\n[excursions]\nstart = 3")
    with pytest.raises(ConfigError, match="unknown key 'start' in \\[excursions\\]; allowed: starts, full_starts"):
        load_study(write(tmp_path, text))


@pytest.mark.slow
def test_n18_study_reproduces_offpac_wrong_ace_right(tmp_path):
    """The committed N18 study (fig1 variants only): OffPAC ends near 0.87, ACE near 1.2 (Imani et al. 2018, fig. 1)."""
    from emphatic_rl.studies.report import best_setting, load_results, summarise_settings

    path = Path(__file__).resolve().parents[1] / "experiments" / "n18_three_state.toml"
    assert main(["sweep", str(path), "--out", str(tmp_path), "--only", "offpac", "--only", "ace"]) == 0
    results, metric = load_results(tmp_path)
    assert metric == "eval/exact_J"
    final = {name: best_setting(summarise_settings(vr, "final")).final[0] for name, vr in results.items()}
    assert 0.85 < final["offpac"] < 0.88
    assert final["ace"] > 1.15
