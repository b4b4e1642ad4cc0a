"""MinAtar Asterix, batched (rules of ``minatar/environments/asterix.py``, MinAtar 1.0.15).

The player moves in the 4 directions (rows 1..8). Enemies and gold spawn at the left or right edge in one of 8
slots (slot ``k`` is row ``k + 1``, one entity per slot) and move horizontally; picking up gold gives +1,
touching an enemy ends the episode. With difficulty ramping, every 100 frames (101 after the first) the spawn
interval shrinks by one, and every second ramp the move interval too. Channels: player, enemy, trail, gold.
Random draws per spawn: a uniform for the side, a uniform for gold (< 1/3), then the free slot index (only
when a slot is free). Reset draws nothing.
"""

from __future__ import annotations

import torch

from emphatic_rl.envs.minatar.common import (
    DOWN,
    LEFT,
    RIGHT,
    UP,
    MinAtarEnv,
    canvas_to_observation,
    draw,
    new_canvas,
)
from emphatic_rl.envs.registry import register_env

RAMP_INTERVAL = 100
INIT_SPAWN_SPEED = 10
INIT_MOVE_INTERVAL = 5
NUM_SLOTS = 8


@register_env("minatar-asterix")
class MinAtarAsterix(MinAtarEnv):
    """MinAtar Asterix: ``bool[N, 10, 10, 4]`` observations, 6 actions (minimal: n, l, u, r, d)."""

    name = "minatar-asterix"
    game = "asterix"
    channels = ("player", "enemy", "trail", "gold")
    minimal_actions = ("n", "l", "u", "r", "d")
    kernel_module = "emphatic_rl.envs.minatar.kernels.asterix"
    game_state_names = (
        "player_x",
        "player_y",
        "entity_x",
        "entity_alive",
        "entity_right",
        "entity_gold",
        "spawn_speed",
        "spawn_timer",
        "move_speed",
        "move_timer",
        "ramp_timer",
        "ramp_index",
    )

    # ``int64[N]`` state set by the loop in ``_allocate_state`` (declared here for the type checker)
    player_x: torch.Tensor
    player_y: torch.Tensor
    spawn_speed: torch.Tensor
    spawn_timer: torch.Tensor
    move_speed: torch.Tensor
    move_timer: torch.Tensor

    def _allocate_state(self) -> None:
        n, dev = self.num_envs, self.device
        for name in ("player_x", "player_y", "spawn_speed", "spawn_timer", "move_speed", "move_timer"):
            setattr(self, name, torch.zeros(n, dtype=torch.int64, device=dev))
        self.ramp_timer = torch.zeros(n, dtype=torch.int64, device=dev)
        self.ramp_index = torch.zeros(n, dtype=torch.int64, device=dev)
        #: per slot ``[N, 8]``: column, occupied, moving right, is gold.
        self.entity_x = torch.zeros(n, NUM_SLOTS, dtype=torch.int64, device=dev)
        self.entity_alive = torch.zeros(n, NUM_SLOTS, dtype=torch.bool, device=dev)
        self.entity_right = torch.zeros(n, NUM_SLOTS, dtype=torch.bool, device=dev)
        self.entity_gold = torch.zeros(n, NUM_SLOTS, dtype=torch.bool, device=dev)
        # contiguous constants: stride-0 (expanded) operands take slow paths on CPU
        self._slot_rows = torch.arange(1, NUM_SLOTS + 1, device=dev).repeat(n, 1)
        self._slot_row_cells = self._slot_rows * 10
        self._trail_channel = torch.full((n, NUM_SLOTS), 2, dtype=torch.int64, device=dev)
        self._zero_channel = torch.zeros(n, 1, dtype=torch.int64, device=dev)
        self._player_on = torch.ones(n, 1, dtype=torch.bool, device=dev)

    def _reset_where_torch(self, mask: torch.Tensor) -> None:
        self.player_x = torch.where(mask, 5, self.player_x)
        self.player_y = torch.where(mask, 5, self.player_y)
        self.entity_alive = self.entity_alive & ~mask.unsqueeze(1)
        self.spawn_speed = torch.where(mask, INIT_SPAWN_SPEED, self.spawn_speed)
        self.spawn_timer = torch.where(mask, INIT_SPAWN_SPEED, self.spawn_timer)
        self.move_speed = torch.where(mask, INIT_MOVE_INTERVAL, self.move_speed)
        self.move_timer = torch.where(mask, INIT_MOVE_INTERVAL, self.move_timer)
        self.ramp_timer = torch.where(mask, RAMP_INTERVAL, self.ramp_timer)
        self.ramp_index = torch.where(mask, 0, self.ramp_index)

    def _spawn(self, spawning: torch.Tensor) -> None:
        n = self.num_envs
        from_left = self.random_source.uniform((n,), spawning) < 0.5
        gold = self.random_source.uniform((n,), spawning) < 1 / 3
        free = ~self.entity_alive
        num_free = free.sum(1)
        placed = spawning & (num_free > 0)
        choice = self.random_source.integers(0, num_free, (n,), placed)
        # the chosen slot is the (choice + 1)-th free slot in index order
        slot = free & (free.cumsum(1) == (choice + 1).unsqueeze(1)) & placed.unsqueeze(1)
        self.entity_alive = self.entity_alive | slot
        self.entity_x = torch.where(slot, torch.where(from_left, 0, 9).unsqueeze(1), self.entity_x)
        self.entity_right = torch.where(slot, from_left.unsqueeze(1), self.entity_right)
        self.entity_gold = torch.where(slot, gold.unsqueeze(1), self.entity_gold)

    def _game_step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spawning = self.spawn_timer == 0
        self._spawn(spawning)
        spawn_timer = torch.where(spawning, self.spawn_speed, self.spawn_timer)

        x = torch.where(action == LEFT, (self.player_x - 1).clamp(min=0), self.player_x)
        x = torch.where(action == RIGHT, (x + 1).clamp(max=9), x)
        y = torch.where(action == UP, (self.player_y - 1).clamp(min=1), self.player_y)
        y = torch.where(action == DOWN, (y + 1).clamp(max=8), y)
        self.player_x, self.player_y = x, y
        in_player_row = self._slot_rows == y.unsqueeze(1)

        # contact before the entities move
        alive = self.entity_alive
        touch = alive & in_player_row & (self.entity_x == x.unsqueeze(1))
        picked = touch & self.entity_gold
        terminal = (touch & ~self.entity_gold).any(1)
        alive = alive & ~picked
        reward = picked.sum(1)

        # entities move every move_speed + 1 frames; those leaving the screen vanish; contact again
        moving = self.move_timer == 0
        move_timer = torch.where(moving, self.move_speed, self.move_timer)
        step = torch.where(self.entity_right, 1, -1)
        entity_x = torch.where(moving.unsqueeze(1) & alive, self.entity_x + step, self.entity_x)
        alive = alive & (entity_x >= 0) & (entity_x <= 9)
        touch = moving.unsqueeze(1) & alive & in_player_row & (entity_x == x.unsqueeze(1))
        picked = touch & self.entity_gold
        terminal = terminal | (touch & ~self.entity_gold).any(1)
        self.entity_alive = alive & ~picked
        self.entity_x = entity_x
        reward = reward + picked.sum(1)

        self.spawn_timer = spawn_timer - 1
        self.move_timer = move_timer - 1

        if self.ramping:
            ramps = (self.spawn_speed > 1) | (self.move_speed > 1)
            counting = ramps & (self.ramp_timer >= 0)
            stepping = ramps & ~counting
            faster_moves = stepping & (self.move_speed > 1) & (self.ramp_index % 2 == 1)
            self.move_speed = self.move_speed - faster_moves.long()
            self.spawn_speed = self.spawn_speed - (stepping & (self.spawn_speed > 1)).long()
            self.ramp_index = self.ramp_index + stepping.long()
            self.ramp_timer = torch.where(stepping, RAMP_INTERVAL, self.ramp_timer - counting.long())
        return reward, terminal

    def _observe_torch(self) -> torch.Tensor:
        back_x = torch.where(self.entity_right, self.entity_x - 1, self.entity_x + 1)
        trail_shown = self.entity_alive & (back_x >= 0) & (back_x <= 9)
        player = (self.player_y * 10 + self.player_x).unsqueeze(1)
        cells = torch.cat((player, self._slot_row_cells + self.entity_x, self._slot_row_cells + back_x.clamp(0, 9)), 1)
        entity_channel = 1 + 2 * self.entity_gold.long()  # enemy 1, gold 3
        channels = torch.cat((self._zero_channel, entity_channel, self._trail_channel), 1)
        on = torch.cat((self._player_on, self.entity_alive, trail_shown), 1)
        canvas = new_canvas(self.num_envs, 4, self.device)
        draw(canvas, cells, channels, 4, on)
        return canvas_to_observation(canvas, 4)
