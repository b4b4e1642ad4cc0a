"""The Bordered Gridworld: a gridworld built to test the Hallucinated Value Hypothesis (Jafferjee et al. 2020).

Layout. A ``height x width`` grid of *interior* cells is surrounded by a one-cell *border* ring. The state encoding
covers the whole ``(height + 2) x (width + 2)`` grid, cells numbered row-major, ``index = row * (width + 2) + col``:

    row 0 and row height+1, col 0 and col width+1  -> border cells: they exist in the encoding, but the true
                                                      environment can never reach them (moving into one bumps)
    rows 1..height, cols 1..width                   -> interior cells: the real, reachable states

Dynamics (deterministic). Actions ``0 up, 1 right, 2 down, 3 left``. A move into a border cell leaves the agent
where it is. Every step costs reward ``-1``; entering the goal ends the episode (``terminated``). Episodes start in
the ``start`` cell; ``max_episode_steps`` (default 100) truncates. Defaults: 6 x 6 interior, start bottom-left
``(height, 1)``, goal top-right ``(1, width)``, so the shortest path takes ``height + width - 2`` steps.

Observation: the cell index, ``int64[N]`` (``observation_spec`` is a 0-d integer box over ``0 .. num_states - 1``).
``coordinates(index)`` turns indices into ``(row, col)`` for plots or function approximation.

For planning (``emphatic_rl.agents.dyna.models``) the env exposes its *given* dynamics as tables, extended to border
cells by a documented rule of our own (``model_transitions(border_physics)``). ``"closed"`` (default): the border ring
is a second region with the same physics (moves stay inside their region; the interior and the ring are separated
by walls in both directions), so a perfect model applied to a real state only ever returns real states, and a
state the model hallucinated stays hallucinated under further model steps, forwards or backwards. ``"open"``: the
model knows no wall between the ring and the interior once it is in the ring, so hallucinated states connect back
to real ones (forward successors and backward predecessors). ``real_state_mask`` says which indices are real.
"""

from __future__ import annotations

import torch

from emphatic_rl.envs.base import BoxSpec, DiscreteSpec, TabularDynamics, TensorEnv
from emphatic_rl.envs.registry import register_env

#: (row, col) offsets of actions 0 up, 1 right, 2 down, 3 left.
ACTION_OFFSETS: tuple[tuple[int, int], ...] = ((-1, 0), (0, 1), (1, 0), (0, -1))
ACTION_NAMES: tuple[str, ...] = ("up", "right", "down", "left")


@register_env("bordered-gridworld")
class BorderedGridworld(TensorEnv):
    """A gridworld whose interior is ringed by unreachable border cells (see the module docstring).

    Args:
        num_envs: copies ``N``.
        device: torch device.
        height: interior rows (>= 2).
        width: interior columns (>= 2).
        start: interior ``(row, col)`` in full-grid coordinates (rows ``1..height``, cols ``1..width``);
            ``None`` for the default bottom-left.
        goal: interior ``(row, col)`` like ``start``; ``None`` for the default top-right.
        step_reward: reward of every step, the last one included (default ``-1``).
        max_episode_steps: time limit (default 100).
    """

    name = "bordered-gridworld"
    state_names = ("cell",)
    has_tabular_dynamics = True  # tabular_dynamics(border_physics): the given model of tabular Dyna
    has_real_state_test = True  # is_real_state(index): the interior cells

    def __init__(
        self,
        num_envs: int = 1,
        device: torch.device | str = "cpu",
        height: int = 6,
        width: int = 6,
        start: tuple[int, int] | list[int] | None = None,
        goal: tuple[int, int] | list[int] | None = None,
        step_reward: float = -1.0,
        max_episode_steps: int | None = 100,
    ) -> None:
        for key, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 2:
                raise ValueError(f"bordered-gridworld: {key} must be an integer >= 2, got {value!r}")
        super().__init__(num_envs, device, max_episode_steps)
        self.height, self.width = height, width
        self.grid_rows, self.grid_cols = height + 2, width + 2
        self.num_states = self.grid_rows * self.grid_cols
        self.num_actions = len(ACTION_OFFSETS)
        start = (height, 1) if start is None else tuple(start)
        goal = (1, width) if goal is None else tuple(goal)
        for key, cell in (("start", start), ("goal", goal)):
            if len(cell) != 2 or not (1 <= cell[0] <= height and 1 <= cell[1] <= width):
                raise ValueError(
                    f"bordered-gridworld: {key} must be an interior (row, col) with row in 1..{height} and col in "
                    f"1..{width}, got {cell!r}"
                )
        if start == goal:
            raise ValueError(f"bordered-gridworld: start and goal must differ, both are {start!r}")
        self.start_state = self.index_of(*start)
        self.goal_state = self.index_of(*goal)
        self.step_reward = float(step_reward)
        self.observation_spec = BoxSpec(shape=(), low=0.0, high=float(self.num_states - 1), dtype=torch.int64)
        self.action_spec = DiscreteSpec(self.num_actions)

        rows = torch.arange(self.grid_rows).repeat_interleave(self.grid_cols)
        cols = torch.arange(self.grid_cols).repeat(self.grid_rows)
        interior = (rows >= 1) & (rows <= height) & (cols >= 1) & (cols <= width)
        #: ``bool[S]``: true for real, reachable states (interior cells), false for border cells.
        self.real_state_mask = interior.to(self.device)
        #: ``int64[num_border]``: indices of the border cells.
        self.border_states = torch.nonzero(~interior).squeeze(1).to(self.device)
        next_state = torch.empty(self.num_states, self.num_actions, dtype=torch.int64)
        open_next_state = torch.empty(self.num_states, self.num_actions, dtype=torch.int64)
        for action, (d_row, d_col) in enumerate(ACTION_OFFSETS):
            new_rows, new_cols = rows + d_row, cols + d_col
            inside = (new_rows >= 0) & (new_rows < self.grid_rows) & (new_cols >= 0) & (new_cols < self.grid_cols)
            target = new_rows.clamp(0, self.grid_rows - 1) * self.grid_cols + new_cols.clamp(0, self.grid_cols - 1)
            same_region = inside & (interior[target] == interior)
            next_state[:, action] = torch.where(same_region, target, torch.arange(self.num_states))
            open_next_state[:, action] = torch.where(inside, target, torch.arange(self.num_states))
        # The goal is terminal: nothing leaves it (the tables keep it absorbing for completeness).
        next_state[self.goal_state] = self.goal_state
        open_next_state[self.goal_state] = self.goal_state
        #: ``int64[S, A]``: moves on the whole grid with only the outer frame as walls (``border_physics="open"``).
        self.open_next_state_table = open_next_state.to(self.device)
        #: ``int64[S, A]``: the given (true, extended) next state of every cell and action.
        self.next_state_table = next_state.to(self.device)
        #: ``bool[S, A]``: the transition ends the episode (it enters the goal from another cell).
        self.terminal_table = self.next_state_table == self.goal_state
        self.terminal_table[self.goal_state] = False
        #: ``float32[S, A]``: reward of every transition.
        self.reward_table = torch.full((self.num_states, self.num_actions), self.step_reward, device=self.device)
        self.cell = torch.full((num_envs,), self.start_state, dtype=torch.int64, device=self.device)

    # ------------------------------------------------------------------ geometry helpers
    def index_of(self, row: int, col: int) -> int:
        """Cell index of full-grid coordinates ``(row, col)``."""
        return row * self.grid_cols + col

    def coordinates(self, index: torch.Tensor) -> torch.Tensor:
        """``index: int64[...]`` -> ``(row, col)``, ``int64[..., 2]`` in full-grid coordinates."""
        return torch.stack((index // self.grid_cols, index % self.grid_cols), dim=-1)

    def is_real_state(self, index: torch.Tensor, terminal: torch.Tensor | None = None) -> torch.Tensor:
        """``bool[...]``: whether each cell index in ``index: int64[...]`` is a real, reachable state (an interior
        cell); an index outside ``0 .. num_states - 1`` is not. ``terminal`` is not needed here (accepted for the
        :meth:`TensorEnv.is_real_state` signature).

        Raises:
            ValueError: ``index`` is not an integer tensor.
        """
        if not isinstance(index, torch.Tensor) or index.dtype != torch.int64:
            got = f"{index.dtype} {tuple(index.shape)}" if isinstance(index, torch.Tensor) else type(index).__name__
            raise ValueError(f"bordered-gridworld states must be int64 cell indices, got {got}")
        inside = (index >= 0) & (index < self.num_states)
        mask = self.real_state_mask.to(index.device)
        return inside & mask[index.clamp(0, self.num_states - 1)]

    def state_coordinates(self) -> torch.Tensor:
        """``float32[S, 2]``: every cell's ``(row, col)`` scaled to ``[-1, 1]`` over the full grid (border included),
        so a network generalises between neighbouring cells, and between the border ring and the interior edge."""
        coordinates = self.coordinates(torch.arange(self.num_states, device=self.device)).float()
        scale = torch.tensor([self.grid_rows - 1, self.grid_cols - 1], dtype=torch.float32, device=self.device)
        return 2 * coordinates / scale - 1

    def tabular_dynamics(self, border_physics: str = "closed") -> TabularDynamics:
        """The given model's tables (:class:`~emphatic_rl.envs.base.TabularDynamics`): ``model_transitions
        (border_physics)``, the reward and terminal tables, the interior as the real states, the goal as the
        terminal state and :meth:`state_coordinates`."""
        forward, triples = self.model_transitions(border_physics)
        return TabularDynamics(
            next_state=forward,
            reward=self.reward_table,
            terminal=self.terminal_table,
            real_state_mask=self.real_state_mask,
            terminal_states=torch.tensor([self.goal_state], device=self.device),
            predecessor_triples=triples,
            state_coordinates=self.state_coordinates(),
        )

    def model_transitions(
        self, border_physics: str = "closed"
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The given model's dynamics: ``(forward int64[S, A], (source, action, target) int64[M] each)``.

        Both agree with the true dynamics on every real state (forward from a real state, predecessors of a real
        state). They differ only on unreachable (border) states, which a model reaches only by hallucinating:

        - ``"closed"``: the border ring is a region of its own (moves stay inside it), so a hallucinated state
          only ever leads to, and comes from, hallucinated states;
        - ``"open"``: from a border cell the model moves on the whole grid with no wall between the ring and the
          interior (forward, a hallucinated state can lead back into real states); the predecessors of a border
          cell include the interior cells next to it (backward, a hallucinated state's predecessor can be real).

        ``target[m]`` is reached from ``source[m]`` by ``action[m]``; the goal is never a source.
        """
        if border_physics not in ("closed", "open"):
            raise ValueError(f"border_physics must be 'closed' or 'open', got {border_physics!r}")
        sources = torch.arange(self.num_states, device=self.device).repeat_interleave(self.num_actions)
        actions = torch.arange(self.num_actions, device=self.device).repeat(self.num_states)
        not_goal = sources != self.goal_state
        if border_physics == "closed":
            targets = self.next_state_table.flatten()
            keep = not_goal
            return self.next_state_table, (sources[keep], actions[keep], targets[keep])
        real_row = self.real_state_mask.unsqueeze(1)
        forward = torch.where(real_row, self.next_state_table, self.open_next_state_table)
        true_targets = self.next_state_table.flatten()
        open_targets = self.open_next_state_table.flatten()
        keep_true = not_goal & self.real_state_mask[sources] & self.real_state_mask[true_targets]
        keep_open = not_goal & ~self.real_state_mask[open_targets]
        return forward, (
            torch.cat((sources[keep_true], sources[keep_open])),
            torch.cat((actions[keep_true], actions[keep_open])),
            torch.cat((true_targets[keep_true], open_targets[keep_open])),
        )

    # ------------------------------------------------------------------ TensorEnv hooks
    def _reset_where(self, mask: torch.Tensor) -> None:
        self.cell = torch.where(mask, torch.full_like(self.cell, self.start_state), self.cell)

    def _transition(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reward = self.reward_table[self.cell, action]
        terminated = self.terminal_table[self.cell, action]
        self.cell = self.next_state_table[self.cell, action]
        return reward, terminated

    def _observe(self) -> torch.Tensor:
        return self.cell.clone()
