"""Every script in examples/ runs, with small sizes passed on its command line, and prints what it promises."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested():
    tested = {"ace_counterexample", "exact_lab_bias", "dqn_cartpole", "load_trained_agent"}
    assert {path.stem for path in EXAMPLES.glob("*.py")} == tested


def test_ace_counterexample(tmp_path, capsys):
    out = tmp_path / "ace"
    assert load("ace_counterexample").main(["--runs", "4", "--steps", "200", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "OffPAC (eta = 0)" in text and "ACE (eta = 1)" in text
    assert (out / "curves.png").stat().st_size > 0
    assert (out / "checkpoint.pt").is_file()


def test_exact_lab_bias(capsys):
    assert load("exact_lab_bias").main(["--streams", "64", "--steps", "20"]) == 0
    text = capsys.readouterr().out
    rows = [line.split() for line in text.splitlines() if line[:5].strip().isdigit()]
    assert len(rows) == 5
    # ACE with eta = 1 and all-actions are the true gradient (cosine 1) at every policy on the path.
    assert all(float(row[4]) == pytest.approx(1.0, abs=1e-6) and float(row[6]) == pytest.approx(1.0) for row in rows)
    assert "OffPAC's ascent ends at J = 0.87" in text and "at 1.2" in text
    assert text.count("largest |z|") == 2


def test_dqn_cartpole(tmp_path, capsys):
    argv = ["--steps", "300", "--seeds", "2", "--learning-starts", "100", "--out", str(tmp_path / "dqn")]
    assert load("dqn_cartpole").main(argv) == 0
    text = capsys.readouterr().out
    returns = text.split("max 500): ")[1].splitlines()[0].split(", ")
    assert len(returns) == 2 and all(1 <= float(value) <= 500 for value in returns)


def test_load_trained_agent(tmp_path, capsys):
    module = load("load_trained_agent")
    # The Python API path: train, save, load, evaluate.
    assert module.main(["--steps", "200", "--episodes", "2"]) == 0
    text = capsys.readouterr().out
    assert "loaded a saved dqn on cartpole, trained for 200 steps" in text and "greedy return over 2 episodes" in text
    # The run-folder path, on a folder written by train.
    from emphatic_rl.config import TrainConfig
    from emphatic_rl.train import train

    run_dir = tmp_path / "run"
    train(TrainConfig(agent="dqn", steps=100, progress=False, agent_options={"learning_starts": 50}), run_dir)
    assert module.main(["--run", str(run_dir), "--episodes", "2"]) == 0
    text = capsys.readouterr().out
    assert "loaded dqn on cartpole, trained for 100 steps" in text and "member 0: returns" in text
    # A folder that is not a run: one line, exit code 2.
    assert module.main(["--run", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_the_example_train_config_trains(tmp_path, capsys):
    from emphatic_rl.cli import main

    out = tmp_path / "run"
    argv = ["train", "--config", str(EXAMPLES / "train_config.toml"), "--steps", "30", "--out", str(out)]
    argv += ["--no-progress", "--set", "eval_every=30", "--set", "eval_episodes=1", "--set", "eval_max_steps=20"]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["agent"], config["env"], config["population_size"]) == ("ace-direct", "mountain-car", 15)
    assert len(config["agent_options"]["alpha_actor"]) == 15


def test_examples_reject_bad_sizes(capsys):
    with pytest.raises(SystemExit) as error:
        load("dqn_cartpole").main(["--steps", "0"])
    assert error.value.code == 2
    assert "must be an integer >= 1" in capsys.readouterr().err


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
