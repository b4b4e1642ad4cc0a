"""The training loop: collect, store, update, evaluate, log, checkpoint; resume continues bit-identically.

Layout. ``P`` learners (``population_size``). Agents that act in the env (DQN...) get ``E = num_envs`` env copies
each, ``N = P * E`` in all, laid out member-major (member ``p`` owns copies ``p*E ... p*E + E - 1``). Agents that
learn from a fixed behaviour policy get ``R = num_envs`` behaviour streams that the agent maps to its learners.

One iteration (``step`` counts iterations, i.e. steps of each env copy):

1. actions from the agent's behaviour (``agent.act``) or the fixed ``Behaviour``, with their log-probabilities;
2. ``env.step``; the transition ``(obs, action, reward, terminated, truncated, final_obs, behaviour_log_prob)`` goes
   into the ``TrajectoryBuffer`` for all streams at once;
3. ``agent.update(buffer, step)``;
4. every ``log_every`` steps: metrics to ``metrics.csv`` and TensorBoard (names as in ``emphatic_rl.logging``:
   ``rollout/ep_rew_mean``, ``train/loss``, ``time/fps``...), divergence check (a member with non-finite
   parameters is marked diverged and frozen; the others go on); every ``eval_every`` steps: the target policies are
   evaluated on separate env copies; every ``checkpoint_every`` steps: an atomic checkpoint.

Evaluation: ``eval_episodes`` episodes per member from the env's start distribution, undiscounted return, each capped
at ``eval_max_steps``; the eval env is reseeded from ``(seed, step)`` so evaluation never touches the training RNGs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
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


def _make_behaviour(config: TrainConfig, env: TensorEnv) -> Behaviour:
    spec = env.action_spec
    choice = config.behaviour
    if choice == "default":
        # The env's own documented behaviour policy where it has one, else uniform random.
        if callable(getattr(env, "current_behaviour_probabilities", None)):
            return EnvStateBehaviour(env)
        probabilities = getattr(env, "behaviour_probabilities", None)
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


def build_run(config: TrainConfig) -> Run:
    """Validate ``config`` and build env, eval env, agent, behaviour and buffer. Writes nothing.

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
        agent = make_agent(
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
    num_envs = config.population_size * config.num_envs if agent.acts_in_env else config.num_envs
    capacity = max(1, agent.buffer_capacity)
    check_buffer_memory(config, capacity, num_envs, probe_env, device)  # before the buffer is allocated
    with _allocation_errors_as_config_errors(config, device):
        env = make_env(config.env, num_envs=num_envs, device=device, **config.env_options)
        eval_env = make_env(
            config.env,
            num_envs=config.population_size * config.eval_episodes,
            device=device,
            **config.evaluation_env_options(),
        )
        behaviour = None if agent.acts_in_env else _make_behaviour(config, env)
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

    ``backend``: ``"auto"`` runs the compiled rollouts of ``emphatic_rl.agents.linear_rollouts`` where they apply
    (CPU, linear actor-critic with tile coding, Mountain Car / Puddle World; frozen members NaN), else the torch
    loop below; ``"torch"`` / ``"numba"`` force one.
    """
    from emphatic_rl.agents.linear_rollouts import fused_evaluate

    config, env, agent = run.config, run.eval_env, run.agent
    results = fused_evaluate(run, step, backend)
    if results is not None:
        return results
    population, episodes = config.population_size, config.eval_episodes
    obs = env.reset(seed=(config.seed * 1_000_003 + step) % (2**63))
    episode_return = torch.zeros(env.num_envs, device=run.device)
    episode_length = torch.zeros(env.num_envs, dtype=torch.int64, device=run.device)
    running = torch.ones(env.num_envs, dtype=torch.bool, device=run.device)
    for _ in range(config.eval_max_steps):
        action = agent.evaluation_action(obs.view(population, episodes, *obs.shape[1:]))
        result = env.step(action.reshape(env.num_envs, *action.shape[2:]))
        episode_return += torch.where(running, result.reward, 0.0)
        episode_length += running.long()
        running &= ~(result.terminated | result.truncated)
        obs = result.obs
        if not bool(running.any()):
            break
    results = {
        "return": episode_return.view(population, episodes).mean(dim=1),
        "length": episode_length.view(population, episodes).float().mean(dim=1),
    }
    exact_objective = getattr(agent, "exact_objective", None)
    if callable(exact_objective):  # tabular MDPs: the exact J_mu of each member's policy
        results["exact_J"] = exact_objective().float()
    return results


class _EpisodeStats:
    """Returns and lengths of the training episodes that finished in the current log window, per member."""

    def __init__(self, num_envs: int, population_size: int, member_of_env: torch.Tensor, device: torch.device):
        self.member_of_env = member_of_env
        self.population_size = population_size
        self.episode_return = torch.zeros(num_envs, device=device)
        self.episode_length = torch.zeros(num_envs, device=device)
        self.window_return_sum = torch.zeros(population_size, device=device)
        self.window_length_sum = torch.zeros(population_size, device=device)
        self.window_count = torch.zeros(population_size, device=device)

    def record(self, reward: torch.Tensor, done: torch.Tensor) -> None:
        self.episode_return += reward
        self.episode_length += 1
        done_f = done.float()
        self.window_return_sum.index_add_(0, self.member_of_env, self.episode_return * done_f)
        self.window_length_sum.index_add_(0, self.member_of_env, self.episode_length * done_f)
        self.window_count.index_add_(0, self.member_of_env, done_f)
        self.episode_return.masked_fill_(done, 0.0)
        self.episode_length.masked_fill_(done, 0.0)

    def flush(self) -> dict[str, torch.Tensor]:
        if not bool((self.window_count > 0).any()):
            return {}
        count = self.window_count.clamp(min=1)
        nan = torch.full_like(count, math.nan)
        out = {
            "rollout/ep_rew_mean": torch.where(self.window_count > 0, self.window_return_sum / count, nan),
            "rollout/ep_len_mean": torch.where(self.window_count > 0, self.window_length_sum / count, nan),
        }
        self.window_return_sum.zero_()
        self.window_length_sum.zero_()
        self.window_count.zero_()
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).clone() for k in self._fields}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k in self._fields:
            getattr(self, k).copy_(state[k])

    _fields = ("episode_return", "episode_length", "window_return_sum", "window_length_sum", "window_count")


def _summarise(values: torch.Tensor) -> str:
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return "nan"
    if finite.numel() == 1:
        return f"{float(finite[0]):.1f}"
    return f"{float(finite.mean()):.1f} (mean of {finite.numel()})"


def train(
    config: TrainConfig, out_dir: str | Path, resume: bool = False, run: Run | None = None
) -> RunResult:
    """Run (or resume) a training run in ``out_dir``. See the module docstring for the loop.

    Args:
        config: the run's configuration (on resume, the one saved in ``out_dir`` with any ``steps`` extension).
        out_dir: the run folder (created; must not already hold a run unless ``resume``).
        resume: continue from ``out_dir/checkpoint.pt``.
        run: an already built ``Run`` (from ``build_run(config)``), to avoid building twice.
    """
    run = run or build_run(config)
    out = prepare_out_dir(out_dir, resume)
    env, agent, buffer, device = run.env, run.agent, run.buffer, run.device
    population = config.population_size

    loop_generator = torch.Generator(device=device)
    loop_generator.manual_seed(config.seed + 2)
    if agent.acts_in_env:
        member_of_env = torch.arange(env.num_envs, device=device) // config.num_envs
    else:
        member_of_env = torch.zeros(env.num_envs, dtype=torch.int64, device=device)
    stats = _EpisodeStats(env.num_envs, population if agent.acts_in_env else 1, member_of_env, device)
    diverged = torch.zeros(population, dtype=torch.bool)
    last_eval = torch.full((population,), math.nan)
    start_step = 0

    resume = resume and (out / CHECKPOINT_NAME).is_file()  # no checkpoint yet: start over from step 0
    if resume:
        path = out / CHECKPOINT_NAME
        checkpoint = require_keys(load_checkpoint(path, map_location=device), CHECKPOINT_KEYS, path)
        start_step = checkpoint["step"]
        if not isinstance(start_step, int) or start_step < 0:
            raise CheckpointError(f"checkpoint {str(path)!r} holds an invalid step {start_step!r}")
        if config.steps < start_step:
            raise ConfigError(
                f"--steps {config.steps} is below the {start_step} steps this run has done; give --steps >= "
                f"{start_step} (or none)"
            )
        try:
            agent.load_state_dict(checkpoint["agent"])
            buffer.load_state_dict(checkpoint["buffer"])
            loop_generator.set_state(checkpoint["loop_generator"])
            stats.load_state_dict(checkpoint["episode_stats"])
            diverged = checkpoint["diverged"].bool().cpu().clone()
            last_eval = checkpoint["last_eval"].cpu().clone()
            if diverged.shape != (population,) or last_eval.shape != (population,):
                raise ValueError(f"population {diverged.numel()} instead of {population}")
            if checkpoint["env"] is not None:
                env.load_state_dict(checkpoint["env"])
                obs = checkpoint["obs"].to(device)
        except (KeyError, ValueError, RuntimeError, TypeError, AttributeError, IndexError) as error:
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not match the run's config ({out / CONFIG_NAME}): {detail[:200]}"
            ) from None
        if checkpoint["env"] is None:  # an env that cannot be snapshotted (gym:<id>): new episodes, not bit-identical
            print(f"emphatic-rl: env {config.env!r} cannot be restored from a checkpoint; resuming with new episodes")
            obs = env.reset(seed=config.seed + start_step)
            stats.episode_return.zero_()
            stats.episode_length.zero_()
        saved_config = checkpoint["config"] if isinstance(checkpoint["config"], dict) else {}
        if config.steps != saved_config.get("steps", config.steps):  # --steps changed the run's length
            atomic_write_bytes(out / CONFIG_NAME, json.dumps(config.to_dict(), indent=2, default=str).encode())
    else:
        for stale in ("metrics.csv", "tensorboard"):  # of an attempt stopped before its first checkpoint
            if (out / stale).is_dir():
                shutil.rmtree(out / stale)
            elif (out / stale).exists():
                (out / stale).unlink()
        atomic_write_bytes(out / CONFIG_NAME, json.dumps(config.to_dict(), indent=2, default=str).encode())
        obs = env.reset(seed=config.seed)

    logger = Logger.from_config(out, config, resume_step=start_step if resume else None)  # + hparams if new

    def env_state() -> dict[str, Any] | None:
        try:
            return env.state_dict()
        except NotImplementedError:  # e.g. Gymnasium envs behind the adapter
            return None

    def checkpoint(step: int) -> None:
        save_checkpoint(
            {
                "step": step,
                "config": config.to_dict(),
                "agent": agent.state_dict(),
                "env": env_state(),
                "buffer": buffer.state_dict(),
                "loop_generator": loop_generator.get_state(),
                "episode_stats": stats.state_dict(),
                "diverged": diverged,
                "last_eval": last_eval,
                "obs": obs,
            },
            out / CHECKPOINT_NAME,
        )

    progress = None
    if config.progress:
        from tqdm import tqdm

        progress = tqdm(total=config.steps, initial=start_step, unit="step", dynamic_ncols=True, mininterval=0.5)
    window_start, window_step = time.perf_counter(), start_step
    step = start_step
    stop = GracefulStop()
    try:
        stop.__enter__()
        for step in range(start_step + 1, config.steps + 1):
            if agent.acts_in_env:
                acted = agent.act(obs.view(population, config.num_envs, *obs.shape[1:]), step)
                action = acted.action.reshape(env.num_envs, *acted.action.shape[2:])
                log_prob = acted.log_prob.reshape(env.num_envs)
            else:
                action, log_prob = run.behaviour.act(obs, loop_generator)
            result = env.step(action)
            buffer.add(obs, action, result.reward, result.terminated, result.truncated, result.final_obs, log_prob)
            metrics = agent.update(buffer, step)
            stats.record(result.reward, result.terminated | result.truncated)
            obs = result.obs

            if step % config.log_every == 0 or step == config.steps:
                finite = agent.parameters_finite().cpu()
                newly = ~finite & ~diverged
                if bool(newly.any()):
                    diverged |= newly
                    agent.freeze(newly.to(device))
                    members = newly.nonzero().flatten().tolist()
                    message = f"step {step}: members {members} diverged (non-finite parameters) and are frozen"
                    logger.text(step, "divergence", message)
                    (progress.write if progress else print)(message)
                now = time.perf_counter()
                fps = (step - window_step) * env.num_envs / max(now - window_start, 1e-9)  # env steps, all copies
                window_start, window_step = now, step
                logger.log(step, {**metrics, **stats.flush(), "train/diverged": diverged.float()})
                logger.log(step, {"time/fps": fps})

            if (config.eval_every and step % config.eval_every == 0) or step == config.steps:
                evaluation = evaluate(run, step)
                last_eval = torch.where(diverged, math.nan, evaluation["return"].cpu())
                logger.log(step, {f"eval/{name}": value for name, value in evaluation.items() if name != "return"}
                           | {"eval/return": last_eval})

            if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == config.steps:
                checkpoint(step)
            elif stop.requested:
                checkpoint(step)
            if stop.requested:
                break

            if progress is not None and (step % 100 == 0 or step == config.steps):
                progress.update(step - progress.n)
                progress.set_postfix_str(f"eval return {_summarise(last_eval)}", refresh=False)
    finally:
        stop.__exit__()
        if progress is not None:
            progress.close()
        logger.close()
    interrupted = stop.signal_name if stop.requested and step < config.steps else None
    return RunResult(out, step, last_eval, diverged, interrupted)
