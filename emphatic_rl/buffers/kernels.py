"""Compiled CPU kernels of the ``TrajectoryBuffer``: one call writes a time row, one call gathers a batch.

On CPU a torch op costs a few microseconds of dispatch whatever its size, and a buffer ``add`` or ``sample`` made of
tensor ops needs twenty to forty of them; for the small rows and batches of replay (one env, a batch of 32) that
overhead is most of the time. These numba kernels do the same work in one call each, in place on numpy views of the
buffer's torch storage (same memory), so the two paths leave bit-identical storage and return bit-identical batches.
Both paths are held to the same tests (``tests/buffers/test_trajectory_buffer.py`` runs every test on each).

Storage layout (see :mod:`emphatic_rl.buffers.trajectory`): every field flat as ``[T * N, ...]`` with ``flat = row *
N + stream``; observations as ``[T * N, D]`` (``D`` cells, or ``ceil(cells / 8)`` bytes when bit-packed, cell ``8 b +
j`` at bit ``j`` of byte ``b``); ``scalars [T * N, 3]`` = reward, behaviour log-prob, interest; ``ends [T * N, 2]`` =
terminated, truncated; final observations in a side store ``[K + N, D]`` addressed by ``final_slot [T * N]``.
"""

from __future__ import annotations

import numba
import numba.core.cpu
import numpy as np
from numba import njit, types

from emphatic_rl.intrinsics import intrinsic

#: cached compilation and, where this numba has the (private) option, no reference counting (the kernels allocate
#: nothing, so they need none, and the atomic increments would cost more than the copies themselves).
_OPTIONS: dict = {"cache": True}
if hasattr(numba.core.cpu.CPUTargetOptions, "_nrt"):
    _OPTIONS["_nrt"] = False


#: Eight 0/1 bytes read as one little-endian uint64 hold bit ``j`` at bit ``8 j``; multiplying by this constant
#: moves bit ``j`` to bit ``56 + j`` with no two partial products on one bit (nothing carries): the packed byte is the
#: top byte (the same trick as :func:`emphatic_rl.buffers.packing.pack_bool`).
_GATHER_BITS = 0x0102040810204080


@njit(inline="always", **_OPTIONS)
def _write_obs(dest, i, source, n, packed, cells, words):
    """Row ``n`` of ``source [N, cells]`` into row ``i`` of ``dest``; when ``packed``, ``source`` holds 0/1 bytes
    (bool read as uint8) and eight of them go into each byte of ``dest`` (``int()``: the branch also types for
    float sources, where it never runs). When ``words`` (``uint64[N, cells / 8]``, the same memory as ``source``;
    empty unless the cells are a multiple of 8 on a little-endian host) is not empty, eight cells are packed by one
    multiplication."""
    if packed and words.shape[0] > 0:
        for b in range(words.shape[1]):
            dest[i, b] = (words[n, b] * np.uint64(_GATHER_BITS)) >> np.uint64(56)
    elif packed:
        full = cells // 8
        for b in range(full):
            c = 8 * b
            dest[i, b] = (
                int(source[n, c])
                | (int(source[n, c + 1]) << 1)
                | (int(source[n, c + 2]) << 2)
                | (int(source[n, c + 3]) << 3)
                | (int(source[n, c + 4]) << 4)
                | (int(source[n, c + 5]) << 5)
                | (int(source[n, c + 6]) << 6)
                | (int(source[n, c + 7]) << 7)
            )
        if full * 8 < cells:
            byte = 0
            for j in range(cells - 8 * full):
                byte |= int(source[n, 8 * full + j]) << j
            dest[i, full] = byte
    else:
        for c in range(cells):
            dest[i, c] = source[n, c]


@njit(inline="always", cache=True)
def _add_row(
    row,
    time,
    packed,
    obs,
    action,
    reward,
    terminated,
    truncated,
    final_obs,
    log_prob,
    interest,
    obs_store,
    action_store,
    scalars,
    ends,
    final_store,
    final_slot,
    num_slots,
    final_head,
    final_live,
    row_time,
    obs_words,
    final_words,
):
    """:func:`add_row` on arrays: ``obs`` / ``final_obs`` ``[N, cells]``, ``action`` ``[N, A]``, the rest ``[N]``."""
    N = obs.shape[0]
    cells = obs.shape[1]
    base = row * N
    head = final_head[0]
    freed = 0
    rank = 0
    for n in range(N):
        i = base + n
        if final_slot[i] < num_slots:  # the overwritten row held this slot
            freed += 1
        _write_obs(obs_store, i, obs, n, packed, cells, obs_words)
        for a in range(action.shape[1]):
            action_store[i, a] = action[n, a]
        scalars[i, 0] = reward[n]
        scalars[i, 1] = log_prob[n]
        scalars[i, 2] = interest[n]
        ends[i, 0] = terminated[n]
        ends[i, 1] = truncated[n]
        if terminated[n] or truncated[n]:
            slot = (head + rank) % num_slots
            rank += 1
        else:
            slot = num_slots + n
        final_slot[i] = slot
        _write_obs(final_store, slot, final_obs, n, packed, cells, final_words)
    final_head[0] = (head + rank) % num_slots
    final_live[0] += rank - freed
    row_time[row] = time
    return final_live[0]


@intrinsic
def _typed_pointer(typingctx, address, element):
    """The integer ``address`` as a pointer to values of ``element``'s type: a scalar, or a numpy scalar type such
    as ``np.float32`` passed as an argument (which costs nothing to pass). For storage whose address the buffer
    caches: an integer argument costs less per call than an array."""
    value_type = element.instance_type if isinstance(element, types.NumberClass) else element
    pointer_type = types.CPointer(value_type)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer_type))

    return pointer_type(address, element), codegen


def compiled(dispatcher, example_args):
    """The compiled function of the numba ``dispatcher`` for the types of ``example_args`` (compiled now or loaded from
    numba's cache), callable without the dispatcher's per-call typing of the arguments (about half the cost of a call
    that does little work, as an ``add`` of one row does). Call it only with arguments of exactly those types (the
    compiled function converts each argument to its type without checking). Where numba's JIT is disabled, the
    dispatcher (the plain Python function) itself."""
    compile_for = getattr(dispatcher, "compile", None)
    if compile_for is None:
        return dispatcher
    return compile_for(tuple(numba.typeof(arg) for arg in example_args))


#: ``layout[k]`` of :func:`add_row`: what each position holds.
ADD_LAYOUT = (
    "packed", "num_streams", "cells", "width", "action_width", "capacity", "num_slots", "by_words",
    "obs", "action", "final_store", "scalars", "ends", "final_slot", "final_head", "final_live", "row_time",
)  # fmt: skip


@njit(cache=True)  # reference counting on: numba.carray builds arrays inside
def add_row(time, inputs, layout_address, obs_type, action_type):
    """Write the row of global time ``time`` (ring row ``time % T``) of every stream from contiguous CPU inputs.

    ``inputs``: eight integers, the addresses of obs, action, reward, terminated, truncated, final obs, behaviour
    log-prob and interest, each ``[N, ...]`` contiguous in the stored dtype (bool observations as 0/1 bytes).
    ``layout_address``: the address of the layout, seventeen ``int64`` fixed between calls until the final-observation
    store grows (:data:`ADD_LAYOUT`): ``packed`` (1: bool observations bit-packed), ``N``, ``cells`` (elements of one
    observation), ``width`` (stored elements of one observation: ``cells``, or ``ceil(cells / 8)`` bytes when
    packed), ``A`` (elements of one action), ``T`` (the capacity in rows), ``K`` (slots of the final-observation
    ring), ``by_words`` (1: pack bool observations eight cells per multiplication, reading them as ``uint64``, when
    both observation inputs are 8-byte aligned; cells a multiple of 8 on a little-endian host), then the addresses
    of the buffer's ``obs`` (``[T * N, width]``), ``action`` (``[T * N, A]``), final-observation store (``[K + N,
    width]``), ``scalars`` (``float32[T * N, 3]``), ``ends`` (``bool[T * N, 2]``), ``final_slot`` (``int32[T *
    N]``), ``final_head`` and ``final_live`` (one ``int64`` each, updated in place) and ``row_time`` (``int64[T]``).
    ``obs_type`` / ``action_type``: the numpy scalar types of the stored observations and actions (``np.uint8`` for
    packed ones); they type the pointers.

    Every argument is a number, a tuple of numbers or a type, so a call costs little to unbox (one address for the
    layout costs less than seventeen numbers). Returns the new number of referenced final-observation slots, or -1,
    having written nothing, when this row's episode ends might not fit in the ring (``live + N > K`` with ``K < T *
    N``): the caller grows the store and calls again.
    """
    layout = numba.carray(_typed_pointer(layout_address, np.int64), len(ADD_LAYOUT))
    packed, N, cells, width, A, capacity = layout[0], layout[1], layout[2], layout[3], layout[4], layout[5]
    num_slots = layout[6]
    rows = capacity * N
    final_live = numba.carray(_typed_pointer(layout[15], np.int64), 1)
    if final_live[0] + N > num_slots and num_slots < rows:
        return -1
    words = N if layout[7] != 0 and (inputs[0] | inputs[5]) & 7 == 0 else 0
    return _add_row(
        time % capacity,
        time,
        packed != 0,
        numba.carray(_typed_pointer(inputs[0], obs_type), (N, cells)),
        numba.carray(_typed_pointer(inputs[1], action_type), (N, A)),
        numba.carray(_typed_pointer(inputs[2], np.float32), N),
        numba.carray(_typed_pointer(inputs[3], np.bool_), N),
        numba.carray(_typed_pointer(inputs[4], np.bool_), N),
        numba.carray(_typed_pointer(inputs[5], obs_type), (N, cells)),
        numba.carray(_typed_pointer(inputs[6], np.float32), N),
        numba.carray(_typed_pointer(inputs[7], np.float32), N),
        numba.carray(_typed_pointer(layout[8], obs_type), (rows, width)),
        numba.carray(_typed_pointer(layout[9], action_type), (rows, A)),
        numba.carray(_typed_pointer(layout[11], np.float32), (rows, 3)),
        numba.carray(_typed_pointer(layout[12], np.bool_), (rows, 2)),
        numba.carray(_typed_pointer(layout[10], obs_type), (num_slots + N, width)),
        numba.carray(_typed_pointer(layout[13], np.int32), rows),
        num_slots,
        numba.carray(_typed_pointer(layout[14], np.int64), 1),
        final_live,
        numba.carray(_typed_pointer(layout[16], np.int64), capacity),
        numba.carray(_typed_pointer(inputs[0], np.uint64), (words, cells // 8)),
        numba.carray(_typed_pointer(inputs[5], np.uint64), (words, cells // 8)),
    )


@njit(inline="always", **_OPTIONS)
def _read_obs(dest, k, source, i, packed, cells):
    """Row ``i`` of ``source`` into row ``k`` of ``dest [M, cells]``; when ``packed``, each byte of ``source``
    gives eight 0/1 bytes of ``dest`` (a bool array read as uint8)."""
    if packed:
        full = cells // 8
        for b in range(full):
            byte = int(source[i, b])  # int(): the branch also types for float stores
            c = 8 * b
            dest[k, c] = byte & 1
            dest[k, c + 1] = (byte >> 1) & 1
            dest[k, c + 2] = (byte >> 2) & 1
            dest[k, c + 3] = (byte >> 3) & 1
            dest[k, c + 4] = (byte >> 4) & 1
            dest[k, c + 5] = (byte >> 5) & 1
            dest[k, c + 6] = (byte >> 6) & 1
            dest[k, c + 7] = (byte >> 7) & 1
        for c in range(8 * full, cells):
            dest[k, c] = (int(source[i, full]) >> (c - 8 * full)) & 1
    else:
        for c in range(cells):
            dest[k, c] = source[i, c]


@njit(inline="always", **_OPTIONS)
def _read_packed_words(dest_words, k, source, i, spread):
    """Row ``i`` of packed ``source`` into row ``k`` of ``dest_words [M, cells / 8]`` (uint64): each byte becomes
    the eight 0/1 bytes ``spread[byte]`` in one store (cells a multiple of 8, little-endian)."""
    for b in range(dest_words.shape[1]):
        dest_words[k, b] = spread[int(source[i, b])]  # int(): types for float stores too


@njit(**_OPTIONS)
def gather(
    draws,
    group_batch,
    per_group,
    num_streams,
    newest_row,
    packed,
    obs_store,
    action_store,
    scalars,
    ends,
    final_store,
    final_slot,
    row_time,
    obs_out,
    next_obs_out,
    action_out,
    scalars_out,
    ends_out,
    index_out,
    spread,
    obs_words,
    next_obs_words,
):
    """Gather ``M = len(draws)`` transitions into the ``*_out`` arrays (``[M, ...]``, written in place).

    Draw ``k`` belongs to group ``g = k // group_batch``, which owns streams ``g * per_group ... (g + 1) * per_group
    - 1``; the draw ``d`` names row ``d // per_group`` and stream ``g * per_group + d % per_group`` (with one group
    of all ``N`` streams this is the flat position ``d = row * N + stream``). ``next_obs`` is the kept final
    observation where the episode ended or the row is the newest, else the next row's observation of the stream.
    ``index_out [M, 3]`` receives the global time, the stream and the flat position. When ``spread`` (uint64[256])
    is not empty, packed observations are written through ``obs_words`` / ``next_obs_words``, uint64 views of the
    observation outputs, eight cells per store.
    """
    M = draws.shape[0]
    cells = obs_out.shape[1]
    rows = obs_store.shape[0]
    for k in range(M):
        d = draws[k]
        row = d // per_group
        stream = (k // group_batch) * per_group + (d - row * per_group)
        i = row * num_streams + stream
        words = spread.shape[0] > 0
        if words:
            _read_packed_words(obs_words, k, obs_store, i, spread)
        else:
            _read_obs(obs_out, k, obs_store, i, packed, cells)
        terminated = ends[i, 0]
        truncated = ends[i, 1]
        if terminated or truncated or row == newest_row:
            next_source, next_row = final_store, final_slot[i]
        else:
            next_source, next_row = obs_store, i + num_streams
            if next_row >= rows:
                next_row -= rows
        if words:
            _read_packed_words(next_obs_words, k, next_source, next_row, spread)
        else:
            _read_obs(next_obs_out, k, next_source, next_row, packed, cells)
        for a in range(action_out.shape[1]):
            action_out[k, a] = action_store[i, a]
        scalars_out[k, 0] = scalars[i, 0]
        scalars_out[k, 1] = scalars[i, 1]
        scalars_out[k, 2] = scalars[i, 2]
        ends_out[k, 0] = terminated
        ends_out[k, 1] = truncated
        index_out[k, 0] = row_time[row]
        index_out[k, 1] = stream
        index_out[k, 2] = i
