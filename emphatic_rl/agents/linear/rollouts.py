"""Fused, compacting evaluation of linear softmax policies with tile-coded features (numba, CPU).

What it computes: the evaluation rollouts of ``train.evaluate`` (the episodic objective) and
``sweep.evaluate_excursions`` (the excursions objective) for an :class:`ActorCritic` with :class:`TileCoder` actor
features on :class:`MountainCar` or :class:`PuddleWorld`: for every member ``p`` and episode ``e`` one rollout of the
target policy ``pi_p(a|s) ∝ exp(theta_{p,a} . x(s))`` (a softmax draw, or the argmax with ``evaluation="greedy"``),
undiscounted return and length, each episode cut at ``min(eval_max_steps, env.max_episode_steps)`` steps.

How: one compiled call does the env's transition, the tile indices, the logits, the action draw and the
bookkeeping for all rollouts, looping over time inside the kernel. Members run one after the other, or spread
over numba's threads when torch has more than one (``TrainConfig.num_threads``; see :func:`linear_rollouts`);
within a member its ``E`` rollouts advance together from an index list of running rollouts, and a rollout that
ends is swap-removed from it, so the work is the sum of the real episode lengths, not ``P * E`` times the slowest.
Frozen (diverged) members are skipped: return NaN, length 0, no step taken. ``theta`` may be float32 or float64;
the logits are summed in float64 (a float32 ``theta`` converts exactly).

Parity with the torch envs: the transitions are the env kernels' own (``emphatic_rl.envs.kernels``, which the numba env
backend steps through, with the env classes' constants), written in the env's dtype and in its order of operations
(Mountain Car in float64, Puddle World in float32, the puddle distance's norm as torch's CPU ``vector_norm`` computes
it), so that from the same state and action (and noise) one step gives the same state, reward and termination. The
exceptions: Mountain Car's ``cos`` is libm's here and torch's vectorised one there (they differ by one ulp on a small
fraction of calls), and the logits' sum is rounded differently (float64 here). ``tests/agents/test_linear_rollouts.py``
checks the dynamics step for step against the envs, the tile indices against :class:`TileCoder`, greedy evaluations
against the torch evaluator exactly and sampled ones statistically.

Start states: the episodic objective's are drawn by the env itself (``eval_env.reset(seed)`` with the torch
evaluator's seed), so both evaluators start from the very same states and the start distribution cannot drift;
the excursions objective's are given.

Random numbers (counter-based, so the result does not depend on the order in which rollouts finish, nor on the
number of threads): ``key = splitmix64(seed ^ KEY_DOMAIN)`` where ``seed`` is the torch evaluator's reset seed,
``(config.seed * 1_000_003 + step) % 2**63`` (episodic) or that ``+ 12_345`` (excursions), so an evaluation is a
deterministic function of ``(config.seed, step)``. Rollout ``(p, e)`` owns the stream
``s = mix(mix(key + (p + 1) G) + (e + 1) G)`` (``mix`` the SplitMix64 finaliser, ``G = 0x9E3779B97F4A7C15``) and
its ``j``-th number at step ``t`` is ``mix(s + (3 t + j + 1) G)``, top 53 bits as a uniform in ``[0, 1)``:
``j = 0`` the action (inverse CDF on the softmax probabilities; uniform over the actions if a logit is NaN),
``j = 1, 2`` Puddle World's Gaussian noise (Box-Muller). The agent's torch generator is not used, so
checkpoints and resumes are unaffected.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import numba
import numba.core.cpu
import numpy as np
import torch
from numba import njit, prange

from emphatic_rl.envs.classic import MountainCar
from emphatic_rl.envs.kernels import mountain_car_dynamics, puddle_world_dynamics
from emphatic_rl.envs.puddle_world import PuddleWorld
from emphatic_rl.features import TileCoder
from emphatic_rl.seeding import stream_seed

__all__ = [
    "BACKENDS",
    "KernelEnv",
    "RolloutResult",
    "kernel_env",
    "rollout_key",
    "tile_indices",
    "transition_trajectory",
    "linear_rollouts",
    "unsupported_reason",
    "fused_evaluate",
    "fused_excursions",
]

BACKENDS = ("auto", "torch", "numba")
#: the kernel keeps the logits in registers, for at most this many actions (Mountain Car 3, Puddle World 4)
MAX_ACTIONS = 4
MOUNTAIN_CAR = 0
PUDDLE_WORLD = 1
#: xor-ed into the evaluator's seed before mixing, so the kernel's key is not the torch generator's seed
KEY_DOMAIN = 0x6C696E6561722D72  # "linear-r"
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1

#: Constructor arguments of each supported env that the kernel reproduces. An env class that grows another option
#: (noise, another reward...) is not run by the kernel until that option is added here and to the kernel.
_KNOWN_OPTIONS = {
    MountainCar: {"self", "num_envs", "device", "max_episode_steps", "check_actions", "goal_velocity"},
    PuddleWorld: {"self", "num_envs", "device", "max_episode_steps", "check_actions"},
}

#: cached compilation and, where this numba has the (private) option, no reference counting: the kernels allocate
#: nothing (as the MinAtar kernels, ``emphatic_rl/envs/minatar/kernels/common.py``)
_OPTIONS: dict = {"cache": True}
if hasattr(numba.core.cpu.CPUTargetOptions, "_nrt"):
    _OPTIONS["_nrt"] = False


# ====================================================================================================== env constants
@dataclass(frozen=True)
class KernelEnv:
    """An env's dynamics as the kernel takes them (see :func:`kernel_env`).

    The dynamics themselves are the env kernels' (``emphatic_rl.envs.kernels.mountain_car_dynamics`` and
    ``puddle_world_dynamics``: one home for each task's equations), whose constants are the env classes'. ``params``
    (float64) holds what varies per instance: Mountain Car ``[goal_velocity]``, Puddle World ``[NOISE_STD]``.
    ``segments`` (float32 ``[n, 4]``: start x, y, end x, y) are Puddle World's puddles (empty for Mountain Car).
    ``state_name`` is the env's ``[N, 2]`` state tensor; ``max_episode_steps`` 0 means no time limit.
    """

    kind: int
    name: str
    state_name: str
    params: np.ndarray
    segments: np.ndarray
    num_actions: int
    max_episode_steps: int


def _unsupported_env_reason(env: Any) -> str | None:
    cls = type(env)
    if cls not in _KNOWN_OPTIONS:
        return f"env {type(env).__name__} has no kernel (supported: MountainCar, PuddleWorld)"
    unknown = set(inspect.signature(cls.__init__).parameters) - _KNOWN_OPTIONS[cls]
    if unknown:
        return f"{cls.__name__} has option(s) {sorted(unknown)} that the kernel does not reproduce"
    if env.device.type != "cpu":
        return f"env is on {env.device}, the kernel runs on the CPU"
    return None


def kernel_env(env: Any) -> KernelEnv:
    """The constants of ``env`` (a :class:`MountainCar` or :class:`PuddleWorld`), read from the instance and class.

    Raises ``ValueError`` for any other env (or one with an option the kernel does not reproduce).
    """
    reason = _unsupported_env_reason(env)
    if reason is not None:
        raise ValueError(reason)
    limit = int(env.max_episode_steps) if env.max_episode_steps is not None else 0
    if isinstance(env, MountainCar):
        params = np.array([env.goal_velocity], dtype=np.float64)
        return KernelEnv(MOUNTAIN_CAR, type(env).name, "state", params, np.zeros((0, 4), np.float32),
                         env.action_spec.n, limit)
    from emphatic_rl.envs import puddle_world as pw

    params = np.array([pw.NOISE_STD], dtype=np.float64)
    segments = torch.cat([env.segment_starts, env.segment_ends], dim=1).detach().cpu().numpy().astype(np.float32)
    return KernelEnv(PUDDLE_WORLD, type(env).name, "position", params, np.ascontiguousarray(segments),
                     env.action_spec.n, limit)


@dataclass(frozen=True)
class _Tiles:
    low: np.ndarray  # float32 [D]
    width: np.ndarray  # float32 [D]
    offsets: np.ndarray  # float32 [K, D]
    grid: np.ndarray  # int64 [D]
    strides: np.ndarray  # int64 [D]
    tiling_base: np.ndarray  # int64 [K]
    bias_index: int  # -1: no bias feature


def _tiles(coder: TileCoder) -> _Tiles:
    def f32(t: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))

    def i64(t: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.int64))

    return _Tiles(f32(coder.low), f32(coder.width), f32(coder.offsets), i64(coder.grid), i64(coder.strides),
                  i64(coder.tiling_base), coder.num_features - 1 if coder.bias else -1)


def rollout_key(seed: int) -> int:
    """The kernel's 64-bit key of an evaluator seed: ``splitmix64(seed ^ KEY_DOMAIN)`` (module docstring)."""
    z = ((int(seed) ^ KEY_DOMAIN) + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


# ====================================================================================================== kernel pieces
# Helpers take scalars only (a helper that binds arrays costs several times its arithmetic); arrays are indexed by
# the kernels.
@njit(inline="always", **_OPTIONS)
def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(inline="always", **_OPTIONS)
def _uniform(stream, t, j):
    """The ``j``-th uniform number in ``[0, 1)`` of a rollout's stream at step ``t``."""
    counter = np.uint64(3 * t + j + 1)
    x = _mix64(stream + counter * np.uint64(_GOLDEN))
    return np.float64(np.int64(x >> np.uint64(11))) * (1.0 / 9007199254740992.0)


@njit(inline="always", **_OPTIONS)
def _stream(key, p, e):
    golden = np.uint64(_GOLDEN)
    s = _mix64(key + np.uint64(p + 1) * golden)
    return _mix64(s + np.uint64(e + 1) * golden)


@njit(inline="always", **_OPTIONS)
def _coordinate(value, low, offset, width, top):
    """``TileCoder.coordinates`` of one float32 value: ``floor((value - low + offset) / width)`` in float32,
    clipped to ``[0, top]`` (the floor as a truncation corrected downwards: equal for these finite values)."""
    shifted = (value - low + offset) / width
    c = np.int64(shifted)
    if np.float32(c) > shifted:
        c -= 1
    return min(max(c, 0), top)


@njit(inline="always", **_OPTIONS)
def _tile_index(obs0, obs1, low0, low1, offset0, offset1, width0, width1, top0, top1, stride0, stride1, base):
    """Feature index of one tiling for the float32 observation ``(obs0, obs1)``, as ``TileCoder.__call__``."""
    return (base + _coordinate(obs0, low0, offset0, width0, top0) * stride0
            + _coordinate(obs1, low1, offset1, width1, top1) * stride1)


@njit(inline="always", **_OPTIONS)
def _normal_pair(stream, t):
    """Two standard normal numbers (Box-Muller) from draws 1 and 2 of step ``t``."""
    u1 = 1.0 - _uniform(stream, t, 1)  # (0, 1]
    u2 = _uniform(stream, t, 2)
    radius = math.sqrt(-2.0 * math.log(u1))
    angle = 2.0 * math.pi * u2
    return radius * math.cos(angle), radius * math.sin(angle)


@njit(inline="always", **_OPTIONS)
def _choose(l0, l1, l2, l3, num_actions, greedy, u):
    """The action from the logits ``l0 .. l{num_actions - 1}``: the argmax (lowest index on ties; NaN wins, as torch's
    argmax), or the inverse CDF of the softmax at the uniform number ``u`` (uniform over the actions if a logit is
    NaN or every logit is -inf)."""
    if greedy:
        action = 0
        best = l0
        for a in range(1, num_actions):
            value = l1 if a == 1 else (l2 if a == 2 else l3)
            if value > best or (math.isnan(value) and not math.isnan(best)):
                action = a
                best = value
        return action
    top = l0
    if num_actions > 1:
        top = max(top, l1)
    if num_actions > 2:
        top = max(top, l2)
    if num_actions > 3:
        top = max(top, l3)
    # exp(l - top), 1 for the largest logits without calling exp (so +inf logits share the probability)
    w0 = 1.0 if l0 == top else math.exp(l0 - top)
    w1 = 0.0 if num_actions < 2 else (1.0 if l1 == top else math.exp(l1 - top))
    w2 = 0.0 if num_actions < 3 else (1.0 if l2 == top else math.exp(l2 - top))
    w3 = 0.0 if num_actions < 4 else (1.0 if l3 == top else math.exp(l3 - top))
    total = w0 + w1 + w2 + w3
    if not math.isfinite(total):  # NaN exactly when a logit is NaN or every logit is -inf
        return min(np.int64(u * num_actions), num_actions - 1)
    target = u * total
    cumulative = 0.0
    action = 0
    for a in range(num_actions):
        weight = w0 if a == 0 else (w1 if a == 1 else (w2 if a == 2 else w3))
        if weight > 0.0:  # never an action of probability 0, even where rounding leaves target >= total
            cumulative += weight
            action = a
            if target < cumulative:
                break
    return action


@njit(**_OPTIONS)
def _member_rollouts(p, kind, params, segments, theta, low, width, offsets, grid, strides, tiling_base,
                     bias_index, starts, key, max_steps, greedy, state, active, streams, returns,
                     lengths):
    """All ``E`` rollouts of member ``p``; returns the number of steps taken (the sum of their lengths).

    The ``E`` rollouts advance together, one step each per sweep over ``active[p, :running]``; a rollout that ends
    is swap-removed from that list.
    """
    num_episodes = returns.shape[1]
    num_actions = theta.shape[1]  # 1 to MAX_ACTIONS
    a1, a2, a3 = min(1, num_actions - 1), min(2, num_actions - 1), min(3, num_actions - 1)
    num_tilings = tiling_base.shape[0]
    source = np.int64(0) if starts.shape[0] == 1 else np.int64(p)
    for e in range(num_episodes):
        active[p, e] = e
        state[p, e, 0] = starts[source, e, 0]
        state[p, e, 1] = starts[source, e, 1]
        streams[p, e] = _stream(key, p, e)
        returns[p, e] = 0.0
        lengths[p, e] = 0
    low0, low1, width0, width1 = low[0], low[1], width[0], width[1]
    top0, top1, stride0, stride1 = grid[0] - 1, grid[1] - 1, strides[0], strides[1]
    noise_std = np.float32(params[0]) if kind == PUDDLE_WORLD else np.float32(0.0)
    running = num_episodes
    taken = 0
    t = 0
    while running > 0:
        i = 0
        while i < running:
            e = active[p, i]
            stream = streams[p, e]
            # the float32 observation (Mountain Car's float64 state rounded; Puddle World's state is float32)
            obs0 = np.float32(state[p, e, 0])
            obs1 = np.float32(state[p, e, 1])
            # logits theta[p, a] . x(obs) for a = 0..3 (in registers; rows a1..a3 repeat the last action's when
            # there are fewer than 4), summed over the active features in TileCoder's order (bias last)
            l0 = 0.0
            l1 = 0.0
            l2 = 0.0
            l3 = 0.0
            for k in range(num_tilings):
                index = _tile_index(obs0, obs1, low0, low1, offsets[k, 0], offsets[k, 1], width0, width1, top0,
                                    top1, stride0, stride1, tiling_base[k])
                l0 += theta[p, 0, index]
                l1 += theta[p, a1, index]
                l2 += theta[p, a2, index]
                l3 += theta[p, a3, index]
            if bias_index >= 0:
                l0 += theta[p, 0, bias_index]
                l1 += theta[p, a1, bias_index]
                l2 += theta[p, a2, bias_index]
                l3 += theta[p, a3, bias_index]
            u = 0.0 if greedy else _uniform(stream, t, 0)
            action = _choose(l0, l1, l2, l3, num_actions, greedy, u)
            if kind == MOUNTAIN_CAR:
                position, velocity, terminated = mountain_car_dynamics(state[p, e, 0], state[p, e, 1], action,
                                                                       params[0])
                reward = np.float32(-1.0)
                state[p, e, 0] = position
                state[p, e, 1] = velocity
            else:
                z0, z1 = _normal_pair(stream, t)
                x, y, reward, terminated = puddle_world_dynamics(
                    obs0, obs1, action, noise_std * np.float32(z0), noise_std * np.float32(z1), segments
                )
                state[p, e, 0] = x
                state[p, e, 1] = y
            returns[p, e] += reward
            lengths[p, e] = t + 1
            taken += 1
            if terminated or t + 1 >= max_steps:
                running -= 1
                active[p, i] = active[p, running]  # swap-remove; slot i now holds a rollout not yet stepped
            else:
                i += 1
        t += 1
    return taken


@njit(**_OPTIONS)
def _run_member(p, kind, params, segments, theta, low, width, offsets, grid, strides, tiling_base, bias_index,
                starts, frozen, key, max_steps, greedy, state, active, streams, returns, lengths,
                member_steps):
    if frozen[p]:
        for e in range(returns.shape[1]):
            returns[p, e] = np.nan
            lengths[p, e] = 0
        member_steps[p] = 0
    else:
        member_steps[p] = _member_rollouts(
            p, kind, params, segments, theta, low, width, offsets, grid, strides, tiling_base, bias_index,
            starts, key, max_steps, greedy, state, active, streams, returns, lengths,
        )


@njit(**_OPTIONS)
def _rollout_kernel(kind, params, segments, theta, low, width, offsets, grid, strides, tiling_base,
                    bias_index, starts, frozen, key, max_steps, greedy, state, active, streams, returns, lengths,
                    member_steps):
    """Every member, one after the other."""
    for p in range(theta.shape[0]):
        _run_member(p, kind, params, segments, theta, low, width, offsets, grid, strides, tiling_base,
                    bias_index, starts, frozen, key, max_steps, greedy, state, active, streams, returns, lengths,
                    member_steps)


@njit(parallel=True, **_OPTIONS)
def _rollout_kernel_parallel(kind, params, segments, theta, low, width, offsets, grid, strides, tiling_base,
                             bias_index, starts, frozen, key, max_steps, greedy, state, active, streams, returns,
                             lengths, member_steps):
    """Members spread over numba's threads (each writes only its own rows: the same result as the serial kernel)."""
    for p in prange(theta.shape[0]):
        _run_member(np.int64(p), kind, params, segments, theta, low, width, offsets, grid, strides,
                    tiling_base, bias_index, starts, frozen, key, max_steps, greedy, state, active, streams, returns,
                    lengths, member_steps)


@njit(**_OPTIONS)
def _tile_indices_kernel(obs, low, width, offsets, grid, strides, tiling_base, bias_index, out):
    for n in range(obs.shape[0]):
        for k in range(tiling_base.shape[0]):
            out[n, k] = _tile_index(obs[n, 0], obs[n, 1], low[0], low[1], offsets[k, 0], offsets[k, 1], width[0],
                                    width[1], grid[0] - 1, grid[1] - 1, strides[0], strides[1], tiling_base[k])
        if bias_index >= 0:
            out[n, tiling_base.shape[0]] = bias_index


@njit(**_OPTIONS)
def _trajectory_kernel(kind, params, segments, starts, actions, noise, states, rewards, terminated):
    for n in range(starts.shape[0]):
        a = starts[n, 0]
        b = starts[n, 1]
        for t in range(actions.shape[0]):
            if kind == MOUNTAIN_CAR:
                a, b, done = mountain_car_dynamics(a, b, actions[t, n], params[0])
                reward = np.float32(-1.0)
            else:
                x, y, reward, done = puddle_world_dynamics(np.float32(a), np.float32(b), actions[t, n],
                                                           noise[t, n, 0], noise[t, n, 1], segments)
                a = np.float64(x)
                b = np.float64(y)
            states[t, n, 0] = a
            states[t, n, 1] = b
            rewards[t, n] = reward
            terminated[t, n] = done

# ====================================================================================================== public API
def tile_indices(coder: TileCoder, obs: np.ndarray | torch.Tensor) -> np.ndarray:
    """The kernel's active indices ``int64[N, num_active]`` of observations ``[N, 2]`` (as ``coder(obs)``)."""
    if coder.num_dims != 2:
        raise ValueError(f"the kernel's tile coding takes 2-d observations, this TileCoder has {coder.num_dims}")
    obs_np = np.ascontiguousarray(torch.as_tensor(obs).detach().cpu().numpy().astype(np.float32).reshape(-1, 2))
    tiles = _tiles(coder)
    out = np.empty((obs_np.shape[0], coder.num_active), dtype=np.int64)
    _tile_indices_kernel(obs_np, tiles.low, tiles.width, tiles.offsets, tiles.grid, tiles.strides,
                         tiles.tiling_base, tiles.bias_index, out)
    return out


def transition_trajectory(
    env: Any, starts: np.ndarray | torch.Tensor, actions: np.ndarray | torch.Tensor,
    noise: np.ndarray | torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kernel's transition applied ``T`` times, no reset, no time limit (for parity tests).

    Args:
        env: a supported env (its constants are used; its state is not touched).
        starts: ``[N, 2]`` start states. actions: ``int[T, N]``.
        noise: Puddle World's float32 noise ``[T, N, 2]`` (what ``env.normal`` would add; ignored by Mountain Car).

    Returns ``(states float64[T, N, 2], rewards float32[T, N], terminated bool[T, N])``, each after step ``t``.
    """
    spec = kernel_env(env)
    starts_np = np.ascontiguousarray(torch.as_tensor(starts).detach().cpu().numpy().astype(np.float64))
    actions_np = np.ascontiguousarray(torch.as_tensor(actions).detach().cpu().numpy().astype(np.int64))
    steps, count = actions_np.shape
    if noise is None:
        noise_np = np.zeros((steps, count, 2), dtype=np.float32)
    else:
        noise_np = np.ascontiguousarray(torch.as_tensor(noise).detach().cpu().numpy().astype(np.float32))
    states = np.empty((steps, count, 2), dtype=np.float64)
    rewards = np.empty((steps, count), dtype=np.float32)
    terminated = np.empty((steps, count), dtype=np.bool_)
    _trajectory_kernel(spec.kind, spec.params, spec.segments, starts_np, actions_np, noise_np, states,
                       rewards, terminated)
    return states, rewards, terminated


@dataclass
class RolloutResult:
    """What :func:`linear_rollouts` returns: per rollout ``returns float64[P, E]`` (NaN for frozen members),
    ``lengths int64[P, E]`` (0 for frozen members), ``member_steps int64[P]`` (steps taken by each member) and
    ``steps`` (their sum, the kernel's total work)."""

    returns: np.ndarray
    lengths: np.ndarray
    member_steps: np.ndarray
    steps: int


def linear_rollouts(
    theta: torch.Tensor | np.ndarray,
    coder: TileCoder,
    env: Any | KernelEnv,
    starts: torch.Tensor | np.ndarray,
    *,
    seed: int,
    max_steps: int,
    greedy: bool = False,
    frozen: torch.Tensor | np.ndarray | None = None,
    num_threads: int | None = None,
) -> RolloutResult:
    """Roll out every member's linear softmax policy from the given start states, in one compiled call.

    Args:
        theta: ``[P, A, d]`` float32 or float64 (``d = coder.num_features``), on the CPU.
        coder: the actor's tile coder (2-d observations).
        env: a :class:`MountainCar` / :class:`PuddleWorld` (or its :func:`kernel_env`): constants and time limit.
        starts: ``[P, E, 2]`` start states, or ``[E, 2]`` / ``[1, E, 2]`` shared by every member (env state layout:
            Mountain Car ``[position, velocity]``, Puddle World ``[x, y]``).
        seed: the evaluator seed; the random numbers are a function of ``(seed, member, episode, step)`` only.
        max_steps: cap on an episode's length (the env's own time limit also applies).
        greedy: argmax actions instead of softmax draws.
        frozen: ``bool[P]``: members skipped (NaN return, length 0, no step).
        num_threads: numba threads (default: ``torch.get_num_threads()``, at most numba's maximum).
    """
    spec = env if isinstance(env, KernelEnv) else kernel_env(env)
    theta_np = torch.as_tensor(theta).detach().cpu().numpy()
    if theta_np.dtype not in (np.float32, np.float64) or theta_np.ndim != 3:
        raise ValueError(f"theta must be float32 or float64 [P, A, d], got {theta_np.dtype} {theta_np.shape}")
    theta_np = np.ascontiguousarray(theta_np, dtype=np.float64)  # one compiled kernel; float32 theta is exact in it
    num_members, num_actions, num_features = theta_np.shape
    if (num_actions != spec.num_actions or not 1 <= num_actions <= MAX_ACTIONS
            or num_features != coder.num_features or coder.num_dims != 2):
        raise ValueError(
            f"theta {theta_np.shape} does not fit {spec.name} ({spec.num_actions} actions) with a TileCoder of "
            f"{coder.num_features} features over {coder.num_dims} dimensions"
        )
    starts_np = np.ascontiguousarray(torch.as_tensor(starts).detach().cpu().numpy().astype(np.float64))
    if starts_np.ndim == 2:
        starts_np = starts_np[None]
    if starts_np.ndim != 3 or starts_np.shape[0] not in (1, num_members) or starts_np.shape[2] != 2:
        raise ValueError(f"starts must be [P={num_members}, E, 2] or [E, 2], got {starts_np.shape}")
    num_episodes = starts_np.shape[1]
    if frozen is None:
        frozen_np = np.zeros(num_members, dtype=np.bool_)
    else:
        frozen_np = np.ascontiguousarray(torch.as_tensor(frozen).detach().cpu().numpy().astype(np.bool_))
        if frozen_np.shape != (num_members,):
            raise ValueError(f"frozen must be bool[P={num_members}], got shape {frozen_np.shape}")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
    cap = max_steps if spec.max_episode_steps == 0 else min(max_steps, spec.max_episode_steps)
    tiles = _tiles(coder)
    returns = np.empty((num_members, num_episodes), dtype=np.float64)
    lengths = np.empty((num_members, num_episodes), dtype=np.int64)
    member_steps = np.empty(num_members, dtype=np.int64)
    state = np.empty((num_members, num_episodes, 2), dtype=np.float64)
    active = np.empty((num_members, num_episodes), dtype=np.int64)
    streams = np.empty((num_members, num_episodes), dtype=np.uint64)
    threads = max(1, min(int(num_threads or torch.get_num_threads()), numba.config.NUMBA_NUM_THREADS, num_members))
    args = (spec.kind, spec.params, spec.segments, theta_np, tiles.low, tiles.width, tiles.offsets,
            tiles.grid, tiles.strides, tiles.tiling_base, tiles.bias_index, starts_np, frozen_np,
            np.uint64(rollout_key(seed)), cap, bool(greedy), state, active, streams, returns, lengths,
            member_steps)
    if threads == 1:
        _rollout_kernel(*args)
    else:  # compiled on first use (a few seconds)
        # numba's OpenMP threading layer shares the OpenMP runtime with torch: starting numba's threads (its first
        # get_num_threads) and setting their number change torch's. Torch's is read first and put back last.
        torch_threads = torch.get_num_threads()
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            _rollout_kernel_parallel(*args)
        finally:
            numba.set_num_threads(previous)
            torch.set_num_threads(torch_threads)
    return RolloutResult(returns, lengths, member_steps, int(member_steps.sum()))


# ====================================================================================================== integration
def unsupported_reason(agent: Any, env: Any, device: torch.device | str) -> str | None:
    """Why the kernel cannot evaluate ``agent`` on ``env`` (``None`` when it can): it needs the CPU, an
    :class:`ActorCritic` whose actor features are a 2-d :class:`TileCoder`, and a supported env."""
    from emphatic_rl.agents.linear.actor_critic import ActorCritic

    if torch.device(device).type != "cpu":
        return f"device {device} is not the CPU"
    if not isinstance(agent, ActorCritic):
        return f"agent {type(agent).__name__} is not a linear ActorCritic"
    if type(agent.features) is not TileCoder or agent.features.num_dims != 2:
        return "the agent's actor features are not a 2-d TileCoder"
    if agent.evaluation not in ("sample", "greedy"):
        return f"evaluation {agent.evaluation!r} has no kernel"
    theta = agent.policy.theta
    if theta.device.type != "cpu" or theta.dtype not in (torch.float32, torch.float64):
        return "the policy's theta is not a float32/float64 CPU tensor"
    reason = _unsupported_env_reason(env)
    if reason is not None:
        return reason
    if theta.shape[1] != env.action_spec.n or theta.shape[2] != agent.features.num_features:
        return "theta does not fit the env's actions and the features"
    return None


def _use_kernel(agent: Any, env: Any, device: Any, backend: str) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"unknown evaluation backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend == "torch":
        return False
    reason = unsupported_reason(agent, env, device)
    if reason is not None and backend == "numba":
        raise ValueError(f"evaluation backend 'numba' cannot run here: {reason}")
    return reason is None


def _means(result: RolloutResult) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean return and length ``[P]`` (float32, NaN for frozen members), averaged as the torch evaluator does."""
    returns = torch.from_numpy(result.returns).float().mean(dim=1)
    lengths = torch.from_numpy(result.lengths).float().mean(dim=1)
    lengths = torch.where(torch.isnan(returns), math.nan, lengths)
    return returns, lengths


def fused_evaluate(run: Any, step: int, backend: str = "auto") -> dict[str, torch.Tensor] | None:
    """``train.evaluate``'s episodic objective with the kernel, or ``None`` when the torch evaluator must run
    (``backend="torch"``, or ``"auto"`` and :func:`unsupported_reason` gives a reason; ``"numba"`` raises then).

    Start states: ``run.eval_env.reset(seed)`` with the torch evaluator's seed (the same states it starts from).
    Returns ``{"return": [P], "length": [P]}`` (float32, NaN for frozen members).
    """
    config, env, agent = run.config, run.eval_env, run.agent
    if not _use_kernel(agent, env, run.device, backend):
        return None
    population, episodes = config.population_size, config.eval_episodes
    seed = stream_seed(config.seed, "evaluation", step)
    spec = kernel_env(env)
    env.reset(seed=seed)
    starts = getattr(env, spec.state_name).view(population, episodes, 2)
    result = linear_rollouts(agent.policy.theta, agent.features, spec, starts, seed=seed,
                             max_steps=config.eval_max_steps, greedy=agent.evaluation == "greedy",
                             frozen=agent.frozen)
    returns, lengths = _means(result)
    return {"return": returns, "length": lengths}


def fused_excursions(run: Any, starts: dict[str, Any], step: int, backend: str = "auto") -> torch.Tensor | None:
    """``sweep.evaluate_excursions`` with the kernel (mean return ``[P]``, NaN for frozen members), or ``None``
    when the torch evaluator must run (see :func:`fused_evaluate`). Seed: the torch evaluator's,
    ``(config.seed * 1_000_003 + step + 12_345) % 2**63``."""
    config, env, agent = run.config, run.eval_env, run.agent
    if not _use_kernel(agent, env, run.device, backend):
        return None
    spec = kernel_env(env)
    if set(starts) != {spec.state_name}:
        if backend == "numba":
            raise ValueError(f"excursion starts hold {sorted(starts)}, the kernel needs {spec.state_name!r}")
        return None
    seed = stream_seed(config.seed, "excursions", step)
    result = linear_rollouts(agent.policy.theta, agent.features, spec, starts[spec.state_name], seed=seed,
                             max_steps=config.eval_max_steps, greedy=agent.evaluation == "greedy",
                             frozen=agent.frozen)
    return _means(result)[0]
