"""MinAtar Space Invaders, batched (rules of ``minatar/environments/space_invaders.py``, MinAtar 1.0.15).

The cannon on the bottom row moves left and right and fires upward (cool-down 5 frames); +1 per alien shot.
The 4x6 block of aliens moves sideways, stepping down and turning at the edges, moving once every ``min(aliens
left, move interval)`` + 1 frames, so it speeds up as aliens die; the alien nearest the cannon (by column
distance, ties to the left) fires every 11 frames. A cleared wave respawns, and with difficulty ramping the
move interval shrinks by one per wave (12 down to 6). The episode ends when an alien or an enemy bullet
reaches the cannon, or the aliens step down from the bottom row. Channels: cannon, alien, alien_left,
alien_right, friendly_bullet, enemy_bullet. The game draws no random numbers (only sticky actions do).
"""

from __future__ import annotations

import torch

from emphatic_rl.envs.minatar.common import (
    FIRE,
    LEFT,
    RIGHT,
    MinAtarEnv,
    canvas_to_observation,
    gather_cell,
    new_canvas,
)
from emphatic_rl.envs.registry import register_env

SHOT_COOL_DOWN = 5
ENEMY_MOVE_INTERVAL = 12
ENEMY_SHOT_INTERVAL = 10


@register_env("minatar-space-invaders")
class MinAtarSpaceInvaders(MinAtarEnv):
    """MinAtar Space Invaders: ``bool[N, 10, 10, 6]`` observations, 6 actions (minimal: n, l, r, f)."""

    name = "minatar-space-invaders"
    game = "space_invaders"
    kernel_module = "emphatic_rl.envs.minatar.kernels.space_invaders"
    channels = ("cannon", "alien", "alien_left", "alien_right", "friendly_bullet", "enemy_bullet")
    minimal_actions = ("n", "l", "r", "f")
    game_state_names = (
        "cannon_x",
        "aliens",
        "friendly_bullets",
        "enemy_bullets",
        "alien_dir",
        "move_interval",
        "alien_move_timer",
        "alien_shot_timer",
        "shot_timer",
        "ramp_index",
    )

    # ``int64[N]`` state set by the loop in ``_allocate_state`` (declared here for the type checker)
    cannon_x: torch.Tensor
    alien_dir: torch.Tensor
    move_interval: torch.Tensor
    alien_move_timer: torch.Tensor
    alien_shot_timer: torch.Tensor

    def _allocate_state(self) -> None:
        n, dev = self.num_envs, self.device
        for name in ("cannon_x", "alien_dir", "move_interval", "alien_move_timer", "alien_shot_timer"):
            setattr(self, name, torch.zeros(n, dtype=torch.int64, device=dev))
        self.shot_timer = torch.zeros(n, dtype=torch.int64, device=dev)
        self.ramp_index = torch.zeros(n, dtype=torch.int64, device=dev)
        #: ``uint8[N, 10, 10]`` maps (row, column), 1 where occupied. uint8 rather than bool: per-copy selects
        #: are done as arithmetic (``map * keep``), which is far cheaper than boolean ``where`` on CPU.
        self.aliens = torch.zeros(n, 10, 10, dtype=torch.uint8, device=dev)
        self.friendly_bullets = torch.zeros(n, 10, 10, dtype=torch.uint8, device=dev)
        self.enemy_bullets = torch.zeros(n, 10, 10, dtype=torch.uint8, device=dev)
        self._wave = torch.zeros(10, 10, dtype=torch.uint8, device=dev)
        self._wave[0:4, 2:8] = 1
        self._columns = torch.arange(10, device=dev)
        self._rows = torch.arange(10, device=dev)
        self._row_cells = self._rows * 10
        self._one_cell = torch.eye(10, dtype=torch.uint8, device=dev)
        # canvas indices of the 5 map channels (alien, alien_left, alien_right, friendly, enemy), contiguous
        self._map_index = (torch.arange(100, device=dev) * 6 + torch.arange(1, 6, device=dev).view(5, 1)).view(1, 500)
        self._map_index = self._map_index.repeat(n, 1)

    def _reset_where_torch(self, mask: torch.Tensor) -> None:
        n = self.num_envs
        keep = (~mask).to(torch.uint8).view(n, 1, 1)
        self.cannon_x = torch.where(mask, 5, self.cannon_x)
        self.friendly_bullets = self.friendly_bullets * keep
        self.enemy_bullets = self.enemy_bullets * keep
        self.aliens = self.aliens * keep + self._wave * (1 - keep)
        self.alien_dir = torch.where(mask, -1, self.alien_dir)
        self.move_interval = torch.where(mask, ENEMY_MOVE_INTERVAL, self.move_interval)
        self.alien_move_timer = torch.where(mask, ENEMY_MOVE_INTERVAL, self.alien_move_timer)
        self.alien_shot_timer = torch.where(mask, ENEMY_SHOT_INTERVAL, self.alien_shot_timer)
        self.ramp_index = torch.where(mask, 0, self.ramp_index)
        self.shot_timer = torch.where(mask, 0, self.shot_timer)

    def _game_step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.num_envs
        u8 = torch.uint8
        fires = (action == FIRE) & (self.shot_timer == 0)
        cannon_cell = self._one_cell[self.cannon_x]  # [N, 10] bottom-row cell of the cannon before moving
        friendly = self.friendly_bullets.clone()
        friendly[:, 9] |= cannon_cell * fires.to(u8).unsqueeze(1)
        shot_timer = torch.where(fires, SHOT_COOL_DOWN, self.shot_timer)
        x = torch.where(action == LEFT, (self.cannon_x - 1).clamp(min=0), self.cannon_x)
        x = torch.where(action == RIGHT, (x + 1).clamp(max=9), x)
        bottom = self._ints(9)

        # bullets: friendly move up, enemy move down (leaving the screen)
        friendly = torch.cat((friendly[:, 1:], torch.zeros_like(friendly[:, :1])), dim=1)
        enemy = torch.cat((torch.zeros_like(self.enemy_bullets[:, :1]), self.enemy_bullets[:, :9]), dim=1)
        terminal = gather_cell(enemy, bottom, x).bool()

        aliens = self.aliens
        terminal = terminal | gather_cell(aliens, bottom, x).bool()
        moving = self.alien_move_timer == 0
        count = aliens.view(n, 100).sum(1)
        move_timer = torch.where(moving, torch.minimum(count, self.move_interval), self.alien_move_timer)
        at_left = aliens[:, :, 0].amax(1) > 0
        at_right = aliens[:, :, 9].amax(1) > 0
        turns = ((at_left & (self.alien_dir < 0)) | (at_right & (self.alien_dir > 0))) & moving
        sideways = moving & ~turns
        terminal = terminal | (turns & (aliens[:, 9].amax(1) > 0))
        to_right = (self.alien_dir > 0).to(u8).view(n, 1, 1)
        stepped_side = torch.roll(aliens, 1, dims=2) * to_right + torch.roll(aliens, -1, dims=2) * (1 - to_right)
        down = turns.to(u8).view(n, 1, 1)
        side = sideways.to(u8).view(n, 1, 1)
        aliens = aliens * (1 - down - side) + torch.roll(aliens, 1, dims=1) * down + stepped_side * side
        self.alien_dir = torch.where(turns, -self.alien_dir, self.alien_dir)
        terminal = terminal | (moving & gather_cell(aliens, bottom, x).bool())

        # the alien nearest the cannon fires: nearest occupied column (ties to the left), lowest alien in it
        shooting = self.alien_shot_timer == 0
        alien_shot_timer = torch.where(shooting, ENEMY_SHOT_INTERVAL, self.alien_shot_timer)
        occupied = aliens.amax(1) > 0  # [N, 10] columns
        distance = (self._columns - x.unsqueeze(1)).abs() * 10 + self._columns
        distance = torch.where(occupied, distance, 1000)
        column = distance.argmin(1)
        in_column = aliens.view(n, 100).gather(1, self._row_cells + column.unsqueeze(1))  # [N, 10] rows
        row = torch.where(in_column > 0, self._rows, -1).amax(1)
        shooter = shooting & occupied.any(1)
        shot_cell = (row.clamp(min=0) * 10 + column).unsqueeze(1)
        enemy = enemy.view(n, 100).scatter_reduce(1, shot_cell, shooter.to(u8).unsqueeze(1), "amax").view(n, 10, 10)

        kills = aliens & friendly
        reward = kills.view(n, 100).sum(1)
        aliens = aliens - kills
        friendly = friendly - kills

        self.shot_timer = shot_timer - (shot_timer > 0).long()
        self.alien_move_timer = move_timer - 1
        self.alien_shot_timer = alien_shot_timer - 1
        cleared = aliens.view(n, 100).amax(1) == 0
        if self.ramping:
            faster = cleared & (self.move_interval > 6)
            self.move_interval = self.move_interval - faster.long()
            self.ramp_index = self.ramp_index + faster.long()
        self.aliens = aliens + cleared.to(u8).view(n, 1, 1) * self._wave  # cleared: the map is empty
        self.friendly_bullets = friendly
        self.enemy_bullets = enemy
        self.cannon_x = x
        return reward, terminal

    def _observe_torch(self) -> torch.Tensor:
        n = self.num_envs
        aliens = self.aliens.view(n, 100)
        to_left = (self.alien_dir < 0).to(torch.uint8).unsqueeze(1)
        maps = torch.cat(
            (
                aliens,
                aliens * to_left,
                aliens * (1 - to_left),
                self.friendly_bullets.view(n, 100),
                self.enemy_bullets.view(n, 100),
            ),
            dim=1,
        )
        canvas = new_canvas(n, 6, self.device)
        canvas.scatter_(1, self._map_index, maps)  # distinct cells: a plain scatter
        canvas[:, 90 * 6 :: 6] = self._one_cell[self.cannon_x]
        return canvas_to_observation(canvas, 6)
