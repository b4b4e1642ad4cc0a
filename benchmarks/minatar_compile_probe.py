"""Would ``torch.compile`` make native MinAtar fast enough on CPU? A probe on Breakout (the figures behind the
``torch.compile`` table in ``benchmarks/results/minatar_compile_probe.md``; the torch backend).

Measured, microseconds per batch step of ``N`` copies (1 thread, best of ``--rounds``):

1. ``eager env.step``: the env as it is;
2. ``compile(env.step)``: ``torch.compile`` of the method as it is (the generator draws break the graph);
3. ``pure step``: a state-in/state-out step with the uniform numbers drawn outside and passed in, eager and compiled
   with ``fullgraph=True``;
4. the ball/brick logic with and without the per-row ``amax`` over the 30 brick cells (Breakout's refill test),
   eager and compiled: the short-row reduction is what makes the fused kernel slow;
5. the pure step compiled with ``cpp.simdlen=1`` (scalar code).

Not used by the library: the native games stay eager. Run (compiling takes a minute or two):

    .venv/bin/python benchmarks/minatar_compile_probe.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from emphatic_rl.envs import make_env

STATE = ("ball_x", "ball_y", "ball_dir", "paddle_x", "last_x", "last_y", "strike", "bricks")
CONSTANTS = ("_dx", "_dy", "_flip_x", "_flip_y", "_flip_xy", "_brick_cells", "_bottom_row_cells", "_point_channels",
             "_ones_3")


class ColumnSource:
    """A ``RandomSource`` that hands out columns of a pre-drawn ``[N, K]`` uniform tensor."""

    def __init__(self, uniforms: torch.Tensor, first: int) -> None:
        self.uniforms, self.next = uniforms, first

    def uniform(self, shape, mask):
        self.next += 1
        return self.uniforms[:, self.next - 1]

    def integers(self, low, high, shape, mask):
        return low + (self.uniform(shape, mask) * (high - low)).long()


def pure_step_fn(env) -> Callable:
    """``(state, action, uniforms, last_action) -> (state, reward, terminal, final_obs, obs, last_action)``."""
    game = type(env)

    class View:  # the env's methods run on this stand-in, so the state is passed in and out explicitly
        pass

    def view_of(state, uniforms, first):
        v = View()
        v.__dict__.update(state)
        v.num_envs, v.device, v.random_source = env.num_envs, env.device, ColumnSource(uniforms, first)
        for name in CONSTANTS:
            setattr(v, name, getattr(env, name))
        return v

    def step(state, action, uniforms, last_action):
        full_action = torch.where(uniforms[:, 0] < 0.1, last_action, action)
        v = view_of(state, uniforms, first=2)
        reward, terminal = game._game_step(v, full_action)
        final_obs = game._observe_torch(v)
        v.random_source.next = 1
        game._reset_where_torch(v, terminal)
        return {k: getattr(v, k) for k in STATE}, reward, terminal, final_obs, game._observe_torch(v), full_action

    return step


def ball_logic(with_refill: bool) -> Callable:
    dx, dy = torch.tensor((-1, 1, 1, -1)), torch.tensor((-1, -1, 1, 1))
    flip_x, flip_y = torch.tensor((1, 0, 3, 2)), torch.tensor((3, 2, 1, 0))

    def logic(x, y, direction, bricks, strike):
        new_x, new_y = x + dx[direction], y + dy[direction]
        direction = torch.where((new_x < 0) | (new_x > 9), flip_x[direction], direction)
        new_x = new_x.clamp(0, 9)
        hit_top = new_y < 0
        new_y = new_y.clamp(min=0)
        direction = torch.where(hit_top, flip_y[direction], direction)
        index = ((new_y - 1).clamp(0, 2) * 10 + new_x).unsqueeze(1)
        here = bricks.gather(1, index).squeeze(1).bool()
        breaks = ~hit_top & (new_y >= 1) & (new_y <= 3) & here & ~strike
        bricks = bricks.scatter(1, index, (here & ~breaks).to(torch.uint8).unsqueeze(1))
        if with_refill:
            refill = (new_y == 9) & (bricks.amax(1) == 0)
            bricks = bricks | refill.to(torch.uint8).unsqueeze(1)
        return new_x, new_y, direction, bricks

    return logic


def timed(fn: Callable[[], object], rounds: int, calls: int) -> float:
    for _ in range(10):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-envs", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = args.num_envs
    env = make_env("minatar-breakout", n, check_actions=False, backend="torch")
    env.reset(seed=0)
    actions = torch.randint(0, 6, (64, n), generator=torch.Generator().manual_seed(0))
    counter = [0]

    def next_action() -> torch.Tensor:
        counter[0] += 1
        return actions[counter[0] % 64]

    rows = [("eager env.step", timed(lambda: env.step(next_action()), args.rounds, args.calls))]
    compiled_method = torch.compile(env.step)
    rows.append(("compile(env.step)", timed(lambda: compiled_method(next_action()), args.rounds, args.calls)))

    pure = pure_step_fn(env)
    carry = {"state": {k: getattr(env, k) for k in STATE}, "last": torch.zeros(n, dtype=torch.int64)}

    def pure_stepper(fn: Callable) -> Callable[[], None]:
        def run() -> None:
            out = fn(carry["state"], next_action(), torch.rand(n, 3), carry["last"])
            carry["state"], carry["last"] = out[0], out[5]

        return run

    rows.append(("pure step, eager", timed(pure_stepper(pure), args.rounds, args.calls)))
    compiled_pure = torch.compile(pure, fullgraph=True, dynamic=False)
    rows.append(("pure step, compiled", timed(pure_stepper(compiled_pure), args.rounds, args.calls)))

    x, y = torch.randint(0, 10, (n,)), torch.randint(0, 10, (n,))
    direction, strike = torch.randint(0, 4, (n,)), torch.rand(n) < 0.5
    bricks = torch.randint(0, 2, (n, 30), dtype=torch.uint8)
    for with_refill in (False, True):
        logic = ball_logic(with_refill)
        compiled_logic = torch.compile(logic, fullgraph=True, dynamic=False)
        label = "ball/brick logic" + (" + refill amax" if with_refill else "")
        rows.append((label + ", eager", timed(lambda f=logic: f(x, y, direction, bricks, strike), args.rounds,
                                               args.calls)))
        rows.append((label + ", compiled", timed(lambda f=compiled_logic: f(x, y, direction, bricks, strike),
                                                  args.rounds, args.calls)))

    scalar_pure = torch.compile(pure, fullgraph=True, dynamic=False, options={"cpp.simdlen": 1})
    rows.append(("pure step, compiled, cpp.simdlen=1", timed(pure_stepper(scalar_pure), args.rounds, args.calls)))

    print(f"| MinAtar Breakout, N = {n}, 1 thread | us per batch step |")
    print("|---|---:|")
    for label, micros in rows:
        print(f"| {label} | {micros:,.0f} |")


if __name__ == "__main__":
    main()
