"""MinAtar Breakout, batched (rules of ``minatar/environments/breakout.py``, MinAtar 1.0.15).

The paddle on the bottom row bounces a ball that travels along diagonals and breaks the 3 rows of bricks at
the top (+1 per brick; a new set of rows appears when all are broken and the ball reaches the bottom row). The
episode ends when the ball reaches the bottom row without hitting the paddle. Channels: paddle, ball, trail,
brick. Random draws: one per reset (the ball starts top-left moving right-down or top-right moving left-down).
"""

from __future__ import annotations

import torch

from emphatic_rl.envs.minatar.common import LEFT, RIGHT, MinAtarEnv, canvas_to_observation, new_canvas
from emphatic_rl.envs.registry import register_env

# Ball directions 0..3: (dx, dy) = up-left, up-right, down-right, down-left.
_DX = (-1, 1, 1, -1)
_DY = (-1, -1, 1, 1)
_FLIP_X = (1, 0, 3, 2)
_FLIP_Y = (3, 2, 1, 0)
_FLIP_XY = (2, 3, 0, 1)


@register_env("minatar-breakout")
class MinAtarBreakout(MinAtarEnv):
    """MinAtar Breakout, ``bool[N, 10, 10, 4]`` observations, 6 actions (minimal: noop, left, right).

    Bricks only ever occupy rows 1..3 (the reference fills exactly those rows), so the brick map is kept as
    ``uint8[N, 30]``: cell ``(row, col)`` of the reference's ``brick_map`` is entry ``(row - 1) * 10 + col``.
    """

    name = "minatar-breakout"
    game = "breakout"
    channels = ("paddle", "ball", "trail", "brick")
    minimal_actions = ("n", "l", "r")
    kernel_module = "emphatic_rl.envs.minatar.kernels.breakout"
    game_state_names = ("ball_x", "ball_y", "ball_dir", "paddle_x", "last_x", "last_y", "strike", "bricks")

    # ``int64[N]`` state set by the loop in ``_allocate_state`` (declared here for the type checker)
    ball_x: torch.Tensor
    ball_y: torch.Tensor
    ball_dir: torch.Tensor
    paddle_x: torch.Tensor
    last_x: torch.Tensor
    last_y: torch.Tensor

    def _allocate_state(self) -> None:
        n, dev = self.num_envs, self.device
        for name in ("ball_x", "ball_y", "ball_dir", "paddle_x", "last_x", "last_y"):
            setattr(self, name, torch.zeros(n, dtype=torch.int64, device=dev))
        self.strike = torch.zeros(n, dtype=torch.bool, device=dev)
        #: ``uint8[N, 30]`` brick map of rows 1..3: entry ``(row - 1) * 10 + col`` is 1 where a brick stands.
        self.bricks = torch.zeros(n, 30, dtype=torch.uint8, device=dev)
        tables = torch.tensor([_DX, _DY, _FLIP_X, _FLIP_Y, _FLIP_XY], dtype=torch.int64, device=dev)
        self._dx, self._dy, self._flip_x, self._flip_y, self._flip_xy = tables
        self._brick_cells = torch.arange(10, 40, device=dev).repeat(n, 1)  # contiguous: stride-0 is slow
        self._bottom_row_cells = torch.full((n,), 90, dtype=torch.int64, device=dev)
        self._point_channels = torch.arange(3, device=dev).repeat(n, 1)  # paddle, ball, trail
        self._ones_3 = torch.ones(n, 3, dtype=torch.uint8, device=dev)

    def _reset_where_torch(self, mask: torch.Tensor) -> None:
        start_right = self.random_source.integers(0, 2, (self.num_envs,), mask).bool()
        ball_x = torch.where(start_right, 9, 0)
        self.ball_x = torch.where(mask, ball_x, self.ball_x)
        self.ball_y = torch.where(mask, 3, self.ball_y)
        self.ball_dir = torch.where(mask, torch.where(start_right, 3, 2), self.ball_dir)
        self.paddle_x = torch.where(mask, 4, self.paddle_x)
        self.bricks = self.bricks | mask.to(torch.uint8).unsqueeze(1)  # a full wall
        self.strike = self.strike & ~mask
        self.last_x = torch.where(mask, ball_x, self.last_x)
        self.last_y = torch.where(mask, 3, self.last_y)

    def _game_step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        paddle_x = torch.where(action == LEFT, (self.paddle_x - 1).clamp(min=0), self.paddle_x)
        paddle_x = torch.where(action == RIGHT, (paddle_x + 1).clamp(max=9), paddle_x)
        last_x, last_y, direction = self.ball_x, self.ball_y, self.ball_dir
        new_x = last_x + self._dx[direction]
        new_y = last_y + self._dy[direction]

        hit_wall = (new_x < 0) | (new_x > 9)
        new_x = new_x.clamp(0, 9)
        direction = torch.where(hit_wall, self._flip_x[direction], direction)
        hit_top = new_y < 0
        new_y = new_y.clamp(min=0)
        direction = torch.where(hit_top, self._flip_y[direction], direction)

        # the brick entry under the ball (rows outside 1..3 read some entry and are masked out)
        brick_index = ((new_y - 1).clamp(0, 2) * 10 + new_x).unsqueeze(1)
        brick_here = self.bricks.gather(1, brick_index).squeeze(1).bool()
        at_brick = ~hit_top & (new_y >= 1) & (new_y <= 3) & brick_here
        breaks = at_brick & ~self.strike
        kept = brick_here & ~breaks
        self.bricks = self.bricks.scatter(1, brick_index, kept.to(torch.uint8).unsqueeze(1))
        new_y_after_break = torch.where(breaks, last_y, new_y)
        direction = torch.where(breaks, self._flip_y[direction], direction)

        at_bottom = ~hit_top & ~at_brick & (new_y == 9)
        refill = at_bottom & (self.bricks.amax(1) == 0)
        self.bricks = self.bricks | refill.to(torch.uint8).unsqueeze(1)
        paddle_under_ball = at_bottom & (last_x == paddle_x)
        paddle_at_landing = at_bottom & ~paddle_under_ball & (new_x == paddle_x)
        direction = torch.where(paddle_under_ball, self._flip_y[direction], direction)
        direction = torch.where(paddle_at_landing, self._flip_xy[direction], direction)
        bounced = paddle_under_ball | paddle_at_landing
        terminal = at_bottom & ~bounced

        self.strike = at_brick
        self.paddle_x = paddle_x
        self.last_x, self.last_y = last_x, last_y
        self.ball_x = new_x
        self.ball_y = torch.where(bounced, last_y, new_y_after_break)
        self.ball_dir = direction
        return breaks, terminal

    def _observe_torch(self) -> torch.Tensor:
        canvas = new_canvas(self.num_envs, 4, self.device)
        canvas.scatter_(1, self._brick_cells * 4 + 3, self.bricks)  # distinct cells: a plain scatter
        points = torch.stack(
            (self._bottom_row_cells + self.paddle_x, self.ball_y * 10 + self.ball_x, self.last_y * 10 + self.last_x),
            dim=1,
        )
        canvas.scatter_(1, points * 4 + self._point_channels, self._ones_3)
        return canvas_to_observation(canvas, 4)
