"""The Dyna study runner: a tiny end-to-end run, config errors, and (slow) the paper's qualitative outcomes."""

import json

import pytest

from emphatic_rl.cli import main as cli_main
from emphatic_rl.studies.dyna import StudyConfig, load_config, run_study, summarise


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
