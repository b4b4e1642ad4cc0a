"""MinAtar Freeway, compiled (rules of ``minatar/environments/freeway.py``; state as in
:class:`~emphatic_rl.envs.minatar.freeway.MinAtarFreeway`: car ``k`` drives in row ``k + 1``, ``car_speed`` signed).

Draws per step and copy: 1 (sticky action) + 16 (the chicken reaches the top: 8 speeds, then 8 directions) + 16
(reset: the same 16 again). A step can both score and end by the 2500-frame timer, so all three can happen in one
step. Observations are written flat: ``obs[n, cell * 7 + channel]`` (``uint8[N, 700]``, every entry written) with
``cell = row * 10 + col``; channels chicken 0, car 1, speed1..speed5 2..6 (each car's trail, one cell behind it).
"""

from __future__ import annotations

from numba import njit

from emphatic_rl.envs.minatar.kernels.common import (
    DOWN,
    KERNEL_OPTIONS,
    UP,
    draw_integer,
    draw_uniform,
    end_of_step,
    sticky_action,
)

NUM_CARS = 8
PLAYER_SPEED = 3
TIME_LIMIT = 2500
NUM_CHANNELS = 7
OBS_SIZE = 100 * NUM_CHANNELS

MAX_DRAWS_PER_STEP = 1 + 2 * NUM_CARS + 2 * NUM_CARS
MAX_DRAWS_PER_RESET = 2 * NUM_CARS


@njit(**KERNEL_OPTIONS)
def _randomize_cars(n, draws, draw_log, cursor, car_timer, car_speed):
    """The reference ``_randomize_cars``: 8 magnitudes in ``1..5``, then 8 uniforms for the directions.

    Sets each car's speed and timer (``|speed|``); positions are left alone. The reference takes
    ``sign(u - 0.5)``; ``u == 0.5`` exactly is treated as ``+1``, as the torch backend does.
    """
    for k in range(NUM_CARS):
        magnitude, cursor = draw_integer(draws, draw_log, n, cursor, 1, 6)
        car_speed[n, k] = magnitude
        car_timer[n, k] = magnitude
    for k in range(NUM_CARS):
        u, cursor = draw_uniform(draws, draw_log, n, cursor)
        if u < 0.5:
            car_speed[n, k] = -car_speed[n, k]
    return cursor


@njit(**KERNEL_OPTIONS)
def _reset_copy(n, draws, draw_log, cursor, chicken_y, move_timer, terminate_timer, car_x, car_timer, car_speed):
    cursor = _randomize_cars(n, draws, draw_log, cursor, car_timer, car_speed)
    for k in range(NUM_CARS):
        car_x[n, k] = 0
    chicken_y[n] = 9
    move_timer[n] = PLAYER_SPEED
    terminate_timer[n] = TIME_LIMIT
    return cursor


@njit(**KERNEL_OPTIONS)
def _move_chicken(n, action, chicken_y, move_timer):
    """The chicken's move; returns whether it reached the top row (left there: the caller scores and re-draws)."""
    y, timer = chicken_y[n], move_timer[n]
    if timer == 0:
        if action == UP:
            timer = PLAYER_SPEED
            y = max(0, y - 1)
        elif action == DOWN:
            timer = PLAYER_SPEED
            y = min(9, y + 1)
    chicken_y[n] = y
    move_timer[n] = timer
    return y == 0


@njit(**KERNEL_OPTIONS)
def _move_cars(n, chicken_y, move_timer, terminate_timer, car_x, car_timer, car_speed):
    """The cars' moves and the timers (after :func:`_move_chicken`; row 0 there means the chicken crossed and goes
    back to the bottom). Returns whether the episode's 2500 frames are over.

    Only the car in the chicken's row can hit it, before or after that car moves (the reference checks every car,
    but a hit sends the chicken to row 9, where no car drives). Branch-free car update: a car moves when its timer
    is 0 (one cell towards the sign of its speed, wrapping) and its timer restarts at ``|speed|``.
    """
    y = chicken_y[n]
    if y == 0:
        y = 9
    in_car_row = 1 <= y <= NUM_CARS
    before = car_x[n, y - 1] if in_car_row else 0
    for k in range(NUM_CARS):
        x, timer, speed = car_x[n, k], car_timer[n, k], car_speed[n, k]
        moving = 1 if timer == 0 else 0
        step = moving if speed > 0 else -moving
        x += step
        x = 9 if x < 0 else x
        x = 0 if x > 9 else x
        car_x[n, k] = x
        car_timer[n, k] = timer - 1 + moving * (abs(speed) + 1)
    if in_car_row and (before == 4 or car_x[n, y - 1] == 4):
        y = 9
    chicken_y[n] = y
    move = move_timer[n]
    move_timer[n] = move - 1 if move > 0 else 0
    time_left = terminate_timer[n] - 1
    terminate_timer[n] = time_left
    return time_left < 0


@njit(**KERNEL_OPTIONS)
def _render_copy(n, obs, chicken_y, move_timer, terminate_timer, car_x, car_timer, car_speed):
    for i in range(OBS_SIZE):
        obs[n, i] = 0
    obs[n, (chicken_y[n] * 10 + 4) * NUM_CHANNELS] = 1
    for k in range(NUM_CARS):
        row_cell = (k + 1) * 10
        x = car_x[n, k]
        speed = car_speed[n, k]
        obs[n, (row_cell + x) * NUM_CHANNELS + 1] = 1
        if speed > 0:
            back_x = 9 if x == 0 else x - 1
            magnitude = speed
        else:
            back_x = 0 if x == 9 else x + 1
            magnitude = -speed
        obs[n, (row_cell + back_x) * NUM_CHANNELS + 1 + magnitude] = 1


@njit(**KERNEL_OPTIONS)
def reset_kernel(
    mask, draws, draw_log, draws_used, chicken_y, move_timer, terminate_timer, car_x, car_timer, car_speed
):
    for n in range(mask.shape[0]):
        cursor = 0
        if mask[n]:
            cursor = _reset_copy(
                n, draws, draw_log, cursor, chicken_y, move_timer, terminate_timer, car_x, car_timer, car_speed
            )
        draws_used[n] = cursor


@njit(**KERNEL_OPTIONS)
def render_kernel(obs, chicken_y, move_timer, terminate_timer, car_x, car_timer, car_speed):
    for n in range(obs.shape[0]):
        _render_copy(n, obs, chicken_y, move_timer, terminate_timer, car_x, car_timer, car_speed)


@njit(**KERNEL_OPTIONS)
def step_kernel(
    actions, action_set, sticky_prob, last_action, elapsed, max_steps, ramping,
    draws, draw_log, draws_used, final_obs, obs, reward, terminated, truncated,
    chicken_y, move_timer, terminate_timer, car_x, car_timer, car_speed,
):  # fmt: skip
    for n in range(actions.shape[0]):
        action, cursor = sticky_action(n, actions, action_set, last_action, sticky_prob, draws, draw_log, 0)
        # The crossing's re-draw is called from here, not from a helper: a helper whose last use of an array sits in
        # a branch keeps numba's reference counting (atomic increments of every array, per call): ~40 us at N=1024.
        reward[n] = 0.0
        if _move_chicken(n, action, chicken_y, move_timer):
            reward[n] = 1.0
            cursor = _randomize_cars(n, draws, draw_log, cursor, car_timer, car_speed)
        terminal = _move_cars(n, chicken_y, move_timer, terminate_timer, car_x, car_timer, car_speed)
        _render_copy(n, final_obs, chicken_y, move_timer, terminate_timer, car_x, car_timer, car_speed)
        if end_of_step(n, terminal, elapsed, max_steps, terminated, truncated):
            cursor = _reset_copy(
                n, draws, draw_log, cursor, chicken_y, move_timer, terminate_timer, car_x, car_timer, car_speed
            )
            _render_copy(n, obs, chicken_y, move_timer, terminate_timer, car_x, car_timer, car_speed)
        else:
            for i in range(OBS_SIZE):
                obs[n, i] = final_obs[n, i]
        draws_used[n] = cursor
