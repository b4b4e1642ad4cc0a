"""The Python API: build an agent for an env, train it in memory, save / load it, predict, evaluate.

Three lines, as in Stable-Baselines3::

    import emphatic_rl

    model = emphatic_rl.make_agent("dqn", env="cartpole", seed=0, learning_starts=500)
    model.learn(20_000)                                   # in memory; no folder unless log_dir= is given
    model.save("dqn-cartpole.pt")                         # the trained agent alone (parameters + options)
    model = emphatic_rl.load("dqn-cartpole.pt")           # safe: torch.load(weights_only=True)
    action = model.predict(obs)                           # numpy in, numpy out; one observation or a batch
    mean_return, std_return = model.evaluate(episodes=10)

A :class:`Model` holds a population of ``P`` learners (``population_size``, default 1); ``predict`` answers for one
member (``member``, default 0) and ``evaluate`` for every member. ``learn`` is the library's training loop
(:class:`emphatic_rl.runner.Runner`) with the callbacks asked for; calling it again continues the same run.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emphatic_rl.config import ConfigError, TrainConfig
from emphatic_rl.runner import Callback, DivergenceGuard, Evaluate, LogMetrics, MemoryLog, Progress, Runner

#: The ``format`` field of a saved agent; ``load`` refuses anything else.
SAVE_FORMAT = "emphatic-rl-agent"
SAVE_VERSION = 1


class Model:
    """An agent of the library bound to an env, trained and used from Python.

    Args:
        agent: a registered agent name (``emphatic_rl.agents.agent_names()``, e.g. ``"dqn"``, ``"ace"``).
        env: a registered env name (``emphatic_rl.envs.env_names()``) or ``"gym:<id>"``; default ``"cartpole"``.
        seed: the run seed (every random stream derives from it, see ``emphatic_rl.seeding``); default 0.
        population_size: ``P`` learners trained as one batch; default 1.
        num_envs: env copies per member (agents that act) or behaviour streams (fixed behaviour); default 1.
        device: torch device; default ``"cpu"``.
        behaviour: fixed behaviour policy for agents that do not act (``"default"``, ``"uniform"`` or action
            probabilities); default ``"default"`` (the env's own, else uniform).
        env_options: keyword options of the env (``emphatic-rl list`` shows them); default none.
        eval_env_options: options of the evaluation env over ``env_options``; default none.
        eval_episodes: episodes per member of each evaluation during ``learn``; default 10.
        eval_max_steps: cap on an evaluation episode's length; default 1000.
        num_threads: torch CPU threads to set (0: leave torch's setting alone); default 0.
        **agent_options: the agent's options (its options dataclass: names, types and ranges are checked).

    Raises:
        ConfigError: an unknown name or option, a bad value (one message naming it), before anything is built
            (``ConfigError`` is a ``ValueError``).
    """

    def __init__(
        self,
        agent: str,
        env: str = "cartpole",
        *,
        seed: int = 0,
        population_size: int = 1,
        num_envs: int = 1,
        device: str = "cpu",
        behaviour: Any = "default",
        env_options: dict[str, Any] | None = None,
        eval_env_options: dict[str, Any] | None = None,
        eval_episodes: int = 10,
        eval_max_steps: int = 1_000,
        num_threads: int = 0,
        **agent_options: Any,
    ) -> None:
        config = TrainConfig(
            agent=agent,
            env=env,
            steps=1,
            seed=seed,
            num_envs=num_envs,
            population_size=population_size,
            device=device,
            behaviour=behaviour,
            eval_every=0,
            eval_episodes=eval_episodes,
            eval_max_steps=eval_max_steps,
            checkpoint_every=0,
            progress=False,
            num_threads=num_threads,
            agent_options=dict(agent_options),
            env_options=dict(env_options or {}),
            eval_env_options=dict(eval_env_options or {}),
        )
        self._init(config)

    def _init(self, config: TrainConfig) -> None:
        from emphatic_rl.train import build_agent

        self.config = config
        self.agent = build_agent(config)
        self.device = torch.device(config.device)
        self._runner: Runner | None = None
        self._probe: Any = None
        #: rows ``(step, metric, member, value)`` logged by ``learn`` (``log=True``)
        self.logs = MemoryLog(config.population_size)

    # ------------------------------------------------------------------ properties
    @property
    def population_size(self) -> int:
        return self.config.population_size

    @property
    def num_timesteps(self) -> int:
        """Training iterations done so far (steps of each env copy)."""
        return self._runner.step if self._runner is not None else self._loaded_steps

    _loaded_steps = 0

    @property
    def observation_spec(self) -> Any:
        return self._probe_env().observation_spec

    @property
    def action_spec(self) -> Any:
        return self._probe_env().action_spec

    def _probe_env(self) -> Any:
        if self._probe is None:
            from emphatic_rl.envs import make_env

            self._probe = make_env(self.config.env, num_envs=1, device=self.device, **self.config.env_options)
        return self._probe

    # ------------------------------------------------------------------ training
    def learn(
        self,
        steps: int,
        *,
        log: bool = True,
        log_dir: str | Path | None = None,
        log_every: int = 500,
        eval_every: int = 0,
        progress: bool = False,
        callbacks: Sequence[Callback] = (),
    ) -> Model:
        """Train for ``steps`` more iterations (steps of each env copy), in memory.

        Args:
            steps: iterations to add (>= 1).
            log: keep the metrics in ``self.logs`` (rows ``(step, metric, member, value)``); default True.
            log_dir: also write ``metrics.csv`` and TensorBoard events in this folder (created); default none.
            log_every: metrics and the divergence guard every this many steps; default 500.
            eval_every: evaluate the target policies every this many steps (0: never during ``learn``); default 0.
            progress: a progress bar; default False.
            callbacks: more ``emphatic_rl.runner.Callback`` objects, run after the evaluation (e.g.
                ``EarlyStopping(target=475)``).

        Returns:
            ``self``.
        """
        for name, value, minimum in (("steps", steps, 1), ("log_every", log_every, 1), ("eval_every", eval_every, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
        runner = self._ensure_runner()
        logger: Any = None
        if log_dir is not None:
            from emphatic_rl.logging import Logger

            Path(log_dir).mkdir(parents=True, exist_ok=True)
            logger = _Tee(Logger(log_dir, self.population_size), self.logs if log else None)
        elif log:
            logger = self.logs
        runner.logger = logger
        target = runner.step + steps
        chain: list[Callback] = [DivergenceGuard(log_every)]
        if logger is not None:
            chain.append(LogMetrics(log_every))
        if eval_every:
            chain.append(Evaluate(eval_every))
        chain.extend(callbacks)
        if progress:
            chain.append(Progress(target))
        try:
            runner.run(target, chain)
        finally:
            if logger is not None and logger is not self.logs:
                logger.close()
            runner.logger = None
        return self

    def _ensure_runner(self) -> Runner:
        if self._runner is None:
            from emphatic_rl.train import build_run

            run = build_run(self.config, agent=self.agent)
            self._runner = Runner(run)
            self._runner.reset()
            self._runner.step = self._loaded_steps
        return self._runner

    @property
    def diverged(self) -> torch.Tensor:
        """``bool[P]``: members frozen for non-finite parameters."""
        if self._runner is None:
            return torch.zeros(self.population_size, dtype=torch.bool)
        return self._runner.diverged

    # ------------------------------------------------------------------ using the policy
    def predict(self, obs: Any, deterministic: bool = True, member: int = 0) -> np.ndarray:
        """The target policy's action for one observation or a batch.

        Args:
            obs: one observation (shape ``obs_shape``) or a batch ``[B, *obs_shape]``, as numpy, a list or a tensor
                (Gymnasium's observations as they come).
            deterministic: the policy's most likely action (argmax / mean); ``False`` samples it (the agent's own
                generator).
            member: which population member answers; default 0.

        Returns:
            numpy actions: one action (shape ``action_shape``; a scalar for discrete actions) or ``[B, *action_shape]``.
        """
        if not isinstance(member, int) or not 0 <= member < self.population_size:
            raise ValueError(f"member must be an integer in [0, {self.population_size}), got {member!r}")
        spec = self.observation_spec
        tensor = torch.as_tensor(np.asarray(obs), device=self.device)
        obs_shape = tuple(spec.shape)
        if tuple(tensor.shape) == obs_shape:
            single, batch = True, tensor.unsqueeze(0)
        elif tuple(tensor.shape[1:]) == obs_shape and tensor.dim() == len(obs_shape) + 1:
            single, batch = False, tensor
        else:
            raise ValueError(
                f"obs must have shape {obs_shape} (one observation) or [B, *{obs_shape}] (a batch), "
                f"got {tuple(tensor.shape)}"
            )
        batch = batch.to(spec.dtype)
        P = self.population_size
        with torch.no_grad():
            actions = self.agent.predict_action(batch.unsqueeze(0).expand(P, *batch.shape), deterministic)[member]
        out = actions.cpu().numpy()
        return out[0] if single else out

    def evaluate(
        self,
        episodes: int = 10,
        env: str | None = None,
        max_steps: int | None = None,
        seed: int | None = None,
        deterministic: bool | None = None,
        env_options: dict[str, Any] | None = None,
    ) -> tuple[float, float]:
        """Mean and standard deviation of the undiscounted return of ``episodes`` episodes of the target policy,
        over every member's episodes (``evaluate_members`` gives them per member).

        Args:
            episodes: episodes per member; default 10.
            env: an env name (default: the model's evaluation env: ``env`` with ``eval_env_options``).
            max_steps: cap on an episode's length (default ``eval_max_steps``).
            seed: seed of the evaluation env (default: the model's ``evaluation`` stream at the current step).
            deterministic: ``True`` / ``False`` as in ``predict``; ``None`` (default) the agent's own evaluation
                action (what the training loop evaluates).
            env_options: the evaluation env's options (default: the model's).
        """
        returns = self.evaluate_members(episodes, env, max_steps, seed, deterministic, env_options)
        flat = returns.flatten()
        return float(flat.mean()), float(flat.std(unbiased=False))

    @torch.no_grad()
    def evaluate_members(
        self,
        episodes: int = 10,
        env: str | None = None,
        max_steps: int | None = None,
        seed: int | None = None,
        deterministic: bool | None = None,
        env_options: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Returns ``[P, episodes]`` of the evaluation described in ``evaluate``."""
        from emphatic_rl.envs import make_env
        from emphatic_rl.runner import rollout_returns
        from emphatic_rl.seeding import stream_seed

        if not isinstance(episodes, int) or isinstance(episodes, bool) or episodes < 1:
            raise ValueError(f"episodes must be an integer >= 1, got {episodes!r}")
        config = self.config
        options = self.config.evaluation_env_options() if env_options is None else env_options
        P = self.population_size
        eval_env = make_env(env or config.env, num_envs=P * episodes, device=self.device, **options)
        obs = eval_env.reset(seed=stream_seed(config.seed, "evaluation", self.num_timesteps) if seed is None else seed)
        actor: Any = self.agent
        if deterministic is not None:
            actor = _Predicting(self.agent, deterministic)
        returns, _ = rollout_returns(actor, eval_env, obs, P, episodes, max_steps or config.eval_max_steps)
        return returns.cpu()

    # ------------------------------------------------------------------ saving
    def save(self, path: str | Path) -> None:
        """Save the trained agent alone (its ``state_dict`` and the options to rebuild it; no replay buffer, no env
        state), atomically. Read it back with ``emphatic_rl.load(path)``."""
        from emphatic_rl.checkpoints import save_checkpoint

        config = copy.deepcopy(self.config.to_dict())
        payload = {
            "format": SAVE_FORMAT,
            "version": SAVE_VERSION,
            "config": config,
            "steps": self.num_timesteps,
            "agent": self.agent.state_dict(),
        }
        save_checkpoint(payload, path)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> Model:
        """Load an agent written by ``save``: only tensors and plain data are read (``torch.load(weights_only=True)``),
        so a file that would run code when unpickled is refused.

        Args:
            path: the file.
            device: load onto this device (default: the device it was trained on).

        Raises:
            ValueError: not a saved agent, or a file that is not plain data (one message naming the file).
        """
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{str(path)!r} does not exist")
        from emphatic_rl.checkpoints import CheckpointError, load_checkpoint

        try:  # checksum, then torch.load(weights_only=True)
            payload = load_checkpoint(path, map_location=device or "cpu")
        except CheckpointError as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(
                f"{str(path)!r} is not a saved emphatic-rl agent of plain tensors and data; refused to load it "
                f"({first})"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != SAVE_FORMAT:
            raise ValueError(f"{str(path)!r} is not a saved emphatic-rl agent (no format {SAVE_FORMAT!r})")
        if payload.get("version") != SAVE_VERSION:
            raise ValueError(f"{str(path)!r} has format version {payload.get('version')!r}; this library reads "
                             f"{SAVE_VERSION}")
        config = TrainConfig(**payload["config"])
        if device is not None:
            config.device = device
        model = cls.__new__(cls)
        model._init(config)
        try:
            model.agent.load_state_dict(payload["agent"])
        except CheckpointError as error:  # a state the agent refuses (an older format it cannot continue), its reason
            raise ValueError(f"{str(path)!r} cannot be loaded: {error}") from None
        model._loaded_steps = int(payload.get("steps", 0))
        return model

    def __repr__(self) -> str:
        return (f"Model(agent={self.config.agent!r}, env={self.config.env!r}, population_size={self.population_size}, "
                f"steps={self.num_timesteps})")


class _Predicting:
    """The agent seen through ``predict_action(obs, deterministic)`` as an ``evaluation_action``."""

    def __init__(self, agent: Any, deterministic: bool) -> None:
        self.agent, self.deterministic = agent, deterministic

    def evaluation_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.agent.predict_action(obs, self.deterministic)


class _Tee:
    """Log to a folder's ``Logger`` and, optionally, to a ``MemoryLog``."""

    def __init__(self, logger: Any, memory: MemoryLog | None) -> None:
        self.logger, self.memory = logger, memory

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.logger.log(step, metrics)
        if self.memory is not None:
            self.memory.log(step, metrics)

    def text(self, step: int, tag: str, message: str) -> None:
        self.logger.text(step, tag, message)

    def close(self) -> None:
        self.logger.close()


def make_agent(agent: str, env: str = "cartpole", **kwargs: Any) -> Model:
    """``Model(agent, env, **kwargs)``: an agent for an env, ready to ``learn``. See :class:`Model` for the
    arguments (run settings such as ``seed`` and ``population_size``, and the agent's own options)."""
    return Model(agent, env, **kwargs)


def load(path: str | Path, device: str | None = None) -> Model:
    """``Model.load(path, device)``: a saved agent, loaded safely."""
    return Model.load(path, device)


__all__ = ["SAVE_FORMAT", "Model", "load", "make_agent"]
