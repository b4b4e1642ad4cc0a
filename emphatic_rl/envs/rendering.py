"""RGB frames of the native envs, drawn with numpy alone (no pygame, no display).

``render_frame(env, index)`` draws copy ``index`` of a native ``TensorEnv`` as ``uint8[H, W, 3]``; the Gymnasium
wrappers (:class:`~emphatic_rl.envs.registration.NativeGymEnv` and
:class:`~emphatic_rl.envs.registration.NativeVectorEnv`) call it for ``render_mode="rgb_array"`` and show it in a
Matplotlib window for ``render_mode="human"``.

==============================  ===========  ===============================================================
env                             frame size   picture
==============================  ===========  ===============================================================
``cartpole``                    400 x 600    cart, pole and track, to Gymnasium's scale
``mountain-car``                400 x 600    the hill ``0.45 sin(3x) + 0.55``, the car, the goal flag
``acrobot``                     500 x 500    both links and the target height
``pendulum``                    500 x 500    the rod (upright is ``theta = 0``)
``puddle-world(-gaussian)``     400 x 400    the puddles, the goal corner, the agent
``catcher``                     4 px/pixel   the 64 x 64 screen (black), the paddle (white), the fruit (red),
                                             one small square per life left (top left)
``bordered-gridworld``          40 px/cell   border ring (dark), interior, start, goal, agent
``virtual-office``              360 x 360    walls, hallway (blue), rooms (green), goals, agent facing
``minatar-*``                   160 x 160    the 10 x 10 frame, one colour per channel (MinAtar's palette)
==============================  ===========  ===============================================================

The classic-control pictures follow Gymnasium's layouts (sizes, scales, colours) but are not pixel-identical to
its pygame drawings. :data:`RENDERABLE` lists the env classes that can be drawn.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["Canvas", "render_frame", "renderable", "RENDER_FPS"]

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)

#: frames per second of ``render_mode="human"`` and of ``RecordVideo`` (``metadata["render_fps"]``), per env name
#: prefix; Gymnasium's values for the classic-control tasks.
RENDER_FPS: dict[str, int] = {
    "cartpole": 50,
    "mountain-car": 30,
    "acrobot": 15,
    "pendulum": 30,
    "puddle-world": 30,
    "catcher": 30,
    "bordered-gridworld": 10,
    "virtual-office": 10,
    "minatar": 30,
}


class Canvas:
    """A ``height x width`` RGB image with world coordinates: ``x`` to the right, ``y`` up, in pixels.

    Shapes are filled by testing pixel centres inside the shape's bounding box (no Python loop over pixels).
    """

    def __init__(self, width: int, height: int, background: Sequence[int] = WHITE) -> None:
        self.width, self.height = width, height
        self.image = np.empty((height, width, 3), dtype=np.uint8)
        self.image[:] = np.asarray(background, dtype=np.uint8)

    def _box(self, xs: np.ndarray, ys: np.ndarray) -> tuple[int, int, int, int] | None:
        x0, x1 = max(int(math.floor(xs.min())), 0), min(int(math.ceil(xs.max())), self.width - 1)
        y0, y1 = max(int(math.floor(ys.min())), 0), min(int(math.ceil(ys.max())), self.height - 1)
        if x0 > x1 or y0 > y1:
            return None
        return x0, x1, y0, y1

    def _paint(self, box: tuple[int, int, int, int], inside: np.ndarray, color: Sequence[int]) -> None:
        x0, x1, y0, y1 = box
        # world y up -> image rows down
        rows = slice(self.height - 1 - y1, self.height - y0)
        self.image[rows, x0 : x1 + 1][inside[::-1]] = np.asarray(color, dtype=np.uint8)

    def _grid(self, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        x0, x1, y0, y1 = box
        return np.meshgrid(np.arange(x0, x1 + 1) + 0.5, np.arange(y0, y1 + 1) + 0.5)

    def polygon(self, points: Sequence[tuple[float, float]], color: Sequence[int]) -> None:
        """Fill a convex polygon given by its corners in order (either orientation)."""
        pts = np.asarray(points, dtype=np.float64)
        box = self._box(pts[:, 0], pts[:, 1])
        if box is None:
            return
        px, py = self._grid(box)
        edges = np.roll(pts, -1, axis=0) - pts
        cross = edges[:, None, None, 0] * (py[None] - pts[:, None, None, 1]) - edges[:, None, None, 1] * (
            px[None] - pts[:, None, None, 0]
        )
        inside = np.asarray((cross >= 0).all(axis=0) | (cross <= 0).all(axis=0))  # bool [rows, cols]
        self._paint(box, inside, color)

    def rectangle(self, x0: float, y0: float, x1: float, y1: float, color: Sequence[int]) -> None:
        self.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], color)

    def circle(self, cx: float, cy: float, radius: float, color: Sequence[int]) -> None:
        box = self._box(np.array([cx - radius, cx + radius]), np.array([cy - radius, cy + radius]))
        if box is None:
            return
        px, py = self._grid(box)
        self._paint(box, (px - cx) ** 2 + (py - cy) ** 2 <= radius**2, color)

    def line(self, x0: float, y0: float, x1: float, y1: float, width: float, color: Sequence[int]) -> None:
        """A segment of the given width (a rotated rectangle)."""
        dx, dy = x1 - x0, y1 - y0
        length = math.hypot(dx, dy) or 1.0
        nx, ny = -dy / length * width / 2, dx / length * width / 2
        self.polygon([(x0 + nx, y0 + ny), (x1 + nx, y1 + ny), (x1 - nx, y1 - ny), (x0 - nx, y0 - ny)], color)


# ====================================================================================== classic control
def cartpole_frame(state: Sequence[float]) -> np.ndarray:
    """CartPole ``[x, x_dot, theta, theta_dot]`` as Gymnasium draws it (600 x 400)."""
    width, height = 600, 400
    scale = width / (2.4 * 2)
    pole_width, pole_length = 10.0, scale * 1.0
    cart_width, cart_height, cart_y = 50.0, 30.0, 100.0
    canvas = Canvas(width, height)
    canvas.rectangle(0, cart_y - 0.5, width, cart_y + 0.5, BLACK)  # track
    cart_x = float(state[0]) * scale + width / 2.0
    canvas.rectangle(
        cart_x - cart_width / 2, cart_y - cart_height / 2, cart_x + cart_width / 2, cart_y + cart_height / 2, BLACK
    )
    axle_y = cart_y + cart_height / 4.0
    theta = float(state[2])
    tip_x, tip_y = cart_x + pole_length * math.sin(theta), axle_y + pole_length * math.cos(theta)
    canvas.line(cart_x, axle_y, tip_x, tip_y, pole_width, (202, 152, 101))
    canvas.circle(cart_x, axle_y, pole_width / 2, (129, 132, 203))
    return canvas.image


def mountain_car_frame(state: Sequence[float], goal_position: float = 0.5) -> np.ndarray:
    """MountainCar ``[position, velocity]`` (600 x 400): the hill, the car on it, the flag at the goal."""
    width, height = 600, 400
    min_position, max_position = -1.2, 0.6
    scale = width / (max_position - min_position)

    def hill(x: np.ndarray | float) -> Any:
        return np.sin(3 * np.asarray(x)) * 0.45 + 0.55

    canvas = Canvas(width, height)
    xs = np.linspace(min_position, max_position, 100)
    ys = hill(xs)
    for (xa, ya), (xb, yb) in zip(zip(xs[:-1], ys[:-1], strict=True), zip(xs[1:], ys[1:], strict=True), strict=True):
        canvas.line((xa - min_position) * scale, ya * scale, (xb - min_position) * scale, yb * scale, 2, BLACK)
    flag_x = (goal_position - min_position) * scale
    flag_y = float(hill(goal_position)) * scale
    canvas.line(flag_x, flag_y, flag_x, flag_y + 50, 2, BLACK)
    canvas.polygon([(flag_x, flag_y + 50), (flag_x, flag_y + 40), (flag_x + 25, flag_y + 45)], (204, 204, 0))
    position = float(state[0])
    angle = math.atan(1.35 * math.cos(3 * position))  # slope of the hill in pixels
    car_x, car_y = (position - min_position) * scale, float(hill(position)) * scale
    ux, uy = math.cos(angle), math.sin(angle)
    nx, ny = -uy, ux
    clearance, car_width, car_height = 10.0, 40.0, 20.0
    base_x, base_y = car_x + nx * clearance, car_y + ny * clearance
    corners = [(-car_width / 2, 0.0), (car_width / 2, 0.0), (car_width / 2, car_height), (-car_width / 2, car_height)]
    canvas.polygon([(base_x + a * ux + b * nx, base_y + a * uy + b * ny) for a, b in corners], BLACK)
    for along in (-car_width / 4, car_width / 4):
        canvas.circle(car_x + along * ux + nx * 5, car_y + along * uy + ny * 5, car_height / 2.5, (128, 128, 128))
    return canvas.image


def acrobot_frame(state: Sequence[float]) -> np.ndarray:
    """Acrobot ``[theta1, theta2, dtheta1, dtheta2]`` (500 x 500): links hang down at ``theta = 0``."""
    size = 500
    bound = 2.2
    scale = size / (2 * bound)
    theta1, theta2 = float(state[0]), float(state[1])
    canvas = Canvas(size, size)
    centre = size / 2
    canvas.line(0, centre + 1.0 * scale, size, centre + 1.0 * scale, 2, BLACK)  # target height
    x1, y1 = math.sin(theta1), -math.cos(theta1)
    x2, y2 = x1 + math.sin(theta1 + theta2), y1 - math.cos(theta1 + theta2)
    joints = [(centre, centre), (centre + x1 * scale, centre + y1 * scale), (centre + x2 * scale, centre + y2 * scale)]
    for (xa, ya), (xb, yb) in zip(joints[:-1], joints[1:], strict=True):
        canvas.line(xa, ya, xb, yb, 0.2 * scale, (0, 204, 204))
        canvas.circle(xa, ya, 0.1 * scale, (204, 204, 0))
    return canvas.image


def pendulum_frame(state: Sequence[float]) -> np.ndarray:
    """Pendulum ``[theta, theta_dot]`` (500 x 500): the rod points up at ``theta = 0``."""
    size = 500
    scale = size / (2.2 * 2)
    theta = float(state[0])
    canvas = Canvas(size, size)
    centre = size / 2
    tip_x, tip_y = centre - math.sin(theta) * scale, centre + math.cos(theta) * scale
    canvas.line(centre, centre, tip_x, tip_y, 0.2 * scale, (204, 77, 77))
    canvas.circle(tip_x, tip_y, 0.1 * scale, (204, 77, 77))
    canvas.circle(centre, centre, 0.05 * scale, BLACK)
    return canvas.image


def puddle_world_frame(position: Sequence[float], puddle_mask: np.ndarray) -> np.ndarray:
    """Puddle World (400 x 400): ``puddle_mask`` is ``bool[400, 400]`` (image rows), the agent at ``position``."""
    size = puddle_mask.shape[0]
    canvas = Canvas(size, size)
    canvas.image[puddle_mask] = (120, 120, 200)
    canvas.rectangle(0.95 * size, 0.95 * size, size, size, (0, 170, 0))
    canvas.circle(float(position[0]) * size, float(position[1]) * size, 6, (204, 0, 0))
    return canvas.image


def catcher_frame(state: Sequence[float], geometry: Any, scale: int = 4) -> np.ndarray:
    """Catcher's raw state ``(paddle_x, paddle_vel, fruit_x, fruit_y, lives)`` (pixels, ``y`` down, as in
    :func:`emphatic_rl.envs.catcher.catcher_step`) on a ``width x height`` screen drawn ``scale`` times larger:
    black background, the paddle white, the fruit red (PLE's colours), and one small grey square per life left in
    the top-left corner (ours). A fruit above the screen is not drawn."""
    g = geometry
    width, height = g.width * scale, g.height * scale
    canvas = Canvas(width, height, BLACK)
    paddle_x, _, fruit_x, fruit_y, lives = (float(v) for v in state)

    def rect(cx: float, cy: float, w: float, h: float, color: Sequence[int]) -> None:
        # game pixels (y down, centre) -> canvas pixels (y up, corners)
        x0, x1 = (cx - w / 2) * scale, (cx + w / 2) * scale
        y0, y1 = (g.height - (cy + h / 2)) * scale, (g.height - (cy - h / 2)) * scale
        if x1 > x0 and y1 > y0:
            canvas.rectangle(x0, y0, x1, y1, color)

    rect(paddle_x, g.paddle_y, g.paddle_width, g.paddle_height, WHITE)
    if fruit_y + g.fruit_size / 2 > 0:
        rect(fruit_x, fruit_y, g.fruit_size, g.fruit_size, (255, 120, 120))
    for life in range(max(int(round(lives)), 0)):
        rect(2.0 + 3.0 * life, 2.0, 2.0, 2.0, (128, 128, 128))
    return canvas.image


#: the puddle mask of each Puddle World env drawn so far (computed once per env, dropped with it)
_PUDDLE_MASKS: weakref.WeakKeyDictionary[Any, np.ndarray] = weakref.WeakKeyDictionary()


def _puddle_mask(env: Any, size: int = 400) -> np.ndarray:
    """Pixels where ``env``'s puddle penalty is non-zero (image rows, y down), computed once per env."""
    import torch

    mask = _PUDDLE_MASKS.get(env)
    if mask is None:
        centres = (np.arange(size) + 0.5) / size
        px, py = np.meshgrid(centres, centres[::-1])
        points = torch.as_tensor(np.stack([px.ravel(), py.ravel()], axis=1), dtype=torch.float32)
        penalty = env.puddle_penalty(points.to(env.device)).abs().cpu()
        mask = (penalty > 0.01 * float(penalty.max())).reshape(size, size).numpy()
        _PUDDLE_MASKS[env] = mask
    return mask


# ====================================================================================== gridworlds
def bordered_gridworld_frame(env: Any, cell: int, cell_px: int = 40) -> np.ndarray:
    """Bordered Gridworld: border ring dark grey, interior white, start light blue, goal green, agent red."""
    rows, cols = env.grid_rows, env.grid_cols
    canvas = Canvas(cols * cell_px, rows * cell_px, (60, 60, 60))

    def fill(index: int, color: Sequence[int], margin: float = 1.0) -> None:
        row, col = divmod(int(index), cols)
        y_top = (rows - row) * cell_px
        canvas.rectangle(
            col * cell_px + margin, y_top - cell_px + margin, (col + 1) * cell_px - margin, y_top - margin, color
        )

    for row in range(1, rows - 1):
        for col in range(1, cols - 1):
            fill(row * cols + col, WHITE)
    fill(env.start_state, (170, 200, 255))
    fill(env.goal_state, (0, 170, 0))
    row, col = divmod(int(cell), cols)
    canvas.circle((col + 0.5) * cell_px, (rows - row - 0.5) * cell_px, cell_px * 0.3, (204, 0, 0))
    return canvas.image


def virtual_office_frame(cell: int, facing: int, cell_px: int = 40) -> np.ndarray:
    """Virtual Office seen from above: walls grey, hallway blue, rooms green, goals gold (major) / olive (minor),
    the agent a red triangle pointing where it faces (0 N, 1 E, 2 S, 3 W)."""
    from emphatic_rl.envs.office import GOAL_REWARDS, GRID_SIZE, LAYOUT

    size = GRID_SIZE * cell_px
    canvas = Canvas(size, size)
    for y, line in enumerate(LAYOUT):
        for x, char in enumerate(line.replace(" ", "")[:GRID_SIZE]):
            if char == "W":
                color: Sequence[int] = (100, 100, 100)
            elif (x, y) in GOAL_REWARDS:
                color = (230, 190, 0) if GOAL_REWARDS[(x, y)] > 0 else (150, 160, 60)
            elif x < 4:
                color = (90, 140, 230)
            else:
                color = (80, 190, 90)
            y_top = size - y * cell_px
            canvas.rectangle(x * cell_px + 1, y_top - cell_px + 1, (x + 1) * cell_px - 1, y_top - 1, color)
    y, x = divmod(int(cell), GRID_SIZE)
    cx, cy = (x + 0.5) * cell_px, size - (y + 0.5) * cell_px
    dx, dy = ((0, 1), (1, 0), (0, -1), (-1, 0))[int(facing)]
    r = cell_px * 0.35
    canvas.polygon(
        [
            (cx + dx * r, cy + dy * r),
            (cx - dx * r - dy * r, cy - dy * r + dx * r),
            (cx - dx * r + dy * r, cy - dy * r - dx * r),
        ],
        (204, 0, 0),
    )
    return canvas.image


# ====================================================================================== MinAtar
_MINATAR_PALETTES: dict[int, np.ndarray] = {}


def minatar_palette(num_channels: int) -> np.ndarray:
    """``uint8[num_channels + 1, 3]``: black background, then MinAtar's cubehelix colour of each channel."""
    if num_channels not in _MINATAR_PALETTES:
        # cubehelix (Green 2011) with seaborn's default parameters, as MinAtar's display uses
        start, rot, gamma, hue, light, dark = 0.0, 0.4, 1.0, 0.8, 0.85, 0.15
        fractions = np.linspace(light, dark, num_channels)
        phi = 2 * np.pi * (start / 3 + rot * fractions)
        fg = fractions**gamma
        amplitude = hue * fg * (1 - fg) / 2
        red = fg + amplitude * (-0.14861 * np.cos(phi) + 1.78277 * np.sin(phi))
        green = fg + amplitude * (-0.29227 * np.cos(phi) - 0.90649 * np.sin(phi))
        blue = fg + amplitude * (1.97294 * np.cos(phi))
        colours = np.clip(np.stack([red, green, blue], axis=1), 0, 1)
        _MINATAR_PALETTES[num_channels] = np.concatenate(
            [np.zeros((1, 3), dtype=np.uint8), (colours * 255).round().astype(np.uint8)]
        )
    return _MINATAR_PALETTES[num_channels]


def minatar_frame(observation: np.ndarray, cell_px: int = 16) -> np.ndarray:
    """A MinAtar observation ``bool[10, 10, C]`` as ``uint8[10 cell_px, 10 cell_px, 3]``: each cell takes the
    colour of its highest set channel, black where none is set."""
    observation = np.asarray(observation)
    num_channels = observation.shape[-1]
    code = (observation.astype(np.int64) * np.arange(1, num_channels + 1)).max(axis=-1)
    image = minatar_palette(num_channels)[code]
    return np.repeat(np.repeat(image, cell_px, axis=0), cell_px, axis=1)


# ====================================================================================== dispatch
def _state_row(env: Any, index: int) -> list[float]:
    return env.state[index].tolist()


_RENDERERS: dict[str, Callable[[Any, int], np.ndarray]] = {
    "cartpole": lambda env, i: cartpole_frame(_state_row(env, i)),
    "mountain-car": lambda env, i: mountain_car_frame(_state_row(env, i)),
    "acrobot": lambda env, i: acrobot_frame(_state_row(env, i)),
    "pendulum": lambda env, i: pendulum_frame(_state_row(env, i)),
    "puddle-world": lambda env, i: puddle_world_frame(env.position[i].tolist(), _puddle_mask(env)),
    "puddle-world-gaussian": lambda env, i: puddle_world_frame(env.position[i].tolist(), _puddle_mask(env)),
    "catcher": lambda env, i: catcher_frame(_state_row(env, i), env.geometry),
    "bordered-gridworld": lambda env, i: bordered_gridworld_frame(env, int(env.cell[i])),
    "virtual-office": lambda env, i: virtual_office_frame(int(env.cell[i]), int(env.facing[i])),
}

#: frames of the scalar single-env implementations, from their ``state`` list
SCALAR_RENDERERS: dict[str, Callable[[Sequence[float]], np.ndarray]] = {
    "cartpole": cartpole_frame,
    "mountain-car": mountain_car_frame,
    "acrobot": acrobot_frame,
    "pendulum": pendulum_frame,
}


def renderable(env_name: str) -> bool:
    """Whether :func:`render_frame` can draw the native env registered as ``env_name``."""
    return env_name in _RENDERERS or env_name.startswith("minatar-")


def render_fps(env_name: str) -> int:
    """Frames per second for ``env_name`` (see :data:`RENDER_FPS`)."""
    for prefix, fps in RENDER_FPS.items():
        if env_name.startswith(prefix):
            return fps
    return 30


def render_frame(env: Any, index: int = 0) -> np.ndarray:
    """Draw copy ``index`` of the native env ``env`` (registered name ``env.name``) as ``uint8[H, W, 3]``.

    Raises:
        ValueError: the env has no picture (see :func:`renderable`).
    """
    name = env.name
    if name.startswith("minatar-"):
        return minatar_frame(env._observe()[index].cpu().numpy())
    if name not in _RENDERERS:
        raise ValueError(f"env {name!r} cannot be rendered; renderable: {', '.join(sorted(_RENDERERS))}, minatar-*")
    return _RENDERERS[name](env, index)
