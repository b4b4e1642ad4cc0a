"""The Dyna study runner: a tiny end-to-end run, config errors, and (slow) the paper's qualitative outcomes."""

import json

import pytest
import torch

from emphatic_rl.cli import main as cli_main
from emphatic_rl.envs.gridworld import BorderedGridworld
from emphatic_rl.studies.dyna import (
    StudyConfig,
    load_config,
    population_config,
    run_population,
    run_study,
    summarise,
)


def main(argv):
    return cli_main(["dyna", *argv])


TINY = [
    "--set", "seeds=2",
    "--set", "steps=60",
    "--set", "eval_every=20",
    "--set", "hallucination_probabilities=[0.0, 0.5]",
    "--set", "step_sizes=[0.5]",
    "--set", 'variants=["one-step-successor", "multi-step-predecessor"]',
    "--set", "height=3",
    "--set", "width=3",
]  # fmt: skip


def test_tiny_study_writes_tables_json_and_figures(tmp_path):
    out = tmp_path / "dyna"
    assert main(["experiments/dyna_gridworld.toml", "--out", str(out), *TINY]) == 0
    for name in (
        "summary.md",
        "results.json",
        "learning_curves_online.png",
        "learning_curves_greedy.png",
        "dose_response.png",
        "value_maps.png",
    ):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    variants = {(row["variant"], row["p_h"]) for row in results["best"]}
    assert variants == {
        ("one-step-successor", 0.0),
        ("one-step-successor", 0.5),
        ("multi-step-predecessor", 0.0),
        ("multi-step-predecessor", 0.5),
        ("model-free", None),
    }
    by_key = {(row["variant"], row["p_h"]): row for row in results["best"]}
    assert by_key[("multi-step-predecessor", 0.5)]["fraction_bootstrap_simulated"] == 0.0
    assert by_key[("one-step-successor", 0.5)]["fraction_bootstrap_hallucinated"] > 0.2
    assert len(by_key[("model-free", None)]["online_curve_mean"]) == 60 // 20 + 1
    assert "| model-free |" in (out / "summary.md").read_text()


def exact_greedy_return(env: BorderedGridworld, q: torch.Tensor, horizon: int) -> torch.Tensor:
    """The test oracle: the greedy policy of ``q [P, S, A]`` (first arg-max) followed through the env's tables."""
    members = torch.arange(q.shape[0])
    state = torch.full((q.shape[0],), env.start_state, dtype=torch.int64)
    total, alive = torch.zeros(q.shape[0]), torch.ones(q.shape[0], dtype=torch.bool)
    for _ in range(horizon):
        action = q[members, state].argmax(dim=-1)
        total += alive.float() * env.reward_table[state, action]
        alive &= ~env.terminal_table[state, action]
        state = env.next_state_table[state, action]
    return total


def test_a_population_is_a_training_run_on_the_runner_and_keeps_the_study_numbers():
    config = StudyConfig(
        seeds=2, steps=80, eval_every=20, hallucination_probabilities=[0.0, 0.5], step_sizes=[0.5], height=3, width=3,
        max_episode_steps=30,
    )  # fmt: skip
    p_h, alpha = torch.tensor([0.0, 0.0, 0.5, 0.5]), torch.full((4,), 0.5)
    train_config = population_config(config, "one-step-successor", 5, p_h, alpha, seed=3)
    assert (train_config.agent, train_config.env, train_config.population_size) == ("dyna", "bordered-gridworld", 4)
    assert (train_config.num_envs, train_config.eval_episodes, train_config.eval_max_steps) == (1, 1, 30)
    result = run_population(config, "one-step-successor", 5, p_h, alpha, seed=3)
    # The numbers the study's own loop gave before it moved onto the Runner (bit-identical).
    assert result["online_curve"].tolist() == [
        [-30.0, -30.0, -30.0, -30.0], [-7.0, -17.0, -30.0, -11.0], [-7.0, -22.0, -25.0, -17.0],
        [-21.0, -7.0, -11.0, -30.0], [-5.5, pytest.approx(-5.2), -9.0, -9.0],
    ]  # fmt: skip
    assert result["greedy_curve"].tolist() == [
        [-30.0] * 4, [-30.0] * 4, [-30.0, -30.0, -4.0, -30.0], [-4.0, -4.0, -30.0, -30.0], [-4.0, -4.0, -30.0, -30.0],
    ]  # fmt: skip
    # The greedy return is the one rollout evaluator's, and equals the exact one of the tables.
    env = BorderedGridworld(height=3, width=3, max_episode_steps=30)
    assert torch.equal(result["greedy_curve"][-1], exact_greedy_return(env, result["q"], 30))


@pytest.mark.parametrize(
    "override, message",
    [
        ("planting_steps=3", "unknown key"),
        ("hallucination_probabilities=[0.1, 1.5]", r"must lie in \[0, 1\]"),
        ("planning_steps=-1", "planning_steps must be >= 0"),
        ("rollout_length=0", "rollout_length"),
        ('variants=["dyna-z"]', "study.variants must be"),
    ],
)
def test_bad_study_config_is_one_clear_error_before_any_work(override, message, capsys, tmp_path):
    assert main(["experiments/dyna_gridworld.toml", "--out", str(tmp_path / "x"), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emphatic-rl: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match=message):
        load_config("experiments/dyna_gridworld.toml", {override.split("=")[0]: json.loads(override.split("=")[1])})


@pytest.mark.slow
def test_hallucinated_value_outcomes_on_the_bordered_gridworld():
    """The study's claims (30 seeds, p_h in {0, 0.1}); ~1 minute on one core."""
    config = StudyConfig(hallucination_probabilities=[0.0, 0.1], step_sizes=[0.5])
    summary = summarise(config, run_study(config, progress=False))
    best = {(row["variant"], row["p_h"]): row for row in summary["best"]}
    free = best[("model-free", None)]

    def final(variant, p_h):
        row = best[(variant, p_h)]
        return row["online_final_mean"], row["online_final_ci"]

    for variant in ("one-step-successor", "multi-step-successor", "one-step-predecessor", "multi-step-predecessor"):
        # Perfect model: at least as fast as model-free (area under the online learning curve).
        assert best[(variant, 0.0)]["online_auc_mean"] >= free["online_auc_mean"]
    for variant in ("one-step-successor", "multi-step-successor"):
        (perfect, perfect_ci), (hallucinating, ci) = final(variant, 0.0), final(variant, 0.1)
        assert hallucinating + ci < perfect - perfect_ci
        assert hallucinating + ci < free["online_final_mean"] - free["online_final_ci"]
    (perfect, _), (hallucinating, _) = final("multi-step-predecessor", 0.0), final("multi-step-predecessor", 0.1)
    assert abs(hallucinating - perfect) < 0.05 * abs(perfect)
