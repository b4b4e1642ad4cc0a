"""MinAtar Seaquest, compiled (rules of ``minatar/environments/seaquest.py``; state as in
:class:`~emphatic_rl.envs.minatar.seaquest.MinAtarSeaquest`: the scalars of ``scalar_names``, then each ordered
list as ``<list>_data: int64[N, capacity, fields]`` with entries ``0 .. <list>_length[n] - 1`` in list order).

The reference's lists are followed literally per copy: each is walked in reverse with Python's reversed-iterator
rule (index ``len - 1`` down to 0, stopping once the index is past the current length), ``list.remove`` removes
the *first equal* entry (shifting the later ones left, so the visited entry may stay in the list and be visited
again), appends go at the end. An enemy sub removed by ``remove`` still fires: its shot timer is written back only
where the visited entry is still listed. An append to a full list is skipped and sets ``overflowed`` (as the torch
backend); no index ever goes past a list's capacity.

Draws per step and copy: 1 (sticky action) + 3 (enemy spawn: side, sub, row) + 2 (diver spawn: side, row); the
reset draws nothing. Observations are written flat: ``obs[n, cell * 10 + channel]`` (``uint8[N, 1000]``, every
entry written) with ``cell = row * 10 + col``; channels as the reference (sub_front 0, sub_back 1, friendly_bullet
2, trail 3, enemy_bullet 4, enemy_fish 5, enemy_sub 6, oxygen_guage 7, diver_guage 8, diver 9).

Compilation: every function is compiled with ``KERNEL_OPTIONS`` (no reference counting where numba allows it: the
kernels allocate nothing, and with it numba increfs/decrefs each of the ~25 state arrays whenever a helper binds them,
atomic operations its pruning pass leaves in the per-copy loop here, which cost more than the game itself), and the
per-copy functions that take most of the state are inlined into the kernels (``inline="always"``: a call passes
every array as ~10 machine words). Measured at N = 1024: 400 -> 270 -> 110-140 ns per copy and step; the price is
a slower first compilation (~9 s CPU for ``step_kernel`` instead of ~5 s; cached afterwards).
"""

from __future__ import annotations

from numba import njit

from emphatic_rl.envs.minatar.kernels.common import (
    DOWN,
    FIRE,
    KERNEL_OPTIONS,
    LEFT,
    RIGHT,
    UP,
    draw_integer,
    draw_uniform,
    end_of_step,
    sticky_action,
)

MAX_DRAWS_PER_STEP = 6
MAX_DRAWS_PER_RESET = 0

MAX_OXYGEN = 200
INIT_SPAWN_SPEED = 20
DIVER_SPAWN_SPEED = 30
INIT_MOVE_INTERVAL = 5
SHOT_COOL_DOWN = 5
ENEMY_SHOT_INTERVAL = 10
DIVER_MOVE_INTERVAL = 5
CHANNELS = 10
OBS_SIZE = 100 * CHANNELS


# ---------------------------------------------------------------------------------------------- list helpers
@njit(**KERNEL_OPTIONS)
def _append(data, length, n, a, b, c, d, e):
    """Append the entry ``(a, b, c, d, e)[:fields]`` to copy ``n``'s list; returns ``True`` (and appends nothing)
    when the list is full."""
    k = length[n]
    if k >= data.shape[1]:
        return True
    fields = data.shape[2]
    data[n, k, 0] = a
    data[n, k, 1] = b
    data[n, k, 2] = c
    if fields > 3:
        data[n, k, 3] = d
    if fields > 4:
        data[n, k, 4] = e
    length[n] = k + 1
    return False


@njit(**KERNEL_OPTIONS)
def _remove_at(data, length, n, index):
    """Remove entry ``index`` of copy ``n``'s list, shifting the later entries left."""
    last = length[n] - 1
    fields = data.shape[2]
    for k in range(index, last):
        for f in range(fields):
            data[n, k, f] = data[n, k + 1, f]
    length[n] = last


@njit(**KERNEL_OPTIONS)
def _remove_first_equal(data, length, n, i):
    """``list.remove(entry i)``: remove the first entry equal (all fields) to entry ``i``; returns its index."""
    fields = data.shape[2]
    for j in range(i + 1):
        same = True
        for f in range(fields):
            if data[n, j, f] != data[n, i, f]:
                same = False
                break
        if same:
            _remove_at(data, length, n, j)
            return j
    return i  # unreachable: entry i equals itself


@njit(**KERNEL_OPTIONS)
def _first_at(data, length, n, x, y):
    """Index of the first entry at ``(x, y)``, or -1."""
    for k in range(length[n]):
        if data[n, k, 0] == x and data[n, k, 1] == y:
            return k
    return -1


# ---------------------------------------------------------------------------------------------- one copy
@njit(**KERNEL_OPTIONS, inline="always")
def _reset_copy(
    n, oxygen, diver_count, sub_x, sub_y, sub_right, enemy_spawn_speed, enemy_spawn_timer, diver_spawn_timer,
    move_speed, ramp_index, shot_timer, surfaced, overflowed,
    fb_data, fb_length, eb_data, eb_length, fish_data, fish_length, subs_data, subs_length, divers_data, divers_length,
):  # fmt: skip
    oxygen[n] = MAX_OXYGEN
    diver_count[n] = 0
    sub_x[n] = 5
    sub_y[n] = 0
    sub_right[n] = False
    enemy_spawn_speed[n] = INIT_SPAWN_SPEED
    enemy_spawn_timer[n] = INIT_SPAWN_SPEED
    diver_spawn_timer[n] = DIVER_SPAWN_SPEED
    move_speed[n] = INIT_MOVE_INTERVAL
    ramp_index[n] = 0
    shot_timer[n] = 0
    surfaced[n] = True
    overflowed[n] = False
    fb_length[n] = 0
    eb_length[n] = 0
    fish_length[n] = 0
    subs_length[n] = 0
    divers_length[n] = 0


@njit(**KERNEL_OPTIONS, inline="always")
def _step_copy(
    n, action, ramping, draws, draw_log, cursor,
    oxygen, diver_count, sub_x, sub_y, sub_right, enemy_spawn_speed, enemy_spawn_timer, diver_spawn_timer,
    move_speed, ramp_index, shot_timer, surfaced, overflowed,
    fb_data, fb_length, eb_data, eb_length, fish_data, fish_length, subs_data, subs_length, divers_data, divers_length,
):  # fmt: skip
    reward = 0
    terminal = False

    # spawn an enemy (no spawn in a row holding an enemy that moves the other way), then a diver
    if enemy_spawn_timer[n] == 0:
        u, cursor = draw_uniform(draws, draw_log, n, cursor)
        lr = 1 if u < 0.5 else 0
        u, cursor = draw_uniform(draws, draw_log, n, cursor)
        is_sub = u < 1 / 3
        row, cursor = draw_integer(draws, draw_log, n, cursor, 1, 9)
        blocked = False
        for k in range(subs_length[n]):
            if subs_data[n, k, 1] == row and subs_data[n, k, 2] != lr:
                blocked = True
        for k in range(fish_length[n]):
            if fish_data[n, k, 1] == row and fish_data[n, k, 2] != lr:
                blocked = True
        if not blocked:
            x = 0 if lr == 1 else 9
            if is_sub:
                full = _append(subs_data, subs_length, n, x, row, lr, move_speed[n], ENEMY_SHOT_INTERVAL)
            else:
                full = _append(fish_data, fish_length, n, x, row, lr, move_speed[n], 0)
            if full:
                overflowed[n] = True
        enemy_spawn_timer[n] = enemy_spawn_speed[n]
    if diver_spawn_timer[n] == 0:
        u, cursor = draw_uniform(draws, draw_log, n, cursor)
        lr = 1 if u < 0.5 else 0
        row, cursor = draw_integer(draws, draw_log, n, cursor, 1, 9)
        x = 0 if lr == 1 else 9
        if _append(divers_data, divers_length, n, x, row, lr, DIVER_MOVE_INTERVAL, 0):
            overflowed[n] = True
        diver_spawn_timer[n] = DIVER_SPAWN_SPEED

    # the player's action
    if action == FIRE and shot_timer[n] == 0:
        if _append(fb_data, fb_length, n, sub_x[n], sub_y[n], 1 if sub_right[n] else 0, 0, 0):
            overflowed[n] = True
        shot_timer[n] = SHOT_COOL_DOWN
    elif action == LEFT:
        sub_x[n] = max(0, sub_x[n] - 1)
        sub_right[n] = False
    elif action == RIGHT:
        sub_x[n] = min(9, sub_x[n] + 1)
        sub_right[n] = True
    elif action == UP:
        sub_y[n] = max(0, sub_y[n] - 1)
    elif action == DOWN:
        sub_y[n] = min(8, sub_y[n] + 1)
    px = sub_x[n]
    py = sub_y[n]

    # friendly bullets: move; leave the screen, or hit the first fish (else the first sub) on their cell
    i = fb_length[n] - 1
    while i >= 0 and i < fb_length[n]:
        fb_data[n, i, 0] += 1 if fb_data[n, i, 2] != 0 else -1
        bx = fb_data[n, i, 0]
        by = fb_data[n, i, 1]
        if bx < 0 or bx > 9:
            _remove_first_equal(fb_data, fb_length, n, i)
        else:
            k = _first_at(fish_data, fish_length, n, bx, by)
            if k >= 0:
                _remove_at(fish_data, fish_length, n, k)
                _remove_first_equal(fb_data, fb_length, n, i)
                reward += 1
            else:
                k = _first_at(subs_data, subs_length, n, bx, by)
                if k >= 0:
                    _remove_at(subs_data, subs_length, n, k)
                    _remove_first_equal(fb_data, fb_length, n, i)
                    reward += 1
        i -= 1

    # divers: picked up (at most 6 on board), else move every 6th frame, leave the screen or get picked up
    i = divers_length[n] - 1
    while i >= 0 and i < divers_length[n]:
        if divers_data[n, i, 0] == px and divers_data[n, i, 1] == py and diver_count[n] < 6:
            _remove_first_equal(divers_data, divers_length, n, i)
            diver_count[n] += 1
        elif divers_data[n, i, 3] == 0:
            divers_data[n, i, 3] = DIVER_MOVE_INTERVAL
            divers_data[n, i, 0] += 1 if divers_data[n, i, 2] != 0 else -1
            dx = divers_data[n, i, 0]
            if dx < 0 or dx > 9:
                _remove_first_equal(divers_data, divers_length, n, i)
            elif dx == px and divers_data[n, i, 1] == py and diver_count[n] < 6:
                _remove_first_equal(divers_data, divers_length, n, i)
                diver_count[n] += 1
        else:
            divers_data[n, i, 3] -= 1
        i -= 1

    # enemy subs: touch, move (leave, touch, or get shot by the first bullet on their cell), then fire
    i = subs_length[n] - 1
    while i >= 0 and i < subs_length[n]:
        if subs_data[n, i, 0] == px and subs_data[n, i, 1] == py:
            terminal = True
        moves = subs_data[n, i, 3] == 0
        if moves:
            subs_data[n, i, 3] = move_speed[n]
            subs_data[n, i, 0] += 1 if subs_data[n, i, 2] != 0 else -1
        else:
            subs_data[n, i, 3] -= 1
        sx = subs_data[n, i, 0]
        sy = subs_data[n, i, 1]
        slr = subs_data[n, i, 2]
        shot = subs_data[n, i, 4]
        removed = -1  # index list.remove() took the entry from
        if moves:
            if sx < 0 or sx > 9:
                removed = _remove_first_equal(subs_data, subs_length, n, i)
            elif sx == px and sy == py:
                terminal = True
            else:
                k = _first_at(fb_data, fb_length, n, sx, sy)
                if k >= 0:
                    removed = _remove_first_equal(subs_data, subs_length, n, i)
                    _remove_at(fb_data, fb_length, n, k)
                    reward += 1
        # the visited sub: at i, shifted to i - 1 (an equal earlier entry was removed), or out of the list
        position = i
        if removed >= 0:
            position = i - 1 if removed < i else -1
        if shot == 0:
            shot = ENEMY_SHOT_INTERVAL
            if _append(eb_data, eb_length, n, sx, sy, slr, 0, 0):
                overflowed[n] = True
        else:
            shot -= 1
        if position >= 0:
            subs_data[n, position, 4] = shot
        i -= 1

    # enemy bullets: touch, move, leave or touch
    i = eb_length[n] - 1
    while i >= 0 and i < eb_length[n]:
        if eb_data[n, i, 0] == px and eb_data[n, i, 1] == py:
            terminal = True
        eb_data[n, i, 0] += 1 if eb_data[n, i, 2] != 0 else -1
        ex = eb_data[n, i, 0]
        if ex < 0 or ex > 9:
            _remove_first_equal(eb_data, eb_length, n, i)
        elif ex == px and eb_data[n, i, 1] == py:
            terminal = True
        i -= 1

    # fish: as the subs, without firing
    i = fish_length[n] - 1
    while i >= 0 and i < fish_length[n]:
        if fish_data[n, i, 0] == px and fish_data[n, i, 1] == py:
            terminal = True
        if fish_data[n, i, 3] == 0:
            fish_data[n, i, 3] = move_speed[n]
            fish_data[n, i, 0] += 1 if fish_data[n, i, 2] != 0 else -1
            fx = fish_data[n, i, 0]
            fy = fish_data[n, i, 1]
            if fx < 0 or fx > 9:
                _remove_first_equal(fish_data, fish_length, n, i)
            elif fx == px and fy == py:
                terminal = True
            else:
                k = _first_at(fb_data, fb_length, n, fx, fy)
                if k >= 0:
                    _remove_first_equal(fish_data, fish_length, n, i)
                    _remove_at(fb_data, fb_length, n, k)
                    reward += 1
        else:
            fish_data[n, i, 3] -= 1
        i -= 1

    # timers, oxygen, surfacing
    if enemy_spawn_timer[n] > 0:
        enemy_spawn_timer[n] -= 1
    if diver_spawn_timer[n] > 0:
        diver_spawn_timer[n] -= 1
    if shot_timer[n] > 0:
        shot_timer[n] -= 1
    if oxygen[n] <= 0:
        terminal = True
    if py > 0:
        oxygen[n] -= 1
        surfaced[n] = False
    elif not surfaced[n]:
        if diver_count[n] == 0:
            terminal = True
        else:
            surfaced[n] = True
            if diver_count[n] == 6:
                diver_count[n] = 0
                reward += oxygen[n] * 10 // MAX_OXYGEN
            oxygen[n] = MAX_OXYGEN
            diver_count[n] -= 1
            if ramping and (enemy_spawn_speed[n] > 1 or move_speed[n] > 2):
                if move_speed[n] > 2 and ramp_index[n] % 2 == 1:
                    move_speed[n] -= 1
                if enemy_spawn_speed[n] > 1:
                    enemy_spawn_speed[n] -= 1
                ramp_index[n] += 1
    return float(reward), terminal, cursor


@njit(**KERNEL_OPTIONS)
def _mark_list(obs, n, data, length, channel, trail):
    """Draw each entry of copy ``n``'s list on ``channel`` (and, with ``trail``, the cell behind it on channel 3)."""
    for k in range(length[n]):
        x = min(max(data[n, k, 0], 0), 9)
        y = min(max(data[n, k, 1], 0), 9)
        obs[n, (y * 10 + x) * CHANNELS + channel] = 1
        if trail:
            behind = x - 1 if data[n, k, 2] != 0 else x + 1
            if 0 <= behind <= 9:
                obs[n, (y * 10 + behind) * CHANNELS + 3] = 1


@njit(**KERNEL_OPTIONS, inline="always")
def _render_copy(
    n, obs, oxygen, diver_count, sub_x, sub_y, sub_right,
    fb_data, fb_length, eb_data, eb_length, fish_data, fish_length, subs_data, subs_length, divers_data, divers_length,
):  # fmt: skip
    for i in range(OBS_SIZE):
        obs[n, i] = 0
    x = min(max(sub_x[n], 0), 9)  # (always in range; clamped so that no state can make a write go astray)
    y = min(max(sub_y[n], 0), 9)
    obs[n, (y * 10 + x) * CHANNELS] = 1
    back = x - 1 if sub_right[n] else x + 1
    back = min(max(back, 0), 9)
    obs[n, (y * 10 + back) * CHANNELS + 1] = 1
    cells = min(max(oxygen[n], 0) * 10 // MAX_OXYGEN, 10)
    for c in range(cells):
        obs[n, (90 + c) * CHANNELS + 7] = 1
    for c in range(max(9 - diver_count[n], 0), 9):
        obs[n, (90 + c) * CHANNELS + 8] = 1
    _mark_list(obs, n, fb_data, fb_length, 2, False)
    _mark_list(obs, n, eb_data, eb_length, 4, False)
    _mark_list(obs, n, fish_data, fish_length, 5, True)
    _mark_list(obs, n, subs_data, subs_length, 6, True)
    _mark_list(obs, n, divers_data, divers_length, 9, True)


# ---------------------------------------------------------------------------------------------- batch kernels
@njit(**KERNEL_OPTIONS)
def reset_kernel(
    mask, draws, draw_log, draws_used,
    oxygen, diver_count, sub_x, sub_y, sub_right, enemy_spawn_speed, enemy_spawn_timer, diver_spawn_timer,
    move_speed, ramp_index, shot_timer, surfaced, overflowed,
    fb_data, fb_length, eb_data, eb_length, fish_data, fish_length, subs_data, subs_length, divers_data, divers_length,
):  # fmt: skip
    for n in range(mask.shape[0]):
        if mask[n]:
            _reset_copy(
                n, oxygen, diver_count, sub_x, sub_y, sub_right, enemy_spawn_speed, enemy_spawn_timer,
                diver_spawn_timer, move_speed, ramp_index, shot_timer, surfaced, overflowed,
                fb_data, fb_length, eb_data, eb_length, fish_data, fish_length, subs_data, subs_length,
                divers_data, divers_length,
            )  # fmt: skip
        draws_used[n] = 0


@njit(**KERNEL_OPTIONS)
def render_kernel(
    obs,
    oxygen, diver_count, sub_x, sub_y, sub_right, enemy_spawn_speed, enemy_spawn_timer, diver_spawn_timer,
    move_speed, ramp_index, shot_timer, surfaced, overflowed,
    fb_data, fb_length, eb_data, eb_length, fish_data, fish_length, subs_data, subs_length, divers_data, divers_length,
):  # fmt: skip
    for n in range(obs.shape[0]):
        _render_copy(
            n, obs, oxygen, diver_count, sub_x, sub_y, sub_right,
            fb_data, fb_length, eb_data, eb_length, fish_data, fish_length, subs_data, subs_length,
            divers_data, divers_length,
        )  # fmt: skip


@njit(**KERNEL_OPTIONS)
def step_kernel(
    actions, action_set, sticky_prob, last_action, elapsed, max_steps, ramping,
    draws, draw_log, draws_used, final_obs, obs, reward, terminated, truncated,
    oxygen, diver_count, sub_x, sub_y, sub_right, enemy_spawn_speed, enemy_spawn_timer, diver_spawn_timer,
    move_speed, ramp_index, shot_timer, surfaced, overflowed,
    fb_data, fb_length, eb_data, eb_length, fish_data, fish_length, subs_data, subs_length, divers_data, divers_length,
):  # fmt: skip
    for n in range(actions.shape[0]):
        action, cursor = sticky_action(n, actions, action_set, last_action, sticky_prob, draws, draw_log, 0)
        reward[n], terminal, cursor = _step_copy(
            n, action, ramping, draws, draw_log, cursor,
            oxygen, diver_count, sub_x, sub_y, sub_right, enemy_spawn_speed, enemy_spawn_timer, diver_spawn_timer,
            move_speed, ramp_index, shot_timer, surfaced, overflowed,
            fb_data, fb_length, eb_data, eb_length, fish_data, fish_length, subs_data, subs_length,
            divers_data, divers_length,
        )  # fmt: skip
        _render_copy(
            n, final_obs, oxygen, diver_count, sub_x, sub_y, sub_right,
            fb_data, fb_length, eb_data, eb_length, fish_data, fish_length, subs_data, subs_length,
            divers_data, divers_length,
        )  # fmt: skip
        if end_of_step(n, terminal, elapsed, max_steps, terminated, truncated):
            _reset_copy(
                n, oxygen, diver_count, sub_x, sub_y, sub_right, enemy_spawn_speed, enemy_spawn_timer,
                diver_spawn_timer, move_speed, ramp_index, shot_timer, surfaced, overflowed,
                fb_data, fb_length, eb_data, eb_length, fish_data, fish_length, subs_data, subs_length,
                divers_data, divers_length,
            )  # fmt: skip
            _render_copy(
                n, obs, oxygen, diver_count, sub_x, sub_y, sub_right,
                fb_data, fb_length, eb_data, eb_length, fish_data, fish_length, subs_data, subs_length,
                divers_data, divers_length,
            )  # fmt: skip
        else:
            for i in range(OBS_SIZE):
                obs[n, i] = final_obs[n, i]
        draws_used[n] = cursor
