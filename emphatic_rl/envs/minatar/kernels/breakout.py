"""MinAtar Breakout, compiled (rules of ``minatar/environments/breakout.py``; state as in
:class:`~emphatic_rl.envs.minatar.breakout.MinAtarBreakout`: ``bricks[n, (row - 1) * 10 + col]`` for rows 1..3).

Draws per step and copy: 1 (sticky action) + 1 (reset). Observations are written flat: ``obs[n, cell * 4 + channel]``
(``uint8[N, 400]``, every entry written) with ``cell = row * 10 + col``; channels paddle 0, ball 1, trail 2, brick 3.
"""

from __future__ import annotations

from numba import njit

from emphatic_rl.envs.minatar.kernels.common import (
    KERNEL_OPTIONS,
    LEFT,
    RIGHT,
    draw_integer,
    end_of_step,
    sticky_action,
)

MAX_DRAWS_PER_STEP = 2
MAX_DRAWS_PER_RESET = 1

# Ball directions 0..3: (dx, dy) = up-left, up-right, down-right, down-left.
_DX = (-1, 1, 1, -1)
_DY = (-1, -1, 1, 1)
_FLIP_X = (1, 0, 3, 2)
_FLIP_Y = (3, 2, 1, 0)
_FLIP_XY = (2, 3, 0, 1)


@njit(**KERNEL_OPTIONS, inline="always")
def _reset_copy(n, draws, draw_log, cursor, ball_x, ball_y, ball_dir, paddle_x, last_x, last_y, strike, bricks):
    start_right, cursor = draw_integer(draws, draw_log, n, cursor, 0, 2)
    ball_x[n] = 9 if start_right == 1 else 0
    ball_dir[n] = 3 if start_right == 1 else 2
    ball_y[n] = 3
    paddle_x[n] = 4
    for i in range(30):
        bricks[n, i] = 1
    strike[n] = False
    last_x[n] = ball_x[n]
    last_y[n] = 3
    return cursor


@njit(**KERNEL_OPTIONS, inline="always")
def _step_copy(n, action, ball_x, ball_y, ball_dir, paddle_x, last_x, last_y, strike, bricks):
    if action == LEFT:
        paddle_x[n] = max(0, paddle_x[n] - 1)
    elif action == RIGHT:
        paddle_x[n] = min(9, paddle_x[n] + 1)
    old_x, old_y, direction = ball_x[n], ball_y[n], ball_dir[n]
    new_x, new_y = old_x + _DX[direction], old_y + _DY[direction]
    reward, terminal, strike_toggle = 0.0, False, False
    if new_x < 0 or new_x > 9:
        new_x = min(max(new_x, 0), 9)
        direction = _FLIP_X[direction]
    if new_y < 0:
        new_y = 0
        direction = _FLIP_Y[direction]
    elif 1 <= new_y <= 3 and bricks[n, (new_y - 1) * 10 + new_x] == 1:
        strike_toggle = True
        if not strike[n]:
            reward = 1.0
            bricks[n, (new_y - 1) * 10 + new_x] = 0
            new_y = old_y
            direction = _FLIP_Y[direction]
    elif new_y == 9:
        wall_cleared = True
        for i in range(30):
            if bricks[n, i] != 0:
                wall_cleared = False
        if wall_cleared:
            for i in range(30):
                bricks[n, i] = 1
        if old_x == paddle_x[n]:
            direction = _FLIP_Y[direction]
            new_y = old_y
        elif new_x == paddle_x[n]:
            direction = _FLIP_XY[direction]
            new_y = old_y
        else:
            terminal = True
    strike[n] = strike_toggle
    last_x[n], last_y[n] = old_x, old_y
    ball_x[n], ball_y[n], ball_dir[n] = new_x, new_y, direction
    return reward, terminal


@njit(**KERNEL_OPTIONS, inline="always")
def _render_copy(n, obs, ball_x, ball_y, ball_dir, paddle_x, last_x, last_y, strike, bricks):
    for i in range(400):
        obs[n, i] = 0
    obs[n, (90 + paddle_x[n]) * 4] = 1
    obs[n, (ball_y[n] * 10 + ball_x[n]) * 4 + 1] = 1
    obs[n, (last_y[n] * 10 + last_x[n]) * 4 + 2] = 1
    for i in range(30):
        obs[n, (10 + i) * 4 + 3] = bricks[n, i]


@njit(**KERNEL_OPTIONS)
def reset_kernel(mask, draws, draw_log, draws_used, ball_x, ball_y, ball_dir, paddle_x, last_x, last_y, strike, bricks):
    for n in range(mask.shape[0]):
        cursor = 0
        if mask[n]:
            cursor = _reset_copy(
                n, draws, draw_log, cursor, ball_x, ball_y, ball_dir, paddle_x, last_x, last_y, strike, bricks
            )
        draws_used[n] = cursor


@njit(**KERNEL_OPTIONS)
def render_kernel(obs, ball_x, ball_y, ball_dir, paddle_x, last_x, last_y, strike, bricks):
    for n in range(obs.shape[0]):
        _render_copy(n, obs, ball_x, ball_y, ball_dir, paddle_x, last_x, last_y, strike, bricks)


@njit(**KERNEL_OPTIONS)
def step_kernel(
    actions, action_set, sticky_prob, last_action, elapsed, max_steps, ramping,
    draws, draw_log, draws_used, final_obs, obs, reward, terminated, truncated,
    ball_x, ball_y, ball_dir, paddle_x, last_x, last_y, strike, bricks,
):  # fmt: skip
    for n in range(actions.shape[0]):
        action, cursor = sticky_action(n, actions, action_set, last_action, sticky_prob, draws, draw_log, 0)
        reward[n], terminal = _step_copy(n, action, ball_x, ball_y, ball_dir, paddle_x, last_x, last_y, strike, bricks)
        _render_copy(n, final_obs, ball_x, ball_y, ball_dir, paddle_x, last_x, last_y, strike, bricks)
        if end_of_step(n, terminal, elapsed, max_steps, terminated, truncated):
            cursor = _reset_copy(
                n, draws, draw_log, cursor, ball_x, ball_y, ball_dir, paddle_x, last_x, last_y, strike, bricks
            )
            _render_copy(n, obs, ball_x, ball_y, ball_dir, paddle_x, last_x, last_y, strike, bricks)
        else:
            for i in range(400):
                obs[n, i] = final_obs[n, i]
        draws_used[n] = cursor
