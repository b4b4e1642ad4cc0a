"""Shared machinery of the native batched MinAtar games.

Reference: the ``minatar`` package (MinAtar 1.0.15, ``minatar.Environment``). Every game here reproduces its
rules step for step (the parity tests in ``tests/envs/test_minatar_parity.py`` replay the reference's random
draws and compare observation, reward and termination at every step).

Protocol (what every number measured with these envs means)
----------------------------------------------------------
- Actions: the reference's action set has **6** actions, ``0..5 = noop, left, up, right, down, fire``
  (``minatar.Environment.num_actions() == 6``; MinAtar has no 18-action set). ``minimal_action_set=True``
  exposes only the game's minimal actions (``Environment.minimal_action_set()``), in the reference's order;
  action ``i`` of the env is then ``minimal_actions[i]`` of the full set.
- Sticky actions (``sticky_action_prob``, default ``0.1`` as in the reference): before each step a uniform
  number is drawn per copy; if it is below the probability the copy repeats its previous (full-set) action. As
  in the reference, the previous action is *not* cleared when an episode ends (the reference's ``last_action``
  lives in the ``Environment`` wrapper and survives ``reset()``); an explicit :meth:`reset` of the whole env
  clears it to noop.
- Difficulty ramping (``difficulty_ramping``, default ``True`` as in the reference).
- Observations: ``bool[N, 10, 10, C]``, the reference's ``state()`` per copy in the reference's channel order.
- Time limit: ``max_episode_steps=None`` by default, reported as ``truncated``. The reference and MinAtar's
  Gymnasium registration have none (they always report ``truncated=False``), so the default keeps the
  published protocol; pass an integer to cap episodes (gymnax caps Asterix at 1000 steps, for example).
  Freeway's 2500-frame limit is part of that game in the reference and is reported as ``terminated``, as the
  reference does.

Backends: every game exists twice, held to the reference by the same parity tests. ``backend="torch"`` steps all
copies with batched torch operations (any device: the path for GPUs). ``backend="numba"`` steps them with a
compiled per-copy kernel (:mod:`emphatic_rl.envs.minatar.kernels`, CPU only): on CPU a batched step is a few
hundred small torch operations whose fixed cost (2-8 us each) dominates at any batch size, while the kernel does
a copy's step in tens of nanoseconds. ``backend="auto"`` (default) takes numba on CPU and torch elsewhere. The
kernels are compiled on first use (a few seconds per game, then cached next to the source).

Randomness: every random number a game uses is drawn through ``env.random_source`` (a :class:`RandomSource`).
The default, :class:`GeneratorRandomSource`, draws from the env's ``torch.Generator`` (so ``state_dict`` round
trips continue bit-identically). The parity tests swap in a source that replays the reference's numpy draws;
for that, every torch draw names which copies actually use it (``mask``), in the order the reference draws, and
the numba kernels take a pool of uniform numbers per copy (``RandomSource.pool``) that they use in that order.
The two backends use the generator differently, so the same seed gives different (equally valid) episodes.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Protocol, cast

import numpy as np
import torch

from emphatic_rl.envs.base import BoxSpec, DiscreteSpec, StepResult, TensorEnv

#: The reference's full action set, in order: noop, left, up, right, down, fire.
FULL_ACTIONS: tuple[str, ...] = ("n", "l", "u", "r", "d", "f")
NOOP, LEFT, UP, RIGHT, DOWN, FIRE = range(6)

GAMES: tuple[str, ...] = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")


class RandomSource(Protocol):
    """Where a MinAtar env gets its random numbers.

    ``mask`` (``bool[N]``) says which copies use the draw (the reference draws only in those copies); the
    values of the other copies are ignored. A source may ignore ``mask`` (the default one does, to avoid
    device syncs).
    """

    def uniform(self, shape: tuple[int, ...], mask: torch.Tensor) -> torch.Tensor:
        """Uniform numbers in ``[0, 1)`` of ``shape`` (``shape[0] == N``)."""
        ...

    def integers(self, low: int, high: int | torch.Tensor, shape: tuple[int, ...], mask: torch.Tensor) -> torch.Tensor:
        """Integers uniform in ``[low, high)``, ``int64`` of ``shape``; ``high`` is an int or ``int64[N]``."""
        ...

    def pool(self, num_envs: int, width: int) -> torch.Tensor:
        """``float64[num_envs, width]`` uniform numbers in ``[0, 1)`` for the compiled kernels (row ``n``: copy ``n``'s
        draws of one call, used from the left; unused entries are ignored)."""
        ...


class GeneratorRandomSource:
    """The default :class:`RandomSource`: draws from ``env.generator`` on ``env.device``."""

    def __init__(self, env: TensorEnv) -> None:
        self.env = env

    def uniform(self, shape: tuple[int, ...], mask: torch.Tensor) -> torch.Tensor:
        return torch.rand(shape, generator=self.env.generator, device=self.env.device)

    def integers(self, low: int, high: int | torch.Tensor, shape: tuple[int, ...], mask: torch.Tensor) -> torch.Tensor:
        if isinstance(high, int):
            return torch.randint(low, high, shape, generator=self.env.generator, device=self.env.device)
        span = (high - low).clamp(min=1).to(torch.float32)
        if len(shape) > 1:
            span = span.view((-1,) + (1,) * (len(shape) - 1))
        draw = torch.rand(shape, generator=self.env.generator, device=self.env.device)
        offset = torch.minimum((draw * span).long(), span.long() - 1)
        return low + offset

    def pool(self, num_envs: int, width: int) -> torch.Tensor:
        """On CPU with numba: one 63-bit key from the generator, expanded by a compiled SplitMix64 counter
        (:func:`~emphatic_rl.envs.minatar.kernels.common.fill_uniform`; ~20x cheaper than ``torch.rand`` for the
        33-wide Freeway pool); elsewhere ``torch.rand``."""
        if self.env.device.type != "cpu" or not _numba_available():
            return torch.rand(
                (num_envs, width), generator=self.env.generator, device=self.env.device, dtype=torch.float64
            )
        from emphatic_rl.envs.minatar.kernels.common import fill_uniform

        key = int(torch.randint(0, 2**63 - 1, (), generator=self.env.generator))
        out = torch.empty((num_envs, width), dtype=torch.float64)
        fill_uniform(out.numpy(), key)
        return out


def paint(num_envs: int, rows: torch.Tensor, cols: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A ``bool[N, 10, 10]`` plane with ``True`` at ``(rows[n, k], cols[n, k])`` where ``mask[n, k]``.

    ``rows``, ``cols``: ``int64[N]`` or ``int64[N, K]``; cells outside the masked set are left ``False``.
    """
    flat = rows * 10 + cols
    if flat.dim() == 1:
        flat = flat.unsqueeze(1)
        mask = None if mask is None else mask.unsqueeze(1)
    if mask is not None:
        flat = torch.where(mask, flat, torch.full_like(flat, 100))
    plane = torch.zeros(num_envs, 101, dtype=torch.bool, device=flat.device)
    plane.scatter_(1, flat, True)
    return plane[:, :100].view(num_envs, 10, 10)


def gather_cell(plane: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``plane[n, rows[n], cols[n]]`` for ``plane: [N, 10, 10]``, ``rows, cols: int64[N]`` -> ``[N]``."""
    return plane.view(plane.shape[0], 100).gather(1, (rows * 10 + cols).unsqueeze(1)).squeeze(1)


def draw(
    canvas: torch.Tensor,
    cells: torch.Tensor,
    channel: int | torch.Tensor,
    num_channels: int,
    on: torch.Tensor | None = None,
) -> None:
    """Set ``canvas[n, cells[n, k], channel]`` where ``on[n, k]`` (everywhere if ``on`` is ``None``), in place.

    ``channel``: one channel for every point, or ``int64[N, K]`` (or ``[K]``) per point.

    ``canvas``: ``uint8[N, 100 * num_channels]``, the flat ``[N, 10, 10, C]`` observation being built (see
    :func:`new_canvas`). ``cells``: ``int64[N, K]`` flat cell indices ``row * 10 + col`` in ``0..99`` (also for
    the entries that are off). ``on``: ``bool`` or ``uint8[N, K]``. One scatter, no per-plane broadcasting:
    uint8 scatters cost a few microseconds where boolean plane ops over ``[N, 10, 10]`` cost hundreds on CPU.
    """
    index = cells * num_channels + channel
    if on is None:
        canvas.scatter_(1, index, torch.ones_like(index, dtype=torch.uint8))
    else:
        canvas.scatter_reduce_(1, index, on.to(torch.uint8), "amax")


def new_canvas(num_envs: int, num_channels: int, device: torch.device) -> torch.Tensor:
    """An empty flat observation ``uint8[N, 100 * num_channels]`` for :func:`draw`."""
    return torch.zeros(num_envs, 100 * num_channels, dtype=torch.uint8, device=device)


def canvas_to_observation(canvas: torch.Tensor, num_channels: int) -> torch.Tensor:
    """The finished canvas as the observation ``bool[N, 10, 10, C]`` (a view: no copy)."""
    return canvas.view(canvas.shape[0], 10, 10, num_channels).view(torch.bool)


BACKENDS: tuple[str, ...] = ("auto", "torch", "numba")


def _flat_bytes(obs: torch.Tensor) -> np.ndarray:
    """``bool[N, 10, 10, C]`` as the ``uint8[N, 100 * C]`` array the kernels write (``[n, cell * C + channel]``)."""
    return obs.view(obs.shape[0], -1).view(torch.uint8).numpy()


def _numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


class MinAtarEnv(TensorEnv):
    """Base class of the batched MinAtar games (see the module docstring for the protocol).

    Args:
        num_envs: number of copies ``N``.
        device: torch device.
        sticky_action_prob: probability in ``[0, 1]`` of repeating the previous action (reference default 0.1).
        difficulty_ramping: ramp up the difficulty as the reference does (default ``True``).
        minimal_action_set: expose only the game's minimal action set instead of all 6 actions.
        max_episode_steps: time limit reported as ``truncated``; ``None`` (default, as the reference) for none.
        check_actions: validate every action against the action set (one device sync per step).
        backend: ``"auto"`` (default: ``"numba"`` on CPU when numba is installed, else ``"torch"``), ``"torch"``
            (batched torch operations, any device) or ``"numba"`` (compiled per-copy kernels, CPU only).
    """

    game: str = ""
    channels: tuple[str, ...] = ()
    minimal_actions: tuple[str, ...] = ()
    game_state_names: tuple[str, ...] = ()
    #: module of the game's compiled kernels (``None``: torch only).
    kernel_module: str | None = None
    observation_depends_only_on_state = True

    def __init__(
        self,
        num_envs: int = 1,
        device: torch.device | str = "cpu",
        sticky_action_prob: float = 0.1,
        difficulty_ramping: bool = True,
        minimal_action_set: bool = False,
        max_episode_steps: int | None = None,
        check_actions: bool = True,
        backend: str = "auto",
    ) -> None:
        if (
            isinstance(sticky_action_prob, bool)
            or not isinstance(sticky_action_prob, (int, float))
            or not 0.0 <= float(sticky_action_prob) <= 1.0
        ):
            raise ValueError(f"sticky_action_prob must be a number in [0, 1], got {sticky_action_prob!r}")
        if not isinstance(difficulty_ramping, bool):
            raise ValueError(f"difficulty_ramping must be True or False, got {difficulty_ramping!r}")
        if not isinstance(minimal_action_set, bool):
            raise ValueError(f"minimal_action_set must be True or False, got {minimal_action_set!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
        if backend == "numba":
            if torch.device(device).type != "cpu":
                raise ValueError(f"backend 'numba' runs on CPU only, got device {device!r}; use 'torch' or 'auto'")
            if not _numba_available():
                raise ValueError("backend 'numba' needs the numba package (pip install numba); use 'torch' or 'auto'")
            if self.kernel_module is None:
                raise ValueError(f"{type(self).__name__} has no compiled kernels; use backend 'torch' or 'auto'")
        super().__init__(num_envs, device, max_episode_steps, check_actions)
        if backend == "auto":
            compiled = self.device.type == "cpu" and self.kernel_module is not None and _numba_available()
            backend = "numba" if compiled else "torch"
        #: the backend in use: ``"torch"`` or ``"numba"``.
        self.backend = backend
        self.sticky_action_prob = float(sticky_action_prob)
        self.ramping = difficulty_ramping
        self.minimal_action_set = minimal_action_set
        names = self.minimal_actions if minimal_action_set else FULL_ACTIONS
        #: full-set index of each of this env's actions: ``int64[num_actions]``.
        self.action_set = torch.tensor([FULL_ACTIONS.index(a) for a in names], dtype=torch.int64, device=self.device)
        self.action_spec = DiscreteSpec(len(names))
        self.observation_spec = BoxSpec((10, 10, len(self.channels)), 0.0, 1.0, torch.bool)
        self.state_names = ("last_action",) + self.game_state_names
        self.random_source: RandomSource = GeneratorRandomSource(self)
        self.last_action = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self._allocate_state()
        if self.backend == "numba":
            self._setup_kernels()
        self.reset()

    # ------------------------------------------------------------------ game hooks
    def _allocate_state(self) -> None:
        """Create every tensor named in ``game_state_names`` (values are set by ``_reset_where``)."""
        raise NotImplementedError

    def _game_step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One reference ``Env.act`` per copy (torch backend); ``action``: full-set ``int64[N]``. Returns reward,
        terminal."""
        raise NotImplementedError

    def _reset_where_torch(self, mask: torch.Tensor) -> None:
        """The torch backend's ``_reset_where``."""
        raise NotImplementedError

    def _observe_torch(self) -> torch.Tensor:
        """The torch backend's ``_observe``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ TensorEnv hooks
    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Start a new episode in every copy and clear the sticky previous action to noop."""
        self.last_action.zero_()
        return super().reset(seed)

    def _reset_where(self, mask: torch.Tensor) -> None:
        if self.backend == "torch":
            self._reset_where_torch(mask)
            return
        draws = self.random_source.pool(self.num_envs, self._kernels.MAX_DRAWS_PER_RESET)
        self._kernels.reset_kernel(
            mask.numpy(), draws.numpy(), self.last_draw_bounds, self.last_draws_used, *self._kernel_state
        )

    def _observe(self) -> torch.Tensor:
        if self.backend == "torch":
            return self._observe_torch()
        obs = torch.empty((self.num_envs, 10, 10, len(self.channels)), dtype=torch.bool)
        self._kernels.render_kernel(_flat_bytes(obs), *self._kernel_state)
        return obs

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        full_action = self.action_set[action]
        everyone = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        sticky_draw = self.random_source.uniform((self.num_envs,), everyone)
        full_action = torch.where(sticky_draw < self.sticky_action_prob, self.last_action, full_action)
        self.last_action = full_action
        reward, terminal = self._game_step(full_action)
        return reward.to(torch.float32), terminal

    def step(self, action: torch.Tensor) -> StepResult:
        """Advance every copy by one step (see :meth:`TensorEnv.step`); the numba backend does it in one kernel call."""
        if self.backend == "torch":
            return super().step(action)
        action = self.validate_action(action)
        n, shape = self.num_envs, (self.num_envs, 10, 10, len(self.channels))
        draws = self.random_source.pool(n, self._kernels.MAX_DRAWS_PER_STEP)
        obs, final_obs = torch.empty(shape, dtype=torch.bool), torch.empty(shape, dtype=torch.bool)
        reward = torch.empty(n, dtype=torch.float32)
        terminated, truncated = torch.empty(n, dtype=torch.bool), torch.empty(n, dtype=torch.bool)
        self._kernels.step_kernel(
            action.numpy(),
            self._action_set_array,
            self.sticky_action_prob,
            self.last_action.numpy(),
            self.elapsed_steps.numpy(),
            self.max_episode_steps or 0,
            self.ramping,
            draws.numpy(),
            self.last_draw_bounds,
            self.last_draws_used,
            _flat_bytes(final_obs),
            _flat_bytes(obs),
            reward.numpy(),
            terminated.numpy(),
            truncated.numpy(),
            *self._kernel_state,
        )
        return StepResult(obs, reward, terminated, truncated, final_obs)

    # ------------------------------------------------------------------ numba backend
    def _setup_kernels(self) -> None:
        """Import the game's kernels and take numpy views of the state tensors (kept for the env's lifetime: the
        numba backend changes the state in place only, so ``state_dict``/``load_state_dict`` see the same memory)."""
        assert self.kernel_module is not None, "the numba backend is only chosen for games with a kernel module"
        self._kernels: ModuleType = importlib.import_module(self.kernel_module)
        self._kernel_state = tuple(getattr(self, name).numpy() for name in self.game_state_names)
        self._action_set_array = self.action_set.numpy()
        width = max(self._kernels.MAX_DRAWS_PER_STEP, self._kernels.MAX_DRAWS_PER_RESET)
        #: numba backend, last call: ``(low, high)`` of each draw copy ``n`` made (``(0, 0)``: a plain uniform).
        self.last_draw_bounds = np.zeros((self.num_envs, width, 2), dtype=np.int64)
        #: numba backend, last call: how many pool numbers each copy used.
        self.last_draws_used = np.zeros(self.num_envs, dtype=np.int64)

    def _ints(self, value: int) -> torch.Tensor:
        """``int64[N]`` filled with ``value``."""
        return torch.full((self.num_envs,), value, dtype=torch.int64, device=self.device)


def make_minatar_env(game: str, num_envs: int = 1, device: torch.device | str = "cpu", **options) -> MinAtarEnv:
    """Build the native batched MinAtar ``game`` (one of :data:`GAMES`); options as :class:`MinAtarEnv`."""
    from emphatic_rl.envs.registry import ENV_REGISTRY

    if game not in GAMES:
        raise ValueError(f"unknown MinAtar game {game!r}; allowed: {', '.join(GAMES)}")
    name = "minatar-" + game.replace("_", "-")
    return cast(MinAtarEnv, ENV_REGISTRY[name].factory(num_envs=num_envs, device=device, **options))
