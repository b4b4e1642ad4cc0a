"""The ``gradients`` command: JSON numbers, table, plot and one clear error per bad input."""

import argparse
import json

import pytest

from emphatic_rl.cli import main as cli_main
from emphatic_rl.cli.gradients import add_gradients_arguments, run_gradients


def main(argv):
    return cli_main(["gradients", *argv])


def run_json(capsys, *argv):
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_three_state_ascent(capsys):
    report = run_json(
        capsys, "--env", "counterexample-three-state", "--estimators", "true,offpac,ace", "--ascent", "--steps", "200"
    )
    assert report["J"] == pytest.approx(0.6875)
    assert report["estimators"]["ace"]["cosine"] == pytest.approx(1.0)
    assert report["estimators"]["ace"]["relative_bias"] == pytest.approx(0.0, abs=1e-10)
    assert report["estimators"]["offpac"]["relative_bias"] > 0.5
    assert report["estimators"]["offpac"]["final_J"] == pytest.approx(0.875, abs=0.003)
    assert report["estimators"]["ace"]["final_J"] == pytest.approx(1.25, abs=0.003)
    assert len(report["estimators"]["ace"]["final_policy"]) == 3


def test_json_dpg_and_monte_carlo(capsys, tmp_path):
    report = run_json(capsys, "--env", "counterexample-dpg", "--estimators", "dpg,emphatic-dpg")
    assert report["estimators"]["emphatic-dpg"]["cosine"] == pytest.approx(1.0)
    assert report["estimators"]["dpg"]["cosine"] < 0.9
    theta_file = tmp_path / "theta.json"
    theta_file.write_text(json.dumps([[0.2, -0.4], [0.0, 0.1]]))
    report = run_json(
        capsys,
        "--env",
        "counterexample-three-state",
        "--theta",
        str(theta_file),
        "--estimators",
        "ace",
        "--samples",
        "20000",
        "--interest",
        "episodic",
    )
    assert report["theta"] == [[0.2, -0.4], [0.0, 0.1]]
    assert report["estimators"]["ace"]["monte_carlo"]["max_abs_z"] < 4.5


def test_table_and_plot(capsys, tmp_path):
    parser = argparse.ArgumentParser()
    add_gradients_arguments(parser)
    plot = tmp_path / "ascent.png"
    args = parser.parse_args(["--env", "counterexample-three-state", "--ascent", "--steps", "20", "--plot", str(plot)])
    assert run_gradients(args) == 0
    out = capsys.readouterr().out
    assert "J = 0.687500" in out and "offpac" in out and "final J" in out
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--env", "nope"], "unknown env 'nope' for gradients; allowed: counterexample-three-state"),
        (["--env", "counterexample-long", "--estimators", "ace,foo"], "unknown estimator 'foo'; allowed: true"),
        (["--env", "counterexample-long", "--estimators", "dpg"], "'dpg' does not apply to a linear softmax"),
        (["--env", "collision", "--estimators", "ace"], "probability 0 to action 1 in state 0"),
        (["--env", "counterexample-long", "--interest", "sometimes"], "unknown --interest 'sometimes'"),
        (["--env", "counterexample-long", "--plot", "x.png"], "--plot draws the ascent: add --ascent"),
        (["--env", "counterexample-long", "--env-option", "middle_steps=0"], "middle_steps must be an integer"),
        (["--env", "counterexample-long", "--theta", "missing.json"], "--theta must be zeros, random or an"),
    ],
)
def test_bad_input_one_clear_error(capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err and captured.out == ""


def test_theta_of_wrong_shape(capsys, tmp_path):
    theta_file = tmp_path / "theta.json"
    theta_file.write_text(json.dumps([1.0, 2.0, 3.0]))
    assert main(["--env", "counterexample-three-state", "--theta", str(theta_file)]) == 2
    assert "theta has shape (3,), expected (2, 2)" in capsys.readouterr().err
