"""MinAtar Asterix, compiled (rules of ``minatar/environments/asterix.py``; state as in
:class:`~emphatic_rl.envs.minatar.asterix.MinAtarAsterix`: entities in 8 fixed slots, slot ``k`` on row ``k + 1``,
``entity_x/entity_alive/entity_right/entity_gold[n, k]``, plus the spawn/move timers and the ramp state).

Draws per step and copy: 1 (sticky action) + at most 3 (a spawn: side, gold, then the free slot index only when a slot
is free); the reset draws nothing. Observations are written flat: ``obs[n, cell * 4 + channel]`` (``uint8[N, 400]``,
every entry written) with ``cell = row * 10 + col``; channels player 0, enemy 1, trail 2, gold 3.

``step_kernel`` does a copy's game step in its own body (spawn, move, contact, ramp) and calls the inlined
``_reset_copy`` / ``_render_copy`` helpers. Written when the kernels still had numba's reference counting (helpers
binding the state arrays then cost 14 atomic incref/decref pairs per copy); with ``KERNEL_OPTIONS`` they cost nothing.
"""

from __future__ import annotations

from numba import njit

from emphatic_rl.envs.minatar.kernels.common import (
    DOWN,
    KERNEL_OPTIONS,
    LEFT,
    RIGHT,
    UP,
    draw_integer,
    draw_uniform,
    end_of_step,
    sticky_action,
)

MAX_DRAWS_PER_STEP = 4
MAX_DRAWS_PER_RESET = 0

RAMP_INTERVAL = 100
INIT_SPAWN_SPEED = 10
INIT_MOVE_INTERVAL = 5
NUM_SLOTS = 8


@njit(**KERNEL_OPTIONS, inline="always")
def _reset_copy(
    n, player_x, player_y, entity_x, entity_alive, entity_right, entity_gold,
    spawn_speed, spawn_timer, move_speed, move_timer, ramp_timer, ramp_index,
):  # fmt: skip
    player_x[n] = 5
    player_y[n] = 5
    for k in range(NUM_SLOTS):
        entity_alive[n, k] = False
    spawn_speed[n] = INIT_SPAWN_SPEED
    spawn_timer[n] = INIT_SPAWN_SPEED
    move_speed[n] = INIT_MOVE_INTERVAL
    move_timer[n] = INIT_MOVE_INTERVAL
    ramp_timer[n] = RAMP_INTERVAL
    ramp_index[n] = 0


@njit(**KERNEL_OPTIONS, inline="always")
def _render_copy(n, obs, player_x, player_y, entity_x, entity_alive, entity_right, entity_gold):
    for i in range(400):
        obs[n, i] = 0
    obs[n, (player_y[n] * 10 + player_x[n]) * 4] = 1
    for k in range(NUM_SLOTS):
        if entity_alive[n, k]:
            ex = entity_x[n, k]
            row_cell = (k + 1) * 10
            obs[n, (row_cell + ex) * 4 + (3 if entity_gold[n, k] else 1)] = 1
            back_x = ex - 1 if entity_right[n, k] else ex + 1
            if 0 <= back_x <= 9:
                obs[n, (row_cell + back_x) * 4 + 2] = 1


@njit(**KERNEL_OPTIONS)
def reset_kernel(
    mask, draws, draw_log, draws_used, player_x, player_y, entity_x, entity_alive, entity_right, entity_gold,
    spawn_speed, spawn_timer, move_speed, move_timer, ramp_timer, ramp_index,
):  # fmt: skip
    for n in range(mask.shape[0]):
        if mask[n]:
            _reset_copy(
                n, player_x, player_y, entity_x, entity_alive, entity_right, entity_gold,
                spawn_speed, spawn_timer, move_speed, move_timer, ramp_timer, ramp_index,
            )  # fmt: skip
        draws_used[n] = 0


@njit(**KERNEL_OPTIONS)
def render_kernel(
    obs, player_x, player_y, entity_x, entity_alive, entity_right, entity_gold,
    spawn_speed, spawn_timer, move_speed, move_timer, ramp_timer, ramp_index,
):  # fmt: skip
    for n in range(obs.shape[0]):
        _render_copy(n, obs, player_x, player_y, entity_x, entity_alive, entity_right, entity_gold)


@njit(**KERNEL_OPTIONS)
def step_kernel(
    actions, action_set, sticky_prob, last_action, elapsed, max_steps, ramping,
    draws, draw_log, draws_used, final_obs, obs, reward, terminated, truncated,
    player_x, player_y, entity_x, entity_alive, entity_right, entity_gold,
    spawn_speed, spawn_timer, move_speed, move_timer, ramp_timer, ramp_index,
):  # fmt: skip
    # one body, no helpers taking arrays on the every-step path (see the module docstring)
    for n in range(actions.shape[0]):
        action, cursor = sticky_action(n, actions, action_set, last_action, sticky_prob, draws, draw_log, 0)

        # spawn an enemy or gold when the timer is up (side and kind are drawn even when no slot is free)
        if spawn_timer[n] == 0:
            u_side, cursor = draw_uniform(draws, draw_log, n, cursor)
            u_gold, cursor = draw_uniform(draws, draw_log, n, cursor)
            num_free = 0
            for k in range(NUM_SLOTS):
                if not entity_alive[n, k]:
                    num_free += 1
            if num_free > 0:
                choice, cursor = draw_integer(draws, draw_log, n, cursor, 0, num_free)
                for k in range(NUM_SLOTS):  # the (choice + 1)-th free slot in index order
                    if not entity_alive[n, k]:
                        if choice == 0:
                            entity_alive[n, k] = True
                            entity_x[n, k] = 0 if u_side < 0.5 else 9
                            entity_right[n, k] = u_side < 0.5
                            entity_gold[n, k] = u_gold < 1 / 3
                            break
                        choice -= 1
            spawn_timer[n] = spawn_speed[n]

        x, y = player_x[n], player_y[n]
        if action == LEFT:
            x = max(0, x - 1)
        elif action == RIGHT:
            x = min(9, x + 1)
        elif action == UP:
            y = max(1, y - 1)
        elif action == DOWN:
            y = min(8, y + 1)
        player_x[n], player_y[n] = x, y
        row_slot = y - 1  # the only slot on the player's row

        # contact before the entities move
        gained, terminal = 0.0, False
        if entity_alive[n, row_slot] and entity_x[n, row_slot] == x:
            if entity_gold[n, row_slot]:
                entity_alive[n, row_slot] = False
                gained += 1.0
            else:
                terminal = True
        # entities move every move_speed + 1 frames; those leaving the screen vanish; contact again
        if move_timer[n] == 0:
            move_timer[n] = move_speed[n]
            for k in range(NUM_SLOTS):
                if entity_alive[n, k]:
                    new_x = entity_x[n, k] + (1 if entity_right[n, k] else -1)
                    entity_x[n, k] = new_x
                    if new_x < 0 or new_x > 9:
                        entity_alive[n, k] = False
                    elif k == row_slot and new_x == x:
                        if entity_gold[n, k]:
                            entity_alive[n, k] = False
                            gained += 1.0
                        else:
                            terminal = True
        spawn_timer[n] -= 1
        move_timer[n] -= 1

        # difficulty ramp: after the interval, a shorter spawn interval (and every second time move interval)
        if ramping and (spawn_speed[n] > 1 or move_speed[n] > 1):
            if ramp_timer[n] >= 0:
                ramp_timer[n] -= 1
            else:
                if move_speed[n] > 1 and ramp_index[n] % 2 == 1:
                    move_speed[n] -= 1
                if spawn_speed[n] > 1:
                    spawn_speed[n] -= 1
                ramp_index[n] += 1
                ramp_timer[n] = RAMP_INTERVAL
        reward[n] = gained

        _render_copy(n, final_obs, player_x, player_y, entity_x, entity_alive, entity_right, entity_gold)
        if end_of_step(n, terminal, elapsed, max_steps, terminated, truncated):
            _reset_copy(
                n, player_x, player_y, entity_x, entity_alive, entity_right, entity_gold,
                spawn_speed, spawn_timer, move_speed, move_timer, ramp_timer, ramp_index,
            )  # fmt: skip
            _render_copy(n, obs, player_x, player_y, entity_x, entity_alive, entity_right, entity_gold)
        else:
            for i in range(400):
                obs[n, i] = final_obs[n, i]
        draws_used[n] = cursor
