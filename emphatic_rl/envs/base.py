"""The ``TensorEnv`` protocol: batched environments that live on a torch device.

A ``TensorEnv`` steps ``N`` independent copies of one environment at once. Everything it takes and returns is a
torch tensor on ``env.device`` with a leading batch axis ``N``.

Autoreset rule (same-step)
--------------------------
When copy ``n`` ends its episode at a ``step`` (``terminated[n] or truncated[n]``), the env resets that copy
*inside the same call*:

- ``StepResult.final_obs[n]`` is the true last observation of the episode that just ended, the ``S_{t+1}`` of the
  transition. For copies that did not end, ``final_obs[n] == obs[n]``.
- ``StepResult.obs[n]`` is the first observation of the next episode, the ``S_0`` the agent acts on next.

So every ``(obs_before, action, reward, final_obs, terminated, truncated)`` tuple a loop stores is a real
transition; there is never a cross-reset pseudo-transition. Bootstrap through ``truncated``, never through
``terminated``.

Randomness: each env owns one ``torch.Generator`` on its device, seeded by ``reset(seed=...)``. ``state_dict`` holds
the generator state, the per-copy state tensors and the step counters, so a restored env continues bit-identically.

Subclasses implement three batched hooks without Python loops over copies:

- ``_reset_where(mask)``: draw fresh initial states for the copies where ``mask`` is true, leave the rest;
- ``_transition(action)``: advance every copy one step, return ``(reward, terminated)``;
- ``_observe()``: the observation of the current state of every copy.
"""

from __future__ import annotations

import math
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Self

import numpy as np
import torch

if TYPE_CHECKING:
    from emphatic_rl.envs.vector_dynamics import VectorDynamics


@dataclass(frozen=True)
class DiscreteSpec:
    """Actions ``0, 1, ..., n - 1``. Batched actions are ``int64[N]``."""

    n: int

    @property
    def shape(self) -> tuple[int, ...]:
        return ()

    @property
    def dtype(self) -> torch.dtype:
        return torch.int64


@dataclass(frozen=True)
class BoxSpec:
    """A box of real (or boolean) values. Batched values are ``dtype[N, *shape]``.

    ``low`` and ``high`` are floats applied to every element, or tuples with one entry per element of a 1-d box.
    """

    shape: tuple[int, ...]
    low: float | tuple[float, ...]
    high: float | tuple[float, ...]
    dtype: torch.dtype = torch.float32

    def low_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.broadcast_to(torch.as_tensor(self.low, dtype=torch.float32, device=device), self.shape)

    def high_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.broadcast_to(torch.as_tensor(self.high, dtype=torch.float32, device=device), self.shape)


Spec = DiscreteSpec | BoxSpec


class StepResult(NamedTuple):
    """What ``TensorEnv.step`` returns. All tensors have leading axis ``N`` and live on ``env.device``.

    - ``obs``: ``[N, *obs_shape]``, the observation to act on next (the reset observation where an episode ended).
    - ``reward``: ``float32[N]``.
    - ``terminated``: ``bool[N]``, the episode reached a terminal state (do not bootstrap).
    - ``truncated``: ``bool[N]``, the episode was cut by the time limit (bootstrap from ``final_obs``).
    - ``final_obs``: ``[N, *obs_shape]``, the true next observation ``S_{t+1}`` of this transition.

    Every ``step`` returns new tensors (on every backend): a later step never overwrites them, so a loop may keep
    ``obs`` for the next transition or store the fields without copying.
    """

    obs: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: torch.Tensor


@dataclass(frozen=True)
class TabularDynamics:
    """The dynamics of a deterministic tabular env as tables, with ``S`` states and ``A`` actions: what a planner
    needs for a given model (tabular Dyna, :func:`emphatic_rl.agents.dyna.models.given_model_of`). Declared by envs with
    ``has_tabular_dynamics`` through :meth:`TensorEnv.tabular_dynamics`.

    - ``next_state``: ``int64[S, A]``, the next state of every state and action (extended to unreachable states by
      the env's documented rule).
    - ``reward``: ``float32[S, A]``; ``terminal``: ``bool[S, A]``, the transition ends the episode.
    - ``real_state_mask``: ``bool[S]``, the real, reachable states (a model output elsewhere is a hallucination).
    - ``terminal_states``: ``int64[T]``, states no transition starts from (never a predecessor).
    - ``predecessor_triples``: ``(source, action, target)``, ``int64[M]`` each, the relation a backward model
      inverts; ``None``: every ``(s, a) -> next_state[s, a]`` with ``s`` not terminal.
    - ``state_coordinates``: ``float32[S, F]``, coordinates of the states in ``[-1, 1]`` for function approximation
      that generalises between neighbouring states (``None``: the env has none; use one-hot states).
    """

    next_state: torch.Tensor
    reward: torch.Tensor
    terminal: torch.Tensor
    real_state_mask: torch.Tensor
    terminal_states: torch.Tensor
    predecessor_triples: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    state_coordinates: torch.Tensor | None = None

    @property
    def num_states(self) -> int:
        return int(self.next_state.shape[0])

    @property
    def num_actions(self) -> int:
        return int(self.next_state.shape[1])


class TensorEnv(ABC):
    """Base class of every batched torch environment (see the module docstring for the protocol).

    Args:
        num_envs: number of independent copies ``N`` (>= 1).
        device: torch device the state and all returned tensors live on.
        max_episode_steps: time limit reported as ``truncated``; ``None`` for no limit.
        check_actions: validate the range of every action (costs a device sync per step; turn off when the
            actions come from a trusted sampler).

    A new env already holds valid start states (drawn from its generator, seeded 0), so ``step`` before ``reset``
    is defined: it continues from those states, and ``reset(seed)`` redraws them. This is deliberate: the
    library's own code puts copies in given states and steps them (excursions, perfect Dyna models). The
    Gymnasium ids follow Gymnasium's rule instead and refuse ``step`` before ``reset`` (``ResetNeeded``).
    """

    #: short registry name, e.g. ``"cartpole"``; set by subclasses.
    name: str = ""
    observation_spec: BoxSpec
    action_spec: Spec
    #: names of the tensor attributes that hold the per-copy state (saved by ``state_dict``).
    state_names: tuple[str, ...] = ()
    #: ``True`` when ``_observe()`` is a deterministic function of each copy's own state and ``_reset_where``
    #: leaves the other copies' state untouched: after the autoreset, ``_observe()`` then already equals
    #: ``final_obs`` on the copies that did not end, and ``step`` skips the per-copy select (a broadcast
    #: ``where`` over the whole observation, costly for large image observations on CPU).
    observation_depends_only_on_state: bool = False

    # Optional capabilities, declared by the envs that have them (the training loop and the agents read these
    # declarations; they never probe for attributes):
    #: the env's own state-independent behaviour policy, one probability per action (``None``: it has none).
    behaviour_probabilities: tuple[float, ...] | None = None
    #: ``True`` when the env defines its behaviour policy on the true state: ``current_behaviour_probabilities()``.
    has_state_behaviour: bool = False
    #: the tile coding that linear agents use on this env: ``(low, high, tiles per dim, tilings)`` (``None``: none).
    tile_layout: tuple[tuple[float, ...], tuple[float, ...], tuple[int, ...], int] | None = None

    #: ``True`` when the env gives its dynamics as tables: ``tabular_dynamics()`` (a given model for tabular Dyna).
    has_tabular_dynamics: bool = False
    #: ``True`` when the env tells whether a state (e.g. one a model produced) is real: ``is_real_state()``.
    has_real_state_test: bool = False
    #: ``True`` when the env gives its true dynamics as a batched function of any vector states (forward, inverse,
    #: reachable states, unreachable ones): ``vector_dynamics()`` (the perfect model, hallucination detector and
    #: injected error of Dyna with function approximation).
    has_vector_dynamics: bool = False

    def current_behaviour_probabilities(self) -> torch.Tensor:
        """``mu(.|S_t)`` of every copy's current state, ``[N, A]``; only for envs with ``has_state_behaviour``."""
        raise NotImplementedError(f"env {self.name!r} defines no behaviour policy on its state")

    def tabular_dynamics(self, border_physics: str = "closed") -> TabularDynamics:
        """The env's dynamics as tables (:class:`TabularDynamics`); only for envs with ``has_tabular_dynamics``.

        ``border_physics``: how the tables extend the dynamics to unreachable states, where the env offers a choice
        (``"closed"``, the default, for every env that declares the capability; see the env's documentation)."""
        raise NotImplementedError(f"env {self.name!r} declares no tabular dynamics")

    def is_real_state(self, state: torch.Tensor, terminal: torch.Tensor | None = None) -> torch.Tensor:
        """``bool[B]``: whether each state of ``state [B, *state_shape]`` (in observation units) is a real state of
        the env, one the true dynamics can produce; ``terminal bool[B]``: the transition that produced it ended the
        episode (a last state may lie just past the env's bounds). Only for envs with ``has_real_state_test``."""
        raise NotImplementedError(f"env {self.name!r} declares no test of which states are real")

    def vector_dynamics(self) -> VectorDynamics:
        """The env's true dynamics on vector states (:class:`~emphatic_rl.envs.vector_dynamics.VectorDynamics`);
        only for envs with ``has_vector_dynamics``."""
        raise NotImplementedError(f"env {self.name!r} declares no vector dynamics")

    @property
    def supports_excursions(self) -> bool:
        """``True`` when copies can be put in given states (``state_names``): the excursions objective."""
        return bool(self.state_names)

    def set_state(self, *args: Any, **kwargs: Any) -> None:
        """Put every copy in a given state (each env documents its arguments, e.g. CartPole's
        ``[x, x_dot, theta, theta_dot]``); envs that cannot be put in a given state raise ``NotImplementedError``."""
        raise NotImplementedError(f"env {self.name!r} has no set_state: it cannot be put in a given state")

    def __init__(
        self,
        num_envs: int,
        device: torch.device | str = "cpu",
        max_episode_steps: int | None = None,
        check_actions: bool = True,
    ) -> None:
        if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        if max_episode_steps is not None and (not isinstance(max_episode_steps, int) or max_episode_steps < 1):
            raise ValueError(f"max_episode_steps must be None or an integer >= 1, got {max_episode_steps!r}")
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.max_episode_steps = max_episode_steps
        self.check_actions = check_actions
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0)
        self.elapsed_steps = torch.zeros(num_envs, dtype=torch.int64, device=self.device)

    # ------------------------------------------------------------------ hooks for subclasses
    @abstractmethod
    def _reset_where(self, mask: torch.Tensor) -> None:
        """Draw fresh initial states for the copies where ``mask`` (``bool[N]``) is true; keep the others."""

    @abstractmethod
    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance every copy by one step; return ``(reward float32[N], terminated bool[N])``."""

    @abstractmethod
    def _observe(self) -> torch.Tensor:
        """Observation of every copy's current state: ``[N, *observation_spec.shape]``."""

    # ------------------------------------------------------------------ public API
    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Start a new episode in every copy. ``seed`` reseeds the env's generator. Returns ``obs [N, *obs_shape]``."""
        if seed is not None:
            self.generator.manual_seed(int(seed))
        self._reset_where(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        self.elapsed_steps.zero_()
        return self._observe()

    def step(self, action: torch.Tensor) -> StepResult:
        """Advance every copy by one step with ``action`` (``[N, *action_shape]``); autoreset on the same step."""
        action = self.validate_action(action)
        reward, terminated = self._transition(action)
        self.elapsed_steps += 1
        if self.max_episode_steps is None:
            truncated = torch.zeros_like(terminated)
        else:
            truncated = (self.elapsed_steps >= self.max_episode_steps) & ~terminated
        final_obs = self._observe()
        done = terminated | truncated
        self._reset_where(done)
        self.elapsed_steps.masked_fill_(done, 0)
        if self.observation_depends_only_on_state:
            obs = self._observe()  # equal to final_obs where not done (see the attribute)
        else:
            obs = torch.where(done.view((-1,) + (1,) * (final_obs.dim() - 1)), self._observe(), final_obs)
        return StepResult(obs, reward, terminated, truncated, final_obs)

    def validate_action(self, action: torch.Tensor) -> torch.Tensor:
        """Convert ``action`` to the spec's dtype on ``self.device``; raise ``ValueError`` if it is not allowed."""
        spec = self.action_spec
        action = torch.as_tensor(action, device=self.device)
        expected_shape = (self.num_envs, *spec.shape)
        if tuple(action.shape) != expected_shape:
            raise ValueError(
                f"{type(self).__name__}.step: action has shape {tuple(action.shape)}, expected {expected_shape}"
            )
        if isinstance(spec, DiscreteSpec):
            if action.dtype.is_floating_point or action.dtype == torch.bool:
                raise ValueError(f"{type(self).__name__}.step: discrete actions must be integers, got {action.dtype}")
            action = action.long()
            if self.check_actions and not self._actions_in_range(action, spec.n):
                bad = action[(action < 0) | (action >= spec.n)][0].item()
                raise ValueError(
                    f"{type(self).__name__}.step: action {bad} is outside the action set {{0, ..., {spec.n - 1}}}"
                )
        else:
            action = action.to(spec.dtype)
            if self.check_actions and not bool(torch.isfinite(action).all()):
                raise ValueError(f"{type(self).__name__}.step: actions must be finite")
        return action

    @staticmethod
    def _actions_in_range(action: torch.Tensor, n: int) -> bool:
        """Whether every entry of the int64 ``action`` lies in ``0..n-1`` (one ``aminmax``: the cheapest check)."""
        low, high = torch.aminmax(action)
        return int(low) >= 0 and int(high) < n

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically: state tensors, step counters and the generator."""
        state = {name: getattr(self, name).clone() for name in self.state_names}
        state["elapsed_steps"] = self.elapsed_steps.clone()
        state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.state_names:
            getattr(self, name).copy_(state[name].to(self.device))
        self.elapsed_steps.copy_(state["elapsed_steps"].to(self.device))
        self.generator.set_state(state["generator"])

    # ------------------------------------------------------------------ helpers for subclasses
    def uniform(self, *shape: int, low: float = 0.0, high: float = 1.0, dtype=torch.float32) -> torch.Tensor:
        """Uniform draws in ``[low, high)`` from the env's generator."""
        sample = torch.rand(shape, generator=self.generator, device=self.device, dtype=dtype)
        return low + (high - low) * sample

    def normal(self, *shape: int, mean: float = 0.0, std: float = 1.0, dtype=torch.float32) -> torch.Tensor:
        """Normal draws from the env's generator."""
        return mean + std * torch.randn(shape, generator=self.generator, device=self.device, dtype=dtype)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_envs={self.num_envs}, device={self.device}, "
            f"max_episode_steps={self.max_episode_steps})"
        )


#: backends of the envs that have compiled CPU kernels (classic control, Puddle World, MinAtar).
BACKENDS: tuple[str, ...] = ("auto", "torch", "numba")


def numba_available() -> bool:
    """Whether numba can be imported (the compiled CPU backends need it)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


#: The compiled backends allocate the output tensors of several steps at once (see :class:`CompiledBackendMixin`):
#: blocks of at most this many bytes ...
OUTPUT_BLOCK_BYTES = 1 << 18
#: ... and at most this many steps.
OUTPUT_BLOCK_STEPS = 64
#: The compiled backends reuse the memory of the last this many sets of output blocks once no tensor refers to it.
OUTPUT_POOL_SETS = 4


class CompiledBackendMixin:
    """Backend selection of a :class:`TensorEnv` whose ``step`` also exists as a compiled CPU kernel.

    ``"numba"``: one compiled call per step on the CPU (the default there when numba is installed); ``"torch"``:
    the batched torch operations (any device: the path for GPUs). Both follow the same rules and the same random
    stream and are held to the same tests. The backend is chosen automatically at construction (``"auto"``) and can
    be changed at any time with :meth:`set_backend` (the state is shared: nothing is copied).

    The compiled ``step`` keeps its fixed cost per call small (at ``N = 1`` it is most of the cost):

    - the action is checked by a few attribute reads (type, dtype, shape, device, contiguity; anything else takes a
      slower path that converts it or raises) and handed to the kernel as the address of its data; the kernel
      checks the range;
    - the five output tensors of ``OUTPUT_BLOCK_STEPS`` future steps (at most ``OUTPUT_BLOCK_BYTES`` bytes, so a
      single step at large ``N``) are allocated together and split into separate tensors, and their
      ``StepResult`` made, in one go. Each step fills and returns the next unused one: every step still returns
      tensors that no later step writes to (a kept tensor keeps its block alive, at most 256 KiB);
    - the memory of such a set of blocks is reused once nothing refers to it any more: the env keeps the last
      ``OUTPUT_POOL_SETS`` sets, and a set is taken again only when the reference counts of its numpy blocks show
      that no tensor made from them is alive (``torch.from_numpy`` keeps its array referenced until the tensor's
      storage is freed: while any tensor, view, ``.numpy()`` array or autograd record of a step's outputs exists,
      that set is not reused). A loop that drops its results (or keeps only the last one) thus steps on warm memory
      instead of fresh pages (glibc's ``malloc`` serves large blocks as new zeroed pages, a page fault per 4 KiB);
      a loop that keeps every result simply gets new memory every time, as before.
    """

    _backend: str = "torch"
    # provided by the TensorEnv this class is mixed into
    num_envs: int
    device: torch.device
    observation_spec: BoxSpec
    action_spec: Spec

    @property
    def backend(self) -> str:
        """The backend in use: ``"torch"`` or ``"numba"``."""
        return self._backend

    def set_backend(self, backend: str) -> Self:
        """Step with ``backend`` from now on: ``"auto"`` (numba on CPU when installed, else torch), ``"torch"`` or
        ``"numba"`` (CPU only). Returns the env."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
        on_cpu = self.device.type == "cpu"
        if backend == "numba":
            if not on_cpu:
                raise ValueError(f"backend 'numba' runs on CPU only, got device {str(self.device)!r}; use 'torch'")
            if not numba_available():
                raise ValueError("backend 'numba' needs the numba package (pip install numba); use 'torch'")
        if backend == "auto":
            backend = "numba" if on_cpu and numba_available() else "torch"
        if backend == "numba":
            before = set(self.__dict__)
            spec = self.action_spec
            self._kernel_action_shape = (self.num_envs, *spec.shape)
            self._kernel_action_dtype = torch.int64 if isinstance(spec, DiscreteSpec) else spec.dtype
            self._setup_kernels()
            self._setup_output_blocks()
            # what the numba backend made (kernels, scratch, views of the state, output blocks): rebuilt, not copied
            self._compiled_names = getattr(self, "_compiled_names", frozenset()) | (set(self.__dict__) - before)
        self._backend = backend
        return self

    def __getstate__(self) -> dict[str, Any]:
        """The env without what its numba backend made (a copy or an unpickled env makes its own: numpy views and
        output blocks would otherwise still share, or no longer share, memory with the wrong tensors)."""
        dropped = self.__dict__.get("_compiled_names", frozenset())
        return {name: value for name, value in self.__dict__.items() if name not in dropped}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._backend == "numba":
            self.set_backend("numba")

    def _setup_kernels(self) -> None:
        """Import the compiled kernels and allocate the scratch arrays they use."""
        raise NotImplementedError

    def _setup_output_blocks(self) -> None:
        """Size the blocks of output tensors (``OUTPUT_BLOCK_STEPS`` steps, at most ``OUTPUT_BLOCK_BYTES``)."""
        obs_dtype = torch.empty(0, dtype=self.observation_spec.dtype).numpy().dtype
        self._obs_block_dtype = obs_dtype
        cells = math.prod(self.observation_spec.shape)
        step_bytes = self.num_envs * (2 * cells * obs_dtype.itemsize + 4 + 2)  # obs, final obs, reward, two flags
        self._block_steps = max(1, min(OUTPUT_BLOCK_STEPS, OUTPUT_BLOCK_BYTES // step_bytes))
        self._slot = self._block_steps  # no block yet: the first step makes one
        self._blocks: tuple[np.ndarray, ...] = ()
        self._results: list[StepResult] = []
        #: sets of output blocks that may be reused: ``(blocks, reference counts of the blocks when unused)``
        self._output_pool: list[tuple[tuple[np.ndarray, ...], tuple[int, ...]]] = []

    def _new_output_blocks(self) -> None:
        """Make the outputs of the next ``_block_steps`` steps current: numpy blocks ``[K, N, ...]`` that the kernels
        write (``final_obs, obs, reward, terminated, truncated``) and, over the same memory, one ``StepResult`` of
        separate tensors per step. The blocks are a set from the pool that no tensor refers to any more, else new
        ones (see the class docstring)."""
        self._results = []  # drop the env's own references to the tensors of the set just used up
        for blocks, unused in self._output_pool:
            if tuple(map(sys.getrefcount, blocks)) == unused:  # no tensor, view or array of them is alive
                break
        else:
            blocks = self._allocate_output_blocks()
            if len(self._output_pool) >= OUTPUT_POOL_SETS:
                del self._output_pool[0]  # the oldest set is still in use: leave it to its holders
            self._output_pool.append((blocks, tuple(map(sys.getrefcount, blocks))))
        self._blocks = blocks
        final_obs, obs, reward, terminated, truncated = blocks
        if self._block_steps == 1:  # large N: five tensors over the blocks' only row (cheaper than unbind)
            tensor = torch.from_numpy
            self._results = [
                StepResult(tensor(obs[0]), tensor(reward[0]), tensor(terminated[0]), tensor(truncated[0]),
                           tensor(final_obs[0]))
            ]  # fmt: skip
            return

        def split(block: np.ndarray) -> tuple[torch.Tensor, ...]:
            return torch.from_numpy(block).unbind(0)

        self._results = list(
            map(StepResult, split(obs), split(reward), split(terminated), split(truncated), split(final_obs))
        )

    def _allocate_output_blocks(self) -> tuple[np.ndarray, ...]:
        """New numpy blocks ``(final_obs, obs, reward, terminated, truncated)`` for ``_block_steps`` steps."""
        steps, n, shape = self._block_steps, self.num_envs, self.observation_spec.shape
        final_obs = np.empty((steps, n, *shape), self._obs_block_dtype)
        obs = np.empty((steps, n, *shape), self._obs_block_dtype)
        reward = np.empty((steps, n), np.float32)
        terminated, truncated = np.empty((steps, n), np.bool_), np.empty((steps, n), np.bool_)
        return final_obs, obs, reward, terminated, truncated

    def _kernel_action(self, action: Any) -> torch.Tensor:
        """The slow path of the action check (the fast one is in ``step``): convert ``action`` to a contiguous CPU
        tensor of the kernel's dtype (``int64`` for discrete actions, the spec's dtype for boxes), or raise
        ``ValueError`` naming what is wrong. The range is checked in the kernel."""
        if not isinstance(action, torch.Tensor) or not action.is_cpu:
            action = torch.as_tensor(action, device="cpu")
        spec = self.action_spec
        if action.shape != self._kernel_action_shape:
            raise ValueError(
                f"{type(self).__name__}.step: action has shape {tuple(action.shape)}, "
                f"expected {self._kernel_action_shape}"
            )
        if isinstance(spec, DiscreteSpec):
            if action.dtype.is_floating_point or action.dtype == torch.bool or action.dtype.is_complex:
                raise ValueError(f"{type(self).__name__}.step: discrete actions must be integers, got {action.dtype}")
        elif action.dtype.is_complex:
            raise ValueError(f"{type(self).__name__}.step: actions must be real, got {action.dtype}")
        action = action.to(self._kernel_action_dtype).resolve_neg().contiguous()
        return action

    def _fast_action(self, action: Any) -> torch.Tensor:
        """``action`` itself when it is already what the kernel reads (checked by attribute reads), else
        :meth:`_kernel_action`. Pass ``result.data_ptr()`` to the kernel and keep ``result`` alive during the call."""
        if (
            type(action) is torch.Tensor
            and action.dtype is self._kernel_action_dtype
            and action.shape == self._kernel_action_shape
            and action.is_cpu
            and action.is_contiguous()
        ):
            return action
        return self._kernel_action(action)

    def _raise_bad_action(self, actions: torch.Tensor, index: int) -> None:
        """The error of the compiled backends for the first bad action, at copy ``index`` (same text as
        :meth:`validate_action`)."""
        spec = self.action_spec
        if isinstance(spec, DiscreteSpec):
            raise ValueError(
                f"{type(self).__name__}.step: action {int(actions[index])} is outside the action set "
                f"{{0, ..., {spec.n - 1}}}"
            )
        raise ValueError(f"{type(self).__name__}.step: actions must be finite")
