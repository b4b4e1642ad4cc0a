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

import contextlib
import json
import math
import os
import shutil
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
from emphatic_rl.checkpoints import (
    CheckpointError,
    GracefulStop,
    atomic_write_bytes,
    load_checkpoint,
    remove_stale_temporaries,
    require_keys,
    save_checkpoint,
)
from emphatic_rl.config import ConfigError, TrainConfig, config_from_dict, validate_config
from emphatic_rl.envs import TensorEnv, make_env
from emphatic_rl.envs.base import DiscreteSpec
from emphatic_rl.logging import Logger
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
CHECKPOINT_KEYS = (
    "step", "config", "agent", "env", "buffer", "loop_generator", "episode_stats", "diverged", "last_eval", "obs",
)


@dataclass
class RunResult:
    """What ``train`` returns: the run folder, the last evaluation ``[P]`` and which members diverged ``bool[P]``."""

    out_dir: Path
    steps: int
    final_eval_return: torch.Tensor
    diverged: torch.Tensor
    #: the signal (``"SIGINT"`` / ``"SIGTERM"``) that stopped the run early, after a checkpoint at ``steps``
    interrupted: str | None = None


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
    from emphatic_rl.envs.registry import check_env_option_types

    check_env_option_types(config.env, config.env_options)  # wrong types: one error naming the key
    check_env_option_types(config.env, config.eval_env_options, "eval_env")
    probe_env = make_env(config.env, num_envs=1, device=device, **config.env_options)
    with _allocation_errors_as_config_errors(config, device):
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
        ConfigError / ValueError: any user mistake, with one message naming it (also a population whose replay
            buffer or envs would not fit in the device's memory, before anything large is allocated).
    """
    if agent is None:
        agent = build_agent(config)
    device = _resolve_device(config.device)
    num_envs = config.population_size * config.num_envs if agent.acts_in_env else config.num_envs
    capacity = max(1, agent.buffer_capacity)
    probe_env = make_env(config.env, num_envs=1, device=device, **config.env_options)
    check_buffer_memory(config, capacity, num_envs, probe_env, device)  # before the buffer is allocated
    with _allocation_errors_as_config_errors(config, device):
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
            capacity=capacity,
            num_streams=num_envs,
            obs_shape=spec.shape,
            obs_dtype=spec.dtype,
            action_shape=env.action_spec.shape,
            action_dtype=env.action_spec.dtype,
            device=device,
        )
    return Run(config, env, eval_env, agent, behaviour, buffer, device)


_make_behaviour = make_behaviour  # the earlier private name


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``: ``MemAvailable`` of ``/proc/meminfo`` on CPU, the CUDA allocator's free bytes on a
    GPU; ``None`` where unknown."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "cpu":
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (OSError, ValueError, RuntimeError, AttributeError):
        return None
    return None


def buffer_bytes(capacity: int, num_streams: int, obs_spec: Any, action_spec: Any) -> int:
    """Bytes of a ``TrajectoryBuffer``'s storage: per slot the observation, the action, reward / log mu / interest
    (float32) and the two end flags."""

    def size(spec: Any) -> int:
        return math.prod(spec.shape) * torch.empty((), dtype=spec.dtype).element_size()

    return capacity * num_streams * (size(obs_spec) + size(action_spec) + 12 + 2)


def check_buffer_memory(config: TrainConfig, capacity: int, num_streams: int, probe_env: TensorEnv,
                        device: torch.device) -> None:
    """One ``ConfigError`` when the replay buffer alone would not fit in the free memory of ``device``."""
    need = buffer_bytes(capacity, num_streams, probe_env.observation_spec, probe_env.action_spec)
    free = available_memory_bytes(device)
    if free is not None and need > 0.9 * free:
        gib = 2**30
        raise ConfigError(
            f"the replay buffer would need about {need / gib:.1f} GiB ({capacity} steps x {num_streams} streams: "
            f"population_size {config.population_size}, num_envs {config.num_envs}) but {device} has "
            f"{free / gib:.1f} GiB free; lower population_size, num_envs or the agent's buffer size"
        )


@contextlib.contextmanager
def _allocation_errors_as_config_errors(config: TrainConfig, device: torch.device):
    """An allocator failure while building the run (a population too large for memory) becomes one line."""
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError) as error:
        raise ConfigError(_out_of_memory_message(config, device, error)) from None
    except RuntimeError as error:
        if "alloc" not in str(error).lower() and "out of memory" not in str(error).lower():
            raise
        raise ConfigError(_out_of_memory_message(config, device, error)) from None


def _out_of_memory_message(config: TrainConfig, device: torch.device, error: BaseException) -> str:
    detail = str(error).strip().splitlines()[0][:120] if str(error).strip() else "no memory"
    return (f"population_size {config.population_size} x num_envs {config.num_envs} does not fit in the memory of "
            f"{device} (the allocator refused: {detail}); lower population_size, num_envs or the networks' size")


def prepare_out_dir(out_dir: str | Path, resume: bool) -> Path:
    """Create (or check) the run folder; raise ``ConfigError`` if it cannot be written or would be overwritten.

    A folder with ``config.json`` but no ``checkpoint.pt`` holds a run stopped before its first checkpoint: it may be
    rerun in place (same ``--out``) or resumed (``--resume``, which then starts over from step 0 with the saved
    config, bit-identical to an uninterrupted run). Leftover temporary files of killed writes are removed.
    """
    out = Path(out_dir)
    if resume:
        if not (out / CONFIG_NAME).is_file():
            raise ConfigError(f"--resume {str(out)!r} is not a run folder (it has no {CONFIG_NAME})")
    elif (out / CHECKPOINT_NAME).exists() or ((out / "metrics.csv").exists() and not (out / CONFIG_NAME).is_file()):
        raise ConfigError(f"output folder {str(out)!r} already holds a run; use --resume {out} or another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{id(out)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        what = "is read-only; a resumed run must write its checkpoint and logs there" if resume else "is not writable"
        raise ConfigError(f"output folder {str(out)!r} {what} ({error.strerror})") from None
    remove_stale_temporaries(out)
    return out


def load_run_config(out_dir: str | Path) -> TrainConfig:
    """The ``TrainConfig`` saved in a run folder, checked (one ``ConfigError`` naming the file if it is broken)."""
    path = Path(out_dir) / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{str(path)!r} does not exist; is {str(out_dir)!r} a run folder?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{str(path)!r} is not valid JSON: {error}") from None
    return config_from_dict(data, where=str(path))


@torch.no_grad()
def evaluate(run: Run, step: int, backend: str = "auto") -> dict[str, torch.Tensor]:
    """Run ``eval_episodes`` episodes per member with the target policy. Returns ``return`` and ``length``, ``[P]``.

    ``backend``: ``"auto"`` runs the compiled rollouts of ``emphatic_rl.agents.linear.rollouts`` where they apply
    (CPU, linear actor-critic with tile coding, Mountain Car / Puddle World; frozen members NaN), else the torch
    loop of ``emphatic_rl.runner.rollout_returns``; ``"torch"`` / ``"numba"`` force one. The eval env is reset from
    the ``evaluation`` stream of ``emphatic_rl.seeding`` at ``step``.
    """
    from emphatic_rl.agents.linear.rollouts import fused_evaluate

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
# Checkpoint files are written and read by ``emphatic_rl.checkpoints`` (atomic, SHA-256 checksum, weights_only).
def read_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A run checkpoint (``Runner.state_dict()``) read safely by ``emphatic_rl.checkpoints.load_checkpoint``, with
    its keys and step checked.

    Raises:
        CheckpointError: one line naming the file (missing, corrupted, unsafe, not a run checkpoint).
    """
    state = require_keys(load_checkpoint(path, map_location=device), CHECKPOINT_KEYS, path)
    step = state["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"checkpoint {str(path)!r} holds an invalid step {step!r}")
    return state


class Checkpoint(Callback):
    """Every ``every`` steps (``0``: only at the end) and at the last step, save ``Runner.state_dict()`` to ``path``
    (``emphatic_rl.checkpoints.save_checkpoint``: atomic, with a checksum).

    With a ``stop`` (an entered ``emphatic_rl.checkpoints.GracefulStop``), a SIGINT / SIGTERM received during the run
    writes a checkpoint after the current step and ends the run (``runner.stop()``).
    """

    def __init__(self, path: str | Path, every: int, stop: GracefulStop | None = None) -> None:
        self.path, self.every, self.stop = Path(path), every, stop

    def on_step(self, runner: Runner) -> None:
        requested = self.stop is not None and self.stop.requested
        if runner.due(self.every) or requested:
            save_checkpoint(runner.state_dict(), self.path)
        if requested:
            runner.stop()


def default_callbacks(config: TrainConfig, checkpoint_path: str | Path | None = None,
                      extra: Sequence[Callback] = (), stop: GracefulStop | None = None) -> list[Callback]:
    """The callbacks of ``train``, in order: divergence guard and metrics every ``log_every`` steps, evaluation every
    ``eval_every``, then ``extra``, a checkpoint every ``checkpoint_every`` (with a ``checkpoint_path``; also on a
    signal caught by ``stop``) and the progress bar (``config.progress``)."""
    callbacks: list[Callback] = [DivergenceGuard(config.log_every), LogMetrics(config.log_every),
                                 Evaluate(config.eval_every), *extra]
    if checkpoint_path is not None:
        callbacks.append(Checkpoint(checkpoint_path, config.checkpoint_every, stop))
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
    path = out / CHECKPOINT_NAME
    resume = resume and path.is_file()  # no checkpoint yet: start over from step 0
    runner = Runner(run, config=config)
    if resume:
        state = read_checkpoint(path, run.device)
        if config.steps < state["step"]:
            raise ConfigError(
                f"--steps {config.steps} is below the {state['step']} steps this run has done; give --steps >= "
                f"{state['step']} (or none)"
            )
        try:
            runner.load_state_dict(state)
        except CheckpointError as error:  # a checkpoint the agent refuses, with its reason
            raise CheckpointError(f"checkpoint {str(path)!r} cannot be resumed: {error}") from None
        except (KeyError, ValueError, RuntimeError, TypeError, AttributeError, IndexError) as error:
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not match the run's config ({out / CONFIG_NAME}): {detail[:200]}"
            ) from None
        saved_config = state["config"] if isinstance(state["config"], dict) else {}
        if config.steps != saved_config.get("steps", config.steps):  # --steps changed the run's length
            atomic_write_bytes(out / CONFIG_NAME, json.dumps(config.to_dict(), indent=2, default=str).encode())
    else:
        for stale in ("metrics.csv", "tensorboard"):  # of an attempt stopped before its first checkpoint
            if (out / stale).is_dir():
                shutil.rmtree(out / stale)
            elif (out / stale).exists():
                (out / stale).unlink()
        atomic_write_bytes(out / CONFIG_NAME, json.dumps(config.to_dict(), indent=2, default=str).encode())
        runner.reset()
    # + hparams if new
    runner.logger = Logger.from_config(out, config, resume_step=runner.step if resume else None)
    stop = GracefulStop()  # Ctrl-C / SIGTERM: checkpoint after the current step, then return
    try:
        with stop:
            step = runner.run(config.steps, default_callbacks(config, path, callbacks, stop))
    finally:
        runner.logger.close()
    interrupted = stop.signal_name if stop.requested and step < config.steps else None
    return RunResult(out, step, runner.last_eval, runner.diverged, interrupted)
