"""Population engine vs per-run numpy loops, on Mountain Car: training and evaluation, time and memory.

What is compared, per population size ``P`` (``--populations``):

- **ours**: one batched ``ActorCritic`` of ``P`` learners fed by ``R = min(P, --runs)`` behaviour streams
  (member ``p = r * C + c`` is setting ``c`` on stream ``r``, the sweep layout: run-major), in the arms of ``--arms``:
  ``numba-f64``, ``numba-f32``, ``torch-f64``, ``torch-f32`` (backend / dtype; an arm the installed
  ``ActorCritic`` cannot build is reported as unavailable, e.g. before the ``backend``/``dtype`` arguments exist,
  where the torch float32 engine is the only one).
- **peer**: a per-run numpy loop written here in the style of the authors' public code: one (run, setting) learner
  at a time over its whole data, float64, sparse tile indices (9 active of 201 features), and per step: the tile
  indices of the next state, ``pi`` from a softmax of ``theta[:, idx].sum``, ``mu`` and ``rho``, the emphasis
  (follow-on trace or the learned ``fhat``), the TDRC(lambda) or ETD(lambda) critic with a dense trace, the actor
  update on the active indices (``pi`` recomputed there, as theirs does). It is timed on ``--peer-learners``
  learners and **scaled linearly** to ``P`` (a per-run loop is linear in the number of learners).
- **authors** (only with ``--authors-code PATH``, a checkout of github.com/gravesec/actor-critic-with-emphatic-
  weightings): their own ``run_ace`` function (the training loop body and its per-run setup) and their
  ``evaluate_policy``, imported from ``PATH`` at run time, timed on a few learners / rollouts and scaled linearly.
  Their code targets gym 0.18 and numpy 1.19; the shims applied at run time (only where the real package is
  missing) are printed with the results.

Cases (``--cases``): ``ace-direct-tdrc`` (ACE-direct, learned emphasis, TDRC(0) critic: the headline) and
``ace-etd`` (ACE, follow-on trace, ETD(0.5) critic: a dense-trace case). Data: native ``mountain-car`` (no time
limit), uniform random behaviour, generated once before any timing (as the authors pre-generate theirs), gamma 0.95,
step sizes from the J23 reduced grid (divided by 9 active features), cycled over the settings.

Training: each round runs every arm for about ``--round-seconds`` (at least ``--min-steps`` steps) and reports
nanoseconds per learner-step; our arms compute the tile indices of the ``R`` streams inside the timed loop (as
``agent.update`` does in a run). Evaluation: ``P x --eval-episodes`` rollouts capped at ``--eval-cap`` steps with one
fixed theta for every member (a hand-set energy-pumping policy, so episodes are not all at the cap; the table gives
the mean episode length), arms ``--eval-arms``: ``ours`` = ``emphatic_rl.train.evaluate(run, step)`` on a ``Run``
from ``build_run`` (whatever path it picks: the compiled rollouts where they apply), ``ours-torch`` = the same with
``backend="torch"`` (the batched torch loop; only up to ``--eval-torch-max-population``, it is ~10x slower), the
peer and the authors one episode at a time (numpy env step + tile indices + softmax sample), costed per
rollout-step and scaled to the rollout-steps ours took. Evaluation does not depend on the critic: it is measured
once, with the first case's agent.

Rounds are interleaved (A B C A B C ...); the table reports the median over ``--rounds`` and the speed-up as the
median [min - max] of the per-round ratios. Each arm runs in its own fresh subprocess per (case, phase, P); its peak
memory is that process's peak resident size, ``VmHWM`` from ``/proc/self/status`` (``ru_maxrss`` where there is no
``/proc``; on Linux a forked child's ``ru_maxrss`` starts from its parent's size, hence VmHWM), imports included;
the resident size right after the imports is given as the baseline, and our population's state tensors' bytes
separately. One thread by default (``--threads``): ``torch.set_num_threads``, ``NUMBA_NUM_THREADS`` and the BLAS
thread variables. The defaults take several minutes on a quiet machine (the P = 30000 evaluation, 1.5 M rollouts
per round, is the longest part); the header of the output gives the time taken and the load average.

Before any timing the script checks that the peer and our engine compute the same learners: 1000 steps on shared
data, 6 learners per case, theta compared (float64 arms to 1e-9 relative, float32 to 1e-4); any difference stops
the script with exit code 1. With ``--authors-code``, their ``run_ace`` is compared with the peer the same way
(only skipped, and said so, if their float64 tile coder puts an observation in another tile than ours does).

    python benchmarks/populations.py --authors-code /path/to/their/checkout --study \
        --out benchmarks/results/populations_cpu.md
    python benchmarks/populations.py --populations 1,30 --eval-populations 1 --rounds 2   # a quick look

``--study`` times ``emphatic-rl sweep experiments/j23_mountain_car.toml --only <--study-variant> --out <tmp>`` and
sets it against an estimate of the authors' CPU time for the same work: their (or the peer's) measured cost per
learner-step x the study's learner-steps + their cost per rollout-step x the rollout-steps the study actually took.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import math
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = "@@populations-bench "

# Mountain Car tile coding (emphatic_rl.agents.linear.ace.TILE_LAYOUTS["mountain-car"]): 4x4 tiles (5x5 inside), 8
# tilings, bias: 201 features, 9 active. Our TileCoder's
# layout: index = k * 25 + c_position * 5 + c_velocity, bias last.
LOW = (-1.2, -0.07)
HIGH = (0.6, 0.07)
TILES = (4, 4)
TILINGS = 8
NUM_ACTIONS = 3
GAMMA = 0.95

CASES: dict[str, dict[str, Any]] = {
    "ace-direct-tdrc": {
        "preset": "ace-direct", "critic": "tdrc", "critic_lambda": 0.0,
        "label": "ACE-direct (learned emphasis), TDRC(0) critic",
        "grid": {"alpha_actor": [1.0, 0.25, 0.0625, 0.015625], "alpha_critic": [0.5, 0.125, 0.03125],
                 "alpha_emphasis": [0.25, 0.0625]},
    },
    "ace-etd": {
        "preset": "ace", "critic": "etd", "critic_lambda": 0.5,
        "label": "ACE (follow-on trace), ETD(0.5) critic",
        "grid": {"alpha_actor": [1.0, 0.25, 0.0625, 0.015625], "alpha_critic": [0.0625, 0.015625, 0.00390625]},
    },
}
OUR_ARMS = ("numba-f64", "numba-f32", "torch-f64", "torch-f32")
ALL_ARMS = (*OUR_ARMS, "peer", "authors")
#: evaluation: ``ours`` = ``train.evaluate(run, step)`` (whatever it picks: the compiled rollouts where they apply),
#: ``ours-torch`` = ``train.evaluate(run, step, backend="torch")`` (the batched torch loop)
OUR_EVAL_ARMS = ("ours", "ours-torch")
EVAL_ARMS = (*OUR_EVAL_ARMS, "peer", "authors")
DEFAULT_ARMS = "numba-f64,numba-f32,torch-f32,peer,authors"
DEFAULT_EVAL_ARMS = "ours,ours-torch,peer,authors"
DEFAULT_POPULATIONS = "1,30,300,3000,30000"
DEFAULT_EVAL_POPULATIONS = "1,30,300,3000,30000"


# ================================================================================================ shared helpers
def settings_of(case: str, population: int, runs: int) -> tuple[int, list[dict[str, float]], list[int]]:
    """``(R, per-member settings, stream_of)`` for ``P`` learners: ``R = min(P, runs)`` streams, ``C = ceil(P / R)``
    settings cycled over the case's grid; member ``p = r * C + c`` (the sweep layout: run-major)."""
    streams = min(population, runs)
    per_stream = -(-population // streams)
    grid = CASES[case]["grid"]
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    members = [combos[(p % per_stream) % len(combos)] for p in range(population)]
    return streams, members, [p // per_stream for p in range(population)]


def spread(population: int, count: int) -> list[int]:
    """``count`` member indices spread evenly over ``0 .. P-1``."""
    count = max(1, min(count, population))
    return sorted({round(i * (population - 1) / max(count - 1, 1)) for i in range(count)})


def load_data(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def make_data(streams: int, steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniform random behaviour on the native ``mountain-car`` env (no time limit): ``[T, R, ...]`` arrays.

    ``final_obs`` is the true next state (what our engine learns from); ``next_obs`` the observation the stream
    continues from (the reset state after a termination), which is how the authors store ``s_tp1``.
    """
    import torch

    from emphatic_rl.agents.base import UniformRandomBehaviour
    from emphatic_rl.envs import make_env

    env = make_env("mountain-car", num_envs=streams, max_episode_steps=None)
    behaviour = UniformRandomBehaviour(env.action_spec)
    generator = torch.Generator().manual_seed(seed)
    obs = env.reset(seed=seed)
    rows: dict[str, list[Any]] = {k: [] for k in ("obs", "action", "reward", "terminated", "final_obs",
                                                   "next_obs", "log_prob")}
    with torch.no_grad():
        for _ in range(steps):
            action, log_prob = behaviour.act(obs, generator)
            result = env.step(action)
            for key, value in (("obs", obs), ("action", action), ("reward", result.reward),
                               ("terminated", result.terminated | result.truncated),
                               ("final_obs", result.final_obs), ("next_obs", result.obs), ("log_prob", log_prob)):
                rows[key].append(value.numpy().copy())
            obs = result.obs
    data = {k: np.stack(v) for k, v in rows.items()}
    # uniform over 3 actions: log mu = -log 3 exactly in float64 (the behaviour hands it in float32), so that a
    # float64 learner's rho = pi / mu is the one the peer computes
    data["log_prob"] = np.full(data["log_prob"].shape, -math.log(NUM_ACTIONS))
    return data


def pumping_theta(scale: float) -> np.ndarray:
    """A fixed energy-pumping policy in our feature layout, ``[A, d]`` float64: each tile prefers pushing in the
    direction of its velocity centre (``+scale`` for that push, ``-scale`` for the other; no push 0)."""
    width = np.array([(HIGH[d] - LOW[d]) / TILES[d] for d in range(2)])
    grid = np.array(TILES) + 1
    theta = np.zeros((NUM_ACTIONS, TILINGS * int(grid.prod()) + 1))
    for k in range(TILINGS):
        offset = ((2 * np.arange(2) + 1) * k / TILINGS % 1.0) * width
        for c0 in range(grid[0]):
            for c1 in range(grid[1]):
                centre = LOW[1] - offset[1] + (c1 + 0.5) * width[1]
                index = k * int(grid.prod()) + c0 * grid[1] + c1
                direction = 2 if centre > 0 else 0
                theta[direction, index] = scale
                theta[2 - direction, index] = -scale
    return theta


def our_tile_coder() -> Any:
    from emphatic_rl.features import TileCoder

    return TileCoder(LOW, HIGH, TILES, TILINGS, bias=True)


def engine_keywords(arm: str) -> dict[str, Any] | None:
    """Constructor keywords of an arm for the installed ``ActorCritic``, or None if it cannot build that arm."""
    import torch

    from emphatic_rl.agents.linear.actor_critic import ActorCritic

    backend, precision = arm.split("-")
    parameters = inspect.signature(ActorCritic.__init__).parameters
    keywords: dict[str, Any] = {}
    if "backend" in parameters:
        keywords["backend"] = backend
    elif backend != "torch":
        return None
    dtype = torch.float64 if precision == "f64" else torch.float32
    if "dtype" in parameters:
        keywords["dtype"] = dtype
    elif dtype != torch.float32:
        return None
    return keywords


def build_engine(case: str, population: int, runs: int, arm: str, members: list[dict[str, float]] | None = None
                 ) -> Any:
    from emphatic_rl.agents.linear.actor_critic import ActorCritic

    keywords = engine_keywords(arm)
    if keywords is None:
        return None
    spec = CASES[case]
    streams, default_members, stream_of = settings_of(case, population, runs)
    members = members or default_members
    per_member = {key: [m[key] for m in members] for key in members[0]}
    return ActorCritic.from_preset(
        spec["preset"], our_tile_coder(), NUM_ACTIONS, population, stream_of=stream_of, num_streams=streams,
        critic=spec["critic"], critic_lambda=spec["critic_lambda"], gamma=GAMMA, **per_member, **keywords,
    )


def state_bytes(agent: Any) -> int:
    """Bytes of every tensor / array in ``agent.state_dict()`` (the population's learner state)."""
    total = 0

    def walk(value: Any) -> None:
        nonlocal total
        if hasattr(value, "element_size") and hasattr(value, "numel"):
            total += value.element_size() * value.numel()
        elif isinstance(value, np.ndarray):
            total += value.nbytes
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(agent.state_dict())
    return total


def agent_theta(agent: Any) -> np.ndarray:
    return np.asarray(agent.state_dict()["theta"].detach().cpu().double().numpy())


# ================================================================================================ the numpy peer
# Written for this benchmark in the style of the authors' per-run code (classes with estimate/learn methods, numpy
# fancy indexing on the active indices, dense traces); float64 learner state.
class PeerTiles:
    """Tile indices of one observation, in our TileCoder's layout and float32 arithmetic (so the indices are the
    engine's, bit for bit); the vector operations of a per-observation numpy tile coder."""

    def __init__(self) -> None:
        width = np.array([(HIGH[d] - LOW[d]) / TILES[d] for d in range(2)])
        dims = np.arange(2)
        tilings = np.arange(TILINGS)[:, None]
        self.low = np.array(LOW, dtype=np.float64).astype(np.float32)
        self.width = width.astype(np.float32)
        self.offsets = (((2 * dims[None, :] + 1) * tilings / TILINGS) % 1.0 * width).astype(np.float32)
        grid = np.array(TILES) + 1
        self.strides = np.array([grid[1], 1])
        self.bases = np.arange(TILINGS) * int(grid.prod())
        self.num_features = TILINGS * int(grid.prod()) + 1
        self.num_active = TILINGS + 1

    def encode(self, obs: np.ndarray) -> np.ndarray:
        coords = np.floor((np.asarray(obs, dtype=np.float32) - self.low + self.offsets) / self.width).astype(int)
        return np.append(self.bases + np.dot(coords, self.strides), self.num_features - 1)


class PeerActor:
    def __init__(self, num_actions: int, num_features: int, alpha: float) -> None:
        self.alpha = alpha
        self.theta = np.zeros((num_actions, num_features))

    def pi(self, indices: np.ndarray) -> np.ndarray:
        preferences = self.theta[:, indices].sum(axis=1)
        preferences = preferences - preferences.max()
        exp_preferences = np.exp(preferences)
        return exp_preferences / np.sum(exp_preferences)

    def learn(self, indices: np.ndarray, action: int, delta: float, emphasis: float, rho: float) -> None:
        pi = self.pi(indices)
        for a in range(self.theta.shape[0]):
            self.theta[a, indices] += self.alpha * rho * emphasis * delta * (1 - pi[a] if a == action else 0 - pi[a])


class PeerTDRC:
    def __init__(self, num_features: int, alpha: float, trace_decay: float, beta: float = 1.0) -> None:
        self.alpha = alpha
        self.trace_decay = trace_decay
        self.beta = beta
        self.w = np.zeros(num_features)
        self.h = np.zeros(num_features)
        self.z = np.zeros(num_features)

    def estimate(self, indices: np.ndarray) -> float:
        return self.w[indices].sum()

    def learn(self, delta, indices, gamma, next_indices, next_gamma, rho) -> None:
        self.z *= rho * gamma * self.trace_decay
        self.z[indices] += rho
        self.w += self.alpha * delta * self.z
        self.w[next_indices] -= self.alpha * next_gamma * (1 - self.trace_decay) * self.z.dot(self.h)
        h_dot_x = self.h[indices].sum()
        self.h += (self.alpha * delta * self.z) - (self.alpha * self.beta * self.h)
        self.h[indices] -= self.alpha * h_dot_x


class PeerETD:
    def __init__(self, num_features: int, alpha: float, trace_decay: float) -> None:
        self.alpha = alpha
        self.trace_decay = trace_decay
        self.w = np.zeros(num_features)
        self.e = np.zeros(num_features)

    def estimate(self, indices: np.ndarray) -> float:
        return self.w[indices].sum()

    def learn(self, delta, indices, gamma, interest, rho, followon) -> None:
        emphasis = self.trace_decay * interest + (1 - self.trace_decay) * followon
        self.e *= rho * gamma * self.trace_decay
        self.e[indices] += emphasis * rho
        self.w += self.alpha * delta * self.e


class PeerFHat:
    def __init__(self, num_features: int, alpha: float) -> None:
        self.alpha = alpha
        self.f = np.zeros(num_features)

    def estimate(self, indices: np.ndarray) -> float:
        return self.f[indices].sum()

    def learn(self, next_indices, next_gamma, indices, rho, next_interest) -> None:
        target = next_interest + next_gamma * rho * self.estimate(indices)
        self.f[next_indices] += self.alpha * (target - self.estimate(next_indices))


TRANSITION = np.dtype([("s_t", float, (2,)), ("a_t", int), ("r_tp1", float), ("s_tp1", float, (2,)),
                       ("terminal", bool)])


def peer_transitions(data: dict[str, np.ndarray], stream: int) -> np.ndarray:
    """One stream's data as records (s_t, a_t, r_tp1, s_tp1, terminal), ``s_tp1`` the state the stream continues
    from (the reset state after a termination), like the authors' pre-generated experience."""
    records = np.zeros(data["obs"].shape[0], dtype=TRANSITION)
    records["s_t"] = data["obs"][:, stream]
    records["a_t"] = data["action"][:, stream]
    records["r_tp1"] = data["reward"][:, stream]
    records["s_tp1"] = data["next_obs"][:, stream]
    records["terminal"] = data["terminated"][:, stream]
    return records


class PeerLearner:
    """One (run, setting) learner; ``learn(transitions)`` runs the per-step loop over them, carrying its state."""

    def __init__(self, case: str, setting: dict[str, float], tiles: PeerTiles, fit_first_state: bool = True) -> None:
        spec = CASES[case]
        # our learned emphasis fits fhat(S_0) <- i_0 at every episode start, the stream's first state included; the
        # authors' loop does that fit only after a termination (through the stored s_tp1), not at the first state
        self.fit_first_state = fit_first_state
        self.tiles = tiles
        d, k = tiles.num_features, tiles.num_active
        self.actor = PeerActor(NUM_ACTIONS, d, setting["alpha_actor"] / k)
        self.direct = spec["preset"] == "ace-direct"
        if spec["critic"] == "tdrc":
            self.critic = PeerTDRC(d, setting["alpha_critic"] / k, spec["critic_lambda"])
        else:
            self.critic = PeerETD(d, setting["alpha_critic"] / k, spec["critic_lambda"])
        self.fhat = PeerFHat(d, setting["alpha_emphasis"] / k) if self.direct else None
        self.interest = lambda s, g=1: 1.0  # uniform interest
        self.mu = lambda s: np.ones(NUM_ACTIONS) / NUM_ACTIONS  # uniform random behaviour
        self.eta = 1.0
        self.gamma_t, self.f_t, self.rho_tm1, self.indices_t = 0.0, 0.0, 1.0, None

    def learn(self, transitions: np.ndarray) -> None:
        tiles, actor, critic, fhat, i, mu, eta = (self.tiles, self.actor, self.critic, self.fhat, self.interest,
                                                  self.mu, self.eta)
        gamma_t, f_t, rho_tm1, indices_t = self.gamma_t, self.f_t, self.rho_tm1, self.indices_t
        tdrc = isinstance(critic, PeerTDRC)
        if indices_t is None:
            indices_t = tiles.encode(transitions[0][0])
            if fhat is not None and self.fit_first_state:
                fhat.learn(indices_t, 0.0, indices_t, 1.0, i(transitions[0][0], 0.0))
        for transition in transitions:
            s_t, a_t, r_tp1, s_tp1, terminal = transition
            gamma_tp1 = GAMMA if not terminal else 0.0
            indices_tp1 = tiles.encode(s_tp1)
            i_t = i(s_t, gamma_t)
            i_tp1 = i(s_tp1, gamma_tp1)
            pi_t = actor.pi(indices_t)
            mu_t = mu(s_t)
            rho_t = pi_t[a_t] / mu_t[a_t]
            if fhat is not None:
                f_t = fhat.estimate(indices_t)
                fhat.learn(indices_tp1, gamma_tp1, indices_t, rho_t, i_tp1)
            else:
                f_t = i_t + rho_tm1 * gamma_t * f_t
            m_t = (1 - eta) * i_t + eta * f_t
            delta_t = r_tp1 + gamma_tp1 * critic.estimate(indices_tp1) - critic.estimate(indices_t)
            if tdrc:
                critic.learn(delta_t, indices_t, gamma_t, indices_tp1, gamma_tp1, rho_t)
            else:
                critic.learn(delta_t, indices_t, gamma_t, i_t, rho_t, f_t)
            actor.learn(indices_t, a_t, delta_t, m_t, rho_t)
            gamma_t = gamma_tp1
            indices_t = indices_tp1
            rho_tm1 = rho_t
        self.gamma_t, self.f_t, self.rho_tm1, self.indices_t = gamma_t, f_t, rho_tm1, indices_t


class PeerMountainCar:
    """Mountain Car, one copy, numpy / Python scalars, written the way gym 0.18's MountainCarEnv steps (tuple
    state, ``np.clip`` on scalars, a fresh observation array per step)."""

    min_position, max_position, max_speed, goal_position, force, gravity = -1.2, 0.6, 0.07, 0.5, 0.001, 0.0025

    def __init__(self, rng: np.random.RandomState) -> None:
        self.np_random = rng
        self.state = (0.0, 0.0)

    def reset(self) -> np.ndarray:
        self.state = (self.np_random.uniform(low=-0.6, high=-0.4), 0.0)
        return np.array(self.state)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, dict]:
        position, velocity = self.state
        velocity += (action - 1) * self.force + math.cos(3 * position) * (-self.gravity)
        velocity = np.clip(velocity, -self.max_speed, self.max_speed)
        position += velocity
        position = np.clip(position, self.min_position, self.max_position)
        if position == self.min_position and velocity < 0:
            velocity = 0
        done = bool(position >= self.goal_position and velocity >= 0)
        self.state = (position, velocity)
        return np.array(self.state), -1.0, done, {}


def peer_rollout(actor: PeerActor, tiles: PeerTiles, env: PeerMountainCar, rng: Any, cap: int) -> tuple[float, int]:
    """One evaluation episode, the authors' way: reset, then sample from pi and step until done or the cap."""
    g_t = 0.0
    indices_t = tiles.encode(env.reset())
    length = 0
    for _ in range(cap):
        a_t = rng.choice(NUM_ACTIONS, p=actor.pi(indices_t))
        s_tp1, r_tp1, terminal, _ = env.step(a_t)
        indices_t = tiles.encode(s_tp1)
        g_t += r_tp1
        length += 1
        if terminal:
            break
    return g_t, length


# ================================================================================================ the authors' code
SHIMS: list[str] = []


def _stub_module(name: str, **attributes: Any) -> Any:
    import types

    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def install_authors_shims() -> list[str]:
    """Make the authors' modules importable on this Python: stub only what is missing. Returns what was done."""
    import importlib
    import types

    done: list[str] = []
    for name in ("joblib", "tqdm", "matplotlib", "matplotlib.pyplot", "mpl_toolkits.mplot3d"):
        try:
            importlib.import_module(name)
        except ImportError:
            module = _stub_module(name)
            if name == "joblib":
                module.Parallel = lambda *a, **k: (lambda jobs: [f(*x, **y) for f, x, y in jobs])
                module.delayed = lambda f: (lambda *a, **k: (f, a, k))
                module.parallel = types.SimpleNamespace(BatchCompletionCallBack=object)
            if name == "tqdm":
                module.tqdm = lambda *a, **k: None
            if name == "mpl_toolkits.mplot3d":
                module.Axes3D = object
            done.append(f"{name}: missing, replaced by an empty stub (only plotting / progress / parallel helpers "
                        "use it, none of which is timed)")
    if not hasattr(np, "NaN"):
        np.NaN = np.nan  # removed in numpy 2; their run_ace writes np.NaN when a run overflows
        done.append("numpy.NaN: removed in numpy 2, set to numpy.nan (used only when a run overflows)")
    try:
        importlib.import_module("gym")
        done.append("gym: the installed gym is used as is")
    except ImportError:
        import gymnasium

        class OldApiEnv:
            """gymnasium's env behind gym 0.18's API: seed(), reset() -> obs, step() -> 4-tuple, np_random."""

            def __init__(self, env: Any) -> None:
                self._env = env
                self.action_space = env.action_space
                self.observation_space = env.observation_space
                self.np_random = None

            def seed(self, seed: int) -> None:
                self._env.reset(seed=int(seed))
                self.np_random = self._env.np_random

            def reset(self) -> np.ndarray:
                return self._env.reset()[0]

            def step(self, action: int) -> tuple[np.ndarray, float, bool, dict]:
                obs, reward, terminated, truncated, info = self._env.step(action)
                return obs, reward, terminated or truncated, info

            @property
            def state(self) -> Any:
                return self._env.state

            @state.setter
            def state(self, value: Any) -> None:
                self._env.state = np.asarray(value, dtype=float)

        class Made:
            def __init__(self, env_id: str) -> None:
                self.unwrapped = OldApiEnv(gymnasium.make(env_id).unwrapped)

        _stub_module("gym", make=Made)
        _stub_module("gym.utils", seeding=importlib.import_module("gymnasium.utils.seeding"))
        done.append(f"gym: missing (their code wants gym 0.18), replaced by gymnasium {gymnasium.__version__}'s "
                    "unwrapped env behind the old API (seed, reset -> obs, step -> 4-tuple); env.np_random is a "
                    "numpy Generator there (gym 0.18: RandomState)")
    try:
        importlib.import_module("gym_puddle")
    except ImportError:
        _stub_module("gym_puddle")
        done.append("gym_puddle: missing, empty stub (only registers Puddle World envs, not used here)")
    return done


def import_authors(path: str) -> dict[str, Any]:
    """Their modules, imported from ``path`` (a checkout of their repository)."""
    global SHIMS
    root = str(Path(path).resolve())
    if not (Path(root) / "run_ace.py").is_file():
        raise FileNotFoundError(f"{root} has no run_ace.py: not a checkout of the authors' repository")
    SHIMS = install_authors_shims()
    sys.path.insert(0, root)
    import run_ace  # noqa: F401  (theirs)
    from evaluate_policies import evaluate_policy  # (theirs)
    from src.algorithms.ace import BinaryACE  # (theirs)
    from src.function_approximation.tile_coder import TileCoder  # (theirs)

    return {"run_ace": run_ace, "evaluate_policy": evaluate_policy, "BinaryACE": BinaryACE, "TileCoder": TileCoder}


def probe_authors(path: str) -> str | None:
    """Why the authors' code at ``path`` cannot run here (import, one short training run and one rollout, in a
    subprocess so that nothing of theirs stays in this process), or None when it runs."""
    if not (Path(path) / "run_ace.py").is_file():
        return f"{path} has no run_ace.py: not a checkout of their repository"
    code = (
        "import sys, tempfile, numpy as np\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "import populations as b\n"
        f"authors = b.import_authors({str(path)!r})\n"
        "data = b.make_data(1, 60)\n"
        "with tempfile.TemporaryDirectory() as folder:\n"
        "    for case in b.CASES:\n"
        "        b.AuthorsTrainer(authors, case, data, [0], [b.settings_of(case, 1, 1)[1][0]], 50,\n"
        "                         b.Path(folder)).run(0, 0)\n"
        "tc = authors['TileCoder'](np.array([b.LOW, b.HIGH]).T, list(b.TILES), b.TILINGS, 1)\n"
        "actor = authors['BinaryACE'](b.NUM_ACTIONS, tc.total_num_tiles, 0.0)\n"
        "import gym\n"
        "env = gym.make('MountainCar-v0').unwrapped\n"
        "env.seed(1)\n"
        "authors['evaluate_policy'](actor, tc, env, env.np_random, 20)\n"
    )
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                               cwd=str(REPO), check=False)
    if completed.returncode == 0:
        return None
    lines = completed.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {completed.returncode}"


def authors_permutation(tile_coder: Any) -> np.ndarray:
    """``ours_to_theirs[i]``: their feature index of our feature ``i`` (their coordinates are raveled first
    dimension fastest, ours row-major)."""
    grid = np.array(TILES) + 1
    order = np.zeros(TILINGS * int(grid.prod()) + 1, dtype=int)
    for k in range(TILINGS):
        for c0 in range(grid[0]):
            for c1 in range(grid[1]):
                order[k * grid.prod() + c0 * grid[1] + c1] = k * grid.prod() + c0 + c1 * grid[0]
    order[-1] = tile_coder.total_num_tiles - 1
    return order


class AuthorsTrainer:
    """Their ``run_ace`` on the benchmark's data: one call per (run, setting) learner, evaluation switched off
    (``num_evaluation_runs = 0``, no excursion states, one checkpoint interval = the whole data)."""

    def __init__(self, authors: dict[str, Any], case: str, data: dict[str, np.ndarray], streams: list[int],
                 settings: list[dict[str, float]], steps: int, folder: Path) -> None:
        spec = CASES[case]
        module = authors["run_ace"]
        self.module = module
        self.tc = authors["TileCoder"](np.array([LOW, HIGH]).T, list(TILES), TILINGS, 1)
        experience_dtype = np.dtype([("s_t", float, (2,)), ("a_t", int), ("r_tp1", float), ("s_tp1", float, (2,)),
                                     ("a_tp1", int), ("terminal", bool)])
        experience = np.zeros((len(streams), steps), dtype=experience_dtype)
        for row, r in enumerate(streams):
            experience[row]["s_t"] = data["obs"][:steps, r]
            experience[row]["a_t"] = data["action"][:steps, r]
            experience[row]["r_tp1"] = data["reward"][:steps, r]
            experience[row]["s_tp1"] = data["next_obs"][:steps, r]
            experience[row]["a_tp1"] = data["action"][1:steps + 1, r]
            experience[row]["terminal"] = data["terminated"][:steps, r]
        file = folder / f"experience-{case}-{steps}.npy"
        np.save(file, experience)
        self.experience = np.lib.format.open_memmap(str(file), mode="r")  # as they read theirs
        self.args = argparse.Namespace(
            checkpoint_interval=steps, num_evaluation_runs=0, max_timesteps=1000, critic=spec["critic"].upper(),
            direct_f=int(spec["preset"] == "ace-direct"), all_actions=0, normalize=0,
            interest_function="lambda s, g=1: 1.", environment="MountainCar-v0", gamma=GAMMA,
            behaviour_policy="lambda s: np.ones(env.action_space.n)/env.action_space.n",
            num_tiles_per_dim=list(TILES), num_tilings=TILINGS, bias_unit=1,
        )
        self.parameters = [(s["alpha_actor"], s["alpha_critic"], s.get("alpha_emphasis", 0.0),
                            spec["critic_lambda"], 1.0) for s in settings]
        num_policies = steps // steps + 1
        parameters_dtype = np.dtype([("alpha_a", float), ("alpha_w", float), ("alpha_v", float), ("lambda", float),
                                     ("eta", float), ("gamma", float), ("num_tiles_per_dim", int, (2,)),
                                     ("num_tilings", int), ("bias_unit", bool)])
        policy_dtype = np.dtype([("timesteps", int), ("weights", float, (NUM_ACTIONS, self.tc.total_num_tiles))])
        module.args, module.tc = self.args, self.tc  # the globals their run_ace reads
        module.num_policies, module.policy_dtype = num_policies, policy_dtype
        rows = len(settings)
        self.policies = np.zeros(rows, dtype=np.dtype([("parameters", parameters_dtype),
                                                       ("policies", policy_dtype, (len(streams), num_policies))]))
        self.performance = np.zeros(rows, dtype=np.dtype([
            ("parameters", parameters_dtype), ("results", float, (len(streams), num_policies, 0)),
            ("results_excursions", float, (len(streams), num_policies, 0))]))
        self.steps = steps

    def run(self, row: int, config: int) -> np.ndarray:
        """Train learner (data row ``row``, parameters ``config``) with their function; returns its final theta
        (their layout). Their run skips a (config, run) already done, so the result arrays are cleared first."""
        self.policies[config]["policies"][row] = 0
        errors = np.geterr()
        try:
            self.module.run_ace(self.experience, self.policies, self.performance, row, config,
                                self.parameters[config], 12345 + row, None, 0)
        finally:
            np.seterr(**errors)  # theirs sets numpy to raise on overflow, for the rest of the process
        return np.array(self.policies[config]["policies"][row][-1]["weights"])


# ================================================================================================ correctness check
def check_correctness(authors_path: str | None, steps: int = 1000, log=print) -> list[str]:
    """Peer vs our engine (and, if given, the authors' run_ace vs the peer) on the same data; raises SystemExit(1)
    on any difference. Returns the lines to print."""
    import torch

    lines = []
    runs, settings_per_run = 3, 2
    data = make_data(runs, steps + 2, seed=123)
    tiles = our_tile_coder()
    peer_tiles = PeerTiles()
    flat = data["obs"].reshape(-1, 2)
    ours_indices = tiles(torch.from_numpy(flat)).numpy()
    peer_indices = np.stack([peer_tiles.encode(o) for o in flat])
    if not np.array_equal(ours_indices, peer_indices):
        raise SystemExit("CORRECTNESS CHECK FAILED: the peer's tile indices differ from emphatic_rl's TileCoder")
    authors = import_authors(authors_path) if authors_path else None
    failures = []
    for case in CASES:
        population = runs * settings_per_run
        # two settings with moderate actor step sizes (0.25, 0.0625): with the largest ones, ACE-direct's dynamics
        # amplify float64 rounding differences (a different order of additions) to ~1e-8 relative in 1000 steps
        grid = CASES[case]["grid"]
        combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
        chosen = [next(c for c in combos if c["alpha_actor"] == a) for a in (0.25, 0.0625)]
        stream_of = settings_of(case, population, runs)[2]  # run-major, as build_engine lays members out
        members = [chosen[p % settings_per_run] for p in range(population)]
        # the peer, one learner after another
        peer_theta = []
        for p in range(population):
            learner = PeerLearner(case, members[p], peer_tiles)
            learner.learn(peer_transitions(data, stream_of[p])[:steps])
            peer_theta.append(learner.actor.theta.copy())
        peer_theta = np.stack(peer_theta)
        scale = float(np.abs(peer_theta).max())
        for arm in OUR_ARMS:
            agent = build_engine(case, population, runs, arm, members)
            if agent is None:
                lines.append(f"  {case:<16} {arm:<10} not available in this ActorCritic (skipped)")
                continue
            with torch.no_grad():
                for t in range(steps):
                    agent.update_step(
                        tiles(torch.from_numpy(data["obs"][t])), torch.from_numpy(data["action"][t]),
                        torch.from_numpy(data["reward"][t]), torch.from_numpy(data["terminated"][t]),
                        torch.zeros(runs, dtype=torch.bool), tiles(torch.from_numpy(data["final_obs"][t])),
                        torch.from_numpy(data["log_prob"][t]),
                    )
            theta = agent_theta(agent)
            tolerance = 1e-9 if arm.endswith("f64") else 1e-4
            error = float(np.abs(theta - peer_theta).max()) / scale
            verdict = "same" if error <= tolerance else "DIFFERENT"
            lines.append(f"  {case:<16} {arm:<10} max |theta - peer theta| / max |theta| = {error:.1e} "
                         f"(tolerance {tolerance:.0e}): {verdict}")
            if error > tolerance:
                failures.append(f"{case} {arm}")
        if authors is not None:
            reference = []  # the peer as their loop runs: no fit of fhat at the stream's first state
            for p in range(population):
                learner = PeerLearner(case, members[p], peer_tiles, fit_first_state=False)
                learner.learn(peer_transitions(data, stream_of[p])[:steps])
                reference.append(learner.actor.theta.copy())
            with tempfile.TemporaryDirectory() as folder:
                trainer = AuthorsTrainer(authors, case, data, list(range(runs)), chosen, steps, Path(folder))
                order = authors_permutation(trainer.tc)
                observations = np.concatenate([data["obs"][:steps], data["next_obs"][:steps]]).reshape(-1, 2)
                theirs_indices = np.stack([trainer.tc.encode(np.asarray(o, dtype=float)) for o in observations])
                ours_as_theirs = order[np.stack([peer_tiles.encode(o) for o in observations])]
                off = int((np.sort(theirs_indices, 1) != np.sort(ours_as_theirs, 1)).any(1).sum())
                if off:
                    lines.append(f"  {case:<16} authors    not compared: their float64 tile coder puts {off} of "
                                 f"{len(theirs_indices)} observations in another tile than ours (float32)")
                    continue
                worst = 0.0
                for p in range(population):
                    theirs = trainer.run(stream_of[p], p % settings_per_run)
                    worst = max(worst, float(np.abs(theirs[:, order] - reference[p]).max()) / scale)
                verdict = "same" if worst <= 1e-9 else "DIFFERENT"
                lines.append(f"  {case:<16} authors    max |their theta - peer theta| / max |theta| = {worst:.1e} "
                             f"(tolerance 1e-09; peer without the first-state fit of fhat): {verdict}")
                if worst > 1e-9:
                    failures.append(f"{case} authors")
    if failures:
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(f"CORRECTNESS CHECK FAILED ({', '.join(failures)}): the arms do not compute the same "
                         "learners; no timing was done")
    return lines


# ================================================================================================ worker process
def _protocol_out() -> Any:
    """The worker's protocol channel: the real stdout; everything else printed goes to stderr."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def _rss_now_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _peak_rss_mb() -> tuple[float, str]:
    """The process's peak resident size: ``VmHWM`` of ``/proc/self/status`` where there is one (the peak of this
    program's own memory: ``ru_maxrss`` of a forked child starts from the parent's resident size at the fork,
    so a worker that never imports torch would report the parent's torch), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10, "VmHWM"
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak / 2**20 if sys.platform == "darwin" else peak / 2**10), "ru_maxrss"


class TrainWorker:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.arm = spec["arm"]
        self.data = load_data(spec["data"])
        self.population = spec["population"]
        self.streams, self.members, self.stream_of = settings_of(spec["case"], self.population, spec["runs"])
        self.info: dict[str, Any] = {}
        self.t = 0
        self.horizon = self.data["obs"].shape[0]
        if self.arm in OUR_ARMS:
            import torch

            self.torch = torch
            self.agent = build_engine(spec["case"], self.population, spec["runs"], self.arm)
            if self.agent is None:
                raise RuntimeError(f"arm {self.arm} is not available in this ActorCritic (no backend/dtype option)")
            self.tiles = our_tile_coder()
            d = {k: torch.from_numpy(v) for k, v in self.data.items()}
            d["obs"], d["final_obs"] = d["obs"][:, :self.streams], d["final_obs"][:, :self.streams]
            for key in ("action", "reward", "terminated", "log_prob"):
                d[key] = d[key][:, :self.streams].contiguous()
            self.tensors = d
            self.truncated = torch.zeros(self.streams, dtype=torch.bool)
            self.info["state_mb"] = state_bytes(self.agent) / 2**20
            self.unit_steps = self._calibrate(self._train_ours)
        elif self.arm == "peer":
            self.tiles = PeerTiles()
            self.chosen = spread(self.population, spec["peer_learners"])
            self.learners = [PeerLearner(spec["case"], self.members[p], self.tiles) for p in self.chosen]
            self.records = [peer_transitions(self.data, self.stream_of[p]) for p in self.chosen]
            self.positions = [0] * len(self.chosen)
            self.info["learners_timed"] = len(self.chosen)
            self.unit_steps = self._calibrate(self._train_peer)
        elif self.arm == "authors":
            authors = import_authors(spec["authors_code"])
            self.chosen = spread(self.population, spec["peer_learners"])
            self.info["learners_timed"] = len(self.chosen)
            self.info["shims"] = SHIMS
            self.folder = Path(tempfile.mkdtemp(prefix="authors-"))
            streams = sorted({self.stream_of[p] for p in self.chosen})
            settings = [self.members[p] for p in self.chosen]
            self.rows = [streams.index(self.stream_of[p]) for p in self.chosen]
            # their loop restarts a learner on every call: a round is one call per chosen learner over `steps`
            steps = self._authors_steps(authors, streams, settings)
            self.trainer = AuthorsTrainer(authors, spec["case"], self.data, streams, settings, steps, self.folder)
            self.unit_steps = steps
        else:
            raise ValueError(self.arm)

    # --- one timed unit of work per arm: returns learner-steps done
    def _train_ours(self, steps: int) -> int:
        torch, d, tiles, agent = self.torch, self.tensors, self.tiles, self.agent
        with torch.no_grad():
            for _ in range(steps):
                t = self.t % (self.horizon - 1)
                self.t += 1
                agent.update_step(tiles(d["obs"][t]), d["action"][t], d["reward"][t], d["terminated"][t],
                                  self.truncated, tiles(d["final_obs"][t]), d["log_prob"][t])
        return steps * self.population

    def _train_peer(self, steps: int) -> int:
        for j, learner in enumerate(self.learners):
            start = self.positions[j] % (self.horizon - steps - 1)
            learner.learn(self.records[j][start:start + steps])
            self.positions[j] = start + steps
        return steps * len(self.learners)

    def _authors_steps(self, authors: dict[str, Any], streams: list[int], settings: list[dict[str, float]]) -> int:
        probe = AuthorsTrainer(authors, self.spec["case"], self.data, streams[:1], settings[:1], 200, self.folder)
        probe.run(0, 0)  # warm-up
        start = time.perf_counter()
        probe.run(0, 0)
        per_step = (time.perf_counter() - start) / 200 / 1  # one learner
        target = self.spec["round_seconds"] / (per_step * len(self.chosen))
        return int(min(max(target, self.spec["min_steps"]), self.horizon - 2))

    def _calibrate(self, work) -> int:
        """Warm up (compilation, caches), then pick the steps per round that take about ``round_seconds``."""
        work(2)
        steps, elapsed = 2, 0.0
        while elapsed < 0.2 and steps < self.spec["max_steps"]:
            start = time.perf_counter()
            work(steps)
            elapsed = time.perf_counter() - start
            if elapsed < 0.2:
                steps = min(steps * 4, self.spec["max_steps"])
        per_step = elapsed / steps
        target = int(self.spec["round_seconds"] / max(per_step, 1e-12))
        return int(min(max(target, self.spec["min_steps"]), self.spec["max_steps"]))

    def round(self) -> dict[str, Any]:
        start = time.perf_counter()
        if self.arm in OUR_ARMS:
            units = self._train_ours(self.unit_steps)
        elif self.arm == "peer":
            units = self._train_peer(self.unit_steps)
        else:
            for config, row in enumerate(self.rows):
                self.trainer.run(row, config)
            units = self.unit_steps * len(self.chosen)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "units": units, "steps": self.unit_steps}

    def finish(self) -> dict[str, Any]:
        info = dict(self.info)
        if self.arm in OUR_ARMS:
            info["finite"] = bool(np.isfinite(agent_theta(self.agent)).all())
        elif self.arm == "peer":
            info["finite"] = all(np.isfinite(lr.actor.theta).all() for lr in self.learners)
        else:
            theta = self.trainer.policies["policies"][:, :, -1]["weights"]
            info["finite"] = bool(np.isfinite(theta).all())
            shutil.rmtree(self.folder, ignore_errors=True)
        return info


class EvalWorker:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.arm = spec["arm"]
        self.population = spec["population"]
        self.episodes = spec["eval_episodes"]
        self.cap = spec["eval_cap"]
        self.theta = pumping_theta(spec["policy_scale"])
        self.info: dict[str, Any] = {}
        self.round_index = 0
        if self.arm in OUR_EVAL_ARMS:
            import torch

            from emphatic_rl.config import TrainConfig
            from emphatic_rl.train import build_run, evaluate

            self.torch = torch
            if self.arm == "ours-torch":
                if "backend" not in inspect.signature(evaluate).parameters:
                    raise RuntimeError("train.evaluate has no backend argument: 'ours' is the torch loop already")
                self.evaluate = lambda run, step: evaluate(run, step, backend="torch")
            else:
                self.evaluate = evaluate
            case = spec["case"]  # the agent as `build_run` makes it by default (backend, dtype)
            streams, members, stream_of = settings_of(case, self.population, spec["runs"])
            agent_options = {key: [m[key] for m in members] for key in members[0]}
            agent_options.update(critic=CASES[case]["critic"], critic_lambda=CASES[case]["critic_lambda"],
                                 stream_of=stream_of, gamma=GAMMA)
            config = TrainConfig(agent=CASES[case]["preset"], env="mountain-car", population_size=self.population,
                                 num_envs=streams, eval_episodes=self.episodes, eval_max_steps=self.cap,
                                 env_options={"max_episode_steps": 100_000_000}, agent_options=agent_options,
                                 progress=False, num_threads=spec["threads"])
            self.run = build_run(config)
            state = self.run.agent.state_dict()
            state["theta"] = torch.from_numpy(self.theta).to(state["theta"].dtype).expand_as(state["theta"]).clone()
            self.run.agent.load_state_dict(state)
            self.info["state_mb"] = state_bytes(self.run.agent) / 2**20
            import dataclasses

            warm = dataclasses.replace(self.run, config=dataclasses.replace(config, eval_max_steps=2))
            self.evaluate(warm, 0)  # warm-up (compilation), two steps of every rollout
        else:
            self.tiles = PeerTiles()
            self.rollouts = spec["peer_rollouts"]
            if self.arm == "peer":
                self.actor = PeerActor(NUM_ACTIONS, self.tiles.num_features, 0.0)
                self.actor.theta = self.theta.copy()
                self.rng = np.random.RandomState(2024)
                self.env = PeerMountainCar(self.rng)
                self.rollout = lambda: peer_rollout(self.actor, self.tiles, self.env, self.rng, self.cap)
            else:
                authors = import_authors(spec["authors_code"])
                self.info["shims"] = SHIMS
                tc = authors["TileCoder"](np.array([LOW, HIGH]).T, list(TILES), TILINGS, 1)
                actor = authors["BinaryACE"](NUM_ACTIONS, tc.total_num_tiles, 0.0)
                theirs = np.zeros_like(self.theta)
                theirs[:, authors_permutation(tc)] = self.theta
                actor.theta = theirs
                import gym  # theirs expects gym; the shim's if gym is missing

                env = gym.make("MountainCar-v0").unwrapped
                env.seed(2024)
                evaluate_policy = authors["evaluate_policy"]
                self.rollout = lambda: self._authors_rollout(evaluate_policy, actor, tc, env)
            for _ in range(2):
                self.rollout()  # warm-up

    def _authors_rollout(self, evaluate_policy, actor, tc, env) -> tuple[float, int]:
        g = evaluate_policy(actor, tc, env, env.np_random, self.cap)
        return g, int(min(-g, self.cap))  # Mountain Car: reward -1 every step, so the length is -return

    def _round_ours(self) -> dict[str, Any]:
        start = time.perf_counter()
        result = self.evaluate(self.run, 1000 + self.round_index)
        seconds = time.perf_counter() - start
        self.round_index += 1
        lengths = result["length"].double()
        steps = float(lengths.sum()) * self.episodes
        return {"seconds": seconds, "units": steps, "rollouts": self.population * self.episodes,
                "mean_length": float(lengths.mean()), "max_member_mean_length": float(lengths.max())}

    def round(self) -> dict[str, Any]:
        if self.arm in OUR_EVAL_ARMS:
            return self._round_ours()
        start = time.perf_counter()
        lengths = [self.rollout()[1] for _ in range(self.rollouts)]
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "units": float(sum(lengths)), "rollouts": self.rollouts,
                "mean_length": float(np.mean(lengths))}

    def finish(self) -> dict[str, Any]:
        return dict(self.info)


def worker_main() -> None:
    channel = _protocol_out()
    spec = json.loads(sys.stdin.readline())
    if spec["arm"] in (*OUR_ARMS, *OUR_EVAL_ARMS):
        import torch

        torch.set_num_threads(spec["threads"])
    baseline = _rss_now_mb()
    try:
        worker = (TrainWorker if spec["phase"] == "train" else EvalWorker)(spec)
        ready = {"ready": True, "baseline_mb": baseline}
    except Exception as error:  # reported in the table, the other arms go on
        import traceback

        traceback.print_exc()
        ready = {"ready": False, "error": f"{type(error).__name__}: {error}"}
    channel.write(PROTOCOL + json.dumps(ready) + "\n")
    if not ready["ready"]:
        return
    for line in sys.stdin:
        command = line.strip()
        if command == "round":
            reply = worker.round()
        elif command == "finish":
            peak, source = _peak_rss_mb()
            reply = {**worker.finish(), "maxrss_mb": peak, "rss_source": source}
        else:
            reply = {"error": f"unknown command {command!r}"}
        channel.write(PROTOCOL + json.dumps(reply) + "\n")
        if command == "finish":
            return


class Worker:
    """The parent's handle on a worker subprocess."""

    def __init__(self, spec: dict[str, Any], threads: int) -> None:
        environment = dict(os.environ)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
            environment[name] = str(threads)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
        self.spec = spec
        self.stderr = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty worker cannot block on it
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                        text=True, env=environment, cwd=str(REPO))
        self.process.stdin.write(json.dumps(spec) + "\n")
        self.process.stdin.flush()
        self.ready: dict[str, Any] | None = None

    def _reply(self) -> dict[str, Any]:
        for line in self.process.stdout:
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL):])
        self.process.wait()
        self.stderr.seek(0)
        stderr = self.stderr.read()
        return {"ready": False, "error": "worker exited: " + (stderr.strip().splitlines() or ["?"])[-1]}

    def wait_ready(self) -> dict[str, Any]:
        self.ready = self._reply()
        return self.ready

    def ask(self, command: str) -> dict[str, Any]:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._reply()

    def close(self) -> None:
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.stderr.close()
        if self.process.stdout is not None:
            self.process.stdout.close()


# ================================================================================================ the parent
def measure(phase: str, case: str, population: int, arms: list[str], args: argparse.Namespace, data_path: str,
            log) -> dict[str, dict[str, Any]]:
    """Start one fresh worker per arm, interleave ``args.rounds`` rounds over them, collect results."""
    common = {"phase": phase, "case": case, "population": population, "runs": args.runs, "data": data_path,
              "threads": args.threads, "round_seconds": args.round_seconds, "min_steps": args.min_steps,
              "max_steps": args.max_steps, "peer_learners": args.peer_learners, "authors_code": args.authors_code,
              "eval_episodes": args.eval_episodes, "eval_cap": args.eval_cap, "policy_scale": args.policy_scale,
              "peer_rollouts": args.peer_rollouts}
    workers = {arm: Worker({**common, "arm": arm}, args.threads) for arm in arms}
    results: dict[str, dict[str, Any]] = {}
    try:
        for arm, worker in workers.items():
            ready = worker.wait_ready()
            results[arm] = {"rounds": [], **ready}
            if not ready.get("ready"):
                log(f"    {arm}: not run ({ready.get('error')})")
        live = [arm for arm in arms if results[arm].get("ready")]
        for _ in range(args.rounds):
            for arm in list(live):
                reply = workers[arm].ask("round")
                if "seconds" not in reply:  # the worker died (e.g. out of memory): report it, go on without it
                    results[arm].update(ready=False, error=reply.get("error", "no reply"))
                    log(f"    {arm}: stopped ({results[arm]['error']})")
                    live.remove(arm)
                    continue
                results[arm]["rounds"].append(reply)
        for arm in live:
            results[arm].update(workers[arm].ask("finish"))
    finally:
        for worker in workers.values():
            worker.close()
    return results


def per_unit_ns(result: dict[str, Any]) -> list[float]:
    return [r["seconds"] / r["units"] * 1e9 for r in result["rounds"] if r["units"] > 0]


def ratio_text(reference: list[float], ours: list[float]) -> str:
    """Per-round speed-ups ``reference / ours`` (paired by round): median [min - max]."""
    ratios = [a / b for a, b in zip(reference, ours, strict=False) if b > 0]
    if not ratios:
        return "-"
    return f"{statistics.median(ratios):.3g}x [{min(ratios):.3g}-{max(ratios):.3g}]"


def fmt_ns(values: list[float]) -> str:
    if not values:
        return "-"
    value = statistics.median(values)
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def mb(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def training_table(case: str, by_population: dict[int, dict[str, dict[str, Any]]], arms: list[str]) -> list[str]:
    references = [a for a in ("peer", "authors") if a in arms]
    lines = [f"### Training: {CASES[case]['label']}", "",
             "| P | arm | steps/round | learners timed | ns per learner-step | "
             + " | ".join(f"speed-up vs {r}" for r in references)
             + " | peak RSS MB (baseline) | state MB | finite |",
             "|---:|---|---:|---:|---:|" + "---:|" * len(references) + "---:|---:|---|"]
    for population, results in by_population.items():
        for arm in arms:
            result = results.get(arm)
            if result is None:
                continue
            if not result.get("ready"):
                lines.append(f"| {population} | {arm} | not run: {result.get('error', '?')} |")
                continue
            ns = per_unit_ns(result)
            steps = result["rounds"][0]["steps"] if result["rounds"] else "-"
            timed = result.get("learners_timed", population)
            speedups = []
            for reference in references:
                if arm in references or reference not in results or not results[reference].get("ready"):
                    speedups.append("-")
                else:
                    speedups.append(ratio_text(per_unit_ns(results[reference]), ns))
            scaled = " (scaled)" if arm in ("peer", "authors") else ""
            lines.append(
                f"| {population} | {arm}{scaled} | {steps} | {timed} | {fmt_ns(ns)} | " + " | ".join(speedups)
                + f" | {mb(result.get('maxrss_mb'))} ({mb(result.get('baseline_mb'))}) | "
                f"{mb(result.get('state_mb')) if 'state_mb' in result else '-'} | "
                f"{'yes' if result.get('finite', True) else 'NO'} |")
    return lines


def evaluation_table(by_population: dict[int, dict[str, dict[str, Any]]], arms: list[str], args) -> list[str]:
    references = [a for a in ("peer", "authors") if a in arms]
    lines = [f"### Evaluation: P x {args.eval_episodes} rollouts (cap {args.eval_cap}), one fixed theta", "",
             f"| P | arm | rollouts/round | mean episode length | s per P x {args.eval_episodes} rollouts | "
             "ns per rollout-step | "
             + " | ".join(f"speed-up vs {r}" for r in references) + " | peak RSS MB (baseline) |",
             "|---:|---|---:|---:|---:|---:|" + "---:|" * len(references) + "---:|"]
    for population, results in by_population.items():
        ours_steps = [r["units"] for arm in arms if arm in OUR_EVAL_ARMS and results.get(arm, {}).get("ready")
                      for r in results[arm]["rounds"]]
        total_steps = statistics.median(ours_steps) if ours_steps else None
        for arm in arms:
            result = results.get(arm)
            if result is None:
                continue
            if not result.get("ready"):
                lines.append(f"| {population} | {arm} | not run: {result.get('error', '?')} |")
                continue
            ns = per_unit_ns(result)
            lengths = [r["mean_length"] for r in result["rounds"]]
            if arm in OUR_EVAL_ARMS:
                seconds = statistics.median(r["seconds"] for r in result["rounds"])
                extra = f" (max of member means {max(r['max_member_mean_length'] for r in result['rounds']):.0f})"
            else:
                seconds = statistics.median(ns) * 1e-9 * total_steps if total_steps else float("nan")
                extra = ""
            speedups = []
            for reference in references:
                if arm in references or not results.get(reference, {}).get("ready"):
                    speedups.append("-")
                else:
                    # per round: the reference's cost per rollout-step x the steps ours took, over ours' time
                    ref_ns = per_unit_ns(results[reference])
                    ours_seconds = [r["seconds"] for r in result["rounds"]]
                    ours_units = [r["units"] for r in result["rounds"]]
                    ratios = [a * 1e-9 * u / s for a, u, s in zip(ref_ns, ours_units, ours_seconds, strict=False)]
                    speedups.append(f"{statistics.median(ratios):.3g}x [{min(ratios):.3g}-{max(ratios):.3g}]")
            rollouts = result["rounds"][0]["rollouts"] if result["rounds"] else "-"
            scaled = " (scaled)" if arm in references else ""
            lines.append(f"| {population} | {arm}{scaled} | {rollouts} | {statistics.median(lengths):.0f}{extra} | "
                         f"{seconds:.3g} | {fmt_ns(ns)} | " + " | ".join(speedups)
                         + f" | {mb(result.get('maxrss_mb'))} ({mb(result.get('baseline_mb'))}) |")
    return lines


def machine_lines(args: argparse.Namespace) -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = [f"python {platform.python_version()}", f"numpy {np.__version__}"]
    for name in ("torch", "numba"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            versions.append(f"{name} missing")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=False).stdout.strip()
    except OSError:
        commit = "?"
    return [f"- machine: {cpu}, {os.cpu_count()} logical CPUs; {', '.join(versions)}; commit {commit or '?'}",
            f"- threads: {args.threads} (torch.set_num_threads, NUMBA_NUM_THREADS, OMP/MKL/OPENBLAS_NUM_THREADS "
            "in every worker)"]


def run_study(args: argparse.Namespace, train_rates: dict[str, float], eval_rates: dict[str, float], log) -> list[str]:
    """Time the reduced J23 Mountain Car study for one variant and estimate the authors' CPU time for that work."""
    import csv

    toml = REPO / "experiments" / "j23_mountain_car.toml"
    out = Path(tempfile.mkdtemp(prefix="j23-study-"))
    command = [sys.executable, "-m", "emphatic_rl.cli", "sweep", str(toml), "--only", args.study_variant,
               "--out", str(out / "sweep"), *shlex.split(args.study_extra)]
    environment = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        environment[name] = str(args.threads)
    log(f"study: {' '.join(command[1:])}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if completed.returncode != 0:
        shutil.rmtree(out, ignore_errors=True)
        return [f"study failed (exit {completed.returncode}): {completed.stderr.strip()[-500:]}"]
    learner_steps = 0
    rollout_steps = 0.0
    rollouts = 0
    for config_file in (out / "sweep").rglob("config.json"):
        folder = config_file.parent
        config = json.loads(config_file.read_text())
        learner_steps += config["population_size"] * config["steps"]
        with (folder / "metrics.csv").open() as f:
            for row in csv.reader(f):
                if len(row) != 4 or not row[0].isdigit():
                    continue
                _, name, _, value = row
                value = float(value)
                if math.isnan(value):
                    continue
                if name == "eval/length":  # mean episode length of one member's eval_episodes rollouts
                    rollout_steps += value * config["eval_episodes"]
                    rollouts += config["eval_episodes"]
                elif name == "eval/excursions_return":  # Mountain Car: reward -1 every step, capped
                    starts = _study_excursion_starts(toml)
                    rollout_steps += min(-value, config["eval_max_steps"]) * starts
                    rollouts += starts
    extra = f" {args.study_extra}" if args.study_extra else ""
    lines = [f"Study: `emphatic-rl sweep experiments/j23_mountain_car.toml --only {args.study_variant}{extra} "
             f"--out <tmp>` (reduced protocol), {args.threads} thread(s).", "",
             f"- ours, measured: {wall:.1f} s wall, {cpu:.1f} s CPU (user + system of the sweep process)",
             f"- work done: {learner_steps:,} learner-steps; {rollouts:,} evaluation rollouts taking "
             f"{rollout_steps:,.0f} rollout-steps (episodic eval/length x episodes; excursions: -return x starts, "
             "Mountain Car's reward being -1 per step)"]
    for reference in ("authors", "peer"):
        if reference in train_rates and reference in eval_rates:
            estimate = train_rates[reference] * 1e-9 * learner_steps + eval_rates[reference] * 1e-9 * rollout_steps
            lines.append(
                f"- {reference} loop, **estimated** CPU time for the same work: {estimate:,.0f} s = "
                f"{train_rates[reference]:,.0f} ns per learner-step x {learner_steps:,} + "
                f"{eval_rates[reference]:,.0f} ns per rollout-step x {rollout_steps:,.0f} "
                f"(rates measured above, one thread); ours is {estimate / max(cpu, 1e-9):.3g}x faster in CPU time")
    shutil.rmtree(out, ignore_errors=True)
    return lines


def _study_excursion_starts(toml: Path) -> int:
    import tomllib

    return int(tomllib.loads(toml.read_text()).get("excursions", {}).get("starts", 0))


def parse_list(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise SystemExit(f"{flag}: unknown {bad[0]!r}; allowed: {', '.join(allowed)}")
    return items


def main() -> None:
    if "--worker" in sys.argv[1:]:
        worker_main()
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--populations", default=DEFAULT_POPULATIONS, help="training P values")
    parser.add_argument("--eval-populations", default=DEFAULT_EVAL_POPULATIONS, help="evaluation P values ('' = none)")
    parser.add_argument("--arms", default=DEFAULT_ARMS, help=f"training arms, from {', '.join(ALL_ARMS)}")
    parser.add_argument("--eval-arms", default=DEFAULT_EVAL_ARMS, help=f"evaluation arms, from {', '.join(EVAL_ARMS)}")
    parser.add_argument("--cases", default=",".join(CASES), help=f"from {', '.join(CASES)}")
    parser.add_argument("--runs", type=int, default=30, help="behaviour streams R (P = R x settings; R = P below)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-seconds", type=float, default=0.6, help="target length of one arm's round")
    parser.add_argument("--min-steps", type=int, default=5, help="fewest steps in a training round")
    parser.add_argument("--max-steps", type=int, default=4000, help="most steps in a training round")
    parser.add_argument("--data-steps", type=int, default=8000, help="behaviour steps generated per stream")
    parser.add_argument("--peer-learners", type=int, default=3, help="learners the peer / authors' loop is timed on")
    parser.add_argument("--peer-rollouts", type=int, default=30, help="rollouts the peer / authors are timed on")
    parser.add_argument("--eval-torch-max-population", type=int, default=300, metavar="P",
                        help="run the ours-torch evaluation arm only up to this P (it takes ~10x longer per round)")
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--eval-cap", type=int, default=1000)
    parser.add_argument("--policy-scale", type=float, default=0.25,
                        help="the fixed evaluation theta: +-scale per tile for the push along its velocity")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--authors-code", metavar="PATH", help="a checkout of the authors' repository")
    parser.add_argument("--skip-check", action="store_true", help="skip the peer-vs-ours correctness check")
    parser.add_argument("--study", action="store_true", help="also time the reduced J23 Mountain Car study")
    parser.add_argument("--study-variant", default="ace-direct-uniform-tdrc")
    parser.add_argument("--study-extra", default="", metavar="ARGS",
                        help="extra sweep arguments for --study, e.g. \"--set steps=4000\" (a shorter try)")
    parser.add_argument("--out", metavar="FILE", help="also write the markdown there")
    args = parser.parse_args()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    if args.max_steps + 2 > args.data_steps:
        raise SystemExit("--max-steps must be smaller than --data-steps (a round reads that many steps of data)")
    populations = [int(x) for x in args.populations.split(",") if x.strip()]
    eval_populations = [int(x) for x in args.eval_populations.split(",") if x.strip()]
    arms = parse_list(args.arms, ALL_ARMS, "--arms")
    eval_arms = parse_list(args.eval_arms, EVAL_ARMS, "--eval-arms")
    cases = parse_list(args.cases, tuple(CASES), "--cases")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    authors_note = None
    if args.authors_code:
        authors_note = probe_authors(args.authors_code)
        if authors_note is not None:
            log(f"--authors-code: their code cannot run here: {authors_note}")
            args.authors_code = None
    if not args.authors_code:
        arms = [a for a in arms if a != "authors"]
        eval_arms = [a for a in eval_arms if a != "authors"]

    started = time.perf_counter()
    load_before = os.getloadavg()
    out: list[str] = []
    if not args.skip_check:
        log("correctness check (1000 steps, 6 learners per case) ...")
        check = check_correctness(args.authors_code, log=log)
        out += ["Correctness check (before any timing): theta after 1000 steps on shared data, 6 learners per case", "",
                "```", *check, "```", ""]
    folder = Path(tempfile.mkdtemp(prefix="populations-bench-"))
    try:
        data_path = str(folder / "data.npz")
        np.savez(data_path, **make_data(args.runs, args.data_steps + 2, seed=0))
        training: dict[str, dict[int, dict[str, dict[str, Any]]]] = {}
        for case in cases:
            training[case] = {}
            for population in populations:
                log(f"training {case} P={population}: {', '.join(arms)}")
                training[case][population] = measure("train", case, population, arms, args, data_path, log)
        evaluation: dict[int, dict[str, dict[str, Any]]] = {}
        for population in eval_populations:
            these = [a for a in eval_arms if a != "ours-torch" or population <= args.eval_torch_max_population]
            log(f"evaluation P={population}: {', '.join(these)}")
            evaluation[population] = measure("eval", cases[0], population, these, args, data_path, log)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    load_after = os.getloadavg()

    shims = next((r.get("shims") for by_p in [*training.values(), evaluation] for res in by_p.values()
                  for r in res.values() if r.get("shims")), None)
    header = [
        "# Population engine vs per-run numpy loops (CPU)", "",
        "Obtained with `benchmarks/populations.py` (its docstring says exactly what each arm does); command:", "",
        "```", "python " + shlex.join([os.path.relpath(__file__, REPO), *sys.argv[1:]]), "```", "",
        *machine_lines(args),
        f"- load average (1, 5, 15 min): {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} before, "
        f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} after; {time.perf_counter() - started:.0f} s "
        "in all",
        f"- data: native mountain-car, uniform random behaviour, R = min(P, {args.runs}) streams generated once; "
        "P = R x settings (J23 reduced-grid step sizes cycled); gamma 0.95; tile coding 4x4 x 8 + bias (201 "
        "features, 9 active)",
        f"- rounds: {args.rounds}, interleaved over the arms (A B C A B C ...), each arm about "
        f"{args.round_seconds} s per round; medians over rounds; speed-up = median [min-max] of per-round ratios",
        f"- peer / authors: timed on {args.peer_learners} learners (training) and {args.peer_rollouts} rollouts "
        "(evaluation) and **scaled linearly** to P (their loops run one learner / one episode at a time)",
        "- memory: each arm in a fresh subprocess per (case, P); peak RSS = that process's peak resident size "
        "(VmHWM of /proc/self/status; imports and compiled code included; baseline = resident size after the "
        "imports); state MB = bytes of our population's state_dict tensors",
        "- evaluation: ours = `emphatic_rl.train.evaluate` on a `build_run` Run (P x episodes env copies); the peer /"
        " authors = one episode at a time, costed per rollout-step and scaled to the rollout-steps ours took; "
        f"theta: a fixed hand-set energy-pumping policy (scale {args.policy_scale}) for every member; "
        f"ours-torch only up to P = {args.eval_torch_max_population}",
    ]
    if authors_note is not None:
        header += [f"- **the authors' code could not be run** (`--authors-code`): {authors_note}"]
    if shims:
        header += ["- shims applied at run time for the authors' code:", *[f"  - {s}" for s in shims]]
    out = [*header, "", *out]
    for case in cases:
        out += [*training_table(case, training[case], arms), ""]
    if evaluation:
        out += [*evaluation_table(evaluation, eval_arms, args), ""]
    if args.study:
        train_rates, eval_rates = {}, {}
        headline = "ace-direct-tdrc" if "ace-direct-tdrc" in training else cases[0]
        for reference in ("peer", "authors"):
            ns = [v for results in training.get(headline, {}).values() if results.get(reference, {}).get("ready")
                  for v in per_unit_ns(results[reference])]
            if ns:
                train_rates[reference] = statistics.median(ns)
            ns = [v for results in evaluation.values() if results.get(reference, {}).get("ready")
                  for v in per_unit_ns(results[reference])]
            if ns:
                eval_rates[reference] = statistics.median(ns)
        out += ["### The reduced Mountain Car study, end to end", "", *run_study(args, train_rates, eval_rates, log),
                ""]
    text = "\n".join(out)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
