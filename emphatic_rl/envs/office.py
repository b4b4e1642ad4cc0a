"""The image-based gridworld of the J23 experiments ("Virtual Office", Graves et al. 2023), batched.

A native re-implementation of the authors' ``gym-virtual-office`` environment (a MiniGrid env); MiniGrid is not
needed. Registered as ``make_env("virtual-office")`` and ``gymnasium.make("emphatic_rl/VirtualOffice-v0")``.

Layout (x = column, y = row, 0 at the top; ``W`` wall, ``.`` blue floor (hallway), ``g`` green floor (rooms))::

    y0  W W W W W W W W W
    y1  W . . . W g g A W    A = (7, 1) top major goal     reward +1.0
    y2  W . . . D g g g W    D = (4, 2) doorway
    y3  W . . . W g g z W    z = (7, 3) top minor goal     reward 0
    y4  W S . . W W W W W    S = (1, 4) start, facing east
    y5  W . . . W g g z W    z = (7, 5) bottom minor goal  reward 0
    y6  W . . . D g g g W    D = (4, 6) doorway
    y7  W . . . W g g B W    B = (7, 7) bottom major goal  reward +0.5
    y8  W W W W W W W W W

The goals are hidden: they look like the green floor around them. The doorways are green floor tiles too: the
original paints columns 0-3 blue and columns 4-7 green, then draws the walls over them, and its centre wall
(column 4) leaves rows 2 and 6 open, so a doorway is a plain green ``Floor`` (no ``Door`` object, nothing to open).

Dynamics (deterministic): actions ``0 = north, 1 = east, 2 = south, 3 = west``. Each sets the facing direction, then
moves one cell that way unless that cell is a wall. Entering a goal ends the episode (``terminated``) with the
goal's reward; every other step gives 0. The episode is cut after ``max_episode_steps = 100`` steps. The original
reports that time-out as ``done`` and its learners treat it as terminal (gamma = 0); here it is reported as
``truncated`` (a goal entered on the 100th step is ``terminated``, not truncated), and whether to bootstrap through
it is the learner's option, as for every other env.

Observation: MiniGrid's egocentric partial view with ``agent_view_size = 3`` and ``see_through_walls = False``
(``MiniGridEnv.gen_obs``), re-implemented from MiniGrid's documented semantics:

- the 3 x 3 cells the agent sees are the cell it stands on, the cells left and right of it, and the two rows of
  three ahead of it; the view is rotated so that the agent faces "up" and stands at the bottom centre (view column
  1, view row 2); cells outside the 9 x 9 grid read as walls;
- visibility (``Grid.process_vis``): starting from the agent's cell and sweeping rows from the agent's row away
  from it, a visible non-wall cell makes its left/right neighbours and the cells diagonally and straight ahead
  visible; walls stop the spread. Cells not visible are encoded ``(unseen 0, 0, 0)``;
- each visible cell is encoded ``(object index, colour index, state)`` with MiniGrid's tables
  (:data:`OBJECT_TO_IDX`, :data:`COLOR_TO_IDX`): wall ``(2, 5, 0)`` (grey), hallway ``(3, 2, 0)`` (blue floor),
  room, doorway and goal ``(3, 1, 0)`` (green floor);
- the agent's own cell is encoded ``(empty 1, 0, 0)``: ``gen_obs_grid`` overwrites it with what the agent
  carries, here nothing, so the floor under the agent is never shown;
- the image has MiniGrid's layout ``[view column, view row, channel]`` and is ravelled in that (C) order into 27
  numbers, ``index = 9 * view_column + 3 * view_row + channel``, then divided by its L2 norm (never zero: the
  agent's own cell is always visible), as the authors' scripts do. ``normalize_observation=False`` gives the raw
  integers (as float32).

``obs: float32[N, 27]``. :meth:`VirtualOffice.raw_image` returns the un-normalised ``int64[N, 3, 3, 3]`` images.
The world state of every copy is ``cell`` (``y * 9 + x``) and ``facing`` (0 N, 1 E, 2 S, 3 W: the last action;
MiniGrid's ``agent_dir`` is ``(facing + 3) % 4``). Every observation is looked up in a table built once, so a step
costs a few gathers whatever ``N``.

Aliasing: the rooms are translates of each other (y + 4), and almost every in-room view is identical in both
rooms; the exceptions are a few views from the room column next to the centre wall that see, through the doorway,
hallway cells at row 0 or 8 (a wall) versus row 4 (hallway floor). :func:`aliased_room_views` lists which.

Behaviour policy: state-independent over (N, E, S, W). Envs do not import agents, so the env only carries the
probabilities: ``env.behaviour_probabilities`` (option ``behaviour_probabilities``), and the training loop builds
``FixedDiscreteBehaviour(env.behaviour_probabilities)`` from it. The value J23 used is unknown; the candidates
(:data:`BEHAVIOUR_CANDIDATES`, also accepted by name) are

- ``"notebook"`` (.2, .45, .3, .05), the default: the authors' notebook value. On this layout an episode ends in
  the top major / top minor / bottom minor / bottom major goal with probability .094 / .161 / .274 / .468 (time-out
  .003; exact finite-horizon absorbing-chain values), i.e. top / bottom .256 / .744 of the goal visits. The
  authors quote .362 / .638 from the notebook; that figure is not reproduced by the layout as coded (nor by the older
  two-goal version, .254), and its origin is unknown;
- ``"script"`` (.2, .3, .3, .2), the default of the authors' sweep script;
- ``"vo4"`` (.235, .3, .265, .2), noted "everything learns";
- ``"vo5"`` (.15, .45, .35, .05), noted "nothing learns".

Evaluation quirk of the original: its ``evaluate_policy`` feeds the *un-normalised* image (entries up to 5, norm
9 to 13.6) to a softmax policy trained on unit-norm features, which makes the evaluated policy roughly 10x greedier
than the policy that was trained. We evaluate the policy as trained, on normalised observations. To reproduce the
original's numbers, evaluate on an env built with ``normalize_observation=False``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from emphatic_rl.envs.base import BoxSpec, DiscreteSpec, TensorEnv
from emphatic_rl.envs.registry import register_env

__all__ = [
    "VirtualOffice",
    "LAYOUT",
    "GOAL_REWARDS",
    "OBJECT_TO_IDX",
    "COLOR_TO_IDX",
    "BEHAVIOUR_CANDIDATES",
    "ACTION_NAMES",
    "minigrid_view",
    "aliased_room_views",
]

#: MiniGrid's object indices (``minigrid.core.constants.OBJECT_TO_IDX``).
OBJECT_TO_IDX: dict[str, int] = {
    "unseen": 0,
    "empty": 1,
    "wall": 2,
    "floor": 3,
    "door": 4,
    "key": 5,
    "ball": 6,
    "box": 7,
    "goal": 8,
    "lava": 9,
    "agent": 10,
}
#: MiniGrid's colour indices (``minigrid.core.constants.COLOR_TO_IDX``).
COLOR_TO_IDX: dict[str, int] = {"red": 0, "green": 1, "blue": 2, "purple": 3, "yellow": 4, "grey": 5}

#: The 9 x 9 map, one string per row y, one character per column x: ``W`` wall, ``.`` hallway (blue floor),
#: ``S`` start (blue floor), ``g`` room (green floor), ``D`` doorway (green floor), ``A`` / ``B`` top / bottom
#: major goal, ``z`` minor goal (all green floor).
LAYOUT: tuple[str, ...] = (
    "WWWWWWWWW",
    "W...WggAW",
    "W...DgggW",
    "W...WggzW",
    "WS..WWWWW",
    "W...WggzW",
    "W...DgggW",
    "W...WggBW",
    "WWWWWWWWW",
)
GRID_SIZE = 9
VIEW_SIZE = 3
OBS_SIZE = VIEW_SIZE * VIEW_SIZE * 3
#: Reward of entering each goal, by ``(x, y)``.
GOAL_REWARDS: dict[tuple[int, int], float] = {(7, 1): 1.0, (7, 3): 0.0, (7, 5): 0.0, (7, 7): 0.5}
START_POSITION = (1, 4)
START_FACING = 1  # east
ACTION_NAMES: tuple[str, ...] = ("north", "east", "south", "west")
#: ``(dx, dy)`` of actions / facings 0 N, 1 E, 2 S, 3 W.
ACTION_OFFSETS: tuple[tuple[int, int], ...] = ((0, -1), (1, 0), (0, 1), (-1, 0))
#: Candidate behaviour policies over (N, E, S, W) (the authors' script and notebooks; docs/environments.md); the first
#: is the default.
BEHAVIOUR_CANDIDATES: dict[str, tuple[float, float, float, float]] = {
    "notebook": (0.2, 0.45, 0.3, 0.05),
    "script": (0.2, 0.3, 0.3, 0.2),
    "vo4": (0.235, 0.3, 0.265, 0.2),
    "vo5": (0.15, 0.45, 0.35, 0.05),
}

_WALL_CODE = (OBJECT_TO_IDX["wall"], COLOR_TO_IDX["grey"], 0)
_BLUE_FLOOR_CODE = (OBJECT_TO_IDX["floor"], COLOR_TO_IDX["blue"], 0)
_GREEN_FLOOR_CODE = (OBJECT_TO_IDX["floor"], COLOR_TO_IDX["green"], 0)
_EMPTY_CODE = (OBJECT_TO_IDX["empty"], 0, 0)
_UNSEEN_CODE = (OBJECT_TO_IDX["unseen"], 0, 0)


def _cell_code(x: int, y: int) -> tuple[int, int, int]:
    """MiniGrid encoding of world cell ``(x, y)``; outside the grid reads as a wall (as in ``Grid.slice``)."""
    if not (0 <= x < GRID_SIZE and 0 <= y < GRID_SIZE):
        return _WALL_CODE
    char = LAYOUT[y][x]
    if char == "W":
        return _WALL_CODE
    if char in ".S":
        return _BLUE_FLOOR_CODE
    return _GREEN_FLOOR_CODE


def _view_to_world(x: int, y: int, facing: int, column: int, row: int) -> tuple[int, int]:
    """World cell shown at ``(column, row)`` of the 3 x 3 view of an agent at ``(x, y)`` facing ``facing``.

    The agent is at view ``(1, 2)``; view row ``2 - k`` is ``k`` cells ahead, view column ``1 + s`` is ``s`` cells
    to the agent's right.
    """
    ahead, right = 2 - row, column - 1
    forward_x, forward_y = ACTION_OFFSETS[facing]
    right_x, right_y = ACTION_OFFSETS[(facing + 1) % 4]
    return x + ahead * forward_x + right * right_x, y + ahead * forward_y + right * right_y


def minigrid_view(x: int, y: int, facing: int) -> list[list[tuple[int, int, int]]]:
    """MiniGrid's encoded 3 x 3 view of an agent at ``(x, y)`` facing ``facing`` (0 N, 1 E, 2 S, 3 W).

    Returns ``view[column][row] = (object, colour, state)`` in MiniGrid's ``[width, height, 3]`` layout. Plain
    Python, used once to build the lookup table (and by tests).
    """
    codes = [[_cell_code(*_view_to_world(x, y, facing, c, r)) for r in range(VIEW_SIZE)] for c in range(VIEW_SIZE)]
    see_behind = [[codes[c][r] != _WALL_CODE for r in range(VIEW_SIZE)] for c in range(VIEW_SIZE)]
    # Grid.process_vis: rows from the agent's (bottom) row upwards; a left-to-right then a right-to-left sweep.
    visible = [[False] * VIEW_SIZE for _ in range(VIEW_SIZE)]
    visible[1][VIEW_SIZE - 1] = True
    for r in reversed(range(VIEW_SIZE)):
        for columns, step in ((range(0, VIEW_SIZE - 1), 1), (reversed(range(1, VIEW_SIZE)), -1)):
            for c in columns:
                if not visible[c][r] or not see_behind[c][r]:
                    continue
                visible[c + step][r] = True
                if r > 0:
                    visible[c + step][r - 1] = True
                    visible[c][r - 1] = True
    # gen_obs_grid: the agent's own cell shows what it carries (nothing: empty); encode: unseen cells are zeros.
    codes[1][VIEW_SIZE - 1] = _EMPTY_CODE
    return [[codes[c][r] if visible[c][r] else _UNSEEN_CODE for r in range(VIEW_SIZE)] for c in range(VIEW_SIZE)]


def aliased_room_views() -> dict[tuple[int, int, int], bool]:
    """For every top-room or top-doorway cell ``(x, y)`` and facing ``f``: is its view identical to that of
    ``(x, y + 4)`` (the translated bottom-room cell) with the same facing? Keys ``(x, y, f)``."""
    result = {}
    for y in range(1, 4):
        for x in range(4, 8):
            if LAYOUT[y][x] == "W":
                continue
            for facing in range(4):
                result[(x, y, facing)] = minigrid_view(x, y, facing) == minigrid_view(x, y + 4, facing)
    return result


def _validate_behaviour(value: str | Sequence[float]) -> tuple[float, float, float, float]:
    allowed = f"a name in {sorted(BEHAVIOUR_CANDIDATES)} or 4 non-negative probabilities (N, E, S, W) summing to 1"
    if isinstance(value, str):
        if value not in BEHAVIOUR_CANDIDATES:
            raise ValueError(f"virtual-office: unknown behaviour_probabilities {value!r}; allowed: {allowed}")
        return BEHAVIOUR_CANDIDATES[value]
    try:
        probabilities = tuple(float(p) for p in value)
    except (TypeError, ValueError):
        raise ValueError(f"virtual-office: behaviour_probabilities must be {allowed}, got {value!r}") from None
    if (
        len(probabilities) != 4
        or not all(math.isfinite(p) and p >= 0.0 for p in probabilities)
        or abs(sum(probabilities) - 1.0) > 1e-6
    ):
        raise ValueError(f"virtual-office: behaviour_probabilities must be {allowed}, got {value!r}")
    return probabilities


@register_env("virtual-office")
class VirtualOffice(TensorEnv):
    """The image-based "Virtual Office" gridworld of J23 (see the module docstring for the exact rules).

    Args:
        num_envs: copies ``N``.
        device: torch device.
        max_episode_steps: time limit, reported as ``truncated`` (default 100, as in the original).
        normalize_observation: divide the 27-number image by its L2 norm (default, as the authors' learners
            see it); ``False`` gives the raw MiniGrid integers as float32.
        behaviour_probabilities: the behaviour policy over (N, E, S, W) the experiments should use, a name in
            :data:`BEHAVIOUR_CANDIDATES` or 4 probabilities; stored as ``env.behaviour_probabilities`` (the env
            itself does not use it).
        check_actions: validate every action's range.
    """

    name = "virtual-office"
    state_names = ("cell", "facing")
    action_spec = DiscreteSpec(4)

    def __init__(
        self,
        num_envs: int = 1,
        device: torch.device | str = "cpu",
        max_episode_steps: int | None = 100,
        normalize_observation: bool = True,
        behaviour_probabilities: str | Sequence[float] = "notebook",
        check_actions: bool = True,
    ) -> None:
        if not isinstance(normalize_observation, bool):
            raise ValueError(
                f"virtual-office: normalize_observation must be True or False, got {normalize_observation!r}"
            )
        #: ``(N, E, S, W)`` probabilities of the behaviour policy for this env (see the module docstring).
        self.behaviour_probabilities = _validate_behaviour(behaviour_probabilities)
        super().__init__(num_envs, device, max_episode_steps, check_actions)
        self.normalize_observation = normalize_observation
        self.observation_spec = BoxSpec(
            (OBS_SIZE,), low=0.0, high=1.0 if normalize_observation else float(max(OBJECT_TO_IDX.values()))
        )
        num_cells = GRID_SIZE * GRID_SIZE
        next_cell = torch.empty(num_cells, 4, dtype=torch.int64)
        reward = torch.zeros(num_cells, 4, dtype=torch.float32)
        terminal = torch.zeros(num_cells, 4, dtype=torch.bool)
        images = torch.zeros(num_cells, 4, OBS_SIZE, dtype=torch.int64)
        for y in range(GRID_SIZE):
            for x in range(GRID_SIZE):
                cell = y * GRID_SIZE + x
                for action, (dx, dy) in enumerate(ACTION_OFFSETS):
                    target_x, target_y = x + dx, y + dy
                    blocked = _cell_code(target_x, target_y) == _WALL_CODE
                    new_x, new_y = (x, y) if blocked else (target_x, target_y)
                    next_cell[cell, action] = new_y * GRID_SIZE + new_x
                    if not blocked and (new_x, new_y) in GOAL_REWARDS:
                        terminal[cell, action] = True
                        reward[cell, action] = GOAL_REWARDS[(new_x, new_y)]
                    view = minigrid_view(x, y, action)
                    images[cell, action] = torch.tensor([v for column in view for code in column for v in code])
        #: ``int64[81, 4]``: next cell of every (cell, action).
        self.next_cell_table = next_cell.to(self.device)
        #: ``float32[81, 4]``: reward of every (cell, action).
        self.reward_table = reward.to(self.device)
        #: ``bool[81, 4]``: the move enters a goal.
        self.terminal_table = terminal.to(self.device)
        #: ``int64[81, 4, 27]``: raw MiniGrid image of every (cell, facing), ravelled.
        self.image_table = images.to(self.device)
        raw = images.to(torch.float32)
        norms = torch.linalg.vector_norm(raw, dim=-1, keepdim=True)  # >= 1: the agent's cell is always (1, 0, 0)
        #: ``float32[81, 4, 27]``: the observation of every (cell, facing).
        self.observation_table = (raw / norms if normalize_observation else raw).to(self.device)
        self.start_cell = START_POSITION[1] * GRID_SIZE + START_POSITION[0]
        self.cell = torch.full((num_envs,), self.start_cell, dtype=torch.int64, device=self.device)
        self.facing = torch.full((num_envs,), START_FACING, dtype=torch.int64, device=self.device)

    # ------------------------------------------------------------------ helpers
    @property
    def position(self) -> torch.Tensor:
        """``int64[N, 2]``: ``(x, y)`` of every copy."""
        return torch.stack((self.cell % GRID_SIZE, self.cell // GRID_SIZE), dim=1)

    def set_state(self, position: torch.Tensor | Sequence[int], facing: torch.Tensor | int) -> None:
        """Put every copy at ``position`` (``(x, y)``: ``[N, 2]`` or ``[2]``) facing ``facing`` (``[N]`` or scalar,
        0 N, 1 E, 2 S, 3 W). Positions must be non-wall, non-goal cells. Step counters are left alone."""
        position = torch.as_tensor(position, dtype=torch.int64, device=self.device)
        facing = torch.as_tensor(facing, dtype=torch.int64, device=self.device)
        if position.shape not in ((self.num_envs, 2), (2,)) or facing.shape not in ((self.num_envs,), ()):
            raise ValueError(
                f"VirtualOffice.set_state: position has shape {tuple(position.shape)} and facing "
                f"{tuple(facing.shape)}, expected ({self.num_envs}, 2) or (2,), and ({self.num_envs},) or ()"
            )
        position = position.expand(self.num_envs, 2)
        facing = facing.expand(self.num_envs)
        walkable = torch.tensor(
            [[LAYOUT[y][x] not in "WAzB" for x in range(GRID_SIZE)] for y in range(GRID_SIZE)], device=self.device
        )
        inside = ((position >= 0) & (position < GRID_SIZE)).all(dim=1)
        clamped = position.clamp(0, GRID_SIZE - 1)
        if not bool((inside & walkable[clamped[:, 1], clamped[:, 0]]).all()):
            raise ValueError("VirtualOffice.set_state: every position must be a floor cell that is not a goal")
        if not bool(((facing >= 0) & (facing < 4)).all()):
            raise ValueError("VirtualOffice.set_state: facing must be in {0: N, 1: E, 2: S, 3: W}")
        self.cell = (position[:, 1] * GRID_SIZE + position[:, 0]).clone()
        self.facing = facing.clone()

    def raw_image(self) -> torch.Tensor:
        """``int64[N, 3, 3, 3]``: every copy's un-normalised MiniGrid image, ``[N, view column, view row, channel]``."""
        return self.image_table[self.cell, self.facing].view(self.num_envs, VIEW_SIZE, VIEW_SIZE, 3)

    # ------------------------------------------------------------------ TensorEnv hooks
    def _reset_where(self, mask: torch.Tensor) -> None:
        self.cell = torch.where(mask, torch.full_like(self.cell, self.start_cell), self.cell)
        self.facing = torch.where(mask, torch.full_like(self.facing, START_FACING), self.facing)

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reward = self.reward_table[self.cell, action]
        terminated = self.terminal_table[self.cell, action]
        self.cell = self.next_cell_table[self.cell, action]
        self.facing = action.clone()
        return reward, terminated

    def _observe(self) -> torch.Tensor:
        return self.observation_table[self.cell, self.facing]


def _register_gymnasium_id() -> None:
    """``gymnasium.make("emphatic_rl/VirtualOffice-v0")`` (time limit 100, in Gymnasium's ``TimeLimit``)."""
    from emphatic_rl.envs.registration import register_gymnasium_env

    register_gymnasium_env("emphatic_rl/VirtualOffice-v0", "virtual-office")


_register_gymnasium_id()
