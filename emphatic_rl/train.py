"""Training runs in a folder: build a ``Run`` from a config, then ``train`` it with the ``emphatic_rl.runner.Runner``
(collect, store, update, evaluate, log, checkpoint); resume continues bit-identically.

Layout. ``P`` learners (``population_size``). Agents that act in the env (DQN...) get ``E = num_envs`` env copies
each, ``N = P * E`` in all, laid out member-major (member ``p`` owns copies ``p*E ... p*E + E - 1``). Agents that
learn from a fixed behaviour policy get ``R = num_envs`` behaviour streams that the agent maps to its learners.

One iteration (``step`` counts iterations, i.e. steps of each env copy):

1. actions from the agent's behaviour (``agent.act``) or the fixed ``Behaviour``, with their log-probabilities;
2. ``env.step``; the transition ``(obs, action, reward, terminated, truncated, final_obs, behaviour_log_prob)`` goes
   into the ``TrajectoryBuffer`` for all streams at once;
3. ``agent.update(buffer, step)``;
4. the callbacks (``default_callbacks``): every ``log_every`` steps: metrics to ``metrics.csv`` and TensorBoard
   (names as in ``emphatic_rl.logging``: ``rollout/ep_rew_mean``, ``train/loss``, ``time/fps``...), divergence
   check (a member with non-finite parameters is marked diverged and frozen; the others go on); every ``eval_every``
   steps: the target policies are evaluated on separate env copies; every ``checkpoint_every`` steps: an atomic
   checkpoint.

Evaluation: ``eval_episodes`` episodes per member from the env's start distribution, undiscounted return, each capped
at ``eval_max_steps``; the eval env is reseeded from ``(seed, step)`` so evaluation never touches the training RNGs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from emphatic_rl.agents import load_agents
from emphatic_rl.agents.base import (
    Agent,
    Behaviour,
    EnvStateBehaviour,
    FixedDiscreteBehaviour,
    UniformRandomBehaviour,
)
from emphatic_rl.agents.registry import AgentContext, make_agent
from emphatic_rl.buffers import TrajectoryBuffer
from emphatic_rl.config import ConfigError, TrainConfig, validate_config
from emphatic_rl.envs import TensorEnv, make_env
from emphatic_rl.envs.base import DiscreteSpec
from emphatic_rl.logging import Logger, atomic_torch_save, atomic_write_bytes
from emphatic_rl.runner import (
    Callback,
    DivergenceGuard,
    Evaluate,
    LogMetrics,
    Progress,
    Runner,
    rollout_returns,
)
from emphatic_rl.seeding import stream_seed

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"


@dataclass
class RunResult:
    """What ``train`` returns: the run folder, the last evaluation ``[P]`` and which members diverged ``bool[P]``."""

    out_dir: Path
    steps: int
    final_eval_return: torch.Tensor
    diverged: torch.Tensor


@dataclass
class Run:
    """Everything built from a config, before any file is written."""

    config: TrainConfig
    env: TensorEnv
    eval_env: TensorEnv
    agent: Agent
    behaviour: Behaviour | None
    buffer: TrajectoryBuffer
    device: torch.device


def _resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a torch device; allowed: cpu, cuda, cuda:<index>, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    return device


def make_behaviour(config: TrainConfig, env: TensorEnv) -> Behaviour:
    """The fixed behaviour policy ``config.behaviour`` asks for on ``env`` (``"default"``: the env's own)."""
    spec = env.action_spec
    choice = config.behaviour
    if choice == "default":
        # The env's own documented behaviour policy where it declares one, else uniform random.
        if env.has_state_behaviour:
            return EnvStateBehaviour(env)
        probabilities = env.behaviour_probabilities
        if probabilities is not None:
            return FixedDiscreteBehaviour(list(probabilities))
        return UniformRandomBehaviour(spec)
    if choice == "uniform":
        return UniformRandomBehaviour(spec)
    if isinstance(choice, list) and isinstance(spec, DiscreteSpec):
        if len(choice) != spec.n:
            raise ConfigError(f"behaviour has {len(choice)} probabilities but env {config.env!r} has {spec.n} actions")
        return FixedDiscreteBehaviour(choice)
    raise ConfigError(f"behaviour must be 'default', 'uniform' or a list of action probabilities, got {choice!r}")


def build_agent(config: TrainConfig) -> Agent:
    """Validate ``config`` and build its agent alone (from a one-copy env's specs). Writes nothing.

    Raises:
        ConfigError / ValueError: any user mistake, with one message naming it.
    """
    validate_config(config)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    load_agents()
    device = _resolve_device(config.device)
    from emphatic_rl.agents.registry import get_agent_entry

    entry = get_agent_entry(config.agent)  # unknown agent: error before the env is built
    entry.build_options(dict(config.agent_options))  # unknown or bad agent options: error before the env is built
    probe_env = make_env(config.env, num_envs=1, device=device, **config.env_options)
    return make_agent(
        config.agent,
        AgentContext(
            observation_spec=probe_env.observation_spec,
            action_spec=probe_env.action_spec,
            population_size=config.population_size,
            envs_per_member=config.num_envs,
            num_streams=config.num_envs,
            device=device,
            seed=config.seed,
            total_steps=config.steps,
            env_name=config.env,
            env=probe_env,
        ),
        **config.agent_options,
    )


def build_run(config: TrainConfig, agent: Agent | None = None) -> Run:
    """Validate ``config`` and build env, eval env, agent, behaviour and buffer. Writes nothing.

    Args:
        config: the run's configuration.
        agent: an agent already built by ``build_agent(config)`` (e.g. a loaded one), instead of a new one.

    Raises:
        ConfigError / ValueError: any user mistake, with one message naming it.
    """
    if agent is None:
        agent = build_agent(config)
    device = _resolve_device(config.device)
    num_envs = config.population_size * config.num_envs if agent.acts_in_env else config.num_envs
    env = make_env(config.env, num_envs=num_envs, device=device, **config.env_options)
    eval_env = make_env(
        config.env,
        num_envs=config.population_size * config.eval_episodes,
        device=device,
        **config.evaluation_env_options(),
    )
    behaviour = None if agent.acts_in_env else make_behaviour(config, env)
    spec = env.observation_spec
    buffer = TrajectoryBuffer(
        capacity=max(1, agent.buffer_capacity),
        num_streams=num_envs,
        obs_shape=spec.shape,
        obs_dtype=spec.dtype,
        action_shape=env.action_spec.shape,
        action_dtype=env.action_spec.dtype,
        device=device,
    )
    return Run(config, env, eval_env, agent, behaviour, buffer, device)


_make_behaviour = make_behaviour  # the earlier private name


def prepare_out_dir(out_dir: str | Path, resume: bool) -> Path:
    """Create (or check) the run folder; raise ``ConfigError`` if it cannot be written or would be overwritten."""
    out = Path(out_dir)
    if resume:
        if not (out / CONFIG_NAME).is_file() or not (out / CHECKPOINT_NAME).is_file():
            raise ConfigError(
                f"--resume {str(out)!r} is not a run folder (it needs {CONFIG_NAME} and {CHECKPOINT_NAME})"
            )
        return out
    if (out / CHECKPOINT_NAME).exists() or (out / "metrics.csv").exists():
        raise ConfigError(f"output folder {str(out)!r} already holds a run; use --resume {out} or another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"output folder {str(out)!r} is not writable: {error.strerror}") from None
    return out


def load_run_config(out_dir: str | Path) -> TrainConfig:
    data = json.loads((Path(out_dir) / CONFIG_NAME).read_text())
    return TrainConfig(**data)


@torch.no_grad()
def evaluate(run: Run, step: int, backend: str = "auto") -> dict[str, torch.Tensor]:
    """Run ``eval_episodes`` episodes per member with the target policy. Returns ``return`` and ``length``, ``[P]``.

    ``backend``: ``"auto"`` runs the compiled rollouts of ``emphatic_rl.agents.linear_rollouts`` where they apply
    (CPU, linear actor-critic with tile coding, Mountain Car / Puddle World; frozen members NaN), else the torch
    loop of ``emphatic_rl.runner.rollout_returns``; ``"torch"`` / ``"numba"`` force one. The eval env is reset from
    the ``evaluation`` stream of ``emphatic_rl.seeding`` at ``step``.
    """
    from emphatic_rl.agents.linear_rollouts import fused_evaluate

    config, env, agent = run.config, run.eval_env, run.agent
    results = fused_evaluate(run, step, backend)
    if results is not None:
        return results
    population, episodes = config.population_size, config.eval_episodes
    obs = env.reset(seed=stream_seed(config.seed, "evaluation", step))
    episode_return, episode_length = rollout_returns(agent, env, obs, population, episodes, config.eval_max_steps)
    results = {"return": episode_return.mean(dim=1), "length": episode_length.float().mean(dim=1)}
    objective = agent.exact_objective()
    if objective is not None:  # tabular MDPs: the exact J_mu of each member's policy
        results["exact_J"] = objective.float()
    return results


# ---------------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(runner: Runner, path: str | Path) -> None:
    """Write the runner's state (``Runner.state_dict()``) to ``path`` atomically."""
    atomic_torch_save(runner.state_dict(), path)


def load_checkpoint(path: str | Path, device: torch.device) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``."""
    return torch.load(path, map_location=device, weights_only=False)


class Checkpoint(Callback):
    """Every ``every`` steps (``0``: only at the end) and at the last step, ``save_checkpoint`` to ``path``."""

    def __init__(self, path: str | Path, every: int) -> None:
        self.path, self.every = Path(path), every

    def on_step(self, runner: Runner) -> None:
        if runner.due(self.every):
            save_checkpoint(runner, self.path)


def default_callbacks(config: TrainConfig, checkpoint_path: str | Path | None = None,
                      extra: Sequence[Callback] = ()) -> list[Callback]:
    """The callbacks of ``train``, in order: divergence guard and metrics every ``log_every`` steps, evaluation every
    ``eval_every``, then ``extra``, a checkpoint every ``checkpoint_every`` (with a ``checkpoint_path``) and the
    progress bar (``config.progress``)."""
    callbacks: list[Callback] = [DivergenceGuard(config.log_every), LogMetrics(config.log_every),
                                 Evaluate(config.eval_every), *extra]
    if checkpoint_path is not None:
        callbacks.append(Checkpoint(checkpoint_path, config.checkpoint_every))
    if config.progress:
        callbacks.append(Progress(config.steps))
    return callbacks


def train(
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    run: Run | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Run (or resume) a training run in ``out_dir``: a ``Runner`` with ``default_callbacks`` and a ``Logger``.

    Args:
        config: the run's configuration (on resume, the one saved in ``out_dir`` with any ``steps`` extension).
        out_dir: the run folder (created; must not already hold a run unless ``resume``).
        resume: continue from ``out_dir/checkpoint.pt``.
        run: an already built ``Run`` (from ``build_run(config)``), to avoid building twice.
        callbacks: extra callbacks, run after the evaluation and before the checkpoint of each step.
    """
    run = run or build_run(config)
    out = prepare_out_dir(out_dir, resume)
    runner = Runner(run, config=config)
    if resume:
        runner.load_state_dict(load_checkpoint(out / CHECKPOINT_NAME, run.device))
    else:
        atomic_write_bytes(out / CONFIG_NAME, json.dumps(config.to_dict(), indent=2, default=str).encode())
        runner.reset()
    # + hparams if new
    runner.logger = Logger.from_config(out, config, resume_step=runner.step if resume else None)
    try:
        step = runner.run(config.steps, default_callbacks(config, out / CHECKPOINT_NAME, callbacks))
    finally:
        runner.logger.close()
    return RunResult(out, step, runner.last_eval, runner.diverged)
