"""The Python API: build, learn in memory, save / load (safely), predict, evaluate; the README's example runs."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import emphatic_rl
from emphatic_rl.api import Model
from emphatic_rl.config import ConfigError
from emphatic_rl.runner import EarlyStopping

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in the README."""
    text = README.read_text()
    start = text.index(heading)
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match is not None, f"no python block after {heading!r}"
    return match.group(1)


def test_import_stays_light():
    import subprocess
    import sys

    code = "import sys, emphatic_rl; print('emphatic_rl.api' in sys.modules, 'emphatic_rl.train' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    assert emphatic_rl.make_agent is emphatic_rl.api.make_agent


def test_readme_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_block("## Python API"), "README.md", "exec"), namespace)
    assert (tmp_path / "dqn-cartpole.pt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dqn-cartpole.pt"]  # learn wrote no folder
    model = namespace["model"]
    assert namespace["action"].shape == () and namespace["actions"].shape == (4,)
    assert model.num_timesteps == 1_000
    assert np.isfinite(namespace["mean_return"])


def test_learn_in_memory_logs_and_saved_agent_acts_identically(tmp_path):
    model = emphatic_rl.make_agent("dqn", env="cartpole", seed=3, learning_starts=50, batch_size=16, hidden=(32,))
    model.learn(200, log_every=100, eval_every=100)
    steps = sorted({step for step, name, *_ in model.logs.rows if name == "eval/return"})
    assert steps == [100, 200]
    assert {name for _, name, *_ in model.logs.rows} >= {"train/loss", "eval/return", "train/diverged"}
    model.learn(100)  # continues the same run
    assert model.num_timesteps == 300
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    path = tmp_path / "agent.pt"
    model.save(path)
    loaded = emphatic_rl.load(path)
    assert loaded.num_timesteps == 300 and tuple(loaded.config.agent_options["hidden"]) == (32,)
    np.testing.assert_array_equal(loaded.predict(obs), model.predict(obs))
    for key, tensor in model.agent.state_dict()["q_network"].items():
        assert torch.equal(tensor, loaded.agent.state_dict()["q_network"][key])
    # the same evaluation (same seed) gives the same returns
    assert loaded.evaluate(episodes=3, seed=5) == model.evaluate(episodes=3, seed=5)


def test_learn_with_log_dir_writes_metrics(tmp_path):
    model = Model("dqn", "cartpole", learning_starts=20, batch_size=8, hidden=(16,))
    model.learn(60, log_every=20, log_dir=tmp_path / "logs")
    assert (tmp_path / "logs" / "metrics.csv").is_file()
    assert any(name == "train/loss" for _, name, *_ in model.logs.rows)


def test_predict_shapes_and_errors():
    model = Model("ace", "counterexample-three-state", env_options={"observation": "state"}, population_size=3,
                  critic="oracle")
    one = model.predict(np.eye(3, dtype=np.float32)[0])
    batch = model.predict(np.eye(3, dtype=np.float32), member=2)
    assert one.shape == () and batch.shape == (3,) and batch.dtype == np.int64
    sampled = model.predict(np.eye(3, dtype=np.float32), deterministic=False)
    assert sampled.shape == (3,) and set(sampled.tolist()) <= {0, 1}
    with pytest.raises(ValueError, match=r"obs must have shape \(3,\) \(one observation\) or \[B, \*\(3,\)\]"):
        model.predict(np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"member must be an integer in \[0, 3\)"):
        model.predict(np.eye(3)[0], member=3)
    returns = model.evaluate_members(episodes=4, seed=0)
    assert returns.shape == (3, 4)


def test_continuous_actions_predict_the_mean_or_a_sample():
    model = Model("gaussian-offpac", "pendulum", learning_starts=10, batch_size=8)
    obs = np.zeros((5, 3), dtype=np.float32)
    mean = model.predict(obs)
    assert mean.shape == (5, 1) and np.allclose(mean, mean[0])
    assert model.predict(obs, deterministic=False).shape == (5, 1)


def test_bad_options_are_one_clear_error_before_anything_is_built():
    with pytest.raises(ValueError, match="unknown option"):
        Model("dqn", "cartpole", bogus=1)
    with pytest.raises(ValueError, match="unknown agent 'nope'"):
        Model("nope")
    with pytest.raises(ConfigError, match="steps must be an integer >= 1"):
        Model("dqn", "cartpole").learn(0)


def test_loading_refuses_a_file_that_would_run_code(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    crafted = tmp_path / "crafted.pt"
    torch.save({"format": "emphatic-rl-agent", "version": 1, "agent": Exploit()}, crafted)
    with pytest.raises(ValueError, match="refused to load it"):
        emphatic_rl.load(crafted)
    assert not marker.exists()
    # a plain pickle (not a torch zip) with the same payload is refused as well
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ValueError, match="refused to load it"):
        emphatic_rl.load(raw)
    assert not marker.exists()
    # plain data that is not a saved agent
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="is not a saved emphatic-rl agent"):
        emphatic_rl.load(other)


def test_early_stopping_ends_learn():
    model = Model("dqn", "cartpole", learning_starts=20, batch_size=8, hidden=(16,), eval_episodes=2)
    stopper = EarlyStopping(target=-1.0)  # any return reaches it: stop at the first evaluation
    model.learn(500, eval_every=50, callbacks=[stopper])
    assert stopper.stopped_at == 50 and model.num_timesteps == 50


@pytest.mark.parametrize(
    ("agent", "env", "options"),
    [
        ("deep-ace", "cartpole", {"batch_size": 8, "learning_starts": 5}),
        ("dpg", "pendulum", {"batch_size": 8, "learning_starts": 5}),
        ("dyna", "bordered-gridworld", {}),
        ("offpac", "counterexample-three-state", {"critic": "tdrc"}),
    ],
)
def test_every_kind_of_agent_saves_and_loads_as_plain_data(tmp_path, agent, env, options):
    model = Model(agent, env, **options)
    model.learn(20, log=False)
    model.save(tmp_path / "agent.pt")
    loaded = emphatic_rl.load(tmp_path / "agent.pt")
    obs = loaded._probe_env().reset(seed=0).cpu().numpy()
    np.testing.assert_array_equal(loaded.predict(obs), model.predict(obs))
