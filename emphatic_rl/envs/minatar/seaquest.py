"""MinAtar Seaquest, batched (rules of ``minatar/environments/seaquest.py``, MinAtar 1.0.15).

The player's submarine (front and back cell, rows 0..8) fires bullets sideways, shoots fish and enemy subs (+1
each), picks up divers (at most 6) and must surface (row 0) with at least one diver before its oxygen (200
frames) runs out; surfacing removes one diver (or all 6 for a bonus of ``oxygen * 10 // 200``), refills the
oxygen and, with difficulty ramping, raises the spawn rate and enemy speed. The episode ends when an enemy or
enemy bullet touches the sub, the oxygen runs out, or the sub surfaces without divers. Channels: sub_front,
sub_back, friendly_bullet, trail, enemy_bullet, enemy_fish, enemy_sub, oxygen_gauge, diver_gauge, diver.

Ordered lists. The reference keeps Python lists (friendly bullets, enemy bullets, fish, subs, divers) that it
walks in reverse while removing entries with ``list.remove`` (which removes the *first equal* entry, not
necessarily the one being visited) and appending; the outcome depends on that order. Each list here is a
:class:`SlotList`: ``int64[N, K, F]`` entries kept compact in list order plus a length per copy; the loops run
over slot indices (not over copies) with the same reverse order, first-equal removal and left shifts, so the
results are the reference's exactly, including its quirks (a diver count of -1 after a 6-diver surfacing,
bullets visited twice after an equal entry is removed). Capacities are upper bounds of the list lengths
(derived in :class:`MinAtarSeaquest`); ``overflowed`` records a copy that would have exceeded one.

Random draws per enemy spawn: uniform (side), uniform (sub < 1/3), integer row in ``1..8``; per diver spawn:
uniform (side), integer row. Reset draws nothing.
"""

from __future__ import annotations

import torch

from emphatic_rl.envs.minatar.common import (
    DOWN,
    FIRE,
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
MAX_OXYGEN = 200
INIT_SPAWN_SPEED = 20
DIVER_SPAWN_SPEED = 30
INIT_MOVE_INTERVAL = 5
SHOT_COOL_DOWN = 5
ENEMY_SHOT_INTERVAL = 10
DIVER_MOVE_INTERVAL = 5

# entry fields: x, y, moving right (0/1), then move timer (fish, subs, divers) and shot timer (subs)
X, Y, RIGHTWARD, MOVE_TIMER, SHOT_TIMER = range(5)


class SlotList:
    """A batch of ordered lists: ``data: int64[N, K, F]`` with entries ``0 .. length[n] - 1`` in list order."""

    def __init__(self, num_envs: int, capacity: int, fields: int, device: torch.device) -> None:
        self.data = torch.zeros(num_envs, capacity, fields, dtype=torch.int64, device=device)
        self.length = torch.zeros(num_envs, dtype=torch.int64, device=device)
        self.slots = torch.arange(capacity, device=device)
        self.capacity = capacity

    def valid(self) -> torch.Tensor:
        """``bool[N, K]``: the slots that hold an entry."""
        return self.slots < self.length.unsqueeze(1)

    def clear(self, mask: torch.Tensor) -> None:
        self.length = torch.where(mask, 0, self.length)

    def append(self, entry: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Append ``entry [N, F]`` where ``mask``; returns ``bool[N]``: copies whose list was already full."""
        full = mask & (self.length >= self.capacity)
        mask = mask & ~full
        at = (self.slots == self.length.unsqueeze(1)) & mask.unsqueeze(1)
        self.data = torch.where(at.unsqueeze(2), entry.unsqueeze(1), self.data)
        self.length = self.length + mask.long()
        return full

    def remove_at(self, index: torch.Tensor, mask: torch.Tensor) -> None:
        """Remove entry ``index[n]`` (shifting the later ones left) where ``mask``."""
        source = (self.slots + (self.slots >= index.unsqueeze(1)).long()).clamp(max=self.capacity - 1)
        shifted = self.data.gather(1, source.unsqueeze(2).expand_as(self.data))
        self.data = torch.where(mask.view(-1, 1, 1), shifted, self.data)
        self.length = self.length - mask.long()

    def first_match(self, entry: torch.Tensor, fields: int) -> tuple[torch.Tensor, torch.Tensor]:
        """First entry whose leading ``fields`` fields equal ``entry[:, :fields]``: ``(found bool[N], index)``."""
        equal = (self.data[:, :, :fields] == entry[:, None, :fields]).all(2) & self.valid()
        return equal.any(1), equal.long().argmax(1)

    def remove_first_equal(self, entry: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``list.remove(entry)`` where ``mask`` (the entry is in the list); returns the removed index."""
        _, index = self.first_match(entry, entry.shape[1])
        self.remove_at(index, mask)
        return index


@register_env("minatar-seaquest")
class MinAtarSeaquest(MinAtarEnv):
    """MinAtar Seaquest: ``bool[N, 10, 10, 10]`` observations, 6 actions (minimal: all 6).

    List capacities (upper bounds of the reference's list lengths): a friendly bullet lives at most 10 frames
    and one is fired at most every 5 frames (3 at once); a diver lives at least 60 frames and one spawns every
    30 (at most 3); an enemy lives at most 29 frames at the fastest enemy speed and at most one spawns per frame
    (29 fish or subs); each sub fires at most once in 11 frames and a bullet lives at most 10 frames, so the
    enemy bullets come from at most 40 distinct subs alive in an 11-frame window.
    """

    name = "minatar-seaquest"
    game = "seaquest"
    channels = (
        "sub_front",
        "sub_back",
        "friendly_bullet",
        "trail",
        "enemy_bullet",
        "enemy_fish",
        "enemy_sub",
        "oxygen_guage",
        "diver_guage",
        "diver",
    )
    minimal_actions = ("n", "l", "u", "r", "d", "f")
    kernel_module = "emphatic_rl.envs.minatar.kernels.seaquest"
    capacities = {"friendly_bullets": 4, "enemy_bullets": 48, "fish": 32, "subs": 32, "divers": 4}
    list_fields = {"friendly_bullets": 3, "enemy_bullets": 3, "fish": 4, "subs": 5, "divers": 4}
    scalar_names = (
        "oxygen",
        "diver_count",
        "sub_x",
        "sub_y",
        "sub_right",
        "enemy_spawn_speed",
        "enemy_spawn_timer",
        "diver_spawn_timer",
        "move_speed",
        "ramp_index",
        "shot_timer",
        "surfaced",
        "overflowed",
    )

    game_state_names = scalar_names + tuple(f"{name}_{part}" for name in capacities for part in ("data", "length"))

    # ``int64[N]`` state set by the loops in ``_allocate_state`` and ``_reset_where_torch`` (declared for mypy)
    oxygen: torch.Tensor
    diver_count: torch.Tensor
    sub_x: torch.Tensor
    sub_y: torch.Tensor
    enemy_spawn_speed: torch.Tensor
    enemy_spawn_timer: torch.Tensor
    diver_spawn_timer: torch.Tensor
    move_speed: torch.Tensor
    ramp_index: torch.Tensor
    shot_timer: torch.Tensor

    def __getattr__(self, name: str) -> torch.Tensor:
        # ``<list>_data`` / ``<list>_length`` are the SlotList tensors (named for state_dict / load_state_dict)
        lists = self.__dict__.get("lists", {})
        for list_name, slot_list in lists.items():
            if name == f"{list_name}_data":
                return slot_list.data
            if name == f"{list_name}_length":
                return slot_list.length
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _allocate_state(self) -> None:
        n, dev = self.num_envs, self.device
        for name in self.scalar_names:
            setattr(self, name, torch.zeros(n, dtype=torch.int64, device=dev))
        self.sub_right = torch.zeros(n, dtype=torch.bool, device=dev)
        self.surfaced = torch.zeros(n, dtype=torch.bool, device=dev)
        #: ``bool[N]``: a list of this copy would have exceeded its capacity (never seen; see the class doc).
        self.overflowed = torch.zeros(n, dtype=torch.bool, device=dev)
        self.lists = {
            name: SlotList(n, capacity, self.list_fields[name], dev) for name, capacity in self.capacities.items()
        }
        self._gauge_cells = torch.arange(90, 100, device=dev).repeat(n, 1)
        self._gauge_columns = torch.arange(10, device=dev)

    def _reset_where_torch(self, mask: torch.Tensor) -> None:
        values = {
            "oxygen": MAX_OXYGEN,
            "diver_count": 0,
            "sub_x": 5,
            "sub_y": 0,
            "enemy_spawn_speed": INIT_SPAWN_SPEED,
            "enemy_spawn_timer": INIT_SPAWN_SPEED,
            "diver_spawn_timer": DIVER_SPAWN_SPEED,
            "move_speed": INIT_MOVE_INTERVAL,
            "ramp_index": 0,
            "shot_timer": 0,
        }
        for name, value in values.items():
            setattr(self, name, torch.where(mask, value, getattr(self, name)))
        self.sub_right = self.sub_right & ~mask
        self.surfaced = self.surfaced | mask
        self.overflowed = self.overflowed & ~mask
        for slot_list in self.lists.values():
            slot_list.clear(mask)

    # ------------------------------------------------------------------ the frame
    def _spawn(self) -> None:
        n = self.num_envs
        lists = self.lists
        spawning = self.enemy_spawn_timer == 0
        from_left = self.random_source.uniform((n,), spawning) < 0.5
        is_sub = self.random_source.uniform((n,), spawning) < 1 / 3
        row = self.random_source.integers(1, 9, (n,), spawning)
        blocked = torch.zeros(n, dtype=torch.bool, device=self.device)
        for name in ("subs", "fish"):  # no spawn in a row with an enemy moving the other way
            enemies = lists[name]
            clash = (enemies.data[:, :, Y] == row.unsqueeze(1)) & (
                enemies.data[:, :, RIGHTWARD] != from_left.long().unsqueeze(1)
            )
            blocked = blocked | (clash & enemies.valid()).any(1)
        placed = spawning & ~blocked
        x = torch.where(from_left, 0, 9)
        right = from_left.long()
        speed = self.move_speed
        sub = torch.stack((x, row, right, speed, torch.full_like(x, ENEMY_SHOT_INTERVAL)), dim=1)
        overflow = lists["subs"].append(sub, placed & is_sub)
        overflow |= lists["fish"].append(sub[:, :4], placed & ~is_sub)
        self.enemy_spawn_timer = torch.where(spawning, self.enemy_spawn_speed, self.enemy_spawn_timer)

        diving = self.diver_spawn_timer == 0
        from_left = self.random_source.uniform((n,), diving) < 0.5
        row = self.random_source.integers(1, 9, (n,), diving)
        x = torch.where(from_left, 0, 9)
        diver = torch.stack((x, row, from_left.long(), torch.full_like(x, DIVER_MOVE_INTERVAL)), dim=1)
        overflow |= lists["divers"].append(diver, diving)
        self.diver_spawn_timer = torch.where(diving, DIVER_SPAWN_SPEED, self.diver_spawn_timer)
        self.overflowed = self.overflowed | overflow

    def _loop_length(self, slot_list: SlotList) -> int:
        """How many reverse-loop iterations the longest list in the batch needs (one host sync)."""
        return int(slot_list.length.max())

    def _game_step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.num_envs
        lists = self.lists
        reward = torch.zeros(n, dtype=torch.int64, device=self.device)
        terminal = torch.zeros(n, dtype=torch.bool, device=self.device)
        self._spawn()

        # the player's action
        fires = (action == FIRE) & (self.shot_timer == 0)
        bullet = torch.stack((self.sub_x, self.sub_y, self.sub_right.long()), dim=1)
        self.overflowed |= lists["friendly_bullets"].append(bullet, fires)
        self.shot_timer = torch.where(fires, SHOT_COOL_DOWN, self.shot_timer)
        left, right = action == LEFT, action == RIGHT
        self.sub_x = torch.where(left, (self.sub_x - 1).clamp(min=0), self.sub_x)
        self.sub_x = torch.where(right, (self.sub_x + 1).clamp(max=9), self.sub_x)
        self.sub_right = torch.where(left, False, torch.where(right, True, self.sub_right))
        self.sub_y = torch.where(action == UP, (self.sub_y - 1).clamp(min=0), self.sub_y)
        self.sub_y = torch.where(action == DOWN, (self.sub_y + 1).clamp(max=8), self.sub_y)

        def at_player(entry: torch.Tensor) -> torch.Tensor:
            return (entry[:, X] == self.sub_x) & (entry[:, Y] == self.sub_y)

        def step_x(entry: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            moved = entry.clone()
            moved[:, X] += torch.where(entry[:, RIGHTWARD] == 1, 1, -1) * mask.long()
            return moved

        def outside(entry: torch.Tensor) -> torch.Tensor:
            return (entry[:, X] < 0) | (entry[:, X] > 9)

        # friendly bullets (reverse order): move, leave the screen, or hit the first fish / sub on their cell
        bullets, fish, subs = lists["friendly_bullets"], lists["fish"], lists["subs"]
        for i in reversed(range(self._loop_length(bullets))):
            visiting = bullets.length > i
            entry = step_x(bullets.data[:, i], visiting)
            bullets.data[:, i] = entry
            gone = visiting & outside(entry)
            bullets.remove_first_equal(entry, gone)
            live = visiting & ~gone
            hit_fish, fish_index = fish.first_match(entry, 2)
            hit_fish = hit_fish & live
            fish.remove_at(fish_index, hit_fish)
            hit_sub, sub_index = subs.first_match(entry, 2)
            hit_sub = hit_sub & live & ~hit_fish
            subs.remove_at(sub_index, hit_sub)
            bullets.remove_first_equal(entry, hit_fish | hit_sub)
            reward = reward + (hit_fish | hit_sub).long()

        # divers (reverse order): picked up (at most 6 on board), move every 6 frames, leave the screen
        divers = lists["divers"]
        for i in reversed(range(self._loop_length(divers))):
            visiting = divers.length > i
            entry = divers.data[:, i]
            picked = visiting & at_player(entry) & (self.diver_count < 6)
            moving = visiting & ~picked & (entry[:, MOVE_TIMER] == 0)
            waiting = visiting & ~picked & ~moving
            entry = step_x(entry, moving)
            entry[:, MOVE_TIMER] = torch.where(moving, DIVER_MOVE_INTERVAL, entry[:, MOVE_TIMER] - waiting.long())
            divers.data[:, i] = entry
            gone = moving & outside(entry)
            picked_after_move = moving & ~gone & at_player(entry) & (self.diver_count < 6)
            picked = picked | picked_after_move
            divers.remove_first_equal(entry, gone | picked)
            self.diver_count = self.diver_count + picked.long()

        # enemy subs (reverse order): touch, move, leave, touch, get shot by the first bullet on their cell; fire
        enemy_bullets = lists["enemy_bullets"]
        for i in reversed(range(self._loop_length(subs))):
            visiting = subs.length > i
            entry = subs.data[:, i]
            terminal = terminal | (visiting & at_player(entry))
            moving = visiting & (entry[:, MOVE_TIMER] == 0)
            entry = step_x(entry, moving)
            entry[:, MOVE_TIMER] = torch.where(
                moving, self.move_speed, entry[:, MOVE_TIMER] - (visiting & ~moving).long()
            )
            subs.data[:, i] = entry
            gone = moving & outside(entry)
            touches = moving & ~gone & at_player(entry)
            terminal = terminal | touches
            shot, bullet_index = bullets.first_match(entry, 2)
            shot = shot & moving & ~gone & ~touches
            removed_index = subs.remove_first_equal(entry, gone | shot)
            bullets.remove_at(bullet_index, shot)
            reward = reward + shot.long()
            # the visited sub object: still in the list at i, shifted to i - 1, or removed (it still fires)
            position = torch.where((gone | shot) & (removed_index < i), i - 1, i)
            still_listed = ~((gone | shot) & (removed_index == i))
            fires = visiting & (entry[:, SHOT_TIMER] == 0)
            entry[:, SHOT_TIMER] = torch.where(
                fires, ENEMY_SHOT_INTERVAL, entry[:, SHOT_TIMER] - (visiting & ~fires).long()
            )
            write = visiting & still_listed
            current = subs.data.gather(1, position.view(-1, 1, 1).expand(n, 1, subs.data.shape[2])).squeeze(1)
            updated = torch.where(write.unsqueeze(1), entry, current)
            subs.data = subs.data.scatter(
                1, position.view(-1, 1, 1).expand(n, 1, subs.data.shape[2]), updated.unsqueeze(1)
            )
            self.overflowed |= enemy_bullets.append(entry[:, :3], fires)

        # enemy bullets (reverse order): touch, move, leave, touch
        for i in reversed(range(self._loop_length(enemy_bullets))):
            visiting = enemy_bullets.length > i
            entry = enemy_bullets.data[:, i]
            terminal = terminal | (visiting & at_player(entry))
            entry = step_x(entry, visiting)
            enemy_bullets.data[:, i] = entry
            gone = visiting & outside(entry)
            enemy_bullets.remove_first_equal(entry, gone)
            terminal = terminal | (visiting & ~gone & at_player(entry))

        # fish (reverse order): as subs, without firing
        for i in reversed(range(self._loop_length(fish))):
            visiting = fish.length > i
            entry = fish.data[:, i]
            terminal = terminal | (visiting & at_player(entry))
            moving = visiting & (entry[:, MOVE_TIMER] == 0)
            entry = step_x(entry, moving)
            entry[:, MOVE_TIMER] = torch.where(
                moving, self.move_speed, entry[:, MOVE_TIMER] - (visiting & ~moving).long()
            )
            fish.data[:, i] = entry
            gone = moving & outside(entry)
            touches = moving & ~gone & at_player(entry)
            terminal = terminal | touches
            shot, bullet_index = bullets.first_match(entry, 2)
            shot = shot & moving & ~gone & ~touches
            fish.remove_first_equal(entry, gone | shot)
            bullets.remove_at(bullet_index, shot)
            reward = reward + shot.long()

        # timers, oxygen, surfacing
        self.enemy_spawn_timer = self.enemy_spawn_timer - (self.enemy_spawn_timer > 0).long()
        self.diver_spawn_timer = self.diver_spawn_timer - (self.diver_spawn_timer > 0).long()
        self.shot_timer = self.shot_timer - (self.shot_timer > 0).long()
        terminal = terminal | (self.oxygen <= 0)
        submerged = self.sub_y > 0
        self.oxygen = self.oxygen - submerged.long()
        arriving = ~submerged & ~self.surfaced
        terminal = terminal | (arriving & (self.diver_count == 0))
        surfacing = arriving & (self.diver_count != 0)
        self.surfaced = torch.where(submerged, False, self.surfaced | surfacing)
        full_crew = surfacing & (self.diver_count == 6)
        reward = reward + torch.where(full_crew, self.oxygen * 10 // MAX_OXYGEN, 0)
        self.diver_count = torch.where(full_crew, 0, self.diver_count) - surfacing.long()
        self.oxygen = torch.where(surfacing, MAX_OXYGEN, self.oxygen)
        if self.ramping:
            ramps = surfacing & ((self.enemy_spawn_speed > 1) | (self.move_speed > 2))
            faster_moves = ramps & (self.move_speed > 2) & (self.ramp_index % 2 == 1)
            self.move_speed = self.move_speed - faster_moves.long()
            self.enemy_spawn_speed = self.enemy_spawn_speed - (ramps & (self.enemy_spawn_speed > 1)).long()
            self.ramp_index = self.ramp_index + ramps.long()
        return reward, terminal

    def _observe_torch(self) -> torch.Tensor:
        lists = self.lists
        cells, channels, on = [], [], []

        def add(cell: torch.Tensor, channel: int | torch.Tensor, shown: torch.Tensor) -> None:
            cells.append(cell)
            channels.append(channel if isinstance(channel, torch.Tensor) else torch.full_like(cell, channel))
            on.append(shown)

        front = (self.sub_y * 10 + self.sub_x).unsqueeze(1)
        back_x = torch.where(self.sub_right, self.sub_x - 1, self.sub_x + 1)
        ones = torch.ones_like(front, dtype=torch.bool)
        add(front, 0, ones)
        add((self.sub_y * 10 + back_x.clamp(0, 9)).unsqueeze(1), 1, ones)
        oxygen_cells = self.oxygen.clamp(min=0) * 10 // MAX_OXYGEN
        add(self._gauge_cells, 7, self._gauge_columns < oxygen_cells.unsqueeze(1))
        columns = self._gauge_columns
        add(self._gauge_cells, 8, (columns >= 9 - self.diver_count.unsqueeze(1)) & (columns < 9))
        for name, channel, trail in (
            ("friendly_bullets", 2, False),
            ("enemy_bullets", 4, False),
            ("fish", 5, True),
            ("subs", 6, True),
            ("divers", 9, True),
        ):
            slot_list = lists[name]
            used = self._loop_length(slot_list)
            if used == 0:
                continue
            data = slot_list.data[:, :used]
            valid = slot_list.valid()[:, :used]
            x, y = data[:, :, X], data[:, :, Y]
            add(y * 10 + x.clamp(0, 9), channel, valid)
            if trail:
                behind = torch.where(data[:, :, RIGHTWARD] == 1, x - 1, x + 1)
                add(y * 10 + behind.clamp(0, 9), 3, valid & (behind >= 0) & (behind <= 9))
        canvas = new_canvas(self.num_envs, 10, self.device)
        draw(canvas, torch.cat(cells, 1), torch.cat(channels, 1), 10, torch.cat(on, 1))
        return canvas_to_observation(canvas, 10)
