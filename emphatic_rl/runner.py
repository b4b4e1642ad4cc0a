"""The open run loop: a ``Runner`` that collects, stores and updates, and ``Callback`` objects that do the rest.

One iteration of :meth:`Runner.run` (``runner.step`` counts iterations, i.e. steps of each env copy):

1. actions from the acting policy: the agent's own behaviour (``agent.act``) for agents that act in the env, else the
   fixed ``Behaviour`` of the run, with their log-probabilities (chosen once, when the runner is built);
2. ``env.step``; the transition goes into the ``TrajectoryBuffer`` for all streams at once;
3. ``agent.update(buffer, step)``; its metrics are ``runner.metrics``;
4. every callback's ``on_step(runner)``, in order. A callback may call ``runner.stop()`` to end the run after this
   iteration.

The callbacks that ``emphatic_rl.train.train`` uses, in this order: :class:`DivergenceGuard` and
:class:`LogMetrics` (every ``log_every`` steps), :class:`Evaluate` (every ``eval_every`` steps), any extra ones (the
sweep's :class:`Excursions`), ``emphatic_rl.train.Checkpoint`` (every ``checkpoint_every`` steps) and
:class:`Progress`. Periodic callbacks also fire at the run's last step. :class:`EarlyStopping` ends a run when the
evaluation return stops improving or reaches a target.

Without a logger the loop writes nothing: ``runner.logger`` may be ``None`` (metrics dropped), a
``emphatic_rl.logging.Logger`` (``metrics.csv`` + TensorBoard in a run folder) or a :class:`MemoryLog` (rows in
memory). Example::

    run = build_run(TrainConfig(agent="dqn", env="cartpole", steps=5000))
    runner = Runner(run, logger=MemoryLog())
    runner.reset()
    runner.run(5000, [LogMetrics(500), Evaluate(1000), EarlyStopping(target=475.0)])
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch

from emphatic_rl.agents.base import ActionOutput
from emphatic_rl.seeding import stream_generator, stream_seed

if TYPE_CHECKING:
    from emphatic_rl.config import TrainConfig
    from emphatic_rl.train import Run


class MetricsSink(Protocol):
    """Where a runner's metrics go: ``emphatic_rl.logging.Logger`` or :class:`MemoryLog`."""

    def log(self, step: int, metrics: dict[str, Any]) -> None: ...

    def text(self, step: int, tag: str, message: str) -> None: ...

    def close(self) -> None: ...


class MemoryLog:
    """Metrics kept in memory as ``rows``: ``(step, metric, member, value)``, the rows ``metrics.csv`` would get
    (names through ``emphatic_rl.logging.metric_name``: an agent's ``loss`` is ``train/loss``; ``member = -1`` for a
    population aggregate of a population of ``population_size > 1``)."""

    def __init__(self, population_size: int = 1) -> None:
        self.population_size = population_size
        self.rows: list[tuple[int, str, int, float]] = []
        self.messages: list[tuple[int, str, str]] = []

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        from emphatic_rl.logging import metric_name

        for name, value in metrics.items():
            name = metric_name(name)
            values = torch.as_tensor(value).detach().double().cpu().flatten().tolist()
            members = [-1] if len(values) == 1 and self.population_size != 1 else range(len(values))
            self.rows.extend((step, name, member, v) for member, v in zip(members, values, strict=True))

    def text(self, step: int, tag: str, message: str) -> None:
        self.messages.append((step, tag, message))

    def close(self) -> None:
        pass

    def last(self, metric: str) -> dict[int, float]:
        """The last logged value of ``metric`` per member (``-1``: a population aggregate)."""
        out: dict[int, float] = {}
        for _, name, member, value in self.rows:
            if name == metric:
                out[member] = value
        return out


class Callback:
    """A hook into :class:`Runner`. Override any of the three methods; each gets the runner.

    ``on_start``: before the first iteration of a ``run`` call (after a reset or a resume).
    ``on_step``: after iteration ``runner.step``'s update.
    ``on_end``: after the last iteration, also when the run ends with an exception.
    """

    def on_start(self, runner: Runner) -> None:  # noqa: B027 - optional hook
        pass

    def on_step(self, runner: Runner) -> None:  # noqa: B027 - optional hook
        pass

    def on_end(self, runner: Runner) -> None:  # noqa: B027 - optional hook
        pass


class _EpisodeStats:
    """Returns and lengths of the training episodes that finished in the current log window, per member."""

    _fields = ("episode_return", "episode_length", "window_return_sum", "window_length_sum", "window_count")

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
        if self.episode_return.device.type == "cpu" and not done.any():
            return  # on CPU the check is free (no device sync) and skips the bookkeeping of most steps
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


class Runner:
    """The training loop of one ``Run`` (see the module docstring).

    Args:
        run: a built ``emphatic_rl.train.Run`` (env, eval env, agent, behaviour, buffer).
        logger: where ``runner.log`` writes (``None``: nowhere).
        config: the config whose ``to_dict()`` goes into ``state_dict()`` (default ``run.config``).

    Attributes:
        step: the last finished iteration (0 before the first).
        obs: the current observations ``[N, *obs_shape]``.
        metrics: the last ``agent.update``'s metrics, each ``[P]``.
        diverged: ``bool[P]``, members frozen for non-finite parameters.
        last_eval: ``[P]``, the last evaluation return (NaN before the first and for diverged members).
        generator: the fixed behaviour's random stream (``behaviour``).
        end_step: the ``steps`` of the current ``run`` call; periodic callbacks also fire there.
    """

    def __init__(self, run: Run, logger: MetricsSink | None = None, config: TrainConfig | None = None) -> None:
        self.run_ = run
        self.config = config or run.config
        self.logger = logger
        self.env, self.agent, self.buffer, self.device = run.env, run.agent, run.buffer, run.device
        self.population_size = run.config.population_size
        self.generator = stream_generator(run.config.seed, "behaviour", self.device)
        if self.agent.acts_in_env:
            member_of_env = torch.arange(self.env.num_envs, device=self.device) // run.config.num_envs
            self._act = self._agent_acts
        else:
            if run.behaviour is None:
                raise ValueError(f"agent {self.agent.name!r} learns from a fixed behaviour but the run has none")
            member_of_env = torch.zeros(self.env.num_envs, dtype=torch.int64, device=self.device)
            self._act = self._behaviour_acts
        stats_members = self.population_size if self.agent.acts_in_env else 1
        self.stats = _EpisodeStats(self.env.num_envs, stats_members, member_of_env, self.device)
        self.diverged = torch.zeros(self.population_size, dtype=torch.bool)
        self.last_eval = torch.full((self.population_size,), math.nan)
        self.last_evaluation: dict[str, torch.Tensor] = {}
        self.metrics: dict[str, torch.Tensor] = {}
        self.step = 0
        self.end_step = 0
        self.obs: torch.Tensor | None = None
        self._stop = False
        #: prints a message line (``Progress`` swaps in one that keeps its bar intact)
        self.write: Callable[[str], None] = print

    # ------------------------------------------------------------------ acting
    def _agent_acts(self, obs: torch.Tensor, step: int) -> ActionOutput:
        E = self.run_.config.num_envs
        acted = self.agent.act(obs.view(self.population_size, E, *obs.shape[1:]), step)
        return ActionOutput(
            acted.action.reshape(self.env.num_envs, *acted.action.shape[2:]), acted.log_prob.reshape(self.env.num_envs)
        )

    def _behaviour_acts(self, obs: torch.Tensor, step: int) -> ActionOutput:
        assert self.run_.behaviour is not None
        return self.run_.behaviour.act(obs, self.generator)

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Start from step 0: reset the training env with the run seed (stream ``init``)."""
        self.step = 0
        self.obs = self.env.reset(seed=stream_seed(self.run_.config.seed, "init"))

    def env_state(self) -> dict[str, Any] | None:
        """The training env's state, or ``None`` for an env that cannot be snapshotted (Gymnasium envs)."""
        try:
            return self.env.state_dict()
        except NotImplementedError:
            return None

    def state_dict(self) -> dict[str, Any]:
        """Everything a bit-identical resume needs (the checkpoint's content)."""
        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "agent": self.agent.state_dict(),
            "env": self.env_state(),
            "buffer": self.buffer.state_dict(),
            "loop_generator": self.generator.get_state(),
            "episode_stats": self.stats.state_dict(),
            "diverged": self.diverged,
            "last_eval": self.last_eval,
            "obs": self.obs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``. An env that cannot be restored starts new episodes (not bit-identical).

        Raises:
            ValueError / KeyError / RuntimeError: a state of another run (population, agent or env that differ).
        """
        diverged = state["diverged"].bool().cpu().clone()
        last_eval = state["last_eval"].cpu().clone()
        population = self.population_size
        if diverged.shape != (population,) or last_eval.shape != (population,):
            raise ValueError(f"population {diverged.numel()} instead of {population}")
        self.agent.load_state_dict(state["agent"])
        self.buffer.load_state_dict(state["buffer"])
        self.generator.set_state(state["loop_generator"])
        self.stats.load_state_dict(state["episode_stats"])
        self.diverged = diverged
        self.last_eval = last_eval
        self.step = state["step"]
        if state["env"] is not None:
            self.env.load_state_dict(state["env"])
            self.obs = state["obs"].to(self.device)
        else:
            self.write(
                f"emphatic-rl: env {self.run_.config.env!r} cannot be restored from a checkpoint; resuming with new "
                "episodes"
            )
            self.obs = self.env.reset(seed=stream_seed(self.run_.config.seed, "resume", index=self.step))
            self.stats.episode_return.zero_()
            self.stats.episode_length.zero_()

    # ------------------------------------------------------------------ loop
    def due(self, every: int) -> bool:
        """True at multiples of ``every`` (``0``: never) and at the run's last step."""
        return bool(every and self.step % every == 0) or self.step == self.end_step

    def log(self, metrics: dict[str, Any]) -> None:
        """Log ``metrics`` (each a tensor ``[P]`` or a scalar) at the current step, if there is a logger."""
        if self.logger is not None:
            self.logger.log(self.step, metrics)

    def stop(self) -> None:
        """End the run after the current iteration's callbacks."""
        self._stop = True

    def run(self, steps: int, callbacks: Sequence[Callback] = ()) -> int:
        """Iterate until ``runner.step == steps`` (or a callback stops the run). Returns the last step."""
        if self.obs is None:
            self.reset()
        self.end_step = steps
        self._stop = False
        env, agent, buffer = self.env, self.agent, self.buffer
        for callback in callbacks:
            callback.on_start(self)
        try:
            for step in range(self.step + 1, steps + 1):
                obs = self.obs
                assert obs is not None
                action, log_prob = self._act(obs, step)
                result = env.step(action)
                buffer.add(obs, action, result.reward, result.terminated, result.truncated, result.final_obs, log_prob)
                self.metrics = agent.update(buffer, step)
                self.stats.record(result.reward, result.terminated | result.truncated)
                self.obs = result.obs
                self.step = step
                for callback in callbacks:
                    callback.on_step(self)
                if self._stop:
                    break
        finally:
            for callback in callbacks:
                callback.on_end(self)
        return self.step


# ---------------------------------------------------------------------------------------------------- rollouts
@torch.no_grad()
def rollout_returns(
    agent: Any, env: Any, obs: torch.Tensor, population_size: int, width: int, max_steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the agents' target policies (``agent.evaluation_action``) in ``env`` from ``obs`` until every copy's
    episode ended or ``max_steps`` steps; copies are member-major (member ``p`` owns copies ``p*W ... p*W + W - 1``).

    Returns the undiscounted return and the length of each copy's first episode, both ``[P, W]``.
    """
    device = obs.device
    episode_return = torch.zeros(env.num_envs, device=device)
    episode_length = torch.zeros(env.num_envs, dtype=torch.int64, device=device)
    running = torch.ones(env.num_envs, dtype=torch.bool, device=device)
    for _ in range(max_steps):
        action = agent.evaluation_action(obs.view(population_size, width, *obs.shape[1:]))
        result = env.step(action.reshape(env.num_envs, *action.shape[2:]))
        episode_return += torch.where(running, result.reward, 0.0)
        episode_length += running.long()
        running &= ~(result.terminated | result.truncated)
        obs = result.obs
        if not bool(running.any()):
            break
    return episode_return.view(population_size, width), episode_length.view(population_size, width)


class PolicyFunction:
    """A hand-written policy as the target policy of one member, for :func:`rollout_returns` with
    ``population_size=1`` (reference policies, random baselines).

    Args:
        fn: ``fn(obs [N, *obs_shape], generator) -> action [N, *action_shape]``.
        generator: the ``torch.Generator`` handed to ``fn`` (``None``: ``fn`` draws nothing).
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> None:
        self.fn, self.generator = fn, generator

    def evaluation_action(self, obs: torch.Tensor) -> torch.Tensor:
        """``obs [1, N, ...]`` -> ``action [1, N, ...]``."""
        return self.fn(obs[0], self.generator).unsqueeze(0)


# ---------------------------------------------------------------------------------------------------- callbacks
class DivergenceGuard(Callback):
    """Every ``every`` steps, freeze members whose parameters became non-finite (``runner.diverged``)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step(self, runner: Runner) -> None:
        if not runner.due(self.every):
            return
        finite = runner.agent.parameters_finite().cpu()
        newly = ~finite & ~runner.diverged
        if bool(newly.any()):
            runner.diverged |= newly
            runner.agent.freeze(newly.to(runner.device))
            members = newly.nonzero().flatten().tolist()
            message = f"step {runner.step}: members {members} diverged (non-finite parameters) and are frozen"
            if runner.logger is not None:
                runner.logger.text(runner.step, "divergence", message)
            runner.write(message)


class LogMetrics(Callback):
    """Every ``every`` steps: the update's metrics (``train/<name>``), the finished training episodes' returns and
    lengths (``rollout/ep_rew_mean``, ``rollout/ep_len_mean``), the diverged flags (``train/diverged``) and the env
    steps per second, all copies, since the last log (``time/fps``)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_start(self, runner: Runner) -> None:
        self._window = (time.perf_counter(), runner.step)

    def on_step(self, runner: Runner) -> None:
        if not runner.due(self.every):
            return
        now = time.perf_counter()
        start, start_step = self._window
        # env steps per second, all copies
        fps = (runner.step - start_step) * runner.env.num_envs / max(now - start, 1e-9)
        self._window = (now, runner.step)
        runner.log({**runner.metrics, **runner.stats.flush(), "train/diverged": runner.diverged.float()})
        runner.log({"time/fps": fps})


class Evaluate(Callback):
    """Every ``every`` steps (``0``: only at the end), ``emphatic_rl.train.evaluate``: sets ``runner.last_eval``
    (NaN for diverged members) and ``runner.last_evaluation``, and logs ``eval/<name>``.

    Args:
        every: the evaluation period in loop iterations (``0``: only at the run's last step).
        at_start: also evaluate before the first iteration of a run that starts at step 0 (the untrained
            policies: a learning curve's first point).
    """

    def __init__(self, every: int, at_start: bool = False) -> None:
        self.every = every
        self.at_start = at_start

    def on_start(self, runner: Runner) -> None:
        if self.at_start and runner.step == 0:
            self._evaluate(runner)

    def on_step(self, runner: Runner) -> None:
        if runner.due(self.every):
            self._evaluate(runner)

    def _evaluate(self, runner: Runner) -> None:
        from emphatic_rl.train import evaluate

        evaluation = evaluate(runner.run_, runner.step)
        runner.last_eval = torch.where(runner.diverged, math.nan, evaluation["return"].cpu())
        runner.last_evaluation = evaluation
        runner.log(
            {f"eval/{name}": value for name, value in evaluation.items() if name != "return"}
            | {"eval/return": runner.last_eval}
        )


class Excursions(Callback):
    """The excursions objective every ``every`` steps: one rollout of each member's target policy from each of
    ``num_starts`` states drawn from the behaviour's data (``emphatic_rl.studies.sweep.excursion_start_states``, each
    after ``spacing`` behaviour steps), logged as ``eval/excursions_return`` (NaN for diverged members)."""

    metric = "eval/excursions_return"

    def __init__(self, every: int, num_starts: int, spacing: int) -> None:
        self.every, self.num_starts, self.spacing = every, num_starts, spacing
        self.starts: dict[str, torch.Tensor] | None = None
        self.last: torch.Tensor | None = None

    def on_start(self, runner: Runner) -> None:
        if self.starts is None:
            from emphatic_rl.studies.sweep import excursion_start_states

            self.starts = excursion_start_states(runner.run_.config, self.num_starts, self.spacing)

    def on_step(self, runner: Runner) -> None:
        if not runner.due(self.every):
            return
        from emphatic_rl.studies.sweep import evaluate_excursions

        assert self.starts is not None
        values = evaluate_excursions(runner.run_, self.starts, runner.step).cpu()
        self.last = torch.where(runner.diverged, float("nan"), values)
        runner.log({self.metric: self.last})


class Progress(Callback):
    """A tqdm progress bar with the last evaluation return, updated every 100 steps."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.bar: Any = None

    def on_start(self, runner: Runner) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, initial=runner.step, unit="step", dynamic_ncols=True, mininterval=0.5)
        runner.write = self.bar.write

    def on_step(self, runner: Runner) -> None:
        if runner.step % 100 == 0 or runner.step == runner.end_step:
            self.bar.update(runner.step - self.bar.n)
            self.bar.set_postfix_str(f"eval return {summarise(runner.last_eval)}", refresh=False)

    def on_end(self, runner: Runner) -> None:
        if self.bar is not None:
            self.bar.close()
        runner.write = print


class EarlyStopping(Callback):
    """Stop after an evaluation when the mean evaluation return over finite members reached ``target``, or when it
    has not improved on its best for ``patience`` evaluations (place it after :class:`Evaluate`).

    Args:
        target: stop once the mean evaluation return is ``>= target`` (``None``: no target).
        patience: stop after this many evaluations without a new best (``None``: never).
    """

    def __init__(self, target: float | None = None, patience: int | None = None) -> None:
        if target is None and patience is None:
            raise ValueError("EarlyStopping needs a target, a patience or both")
        if patience is not None and (not isinstance(patience, int) or patience < 1):
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        self.target, self.patience = target, patience
        self.best = -math.inf
        self.since_best = 0
        self._seen: object = None
        self.stopped_at: int | None = None

    def on_step(self, runner: Runner) -> None:
        if runner.last_evaluation is self._seen or not runner.last_evaluation:
            return
        self._seen = runner.last_evaluation
        finite = runner.last_eval[torch.isfinite(runner.last_eval)]
        value = float(finite.mean()) if finite.numel() else -math.inf
        if value > self.best:
            self.best, self.since_best = value, 0
        else:
            self.since_best += 1
        if (self.target is not None and value >= self.target) or (
            self.patience is not None and self.since_best >= self.patience
        ):
            self.stopped_at = runner.step
            runner.stop()


class Lambda(Callback):
    """A callback from a function ``fn(runner)`` called every ``every`` steps (and at the last step)."""

    def __init__(self, fn: Callable[[Runner], None], every: int = 1) -> None:
        self.fn, self.every = fn, every

    def on_step(self, runner: Runner) -> None:
        if runner.due(self.every):
            self.fn(runner)


def summarise(values: torch.Tensor) -> str:
    """``"12.3"`` for one finite value, ``"12.3 (mean of 5)"`` for several, ``"nan"`` for none."""
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return "nan"
    if finite.numel() == 1:
        return f"{float(finite[0]):.1f}"
    return f"{float(finite.mean()):.1f} (mean of {finite.numel()})"
