"""Logging: SB3-style names, hparams at the start of a run, per-setting charts for large populations, and the
optional W&B / MLflow backends (through fake modules: the real packages are not needed)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from emphatic_rl.cli import DEMO_CONFIG, main
from emphatic_rl.config import TrainConfig, apply_overrides
from emphatic_rl.logging import Logger, logger_backends, metric_name, read_metrics, run_hyperparameters
from emphatic_rl.train import build_run, train

SMALL = ["--agent", "dqn", "--env", "cartpole", "--steps", "80", "--no-progress", "--set", "eval_every=20",
         "--set", "eval_episodes=2", "--set", "log_every=20", "--set", "agent.learning_starts=10",
         "--set", "agent.batch_size=8", "--set", "checkpoint_every=0"]


def _accumulator(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _hparams(folder: Path) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = _accumulator(folder).PluginTagToContent("hparams")
    for blob in content.values():
        data = plugin_data_pb2.HParamsPluginData.FromString(blob)
        if data.HasField("session_start_info"):
            hparams = data.session_start_info.hparams
            return {k: v.string_value or v.number_value or v.bool_value for k, v in hparams.items()}
    return {}


def test_metric_names():
    assert metric_name("loss") == "train/loss"
    assert metric_name("eval/return") == "eval/return"
    assert metric_name("rollout/exploration_rate") == "rollout/exploration_rate"


def test_a_run_uses_the_sb3_names_and_records_its_hyperparameters(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *SMALL]) == 0
    tags = set(_accumulator(out / "tensorboard").Tags()["scalars"])
    assert {"rollout/ep_rew_mean", "rollout/ep_len_mean", "rollout/exploration_rate", "time/fps", "train/loss",
            "train/q_mean", "train/diverged", "eval/return", "eval/length"} <= tags
    assert all("/" in tag for tag in tags), sorted(tags)  # nothing at the root
    hparams = _hparams(out / "tensorboard")
    assert hparams["agent"] == "dqn" and hparams["env"] == "cartpole" and hparams["steps"] == 80
    assert hparams["agent.batch_size"] == 8
    fps = [v for _, name, _, v in read_metrics(out / "metrics.csv") if name == "time/fps"]
    assert fps and all(v > 0 for v in fps)


def _demo_config(runs: int = 6, steps: int = 40) -> TrainConfig:
    config = TrainConfig()
    apply_overrides(config, {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEMO_CONFIG.items()})
    config.steps, config.num_envs, config.population_size = steps, runs, 2 * runs
    config.eval_every, config.log_every, config.checkpoint_every, config.progress = 20, 20, 0, False
    config.agent_options = {**config.agent_options, "eta": [0.0] * runs + [1.0] * runs}
    return config


def test_per_member_hyperparameters_are_found():
    shared, per_member = run_hyperparameters(_demo_config())
    assert per_member == [{"eta": 0.0}] * 6 + [{"eta": 1.0}] * 6
    assert shared["agent.eta"] == "per member: 0, 1" and shared["agent.critic"] == "oracle"
    config = _demo_config()
    config.agent_options["eta"] = [1.0] * 12  # the same for everyone: a plain hyperparameter
    shared, per_member = run_hyperparameters(config)
    assert per_member is None and shared["agent.eta"] == 1.0


def test_a_large_population_is_charted_per_setting_not_averaged_over_settings(tmp_path):
    config = _demo_config()
    train(config, tmp_path / "run", run=build_run(config))
    root = tmp_path / "run" / "tensorboard"
    assert {p.name for p in root.iterdir() if p.is_dir()} == {"eta=0", "eta=1"}
    main_tags = set(_accumulator(root).Tags()["scalars"])
    assert not any(tag.startswith("eval/exact_J") for tag in main_tags)  # no mean over ACE and OffPAC
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.csv") if r[1] == "eval/exact_J"]
    last = max(step for step, *_ in rows)
    for label, members in (("eta=0", range(6)), ("eta=1", range(6, 12))):
        events = _accumulator(root / label).Scalars("eval/exact_J")
        expected = sum(v for step, _, m, v in rows if step == last and m in members) / 6
        assert events[-1].step == last and events[-1].value == pytest.approx(expected, rel=1e-6)
        assert _hparams(root / label)["agent.eta"] == float(label[-1])


class _FakeWandbRun:
    def __init__(self, calls):
        self.calls, self.id = calls, "fake-run-1"
        self.config = types.SimpleNamespace(update=lambda values, **_: calls["config"].update(values))

    def log(self, values, step):
        self.calls["log"].append((step, dict(values)))

    def finish(self):
        self.calls["finished"] = True


@pytest.fixture
def fake_wandb(monkeypatch):
    calls = {"init": None, "config": {}, "log": [], "finished": False}
    module = types.ModuleType("wandb")

    def init(**kwargs):
        calls["init"] = kwargs
        return _FakeWandbRun(calls)

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_wandb_backend_gets_the_same_scalars_and_the_hyperparameters(tmp_path, capsys, fake_wandb):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *SMALL, "--set", 'logger=["tensorboard", "wandb"]']) == 0
    assert fake_wandb["init"]["project"] == "emphatic-rl" and fake_wandb["init"]["name"] == "run"
    assert fake_wandb["config"]["agent"] == "dqn" and fake_wandb["finished"]
    keys = {k for _, values in fake_wandb["log"] for k in values}
    assert {"rollout/ep_rew_mean", "train/loss", "eval/return", "time/fps"} <= keys
    assert (out / "wandb_run_id").read_text() == "fake-run-1"
    assert (out / "tensorboard").is_dir()


def test_mlflow_backend_alone(tmp_path, capsys, monkeypatch):
    calls = {"params": {}, "metrics": [], "ended": False}
    module = types.ModuleType("mlflow")
    module.set_experiment = lambda name: calls.setdefault("experiment", name)
    module.start_run = lambda run_id=None, run_name=None: types.SimpleNamespace(
        info=types.SimpleNamespace(run_id="abc"), run_name=calls.setdefault("run_name", run_name))
    module.log_params = lambda params: calls["params"].update(params)
    module.log_metrics = lambda metrics, step: calls["metrics"].append((step, metrics))
    module.log_text = lambda text, path: None
    module.end_run = lambda: calls.update(ended=True)
    monkeypatch.setitem(sys.modules, "mlflow", module)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *SMALL, "--set", "logger=mlflow"]) == 0
    assert calls["experiment"] == "emphatic-rl" and calls["run_name"] == "run" and calls["ended"]
    assert calls["params"]["agent"] == "dqn"
    assert {"train/loss", "eval/return"} <= {k for _, m in calls["metrics"] for k in m}
    assert not (out / "tensorboard").exists()  # tensorboard not chosen


def test_missing_extra_and_bad_logger_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name))
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *SMALL, "--set", "logger=wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("emphatic-rl: error: logger 'wandb' needs the 'wandb' package, which is not installed "
                   "(pip install 'emphatic-rl[wandb]')")
    assert not out.exists()
    assert main(["train", "--out", str(out), *SMALL, "--set", "logger=neptune"]) == 2
    assert "unknown logger 'neptune'; allowed: tensorboard, wandb, mlflow, none" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cannot be combined"):
        logger_backends(["none", "tensorboard"])


def test_logger_writes_nothing_but_csv_with_none(tmp_path):
    logger = Logger(tmp_path, 2, tensorboard=False)
    logger.log(5, {"loss": torch.tensor([1.0, 2.0])})
    logger.close()
    assert read_metrics(tmp_path / "metrics.csv") == [(5, "train/loss", 0, 1.0), (5, "train/loss", 1, 2.0)]
    assert not (tmp_path / "tensorboard").exists()
