"""Helpers shared by the compiled game kernels: drawing from the uniform pool, sticky actions, the time limit.

Every draw a kernel makes is recorded in ``draw_log[n, k] = (low, high)``: the bounds of an integer draw
(``low + floor(u * (high - low))``), or ``(0, 0)`` for a plain uniform draw. ``draws_used[n]`` is how many
numbers copy ``n`` took from its row of the pool. The parity tests read both to check that a kernel draws what
the reference draws, in the same order.
"""

from __future__ import annotations

import numba.core.cpu
import numpy as np
from numba import njit

NOOP, LEFT, UP, RIGHT, DOWN, FIRE = range(6)

#: Options of every kernel function: cached compilation and, where this numba has the option, no reference counting
#: (``_nrt=False``, a private numba option; without it numba increfs/decrefs every state array a helper binds, atomic
#: operations that cost more than the games themselves: Seaquest 400 -> 120 ns per copy and step with it and
#: ``inline="always"`` on the per-copy helpers). The kernels allocate nothing, so they need no reference counting; a
#: numba without the option compiles them with it (correct, slower).
KERNEL_OPTIONS: dict = {"cache": True}
if hasattr(numba.core.cpu.CPUTargetOptions, "_nrt"):
    KERNEL_OPTIONS["_nrt"] = False


@njit(**KERNEL_OPTIONS)
def draw_uniform(draws, draw_log, n, cursor):
    """The next uniform number of copy ``n`` and the advanced cursor."""
    draw_log[n, cursor, 0] = 0
    draw_log[n, cursor, 1] = 0
    return draws[n, cursor], cursor + 1


@njit(**KERNEL_OPTIONS)
def draw_integer(draws, draw_log, n, cursor, low, high):
    """An integer uniform in ``[low, high)`` from copy ``n``'s next uniform number, and the advanced cursor."""
    draw_log[n, cursor, 0] = low
    draw_log[n, cursor, 1] = high
    span = high - low
    return low + min(int(draws[n, cursor] * span), span - 1), cursor + 1


@njit(**KERNEL_OPTIONS)
def sticky_action(n, actions, action_set, last_action, sticky_prob, draws, draw_log, cursor):
    """The reference ``Environment.act``: repeat the previous full-set action with probability ``sticky_prob``."""
    u, cursor = draw_uniform(draws, draw_log, n, cursor)
    action = action_set[actions[n]]
    if u < sticky_prob:
        action = last_action[n]
    last_action[n] = action
    return action, cursor


@njit(**KERNEL_OPTIONS)
def end_of_step(n, terminal, elapsed, max_steps, terminated, truncated):
    """Count the step, apply the time limit (``max_steps <= 0``: none); return whether copy ``n``'s episode ended."""
    elapsed[n] += 1
    cut = max_steps > 0 and elapsed[n] >= max_steps and not terminal
    terminated[n] = terminal
    truncated[n] = cut
    if terminal or cut:
        elapsed[n] = 0
        return True
    return False


@njit(**KERNEL_OPTIONS)
def fill_uniform(out, key):
    """Fill ``out`` (C-contiguous ``float64[N, K]``) with uniform numbers in ``[0, 1)``.

    SplitMix64 of the counter ``key + (i + 1) * golden`` for entry ``i`` in row-major order, the top 53 bits as
    the fraction. ``key`` (an int in ``[0, 2**63)``) is drawn from the env's torch generator once per call, so
    the numbers follow the generator's state (seeding, ``state_dict``).
    """
    flat = out.reshape(-1)  # C-contiguous: a view
    golden = np.uint64(0x9E3779B97F4A7C15)
    mix1 = np.uint64(0xBF58476D1CE4E5B9)
    mix2 = np.uint64(0x94D049BB133111EB)
    z = np.uint64(key)
    scale = 1.0 / 9007199254740992.0  # 2 ** -53
    for i in range(flat.size):
        z += golden
        x = (z ^ (z >> np.uint64(30))) * mix1
        x = (x ^ (x >> np.uint64(27))) * mix2
        x = x ^ (x >> np.uint64(31))
        flat[i] = np.int64(x >> np.uint64(11)) * scale
