"""``TrajectoryBuffer``: the one replay / trajectory store every agent uses.

Layout
------
Every field is a ring of ``capacity`` time rows by ``num_streams`` streams, ``[T, N, *shape]``, on ``device``.
One call to :meth:`TrajectoryBuffer.add` writes one time row: the step every stream just took. Rows are
time-major per stream, so uniform transitions, contiguous sequences (traces, n-step returns, follow-on traces)
and "the latest step" are cheap gathers. When the ring is full the oldest row is overwritten.

Counting: ``len(buffer)`` is the number of valid time rows (``<= capacity``); it holds ``len(buffer) *
num_streams`` transitions. ``total_steps`` counts ``add`` calls (time rows) since the buffer was made, so with
``N`` streams it has seen ``total_steps * N`` transitions (``total_transitions``). Size the capacity in rows:
``capacity = wanted transitions // num_streams``.

Time index
----------
Rows are named by a global time index: the ``k``-th call to ``add`` (from 0) writes time ``k``. The valid
times are ``[total_steps - len(buffer), total_steps)``. Batches report ``time_index`` and ``stream_index`` so
a learner can find where a sample came from (and :meth:`TrajectoryBuffer.transitions_at` reads any valid
``(time, stream)``).

Next observations (same-step autoreset, see ``emphatic_rl.envs.base``)
---------------------------------------------------------------------
Row ``(t, n)`` stores ``obs = S_t``, the observation acted upon. Its ``next_obs`` is

- ``final_obs`` of that step (the true ``S_{t+1}`` kept by the env) when the episode ended there (``terminated
  or truncated``);
- for the newest row, that step's ``final_obs`` (kept for every stream);
- otherwise the ``obs`` of row ``t + 1`` of the same stream (which is always newer, so never overwritten
  first).

So no second copy of every observation is stored. Final observations are kept only where an episode ended, in
a side store of slots (a ring in allocation order, since rows are freed in the same order they are written)
and an ``int32[T, N]`` map from rows to slots. Size bound: the side store holds ``K`` slots plus ``N`` slots
for the newest row's final observations, where ``K >= (episode ends among the stored rows) + N`` is grown by
doubling when needed and never exceeds ``capacity * num_streams``; it starts at ``final_obs_slots`` (default
``min(capacity * num_streams, 4 * num_streams)``). Growing needs one host sync; in steady state ``add`` does
not sync with the device.

Boolean observations
--------------------
``obs_dtype=torch.bool`` observations (MinAtar's ``bool[10, 10, C]``) are bit-packed to ``ceil(cells / 8)``
bytes on ``add`` and unpacked on the device when sampled (:mod:`emphatic_rl.buffers.packing`). This is
transparent: batches hold ``bool[..., *obs_shape]``.

Sampling
--------
Every sampler takes a ``torch.Generator`` on the buffer's device and is reproducible given its state. Sampling
is batched tensor work with no Python loop over batch elements or streams. Sequences never cross the ring seam
(oldest / newest row) and, unless ``cross_episodes=True``, never contain a step after an episode end (a
sequence may end on a terminal or truncated step). Valid sequence starts are found by rejection (candidates
drawn uniformly and checked with one gather; exact, since accepted candidates are uniform over the valid set),
with an exact full scan as the fallback when few candidates are valid; one host sync per call.

Backends
--------
On CPU (``backend="auto"`` or ``"numba"``) ``add`` and every gather are one call each into compiled kernels
(:mod:`emphatic_rl.buffers.kernels`) working in place on the same storage; elsewhere (``"torch"``, any device) they
are batched tensor ops. Both write the same bits and return the same batches given the same generator, and are
held to the same tests. The random draws are always made by torch with the caller's generator.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from emphatic_rl.buffers import kernels
from emphatic_rl.buffers.packing import pack_bool, packed_num_bytes, unpack_bool

#: ``TrajectoryBuffer(backend=...)``: ``"numba"`` runs ``add`` and the gathers as compiled kernels on numpy views of the
#: storage (CPU only), ``"torch"`` as tensor ops (any device), ``"auto"`` picks numba on CPU and torch elsewhere.
BACKENDS = ("auto", "torch", "numba")


@dataclass(frozen=True)
class FieldSpec:
    """An agent-declared extra field: one value of ``shape`` and ``dtype`` per step and stream.

    Stored as ``dtype[T, N, *shape]``; ``add`` takes it as ``[N, *shape]``.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype

    def __post_init__(self) -> None:
        shape = _as_shape("FieldSpec.shape", self.shape)
        object.__setattr__(self, "shape", shape)
        if not isinstance(self.dtype, torch.dtype):
            raise ValueError(f"FieldSpec.dtype must be a torch.dtype, got {self.dtype!r}")


@dataclass(frozen=True)
class TransitionBatch:
    """A batch of transitions read from a :class:`TrajectoryBuffer`.

    Leading dims ``*lead`` are ``[B]`` for :meth:`TrajectoryBuffer.sample_transitions`, ``[B, L]`` for
    :meth:`TrajectoryBuffer.sample_sequences` and ``[N]`` for :meth:`TrajectoryBuffer.latest`.

    - ``obs``: ``[*lead, *obs_shape]``, ``S_t`` (the observation acted upon), in the buffer's ``obs_dtype``.
    - ``action``: ``[*lead, *action_shape]``.
    - ``reward``: ``float32[*lead]``.
    - ``terminated`` / ``truncated``: ``bool[*lead]``; ``done`` is their OR.
    - ``next_obs``: ``[*lead, *obs_shape]``, the true ``S_{t+1}`` (the final observation where the episode
      ended).
    - ``behaviour_log_prob``: ``float32[*lead]``, ``log mu(A_t | S_t)``.
    - ``interest``: ``float32[*lead]``, ``i(S_t)``.
    - ``time_index``: ``int64[*lead]``, the global time of the row (the ``add`` call number, from 0).
    - ``stream_index``: ``int64[*lead]``, the stream ``n`` of the row.
    - ``extras``: mapping ``name -> [*lead, *shape]`` of the agent-declared fields; each is also readable as
      an attribute (``batch.my_field``).
    """

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    next_obs: torch.Tensor
    behaviour_log_prob: torch.Tensor
    interest: torch.Tensor
    time_index: torch.Tensor
    stream_index: torch.Tensor
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __getattr__(self, name: str) -> torch.Tensor:
        # Only called when normal lookup fails: expose extras as attributes.
        extras = self.__dict__.get("extras")
        if extras is not None and name in extras:
            return extras[name]
        raise AttributeError(f"TransitionBatch has no field {name!r}")

    @property
    def done(self) -> torch.Tensor:
        """``bool[*lead]``: the episode ended at this step (``terminated | truncated``)."""
        return self.terminated | self.truncated

    def to(self, device: torch.device | str) -> TransitionBatch:
        """The same batch with every tensor moved to ``device``."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self) if f.name != "extras"}
        return TransitionBatch(**moved, extras={k: v.to(device) for k, v in self.extras.items()})

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor by name, extras included (flat)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extras"}
        out.update(self.extras)
        return out


_BATCH_FIELDS = tuple(f.name for f in fields(TransitionBatch))
_FLOAT32, _BOOL = torch.float32, torch.bool
_RESERVED_NAMES = frozenset(_BATCH_FIELDS) | {"done", "final_obs", "to", "as_dict"}


def _as_shape(name: str, shape: Any) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(f"{name} must be a tuple of non-negative integers, got {shape!r}") from None
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ValueError(f"{name} must be a tuple of non-negative integers, got {shape!r}")
    return shape


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _numpy(tensor: torch.Tensor) -> Any:
    """A numpy view of a CPU tensor (of its detached copy for a tensor that requires grad)."""
    try:
        return tensor.numpy()
    except RuntimeError:  # requires grad
        return tensor.detach().numpy()


#: ``_SPREAD[byte]``: the eight 0/1 bytes of ``byte``'s bits (least significant first) as one little-endian uint64.
_SPREAD = np.array([sum(((value >> j) & 1) << (8 * j) for j in range(8)) for value in range(256)], dtype=np.uint64)
_NO_WORDS = (np.zeros(0, dtype=np.uint64), np.zeros((0, 0), dtype=np.uint64), np.zeros((0, 0), dtype=np.uint64))


def _has_numpy_dtype(dtype: torch.dtype) -> bool:
    try:
        torch.zeros(1, dtype=dtype).numpy()
    except TypeError:  # bfloat16, float8 ...: no numpy equivalent
        return False
    return True


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_floating_point:
        return "floating"
    if dtype.is_complex:
        return "complex"
    return "integer"


class TrajectoryBuffer:
    """Ring buffer of ``capacity`` time rows for ``num_streams`` streams (see the module docstring).

    Args:
        capacity: time rows ``T`` kept (each holds one step of every stream), >= 1.
        num_streams: streams ``N`` (environment copies) written by every ``add``, >= 1.
        obs_shape: shape of one observation.
        obs_dtype: dtype of observations; ``torch.bool`` observations are bit-packed in storage.
        action_shape: shape of one action (``()`` for discrete actions).
        action_dtype: dtype of actions.
        device: where all storage lives and sampling happens.
        extras: agent-declared extra fields ``name -> FieldSpec``.
        final_obs_slots: initial number of slots for final observations of ended episodes (grows on demand up
            to ``capacity * num_streams``); default ``min(capacity * num_streams, 4 * num_streams)``.
        backend: ``"auto"`` (default: compiled numba kernels on CPU, tensor ops elsewhere), ``"numba"`` (CPU
            only) or ``"torch"``. Both store the same bits and return the same batches; the kernels do an ``add``
            or a gather in one call instead of twenty to forty tensor ops, which is most of the cost of small rows
            and batches on CPU.
    """

    def __init__(
        self,
        capacity: int,
        num_streams: int,
        obs_shape: tuple[int, ...],
        obs_dtype: torch.dtype,
        action_shape: tuple[int, ...] = (),
        action_dtype: torch.dtype = torch.int64,
        device: torch.device | str = "cpu",
        extras: dict[str, FieldSpec] | None = None,
        final_obs_slots: int | None = None,
        backend: str = "auto",
    ) -> None:
        capacity = _positive_int("capacity", capacity)
        num_streams = _positive_int("num_streams", num_streams)
        obs_shape = _as_shape("obs_shape", obs_shape)
        if math.prod(obs_shape) == 0:
            raise ValueError(f"obs_shape must have at least one element, got {obs_shape}")
        action_shape = _as_shape("action_shape", action_shape)
        for name, dtype in (("obs_dtype", obs_dtype), ("action_dtype", action_dtype)):
            if not isinstance(dtype, torch.dtype) or dtype.is_complex:
                raise ValueError(f"{name} must be a real or bool torch.dtype, got {dtype!r}")
        extras = dict(extras or {})
        for name, spec in extras.items():
            if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
                raise ValueError(f"extras: field name {name!r} must be a Python identifier not starting with '_'")
            if name in _RESERVED_NAMES:
                raise ValueError(f"extras: field name {name!r} is reserved; reserved names: {sorted(_RESERVED_NAMES)}")
            if not isinstance(spec, FieldSpec):
                raise ValueError(f"extras[{name!r}] must be a FieldSpec, got {type(spec).__name__}")
        max_slots = capacity * num_streams
        if final_obs_slots is None:
            final_obs_slots = min(max_slots, 4 * num_streams)
        final_obs_slots = min(_positive_int("final_obs_slots", final_obs_slots), max_slots)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        on_cpu = torch.device(device).type == "cpu"
        if backend == "numba" and not on_cpu:
            raise ValueError(f"backend 'numba' runs on CPU only; this buffer is on {torch.device(device)}")
        numpy_dtypes = all(_has_numpy_dtype(d) for d in (obs_dtype, action_dtype))
        if backend == "numba" and not numpy_dtypes:
            raise ValueError(f"backend 'numba' needs numpy dtypes; got obs {obs_dtype}, action {action_dtype}")
        self.backend = "numba" if backend == "numba" or (backend == "auto" and on_cpu and numpy_dtypes) else "torch"

        self._capacity = capacity
        self._num_streams = num_streams
        self.obs_shape = obs_shape
        self.obs_dtype = obs_dtype
        self.action_shape = action_shape
        self.action_dtype = action_dtype
        self._device = torch.device(device)
        self.extra_specs: dict[str, FieldSpec] = extras
        self.packs_obs = obs_dtype == torch.bool
        if self.packs_obs:
            self._stored_obs_shape: tuple[int, ...] = (packed_num_bytes(obs_shape),)
            self._stored_obs_dtype = torch.uint8
        else:
            self._stored_obs_shape = obs_shape
            self._stored_obs_dtype = obs_dtype

        T, N, dev = capacity, num_streams, self._device
        # Storage, all [T, N, ...]: small per-step scalars and flags share one tensor each, so one gather
        # reads them (fewer tensor ops per call matters on CPU, where each op costs microseconds).
        self._obs = torch.zeros((T, N, *self._stored_obs_shape), dtype=self._stored_obs_dtype, device=dev)
        self._action = torch.zeros((T, N, *action_shape), dtype=action_dtype, device=dev)
        self._scalars = torch.zeros((T, N, 3), dtype=torch.float32, device=dev)  # reward, log mu, interest
        self._ends = torch.zeros((T, N, 2), dtype=torch.bool, device=dev)  # terminated, truncated
        self._extras = {
            name: torch.zeros((T, N, *spec.shape), dtype=spec.dtype, device=dev) for name, spec in extras.items()
        }
        # Final observations: slots [0, K) hold finals of ended episodes (a ring in allocation order); slots
        # [K, K + N) hold the newest row's final observation of every stream. _final_slot maps rows to slots:
        # a slot in [0, K) where the episode ended, K + n (stream n's newest-row slot) elsewhere, so one gather
        # finds the final obs of any row that needs one.
        self._final_slots = final_obs_slots
        self._final_store = torch.zeros(
            (final_obs_slots + N, *self._stored_obs_shape), dtype=self._stored_obs_dtype, device=dev
        )
        self._final_slot = (final_obs_slots + torch.arange(N, dtype=torch.int32, device=dev)).repeat(T, 1)
        self._row_time = torch.zeros(T, dtype=torch.int64, device=dev)  # global time index of every row
        self._final_head = torch.zeros((), dtype=torch.int64, device=dev)  # next slot to allocate
        self._final_live = torch.zeros((), dtype=torch.int64, device=dev)  # slots referenced by stored rows
        self._final_live_bound = 0  # host-side upper bound on _final_live (avoids a sync per add)
        # On CPU, host reads are free: remember which rows hold an episode end to skip slot bookkeeping.
        self._host_checks = self._on_cpu = self._device.type == "cpu"
        # the fast path of add (numba backend, no extras): the shapes it compares against
        self._fast_add = self.backend == "numba" and not extras
        self._stream_shape = (N,)
        # tensors of one element are contiguous whatever their strides: at N = 1 only the observations' and the
        # actions' contiguity can differ (an action of shape [1, A] may be a strided view), so only theirs is read
        self._stream_contiguity = N > 1
        self._fast_key = (
            (obs_dtype, obs_dtype, action_dtype, _FLOAT32, _BOOL, _BOOL)
            + (torch.Size((N, *obs_shape)),) * 2
            + (torch.Size((N, *action_shape)),)
            + (torch.Size(self._stream_shape),) * 3
            + (True,) * (12 if N > 1 else 9)  # on the CPU; contiguous
        )
        self._row_has_end = [False] * T
        self._default_log_prob = torch.zeros(N, device=dev)
        self._default_interest = torch.ones(N, device=dev)
        self._stream_ids = torch.arange(N, device=dev)

        self._total_steps = 0  # add calls so far; the next writes row _cursor = _total_steps % T, see _size too
        self._refresh_flat_views()

    #: attributes derived from the storage by _refresh_flat_views (views, addresses): not copied or pickled
    _DERIVED = frozenset(
        "_obs_flat _action_flat _scalars_flat _ends_flat _final_slot_flat _extras_flat _np_obs _np_action _np_scalars "
        "_np_ends _np_final_store _np_final_slot _np_row_time _np_final_head _np_final_live _add_layout "
        "_add_layout_address _add_kernel _default_log_prob_address _default_interest_address".split()
    )

    def __getstate__(self) -> dict[str, Any]:
        """The buffer without its views and addresses of the storage (a copy or an unpickled buffer makes its own:
        numpy views and cached addresses would otherwise still point at the original's memory)."""
        return {name: value for name, value in self.__dict__.items() if name not in self._DERIVED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._refresh_flat_views()

    def _refresh_flat_views(self) -> None:
        """``[T * N, ...]`` views of the storage (same memory), indexed by ``flat = row * N + stream``; for the numba
        backend also numpy views of the same memory, ``[T * N, D]`` for observations and actions."""
        self._default_log_prob_address = self._default_log_prob.data_ptr()
        self._default_interest_address = self._default_interest.data_ptr()
        rows = self._capacity * self._num_streams
        self._obs_flat = self._obs.view(rows, *self._stored_obs_shape)
        self._action_flat = self._action.view(rows, *self.action_shape)
        self._scalars_flat = self._scalars.view(rows, 3)
        self._ends_flat = self._ends.view(rows, 2)
        self._final_slot_flat = self._final_slot.view(rows)
        self._extras_flat = {name: t.view(rows, *t.shape[2:]) for name, t in self._extras.items()}
        if self.backend == "numba":
            width = math.prod(self._stored_obs_shape)
            self._np_obs = self._obs.view(rows, width).numpy()
            self._np_action = self._action.view(rows, math.prod(self.action_shape)).numpy()
            self._np_scalars = self._scalars.view(rows, 3).numpy()
            self._np_ends = self._ends.view(rows, 2).numpy()
            self._np_final_store = self._final_store.view(self._final_store.shape[0], width).numpy()
            self._np_final_slot = self._final_slot.view(rows).numpy()
            self._np_row_time = self._row_time.numpy()
            self._np_final_head = self._final_head.view(1).numpy()
            self._np_final_live = self._final_live.view(1).numpy()
            self._np_dtypes = (torch.empty(0, dtype=self.obs_dtype).numpy().dtype, self._np_action.dtype)
            self._obs_cells, self._action_width = math.prod(self.obs_shape), math.prod(self.action_shape)
            self._unpack_by_words = self.packs_obs and self._obs_cells % 8 == 0 and sys.byteorder == "little"
            # the add kernel's fixed arguments (kernels.ADD_LAYOUT: the layout and the addresses of the storage, since
            # numbers cost less per call than arrays), the stored dtypes' numpy types, and the kernel compiled for them
            storage = (self._obs, self._action, self._final_store, self._scalars, self._ends, self._final_slot)
            self._add_layout = np.array(
                [
                    int(self.packs_obs),
                    self._num_streams,
                    self._obs_cells,
                    width,
                    self._action_width,
                    self._capacity,
                    self._final_slots,
                    int(self._unpack_by_words),
                    *(t.data_ptr() for t in storage),
                    *(t.data_ptr() for t in (self._final_head, self._final_live, self._row_time)),
                ],
                dtype=np.int64,
            )
            self._add_layout_address = self._add_layout.ctypes.data
            self._obs_type, self._action_type = self._np_obs.dtype.type, self._np_action.dtype.type
            self._add_kernel = kernels.compiled(
                kernels.add_row, (0, (0,) * 8, self._add_layout_address, self._obs_type, self._action_type)
            )

    # ------------------------------------------------------------------ properties
    @property
    def capacity(self) -> int:
        """Time rows ``T`` the ring holds."""
        return self._capacity

    @property
    def num_streams(self) -> int:
        """Streams ``N`` written by every ``add``."""
        return self._num_streams

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def total_steps(self) -> int:
        """Number of ``add`` calls (time rows) since the buffer was made (not capped by ``capacity``)."""
        return self._total_steps

    @property
    def total_transitions(self) -> int:
        """Transitions ever added: ``total_steps * num_streams``."""
        return self._total_steps * self._num_streams

    @property
    def oldest_time(self) -> int:
        """Global time index of the oldest stored row (valid times are ``[oldest_time, total_steps)``)."""
        return self._total_steps - self._size

    def __len__(self) -> int:
        """Number of valid time rows (``<= capacity``)."""
        return self._size

    @property
    def bytes_per_obs(self) -> int:
        """Bytes one stored observation takes (``ceil(cells / 8)`` for bit-packed bool observations)."""
        return math.prod(self._stored_obs_shape) * self._obs.element_size()

    def memory_bytes(self) -> dict[str, int]:
        """Bytes of device storage by part (for reports and tests)."""
        parts = {
            "obs": self._obs,
            "action": self._action,
            "reward_log_prob_interest": self._scalars,
            "terminated_truncated": self._ends,
            "final_obs_store": self._final_store,
            "final_obs_map": self._final_slot,
            "row_time": self._row_time,
            **{f"extra:{k}": v for k, v in self._extras.items()},
        }
        out = {name: t.numel() * t.element_size() for name, t in parts.items()}
        out["total"] = sum(out.values())
        return out

    def __repr__(self) -> str:
        return (
            f"TrajectoryBuffer(capacity={self._capacity}, num_streams={self._num_streams}, "
            f"obs_shape={self.obs_shape}, obs_dtype={self.obs_dtype}, len={self._size}, "
            f"total_steps={self._total_steps}, device={self._device})"
        )

    # ------------------------------------------------------------------ writing
    def add(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        terminated: torch.Tensor,
        truncated: torch.Tensor,
        final_obs: torch.Tensor,
        behaviour_log_prob: torch.Tensor | None = None,
        interest: torch.Tensor | None = None,
        **extras: torch.Tensor,
    ) -> None:
        """Write one step of every stream (one time row).

        Args:
            obs: ``[N, *obs_shape]``, ``S_t``, the observation acted upon.
            action: ``[N, *action_shape]``, ``A_t``.
            reward: ``[N]``, ``R_{t+1}`` (floating).
            terminated: ``bool[N]``; truncated: ``bool[N]``.
            final_obs: ``[N, *obs_shape]``, the true ``S_{t+1}`` (``StepResult.final_obs``).
            behaviour_log_prob: ``[N]``, ``log mu(A_t | S_t)``; default 0 (``mu = 1``).
            interest: ``[N]``, ``i(S_t)``; default 1.
            **extras: every declared extra field, ``[N, *spec.shape]``.

        Floating inputs are cast to the stored floating dtype, integer to the stored integer dtype; a shape or
        kind (bool / integer / floating) mismatch raises ``ValueError`` before anything is written.
        """
        if self._fast_add and not extras:
            # The common case on the CPU (numba backend, no extras, CPU tensors of the stored dtypes and shapes,
            # contiguous, as the envs return them), recognised by comparing one tuple of attribute reads with the
            # cached expected one; anything else (a list, an array, another dtype, a strided view) takes the general
            # path below, which converts or raises one clear line. At N = 1 the per-call cost is all there is: the
            # ``[N]`` tensors then have one element, always contiguous, so only the observations' and actions'
            # contiguity is read.
            key: tuple[Any, ...]
            try:
                if self._stream_contiguity:
                    key = (
                        obs.dtype, final_obs.dtype, action.dtype, reward.dtype, terminated.dtype, truncated.dtype,
                        obs.shape, final_obs.shape, action.shape, reward.shape, terminated.shape, truncated.shape,
                        obs.is_cpu, final_obs.is_cpu, action.is_cpu, reward.is_cpu, terminated.is_cpu,
                        truncated.is_cpu, obs.is_contiguous(), final_obs.is_contiguous(), action.is_contiguous(),
                        reward.is_contiguous(), terminated.is_contiguous(), truncated.is_contiguous(),
                    )  # fmt: skip
                else:
                    key = (
                        obs.dtype, final_obs.dtype, action.dtype, reward.dtype, terminated.dtype, truncated.dtype,
                        obs.shape, final_obs.shape, action.shape, reward.shape, terminated.shape, truncated.shape,
                        obs.is_cpu, final_obs.is_cpu, action.is_cpu, reward.is_cpu, terminated.is_cpu,
                        truncated.is_cpu, obs.is_contiguous(), final_obs.is_contiguous(), action.is_contiguous(),
                    )  # fmt: skip
                fast = key == self._fast_key
            except (AttributeError, TypeError):  # not a tensor
                fast = False
            if fast:
                if behaviour_log_prob is None:
                    log_prob_address = self._default_log_prob_address
                else:
                    behaviour_log_prob = self._checked(
                        "behaviour_log_prob", behaviour_log_prob, self._stream_shape, torch.float32
                    )
                    log_prob_address = behaviour_log_prob.data_ptr()
                if interest is None:
                    interest_address = self._default_interest_address
                else:
                    interest = self._checked("interest", interest, self._stream_shape, torch.float32)
                    interest_address = interest.data_ptr()
                time = self._total_steps
                inputs = (
                    obs.data_ptr(),
                    action.data_ptr(),
                    reward.data_ptr(),
                    terminated.data_ptr(),
                    truncated.data_ptr(),
                    final_obs.data_ptr(),
                    log_prob_address,
                    interest_address,
                )
                if self._add_kernel(time, inputs, self._add_layout_address, self._obs_type, self._action_type) < 0:
                    self._grow_for_next_row()  # the ring of final observations may be full: grow it, write again
                    self._add_kernel(time, inputs, self._add_layout_address, self._obs_type, self._action_type)
                self._total_steps = time + 1
                return
        N = self._num_streams
        obs = self._checked("obs", obs, (N, *self.obs_shape), self.obs_dtype)
        action = self._checked("action", action, (N, *self.action_shape), self.action_dtype)
        reward = self._checked("reward", reward, (N,), torch.float32)
        terminated = self._checked("terminated", terminated, (N,), torch.bool)
        truncated = self._checked("truncated", truncated, (N,), torch.bool)
        final_obs = self._checked("final_obs", final_obs, (N, *self.obs_shape), self.obs_dtype)
        if behaviour_log_prob is None:
            behaviour_log_prob = self._default_log_prob
        else:
            behaviour_log_prob = self._checked("behaviour_log_prob", behaviour_log_prob, (N,), torch.float32)
        if interest is None:
            interest = self._default_interest
        else:
            interest = self._checked("interest", interest, (N,), torch.float32)
        checked_extras = {}
        if extras or self.extra_specs:
            unknown = sorted(set(extras) - set(self.extra_specs))
            if unknown:
                raise ValueError(
                    f"TrajectoryBuffer.add: unknown field(s) {unknown}; declared extras: {sorted(self.extra_specs)}"
                )
            missing = sorted(set(self.extra_specs) - set(extras))
            if missing:
                raise ValueError(f"TrajectoryBuffer.add: missing declared extra field(s) {missing}")
            checked_extras = {
                name: self._checked(name, value, (N, *self.extra_specs[name].shape), self.extra_specs[name].dtype)
                for name, value in extras.items()
            }

        if self.backend == "numba":
            self._add_numba(obs, action, reward, terminated, truncated, final_obs, behaviour_log_prob, interest)
            for name, value in checked_extras.items():
                self._extras[name][self._cursor] = value
            self._advance()
            return
        row = self._cursor
        done = terminated | truncated
        if self.packs_obs:
            stored_obs, stored_final = pack_bool(torch.stack([obs, final_obs]), self.obs_shape).unbind(0)
        else:
            stored_obs, stored_final = obs, final_obs
        self._obs[row] = stored_obs
        self._action[row] = action
        self._scalars[row] = torch.stack([reward, behaviour_log_prob, interest], dim=1)
        self._ends[row] = torch.stack([terminated, truncated], dim=1)
        for name, value in checked_extras.items():
            self._extras[name][row] = value

        # Final observations: a slot for every stream whose episode ended, the newest-row slot for the others.
        K = self._final_slots
        if self._host_checks:
            any_end = bool(done.any())
            skip_slots = not any_end and not self._row_has_end[row]  # nothing to allocate or free
            self._row_has_end[row] = any_end
        else:
            skip_slots = False
        if skip_slots:
            self._final_store[K:] = stored_final
        else:
            self._reserve_final_slots()
            K = self._final_slots
            freed = (self._final_slot[row] < K).sum()  # slots of the row being overwritten
            rank = torch.cumsum(done, dim=0) - 1
            slot = (self._final_head + rank) % K
            self._final_store[torch.where(done, slot, K + self._stream_ids)] = stored_final
            self._final_slot[row] = torch.where(done, slot, K + self._stream_ids).to(torch.int32)
            num_ends = done.sum()
            self._final_head.add_(num_ends).remainder_(K)
            self._final_live.add_(num_ends - freed)

        self._row_time[row] = self._total_steps
        self._advance()

    def _advance(self) -> None:
        self._total_steps += 1

    @property
    def _cursor(self) -> int:
        """The physical row the next ``add`` writes (row ``t % T`` holds time ``t``)."""
        return self._total_steps % self._capacity

    @property
    def _size(self) -> int:
        """Valid time rows."""
        return min(self._total_steps, self._capacity)

    def _add_numba(self, obs, action, reward, terminated, truncated, final_obs, log_prob, interest) -> None:
        """The row write of :meth:`add` as one compiled call (inputs checked, on CPU, in the stored dtypes)."""
        # The inputs (contiguous, see _checked) go to the kernel as addresses: tensor.data_ptr() costs far less per
        # call than tensor.numpy(), and this is most of the cost of a small add.
        inputs = (
            obs.data_ptr(),
            action.data_ptr(),
            reward.data_ptr(),
            terminated.data_ptr(),
            truncated.data_ptr(),
            final_obs.data_ptr(),
            log_prob.data_ptr(),
            interest.data_ptr(),
        )
        if self._add_kernel(self._total_steps, inputs, self._add_layout_address, self._obs_type, self._action_type) < 0:
            self._grow_for_next_row()
            self._add_kernel(self._total_steps, inputs, self._add_layout_address, self._obs_type, self._action_type)

    def _grow_for_next_row(self) -> None:
        """Grow the final-observation store so that the next kernel ``add`` (at most ``N`` episode ends) cannot
        overwrite a referenced slot: on the CPU the live count is read from the storage, so reserve exactly."""
        N, max_slots = self._num_streams, self._capacity * self._num_streams
        live = int(self._np_final_live[0])
        needed = min(live + N, max_slots)
        if needed > self._final_slots:
            self._grow_final_store(live, min(max_slots, max(2 * self._final_slots, 2 * needed)))

    def _checked(self, name: str, value: Any, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if (
            type(value) is torch.Tensor
            and value.dtype is dtype
            and value.shape == shape
            and (value.is_cpu if self._on_cpu else value.device == self._device)
            and value.is_contiguous()
        ):
            return value  # the common case, checked in a few attribute reads
        if not isinstance(value, torch.Tensor):
            try:
                value = torch.as_tensor(value)
            except (TypeError, ValueError, RuntimeError) as error:
                raise ValueError(f"TrajectoryBuffer.add: {name} is not convertible to a tensor ({error})") from None
        if tuple(value.shape) != shape:
            raise ValueError(
                f"TrajectoryBuffer.add: {name} has shape {tuple(value.shape)}, expected {shape} "
                f"([num_streams={self._num_streams}, *field_shape])"
            )
        got_kind, want_kind = _dtype_kind(value.dtype), _dtype_kind(dtype)
        if got_kind != want_kind:
            raise ValueError(
                f"TrajectoryBuffer.add: {name} has dtype {value.dtype}, expected {dtype} (a {want_kind} dtype)"
            )
        return value.to(device=self._device, dtype=dtype).contiguous()

    def _decode(self, stored: torch.Tensor) -> torch.Tensor:
        return unpack_bool(stored, self.obs_shape) if self.packs_obs else stored

    def _reserve_final_slots(self) -> None:
        """Make sure this ``add`` (at most ``N`` episode ends) cannot overwrite a referenced slot.

        The host bound grows by ``N`` per call that allocates; the device count is read only when the bound
        says the store may be too small (rarely, once the store has grown to fit the data).
        """
        N, max_slots = self._num_streams, self._capacity * self._num_streams
        needed = min(self._final_live_bound + N, max_slots)
        if needed > self._final_slots:
            live = int(self._final_live)  # host sync, only when the cheap bound says the store may be full
            needed = min(live + N, max_slots)
            if needed > self._final_slots:
                self._grow_final_store(live, min(max_slots, max(2 * self._final_slots, 2 * needed)))
        self._final_live_bound = needed

    def _grow_final_store(self, live: int, new_slots: int) -> None:
        """Move the ``live`` referenced slots to ``[0, live)`` of a store of ``new_slots`` slots."""
        K, N = self._final_slots, self._num_streams
        oldest = (int(self._final_head) - live) % K
        old_positions = (oldest + torch.arange(live, device=self._device)) % K
        store = torch.zeros((new_slots + N, *self._stored_obs_shape), dtype=self._stored_obs_dtype, device=self._device)
        store[:live] = self._final_store[old_positions]
        store[new_slots:] = self._final_store[K:]
        ended = self._final_slot < K
        self._final_slot = torch.where(ended, (self._final_slot - oldest) % K, self._final_slot - K + new_slots)
        self._final_slot = self._final_slot.to(torch.int32)
        self._final_store = store
        self._final_slots = new_slots
        self._final_head.fill_(live % new_slots)
        self._refresh_flat_views()

    # ------------------------------------------------------------------ reading
    def _gather(self, flat: torch.Tensor) -> TransitionBatch:
        """Rows at physical flat positions ``flat = row * N + stream`` (int64, any shape ``lead``).

        Valid physical rows are ``[0, len(buffer))``: before the ring is full they are the rows written so
        far, after it every row.
        """
        lead = flat.shape
        flat = flat.reshape(-1)
        T, N = self._capacity, self._num_streams
        if self.backend == "numba":
            return self._gather_numba(flat, lead, flat.shape[0], N)
        rows = T * N
        row = torch.div(flat, N, rounding_mode="floor")
        stream = flat - row * N
        ends = self._ends_flat.index_select(0, flat)
        done = ends.any(dim=1)
        # next obs: the kept final obs where the episode ended or the row is the newest, else the next row's
        # obs (flat + N, wrapping at the end of the ring).
        from_final = done | (row == (self._cursor - 1) % T)
        slot = self._final_slot_flat.index_select(0, flat)  # int32 indices are fine for index_select
        successor = flat + N
        successor = torch.where(successor >= rows, successor - rows, successor)
        mask_shape = (-1,) + (1,) * len(self._stored_obs_shape)
        next_stored = torch.where(
            from_final.view(mask_shape),
            self._final_store.index_select(0, slot),
            self._obs_flat.index_select(0, successor),
        )
        reward, behaviour_log_prob, interest = self._scalars_flat.index_select(0, flat).unbind(1)
        terminated, truncated = ends.unbind(1)

        def shaped(x: torch.Tensor) -> torch.Tensor:
            return x if len(lead) == 1 else x.reshape(*lead, *x.shape[1:])

        return TransitionBatch(
            obs=shaped(self._decode(self._obs_flat.index_select(0, flat))),
            action=shaped(self._action_flat.index_select(0, flat)),
            reward=shaped(reward),
            terminated=shaped(terminated),
            truncated=shaped(truncated),
            next_obs=shaped(self._decode(next_stored)),
            behaviour_log_prob=shaped(behaviour_log_prob),
            interest=shaped(interest),
            time_index=shaped(self._row_time.index_select(0, row)),
            stream_index=shaped(stream),
            extras={name: shaped(store.index_select(0, flat)) for name, store in self._extras_flat.items()},
        )

    def _gather_numba(self, draws: torch.Tensor, lead: tuple[int, ...], group_batch: int, per_group: int):
        """:meth:`_gather` as one compiled call: draw ``k`` of group ``g = k // group_batch`` names row ``d //
        per_group`` and stream ``g * per_group + d % per_group`` (``per_group = N``: ``d`` is the flat position)."""
        # Outputs allocated by numpy (cheaper per call than torch.empty on CPU) and handed to torch without a copy.
        M = draws.shape[0]
        cells, width = math.prod(self.obs_shape), math.prod(self.action_shape)
        obs_dtype, action_dtype = self._np_dtypes
        obs = np.empty((*lead, *self.obs_shape), dtype=obs_dtype)  # allocated in the lead shape: no reshapes after
        next_obs = np.empty((*lead, *self.obs_shape), dtype=obs_dtype)
        action = np.empty((*lead, *self.action_shape), dtype=action_dtype)
        scalars = np.empty((*lead, 3), dtype=np.float32)
        ends = np.empty((*lead, 2), dtype=np.bool_)
        index = np.empty((*lead, 3), dtype=np.int64)  # time, stream, flat position
        flat_obs, flat_next_obs = obs.reshape(M, cells), next_obs.reshape(M, cells)
        if self.packs_obs:
            flat_obs, flat_next_obs = flat_obs.view(np.uint8), flat_next_obs.view(np.uint8)
        kernels.gather(
            _numpy(draws),
            group_batch,
            per_group,
            self._num_streams,
            (self._cursor - 1) % self._capacity,
            self.packs_obs,
            self._np_obs,
            self._np_action,
            self._np_scalars,
            self._np_ends,
            self._np_final_store,
            self._np_final_slot,
            self._np_row_time,
            flat_obs,
            flat_next_obs,
            action.reshape(M, width),
            scalars.reshape(M, 3),
            ends.reshape(M, 2),
            index.reshape(M, 3),
            *self._word_views(flat_obs, flat_next_obs),
        )
        reward, behaviour_log_prob, interest = torch.from_numpy(scalars).unbind(-1)
        terminated, truncated = torch.from_numpy(ends).unbind(-1)
        time_index, stream_index, flat = torch.from_numpy(index).unbind(-1)
        extras = {}
        if self._extras_flat:
            flat_index = flat.reshape(-1)
            extras = {
                name: store.index_select(0, flat_index).reshape(*lead, *store.shape[1:])
                for name, store in self._extras_flat.items()
            }
        return TransitionBatch(
            torch.from_numpy(obs),
            torch.from_numpy(action),
            reward,
            terminated,
            truncated,
            torch.from_numpy(next_obs),
            behaviour_log_prob,
            interest,
            time_index,
            stream_index,
            extras,
        )

    def _word_views(self, flat_obs: np.ndarray, flat_next_obs: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(spread, obs_words, next_obs_words)`` for the kernel: the byte-to-eight-cells table and uint64 views of
        the outputs when bit-packed observations have a multiple of 8 cells on a little-endian host, else empties."""
        if not self._unpack_by_words:
            return _NO_WORDS
        return _SPREAD, flat_obs.view(np.uint64), flat_next_obs.view(np.uint64)

    def _flat_from_logical(self, logical: torch.Tensor, stream: torch.Tensor) -> torch.Tensor:
        """Physical flat positions of logical rows (0 = oldest stored) of ``stream``."""
        start = (self._cursor - self._size) % self._capacity
        row = logical if start == 0 else torch.remainder(logical + start, self._capacity)
        return row * self._num_streams + stream

    def _check_sampling(self, what: str, batch_size: Any, generator: Any) -> None:
        if self._size == 0:
            raise ValueError(f"TrajectoryBuffer.{what}: the buffer is empty; add steps before sampling")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"TrajectoryBuffer.{what}: batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"TrajectoryBuffer.{what}: generator must be a torch.Generator, got {generator!r}")
        gen_device = generator.device
        if gen_device == self._device:
            return
        if gen_device.type != self._device.type or (
            gen_device.index is not None and self._device.index is not None and gen_device.index != self._device.index
        ):
            raise ValueError(
                f"TrajectoryBuffer.{what}: generator is on {gen_device}, the buffer on {self._device}; "
                "use a generator on the buffer's device"
            )

    def sample_transitions(
        self, batch_size: int, generator: torch.Generator, num_groups: int | None = None
    ) -> TransitionBatch:
        """``batch_size`` transitions drawn uniformly (with replacement) over all stored ``(time, stream)``.

        Returns a :class:`TransitionBatch` with leading dim ``[B]``.

        With ``num_groups = G`` the streams are split into ``G`` equal consecutive groups (group ``g`` owns
        streams ``g*N/G ... (g+1)*N/G - 1``, e.g. the env copies of population member ``g``) and
        ``batch_size`` transitions are drawn uniformly within each group: leading dims ``[G, B]``.
        """
        self._check_sampling("sample_transitions", batch_size, generator)
        N = self._num_streams
        # The valid physical rows are [0, len): a uniform flat position over them is a uniform transition.
        if num_groups is None:
            flat = torch.randint(0, self._size * N, (batch_size,), generator=generator, device=self._device)
            return (
                self._gather_numba(flat, flat.shape, batch_size, N) if self.backend == "numba" else self._gather(flat)
            )
        if not isinstance(num_groups, int) or isinstance(num_groups, bool) or num_groups < 1 or N % num_groups:
            raise ValueError(
                "TrajectoryBuffer.sample_transitions: num_groups must be a positive divisor of "
                f"num_streams={N}, got {num_groups!r}"
            )
        per_group = N // num_groups
        in_group = torch.randint(
            0, self._size * per_group, (num_groups, batch_size), generator=generator, device=self._device
        )
        if self.backend == "numba":
            return self._gather_numba(in_group.view(-1), (num_groups, batch_size), batch_size, per_group)
        row = torch.div(in_group, per_group, rounding_mode="floor")
        group_start = torch.arange(num_groups, device=self._device).unsqueeze(1) * per_group
        return self._gather(row * N + group_start + (in_group - row * per_group))

    def sample_sequences(
        self, batch_size: int, length: int, generator: torch.Generator, cross_episodes: bool = False
    ) -> TransitionBatch:
        """``batch_size`` runs of ``length`` consecutive steps of one stream, uniform over the valid runs.

        A run never crosses the ring seam. Unless ``cross_episodes``, no step after an episode end is inside
        it (it may end on a terminal or truncated step); with ``cross_episodes=True`` it may, and
        ``terminated`` / ``truncated`` tell where. Returns a :class:`TransitionBatch` with leading dims
        ``[B, L]`` (``time_index`` increases by one along ``L``; ``stream_index`` is constant along ``L``).

        Raises ``ValueError`` if ``length`` is not in ``[1, len(buffer)]`` or no valid run exists.
        """
        self._check_sampling("sample_sequences", batch_size, generator)
        if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= self._size:
            raise ValueError(
                "TrajectoryBuffer.sample_sequences: length must be an integer in "
                f"[1, len(buffer)={self._size}], got {length!r}"
            )
        if cross_episodes or length == 1:
            N = self._num_streams
            flat = torch.randint(
                0, (self._size - length + 1) * N, (batch_size,), generator=generator, device=self._device
            )
            start = torch.div(flat, N, rounding_mode="floor")
            stream = flat - start * N
        else:
            start, stream = self._sample_episode_local_starts(batch_size, length, generator)
        logical = start.unsqueeze(1) + torch.arange(length, device=self._device)
        return self._gather(self._flat_from_logical(logical, stream.unsqueeze(1)))

    def _crosses_boundary(self, start: torch.Tensor, stream: torch.Tensor, length: int) -> torch.Tensor:
        """``bool[M]``: the run of ``length`` from logical ``start`` has an episode end before its end."""
        logical = start.unsqueeze(1) + torch.arange(length - 1, device=self._device)
        flat = self._flat_from_logical(logical, stream.unsqueeze(1)).reshape(-1)
        ends = self._ends_flat.index_select(0, flat)
        return ends.view(start.shape[0], -1).any(dim=1)

    def _sample_episode_local_starts(
        self, batch_size: int, length: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        N, num_starts = self._num_streams, self._size - length + 1
        starts, streams = [], []
        still_needed = batch_size
        num_candidates = 2 * batch_size + 16
        for _round in range(2):  # rejection rounds (a loop over rounds, not over samples)
            flat = torch.randint(0, num_starts * N, (num_candidates,), generator=generator, device=self._device)
            start = torch.div(flat, N, rounding_mode="floor")
            stream = flat - start * N
            accepted = torch.nonzero(~self._crosses_boundary(start, stream, length)).squeeze(1)
            num_accepted = accepted.numel()  # one host sync per round
            take = accepted[:still_needed]
            starts.append(start[take])
            streams.append(stream[take])
            still_needed -= take.numel()
            acceptance = num_accepted / num_candidates
            if still_needed == 0 or acceptance < 0.05:
                break
            num_candidates = math.ceil(2 * still_needed / acceptance) + 16
        if still_needed > 0:  # exact fallback: enumerate every valid run
            logical = torch.arange(self._size, device=self._device)
            rows = torch.remainder(logical + (self._cursor - self._size), self._capacity)
            ends = self._ends[rows].any(dim=2).to(torch.int32)  # [size, N], logical order
            ends_before = torch.cat([torch.zeros_like(ends[:1]), torch.cumsum(ends, dim=0)])  # [size + 1, N]
            # valid[i, n]: no episode end among rows i .. i + length - 2 of stream n; [num_starts, N]
            valid = ends_before[length - 1 : length - 1 + num_starts] == ends_before[:num_starts]
            valid_flat = torch.nonzero(valid.reshape(-1)).squeeze(1)
            if valid_flat.numel() == 0:
                raise ValueError(
                    f"TrajectoryBuffer.sample_sequences: no run of length {length} inside one episode "
                    "exists in the buffer (the stored episodes are shorter); use a smaller length or "
                    "cross_episodes=True"
                )
            pick = torch.randint(0, valid_flat.numel(), (still_needed,), generator=generator, device=self._device)
            flat = valid_flat[pick]
            start = torch.div(flat, N, rounding_mode="floor")
            starts.append(start)
            streams.append(flat - start * N)
        return torch.cat(starts), torch.cat(streams)

    def latest(self) -> TransitionBatch:
        """The newest row of every stream, leading dim ``[N]`` (``next_obs`` is that step's ``final_obs``)."""
        if self._size == 0:
            raise ValueError("TrajectoryBuffer.latest: the buffer is empty; add a step first")
        newest_row = (self._cursor - 1) % self._capacity
        return self._gather(newest_row * self._num_streams + self._stream_ids)

    def transitions_at(self, time_index: torch.Tensor, stream_index: torch.Tensor) -> TransitionBatch:
        """The stored transitions at global ``time_index`` and ``stream_index`` (int tensors of one shape).

        Valid times are ``[oldest_time, total_steps)``; raises ``ValueError`` otherwise (the checks sync the
        device).
        """
        time_index = torch.as_tensor(time_index, device=self._device)
        stream_index = torch.as_tensor(stream_index, device=self._device)
        if time_index.shape != stream_index.shape:
            raise ValueError(
                f"TrajectoryBuffer.transitions_at: time_index shape {tuple(time_index.shape)} != "
                f"stream_index shape {tuple(stream_index.shape)}"
            )
        for name, idx in (("time_index", time_index), ("stream_index", stream_index)):
            if _dtype_kind(idx.dtype) != "integer":
                raise ValueError(f"TrajectoryBuffer.transitions_at: {name} must be an integer tensor, got {idx.dtype}")
        if time_index.numel() and bool(((time_index < self.oldest_time) | (time_index >= self._total_steps)).any()):
            raise ValueError(
                f"TrajectoryBuffer.transitions_at: time_index outside the stored times "
                f"[{self.oldest_time}, {self._total_steps})"
            )
        if stream_index.numel() and bool(((stream_index < 0) | (stream_index >= self._num_streams)).any()):
            raise ValueError(f"TrajectoryBuffer.transitions_at: stream_index outside [0, {self._num_streams})")
        return self._gather(self._flat_from_logical(time_index.long() - self.oldest_time, stream_index.long()))

    # ------------------------------------------------------------------ checkpointing
    def _config(self) -> dict[str, Any]:
        return {
            "capacity": self._capacity,
            "num_streams": self._num_streams,
            "obs_shape": self.obs_shape,
            "obs_dtype": str(self.obs_dtype),
            "action_shape": self.action_shape,
            "action_dtype": str(self.action_dtype),
            "extras": {name: (spec.shape, str(spec.dtype)) for name, spec in self.extra_specs.items()},
        }

    _TENSOR_STATE = (
        "_obs",
        "_action",
        "_scalars",
        "_ends",
        "_final_store",
        "_final_slot",
        "_row_time",
        "_final_head",
        "_final_live",
    )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically (storage, cursors, side store), as copies."""
        state: dict[str, Any] = {"config": self._config()}
        for name in self._TENSOR_STATE:
            state[name.lstrip("_")] = getattr(self, name).clone()
        state["extras"] = {name: t.clone() for name, t in self._extras.items()}
        state.update(
            cursor=self._cursor,
            size=self._size,
            total_steps=self._total_steps,
            final_slots=self._final_slots,
            # a host-side upper bound on the referenced final-observation slots; the CPU kernels keep the exact count
            final_live_bound=int(self._np_final_live[0]) if self.backend == "numba" else self._final_live_bound,
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` of a buffer with the same configuration (else ``ValueError``)."""
        config = state.get("config") if isinstance(state, dict) else None
        if config != self._config():
            raise ValueError(
                f"TrajectoryBuffer.load_state_dict: the state is for a buffer configured as {config}, "
                f"this buffer is {self._config()}"
            )
        for name in self._TENSOR_STATE:
            setattr(self, name, state[name.lstrip("_")].to(self._device).clone(memory_format=torch.contiguous_format))
        self._extras = {
            name: t.to(self._device).clone(memory_format=torch.contiguous_format) for name, t in state["extras"].items()
        }
        total_steps, capacity = int(state["total_steps"]), self._capacity
        if (int(state["cursor"]), int(state["size"])) != (total_steps % capacity, min(total_steps, capacity)):
            raise ValueError(
                f"TrajectoryBuffer.load_state_dict: cursor {state['cursor']} and size {state['size']} do not match "
                f"total_steps {total_steps} (a buffer of capacity {self._capacity} has cursor = total_steps % capacity "
                "and size = min(total_steps, capacity))"
            )
        self._total_steps = total_steps
        self._final_slots = int(state["final_slots"])
        self._final_live_bound = int(state["final_live_bound"])
        self._row_has_end = (self._final_slot < self._final_slots).any(dim=1).tolist()
        self._refresh_flat_views()
