"""MinAtar Freeway, batched (rules of ``minatar/environments/freeway.py``, MinAtar 1.0.15).

The chicken starts on the bottom row and may move up or down once every 3 frames; reaching the top row gives
+1, sends it back to the bottom and re-draws every car's speed and direction. Eight cars (one per row 1..8)
move horizontally, wrapping at the edges, car ``k`` once every ``|speed_k|`` + 1 frames; a car hitting the
chicken sends it back to the bottom. The episode ends after 2500 frames: that limit is part of the reference
game and is reported as ``terminated`` (not ``truncated``), as the reference does. Channels: chicken, car,
speed1..speed5 (the trail behind each car, in the channel of its speed). Random draws: 8 speeds in ``1..5``
then 8 uniforms for the directions, at reset and at every crossing.
"""

from __future__ import annotations

import torch

from emphatic_rl.envs.minatar.common import DOWN, UP, MinAtarEnv, canvas_to_observation, draw, new_canvas
from emphatic_rl.envs.registry import register_env

PLAYER_SPEED = 3
TIME_LIMIT = 2500
NUM_CARS = 8


@register_env("minatar-freeway")
class MinAtarFreeway(MinAtarEnv):
    """MinAtar Freeway, ``bool[N, 10, 10, 7]`` observations, 6 actions (minimal: noop, up, down)."""

    name = "minatar-freeway"
    game = "freeway"
    channels = ("chicken", "car", "speed1", "speed2", "speed3", "speed4", "speed5")
    minimal_actions = ("n", "u", "d")
    game_state_names = ("chicken_y", "move_timer", "terminate_timer", "car_x", "car_timer", "car_speed")
    kernel_module = "emphatic_rl.envs.minatar.kernels.freeway"

    # ``int64[N]`` state set by the loop in ``_allocate_state`` (declared here for the type checker)
    chicken_y: torch.Tensor
    move_timer: torch.Tensor
    terminate_timer: torch.Tensor

    def _allocate_state(self) -> None:
        n, dev = self.num_envs, self.device
        for name in ("chicken_y", "move_timer", "terminate_timer"):
            setattr(self, name, torch.zeros(n, dtype=torch.int64, device=dev))
        #: ``int64[N, 8]``: car ``k`` drives in row ``k + 1``; ``car_speed`` is signed (> 0: to the right).
        self.car_x = torch.zeros(n, NUM_CARS, dtype=torch.int64, device=dev)
        self.car_timer = torch.zeros(n, NUM_CARS, dtype=torch.int64, device=dev)
        self.car_speed = torch.ones(n, NUM_CARS, dtype=torch.int64, device=dev)
        self._car_rows = torch.arange(1, NUM_CARS + 1, device=dev).repeat(n, 1)  # contiguous: stride-0 is slow
        self._car_row_cells = self._car_rows * 10
        self._chicken_column_cell = torch.full((n, 1), 4, dtype=torch.int64, device=dev)
        # channel of each drawn point: chicken (0), the 8 cars (1), then the 8 trails (1 + speed, set per step)
        self._point_channels = torch.ones(n, 1 + 2 * NUM_CARS, dtype=torch.int64, device=dev)
        self._point_channels[:, 0] = 0

    def _draw_car_speeds(self, mask: torch.Tensor) -> torch.Tensor:
        """Signed speeds ``int64[N, 8]`` as the reference draws them (magnitudes first, then directions)."""
        magnitude = self.random_source.integers(1, 6, (self.num_envs, NUM_CARS), mask)
        direction_draw = self.random_source.uniform((self.num_envs, NUM_CARS), mask)
        # The reference takes sign(u - 0.5); u == 0.5 exactly (probability 2**-53) is treated as +1 here.
        return torch.where(direction_draw < 0.5, -magnitude, magnitude)

    def _reset_where_torch(self, mask: torch.Tensor) -> None:
        speed = self._draw_car_speeds(mask)
        cars = mask.unsqueeze(1)
        self.car_speed = torch.where(cars, speed, self.car_speed)
        self.car_timer = torch.where(cars, speed.abs(), self.car_timer)
        self.car_x = torch.where(cars, 0, self.car_x)
        self.chicken_y = torch.where(mask, 9, self.chicken_y)
        self.move_timer = torch.where(mask, PLAYER_SPEED, self.move_timer)
        self.terminate_timer = torch.where(mask, TIME_LIMIT, self.terminate_timer)

    def _game_step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        can_move = self.move_timer == 0
        up = can_move & (action == UP)
        down = can_move & (action == DOWN)
        y = torch.where(up, (self.chicken_y - 1).clamp(min=0), self.chicken_y)
        y = torch.where(down, (y + 1).clamp(max=9), y)
        move_timer = torch.where(up | down, PLAYER_SPEED, self.move_timer)

        crossed = y == 0
        speed = self._draw_car_speeds(crossed)
        cars = crossed.unsqueeze(1)
        self.car_speed = torch.where(cars, speed, self.car_speed)
        car_timer = torch.where(cars, speed.abs(), self.car_timer)
        y = torch.where(crossed, 9, y)

        # Only the car in the chicken's row can hit it, before or after that car moves.
        moves = car_timer == 0
        car_x_before = self.car_x
        car_x = torch.where(moves, (car_x_before + self.car_speed.sign()) % 10, car_x_before)
        self.car_timer = torch.where(moves, self.car_speed.abs(), car_timer - 1)
        car_in_row = (y - 1).clamp(0, NUM_CARS - 1).unsqueeze(1)  # rows 1..8 hold cars 0..7
        in_car_row = (y >= 1) & (y <= NUM_CARS)
        before = car_x_before.gather(1, car_in_row).squeeze(1)
        after = car_x.gather(1, car_in_row).squeeze(1)
        hit = in_car_row & ((before == 4) | (after == 4))
        self.car_x = car_x
        self.chicken_y = torch.where(hit, 9, y)

        self.move_timer = move_timer - (move_timer > 0).long()
        self.terminate_timer = self.terminate_timer - 1
        return crossed, self.terminate_timer < 0

    def _observe_torch(self) -> torch.Tensor:
        back_x = (self.car_x + 10 - self.car_speed.sign()) % 10  # the trail: one cell behind each car
        chicken = self.chicken_y.unsqueeze(1) * 10 + self._chicken_column_cell
        cells = torch.cat((chicken, self._car_row_cells + self.car_x, self._car_row_cells + back_x), dim=1)
        channels = self._point_channels.clone()
        channels[:, 1 + NUM_CARS :] += self.car_speed.abs()
        canvas = new_canvas(self.num_envs, 7, self.device)
        draw(canvas, cells, channels, 7)
        return canvas_to_observation(canvas, 7)
