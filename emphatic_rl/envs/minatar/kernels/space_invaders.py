"""MinAtar Space Invaders, compiled (rules of ``minatar/environments/space_invaders.py``; state as in
:class:`~emphatic_rl.envs.minatar.space_invaders.MinAtarSpaceInvaders`: ``aliens``, ``friendly_bullets`` and
``enemy_bullets`` are ``uint8[N, 10, 10]`` maps ``[n, row, col]``, 1 where occupied; the kernels index them flat,
``[n, row * 10 + col]``, through reshaped views of the same memory).

Draws per step and copy: 1 (sticky action); the game itself and its reset draw nothing. Observations are written
flat: ``obs[n, cell * 6 + channel]`` (``uint8[N, 600]``, every entry written) with ``cell = row * 10 + col``;
channels cannon 0, alien 1, alien_left 2, alien_right 3, friendly_bullet 4, enemy_bullet 5.

Compiled with plain ``cache=True``, not ``KERNEL_OPTIONS``: the reshaped views need numba's reference counting.
"""

from __future__ import annotations

from numba import njit

from emphatic_rl.envs.minatar.kernels.common import FIRE, LEFT, RIGHT, end_of_step, sticky_action

MAX_DRAWS_PER_STEP = 1
MAX_DRAWS_PER_RESET = 0

SHOT_COOL_DOWN = 5
ENEMY_MOVE_INTERVAL = 12
ENEMY_SHOT_INTERVAL = 10
FASTEST_MOVE_INTERVAL = 6


@njit(cache=True)
def _new_wave(n, aliens):
    for r in range(4):
        for c in range(2, 8):
            aliens[n, r * 10 + c] = 1


@njit(cache=True)
def _reset_copy(
    n, cannon_x, aliens, friendly, enemy, alien_dir, move_interval, move_timer, alien_shot_timer, shot_timer, ramp_index
):
    cannon_x[n] = 5
    for i in range(100):
        aliens[n, i] = 0
        friendly[n, i] = 0
        enemy[n, i] = 0
    _new_wave(n, aliens)
    alien_dir[n] = -1
    move_interval[n] = ENEMY_MOVE_INTERVAL
    move_timer[n] = ENEMY_MOVE_INTERVAL
    alien_shot_timer[n] = ENEMY_SHOT_INTERVAL
    ramp_index[n] = 0
    shot_timer[n] = 0


@njit(cache=True)
def _move_aliens(n, pos, aliens, alien_dir, move_interval, move_timer):
    """The block's move (its timer is at 0): sideways, or down and turning at an edge. Returns terminal."""
    count = 0
    edge_left = 0
    edge_right = 0
    bottom = 0
    for i in range(100):
        count += aliens[n, i] != 0
    for r in range(10):
        edge_left |= aliens[n, r * 10]
        edge_right |= aliens[n, r * 10 + 9]
    for c in range(10):
        bottom |= aliens[n, 90 + c]
    move_timer[n] = min(count, move_interval[n])
    direction = alien_dir[n]
    terminal = False
    if (edge_left != 0 and direction < 0) or (edge_right != 0 and direction > 0):
        alien_dir[n] = -direction
        terminal = bottom != 0
        # one row down; the bottom row wraps to the top (np.roll), as in the reference
        for c in range(10):
            last = aliens[n, 90 + c]
            for r in range(9, 0, -1):
                aliens[n, r * 10 + c] = aliens[n, r * 10 + c - 10]
            aliens[n, c] = last
    elif direction > 0:  # one column right (np.roll; the right edge is empty here)
        for r in range(10):
            row = r * 10
            last = aliens[n, row + 9]
            for c in range(9, 0, -1):
                aliens[n, row + c] = aliens[n, row + c - 1]
            aliens[n, row] = last
    else:  # one column left
        for r in range(10):
            row = r * 10
            first = aliens[n, row]
            for c in range(9):
                aliens[n, row + c] = aliens[n, row + c + 1]
            aliens[n, row + 9] = first
    if aliens[n, 90 + pos] != 0:
        terminal = True
    return terminal


@njit(cache=True)
def _alien_shoots(n, pos, aliens, enemy):
    """The reference ``_nearest_alien``: the nearest occupied column (ties to the left), its lowest alien fires."""
    for distance in range(10):
        for side in range(2):
            if distance == 0 and side == 1:
                break
            c = pos - distance if side == 0 else pos + distance
            if c < 0 or c > 9:
                continue
            for r in range(9, -1, -1):
                if aliens[n, r * 10 + c] != 0:
                    enemy[n, r * 10 + c] = 1
                    return


@njit(cache=True)
def _step_copy(
    n, action, ramping,
    cannon_x, aliens, friendly, enemy, alien_dir, move_interval, move_timer, alien_shot_timer, shot_timer, ramp_index,
):  # fmt: skip
    pos = cannon_x[n]
    if action == FIRE and shot_timer[n] == 0:
        friendly[n, 90 + pos] = 1
        shot_timer[n] = SHOT_COOL_DOWN
    elif action == LEFT:
        pos = max(0, pos - 1)
    elif action == RIGHT:
        pos = min(9, pos + 1)
    cannon_x[n] = pos

    # bullets: friendly ones move up a row (leaving at the top), enemy ones down (leaving at the bottom)
    any_friendly = 0
    for i in range(90):
        bullet = friendly[n, i + 10]
        friendly[n, i] = bullet
        any_friendly |= bullet
    for i in range(90, 100):
        friendly[n, i] = 0
    for i in range(99, 9, -1):
        enemy[n, i] = enemy[n, i - 10]
    for i in range(10):
        enemy[n, i] = 0
    terminal = enemy[n, 90 + pos] != 0

    if aliens[n, 90 + pos] != 0:
        terminal = True
    if move_timer[n] == 0:
        if _move_aliens(n, pos, aliens, alien_dir, move_interval, move_timer):
            terminal = True
    if alien_shot_timer[n] == 0:
        alien_shot_timer[n] = ENEMY_SHOT_INTERVAL
        _alien_shoots(n, pos, aliens, enemy)

    # kills (maps hold 0 or 1): an alien and a friendly bullet in the same cell both vanish
    kills = 0
    cleared = True
    if any_friendly != 0:
        left = 0
        for i in range(100):
            hit = aliens[n, i] & friendly[n, i]
            aliens[n, i] ^= hit
            friendly[n, i] ^= hit
            kills += hit
            left += aliens[n, i]
        cleared = left == 0
    else:  # no kills: the wave is cleared only if it was empty already (first alien found early)
        for i in range(100):
            if aliens[n, i] != 0:
                cleared = False
                break

    if shot_timer[n] > 0:
        shot_timer[n] -= 1
    move_timer[n] -= 1
    alien_shot_timer[n] -= 1
    if cleared:
        if ramping and move_interval[n] > FASTEST_MOVE_INTERVAL:
            move_interval[n] -= 1
            ramp_index[n] += 1
        _new_wave(n, aliens)
    return float(kills), terminal


@njit(cache=True)
def _render_copy(n, obs, cannon_x, aliens, friendly, enemy, alien_dir):
    """Every entry of ``obs[n]`` written, branch-free (maps hold 0 or 1)."""
    to_left = 1 if alien_dir[n] < 0 else 0
    to_right = 1 - to_left
    for i in range(100):
        alien = aliens[n, i]
        base = i * 6
        obs[n, base] = 0
        obs[n, base + 1] = alien
        obs[n, base + 2] = alien * to_left
        obs[n, base + 3] = alien * to_right
        obs[n, base + 4] = friendly[n, i]
        obs[n, base + 5] = enemy[n, i]
    obs[n, (90 + cannon_x[n]) * 6] = 1


@njit(cache=True)
def _flat(plane):
    """The ``[N, 10, 10]`` map as a ``[N, 100]`` view of the same memory."""
    return plane.reshape((plane.shape[0], 100))


@njit(cache=True)
def reset_kernel(
    mask, draws, draw_log, draws_used,
    cannon_x, aliens, friendly, enemy, alien_dir, move_interval, move_timer, alien_shot_timer, shot_timer, ramp_index,
):  # fmt: skip
    aliens, friendly, enemy = _flat(aliens), _flat(friendly), _flat(enemy)
    for n in range(mask.shape[0]):
        if mask[n]:
            _reset_copy(
                n, cannon_x, aliens, friendly, enemy, alien_dir, move_interval, move_timer, alien_shot_timer,
                shot_timer, ramp_index,
            )  # fmt: skip
        draws_used[n] = 0


@njit(cache=True)
def render_kernel(
    obs,
    cannon_x, aliens, friendly, enemy, alien_dir, move_interval, move_timer, alien_shot_timer, shot_timer, ramp_index,
):  # fmt: skip
    aliens, friendly, enemy = _flat(aliens), _flat(friendly), _flat(enemy)
    for n in range(obs.shape[0]):
        _render_copy(n, obs, cannon_x, aliens, friendly, enemy, alien_dir)


@njit(cache=True)
def step_kernel(
    actions, action_set, sticky_prob, last_action, elapsed, max_steps, ramping,
    draws, draw_log, draws_used, final_obs, obs, reward, terminated, truncated,
    cannon_x, aliens, friendly, enemy, alien_dir, move_interval, move_timer, alien_shot_timer, shot_timer, ramp_index,
):  # fmt: skip
    aliens, friendly, enemy = _flat(aliens), _flat(friendly), _flat(enemy)
    for n in range(actions.shape[0]):
        action, cursor = sticky_action(n, actions, action_set, last_action, sticky_prob, draws, draw_log, 0)
        reward[n], terminal = _step_copy(
            n, action, ramping,
            cannon_x, aliens, friendly, enemy, alien_dir, move_interval, move_timer, alien_shot_timer, shot_timer,
            ramp_index,
        )  # fmt: skip
        _render_copy(n, final_obs, cannon_x, aliens, friendly, enemy, alien_dir)
        if end_of_step(n, terminal, elapsed, max_steps, terminated, truncated):
            _reset_copy(
                n, cannon_x, aliens, friendly, enemy, alien_dir, move_interval, move_timer, alien_shot_timer,
                shot_timer, ramp_index,
            )  # fmt: skip
            _render_copy(n, obs, cannon_x, aliens, friendly, enemy, alien_dir)
        else:
            for i in range(600):
                obs[n, i] = final_obs[n, i]
        draws_used[n] = cursor
