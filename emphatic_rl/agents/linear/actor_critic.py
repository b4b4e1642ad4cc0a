"""Linear off-policy actor-critic with emphatic weightings: ACE, ACE-direct, OffPAC as switches on one agent.

Implements ACE (Imani, Graves and White 2018; Graves, Imani, Kumaraswamy and White 2023) for a population of ``P``
linear learners (softmax actor ``theta [P, A, d]``) fed by
``R`` behaviour streams; ``stream_of: int64[P]`` says which stream feeds learner ``p``. All hyperparameters that
are swept (step sizes, critic lambda, eta) are tensors ``[P]``, so one agent can hold a whole sweep.

Per step, for every learner, in the order of the authors' code (docs/algorithms/actor-critic.md)::

    gamma_{t+1} = 0 if terminal (and, with timeout_as_terminal, on time-outs) else gamma
    i_t    = i(S_t, gamma_t)                     # gamma_t = 0 at the stream start and at every episode start
    rho_t  = pi_theta(A_t|S_t) / mu(A_t|S_t)     # theta before this step's updates
    F_t    = emphasis estimate                   # followon: i_t + gamma_t rho_{t-1} F_{t-1} (stale rho_{t-1})
    M_t    = (1 - eta) i_t + eta F_t
    delta  = R_{t+1} + gamma_{t+1} v(x_{t+1}) - v(x_t)   # critic weights BEFORE the critic update
    critic.update(...)
    theta += alpha_actor rho_t M_t delta grad ln pi(A_t|S_t)                 # actor_update="sampled"
    theta += alpha_actor M_t sum_a pi(a|S_t) q(S_t, a) grad ln pi(a|S_t)     # actor_update="all_actions" (GQ)

Switches:

- ``emphasis``: ``"none"`` (``F_t = i_t``, so ``M_t = i_t``: OffPAC whatever eta), ``"followon"`` (the sampled
  trace; ``normalize_emphasis`` for the normalised form), ``"learned"`` (ACE-direct's ``fhat``, step
  ``alpha_emphasis``), ``"ideal"`` (the trace recomputed over the episode with the current theta; bounded history of
  ``ideal_history_cap`` steps per stream). The ETD critic uses the same ``F_t`` and ``i_t``.
- ``interest``: ``"uniform"`` (``i = 1``, the excursions objective) or ``"episodic"`` (``i_t = 1`` iff
  ``gamma_t = 0``, i.e. on the first state of each episode).
- ``actor_update``: ``"sampled"`` or ``"all_actions"`` (needs ``critic="gq"``; GQ is only used with it).
- ``critic``: ``"td" | "tdc" | "gtd" | "tdrc" | "etd" | "gq" | "oracle"`` (see ``critics.py``).
- ``timeout_as_terminal``: True (the paper's code) treats a time-out like a termination (``gamma_{t+1} = 0``);
  False bootstraps through it. Either way the next step starts a new episode (``gamma_t = 0``).

Presets (``PRESETS``; names for settings, not classes): ``ace`` (followon, eta 1), ``ace-direct`` (learned, eta 1),
``offpac`` (followon trace kept for an ETD critic, eta 0, uniform interest, so ``M = 1``).

Step sizes with binary (sparse) features are divided by the number of active features (``divide_step_sizes``,
default True, as the authors' code does); dense features are not divided.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from emphatic_rl.agents.base import ActionOutput, Agent
from emphatic_rl.agents.emphasis import FollowonTrace, IdealTrace, LearnedEmphasis
from emphatic_rl.agents.linear.critics import (
    CRITICS,
    Critic,
    CriticTransition,
    GQCritic,
    OracleCritic,
    TDCCritic,
    make_critic,
)
from emphatic_rl.agents.policies import LinearSoftmaxPolicy
from emphatic_rl.buffers.trajectory import TrajectoryBuffer
from emphatic_rl.emphatic import actor_coefficient, emphatic_weighting
from emphatic_rl.features import Features

if TYPE_CHECKING:
    from emphatic_rl.exact.lab import DiscreteLab

__all__ = [
    "ActorCritic",
    "PRESETS",
    "preset_settings",
    "EMPHASIS_KINDS",
    "INTEREST_KINDS",
    "ACTOR_UPDATES",
    "BACKENDS",
    "DTYPES",
    "numba_unsupported",
]

EMPHASIS_KINDS = ("none", "followon", "learned", "ideal")
INTEREST_KINDS = ("uniform", "episodic")
ACTOR_UPDATES = ("sampled", "all_actions")
EVALUATION_KINDS = ("sample", "greedy")
BACKENDS = ("auto", "torch", "numba")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
#: what the compiled CPU kernels cover (``emphatic_rl.agents.linear.kernels``); the rest runs on torch
NUMBA_CRITICS = ("td", "tdc", "gtd", "tdrc", "etd", "gq")
NUMBA_EMPHASIS = ("none", "followon", "learned")


def available_memory_bytes() -> int | None:
    """Memory this process can still take: ``MemAvailable`` of ``/proc/meminfo`` (Linux), else physical memory."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def state_memory_bytes(
    population_size: int,
    num_actions: int,
    num_features: int,
    num_critic_features: int,
    num_streams: int,
    dtype: torch.dtype,
    critic: str,
    emphasis: str,
    ideal_feature_width: int,
    ideal_history_cap: int,
) -> int:
    """Bytes of the learners' state: ``theta``, the critic's vectors and traces, ``fhat``, the ideal trace's history."""
    item = torch.empty((), dtype=dtype).element_size()
    vectors = {"td": 2, "etd": 2, "tdc": 3, "gtd": 3, "tdrc": 3, "gq": 3 * num_actions, "oracle": 1}.get(critic, 3)
    vectors += 1 if emphasis == "learned" else 0
    per_learner = num_actions * num_features + vectors * num_critic_features + 8
    ideal = num_streams * ideal_history_cap * (ideal_feature_width + 3) if emphasis == "ideal" else 0
    return item * (population_size * per_learner + ideal)


def check_state_memory(*args: Any) -> None:
    """Raise one ``ValueError`` when the state (``state_memory_bytes(*args)``) exceeds the memory available."""
    needed = state_memory_bytes(*args)
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise ValueError(
            f"a population of {args[0]} learners needs about {needed / 2**30:.1f} GiB of state but this machine has "
            f"{available / 2**30:.1f} GiB available; use fewer learners (smaller grid, fewer runs, or max_population "
            "in a study) or dtype 'float32'"
        )


def numba_unsupported(
    device: torch.device, binary_features: bool, critic: str, emphasis: str, actor_update: str
) -> str | None:
    """Why the numba backend cannot run these settings (one phrase), or None when it can."""
    if device.type != "cpu":
        return f"the numba backend runs on CPU only, not on device {str(device)!r}; use backend 'torch' or 'auto'"
    if not binary_features:
        return "the numba backend needs binary features (tile coding, one-hot); dense features run on 'torch'"
    if critic not in NUMBA_CRITICS:
        return f"the numba backend covers critics {', '.join(NUMBA_CRITICS)}, not {critic!r}; use 'torch'"
    if emphasis not in NUMBA_EMPHASIS:
        return f"the numba backend covers emphasis {', '.join(NUMBA_EMPHASIS)}, not {emphasis!r}; use 'torch'"
    return None


PRESETS: dict[str, dict[str, Any]] = {
    "ace": {"emphasis": "followon", "eta": 1.0, "interest": "uniform"},
    "ace-direct": {"emphasis": "learned", "eta": 1.0, "interest": "uniform"},
    "offpac": {"emphasis": "followon", "eta": 0.0, "interest": "uniform"},
}


def preset_settings(name: str) -> dict[str, Any]:
    """The constructor defaults a preset stands for (a fresh dict)."""
    if name not in PRESETS:
        raise ValueError(f"unknown actor-critic preset {name!r}; allowed: {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def _hyperparameter(
    value: Any, name: str, population_size: int, low: float, high: float | None, low_open: bool
) -> torch.Tensor:
    """A hyperparameter as float64 ``[P]`` after checking its range (raises one ``ValueError``)."""
    try:
        tensor = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a number or a sequence of numbers, got {value!r}") from None
    if tensor.dim() == 0:
        tensor = tensor.expand(population_size)
    if tuple(tensor.shape) != (population_size,):
        raise ValueError(f"{name} must be a scalar or have shape [P={population_size}], got {tuple(tensor.shape)}")
    bad = ~torch.isfinite(tensor) | ((tensor <= low) if low_open else (tensor < low))
    if high is not None:
        bad |= tensor > high
    if bool(bad.any()):
        allowed = f"{'(' if low_open else '['}{low}, {'inf)' if high is None else f'{high}]'}"
        raise ValueError(f"{name} must lie in {allowed}; got {float(tensor[bad][0])!r}")
    return tensor.clone()


class ActorCritic(Agent):
    """A population of linear softmax actor-critics (ACE / ACE-direct / OffPAC) learning from fixed-behaviour data.

    Args:
        features: maps raw observations ``[..., *obs_shape]`` to active indices or dense features (the actor's).
        critic_features: the critic's (and the learned emphasis's) features of the same observations; default
            ``features``. Lets a tabular problem alias states for the actor only, or give an oracle critic the state.
            Must be binary exactly when ``features`` is.
        num_actions: ``A``.
        population_size: ``P``.
        stream_of: ``int64[P]``, the behaviour stream in ``[0, R)`` of each learner (default ``arange(P)``).
        num_streams: ``R`` (default ``max(stream_of) + 1``).
        alpha_actor: the actor's step size ``> 0``, scalar or ``[P]`` (as are the other step sizes).
        alpha_critic: the critic's step size.
        alpha_h: the step size of the TDC/TDRC/GQ auxiliary weights; defaults to ``alpha_critic`` (TDRC's rule).
        alpha_emphasis: the step size of ACE-direct's ``fhat``; required for ``emphasis="learned"``.
        critic_lambda: critic trace decay in ``[0, 1]``, scalar or ``[P]``.
        eta: OffPAC (0) to ACE (1) interpolation in ``[0, 1]``, scalar or ``[P]``.
        gamma: discount in ``[0, 1]`` (one value for the population).
        emphasis: ``"none"``, ``"followon"``, ``"learned"`` or ``"ideal"`` (see the module doc).
        normalize_emphasis: the normalised follow-on trace / emphasis target.
        interest: ``"uniform"`` or ``"episodic"``.
        actor_update: ``"sampled"`` or ``"all_actions"``.
        critic: ``"td"``, ``"tdc"``, ``"gtd"``, ``"tdrc"``, ``"etd"``, ``"gq"`` or ``"oracle"``.
        timeout_as_terminal: treat a time-out like a termination (``gamma_{t+1} = 0``).
        tdrc_beta: TDRC's regulariser (1.0).
        oracle_values: for ``critic="oracle"``: ``theta [P, A, d] -> v [P, S]`` (one-hot state features).
        divide_step_sizes: divide step sizes by the number of active binary features.
        ideal_history_cap: steps of episode history kept per stream for ``emphasis="ideal"``.
        evaluation: ``"sample"`` (draw from the softmax target policy, default) or ``"greedy"``.
        fit_stream_start: ACE-direct: also fit ``fhat(S_0) <- i_0`` at the first state of each stream (default
            True). The authors' code fits a start state only after an episode end (their ``F_0 = 0``); False
            reproduces it.
        dtype: ``"float64"`` (default) or ``"float32"`` (or the torch dtypes): the learners' weights, traces and
            step sizes. float64 is what the authors compute in and what the reference traces hold to 1e-10; it
            doubles the state's memory and costs the numba kernel ~10-25% per learner-step at large ``P`` (see
            ``benchmarks/results/populations_cpu.md``); float32 drifts where a critic diverges.
        backend: ``"auto"`` (default: the compiled numba kernel on CPU when it covers the settings, else torch),
            ``"numba"`` (CPU only; binary features, critics td / tdc / gtd / tdrc / etd, emphasis none /
            followon / learned, the sampled actor update) or ``"torch"`` (everything; the path for GPUs).
        seed: seeds the agent's generator (used only by ``evaluation_action``).
        device: torch device.
    """

    name = "actor_critic"
    acts_in_env = False

    def __init__(
        self,
        features: Features,
        num_actions: int,
        population_size: int = 1,
        *,
        critic_features: Features | None = None,
        stream_of: torch.Tensor | Sequence[int] | None = None,
        num_streams: int | None = None,
        alpha_actor: Any = 0.01,
        alpha_critic: Any = 0.01,
        alpha_h: Any = None,
        alpha_emphasis: Any = None,
        critic_lambda: Any = 0.0,
        eta: Any = 1.0,
        gamma: float = 0.95,
        emphasis: str = "followon",
        normalize_emphasis: bool = False,
        interest: str = "uniform",
        actor_update: str = "sampled",
        critic: str = "tdrc",
        tdrc_beta: float = 1.0,
        oracle_values: Callable[[torch.Tensor], Any] | None = None,
        timeout_as_terminal: bool = True,
        divide_step_sizes: bool = True,
        ideal_history_cap: int = 1000,
        evaluation: str = "sample",
        fit_stream_start: bool = True,
        dtype: torch.dtype | str = "float64",
        backend: str = "auto",
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        # ---------------------------------------------------------------- validation, before any work
        if not isinstance(features, Features):
            raise ValueError(f"features must be an emphatic_rl.features.Features, got {type(features).__name__}")
        critic_features = features if critic_features is None else critic_features
        if not isinstance(critic_features, Features):
            raise ValueError(
                f"critic_features must be an emphatic_rl.features.Features, got {type(critic_features).__name__}"
            )
        if bool(critic_features.binary) != bool(features.binary):
            raise ValueError("critic_features must be binary (active indices) exactly when the actor's features are")
        if not isinstance(num_actions, int) or num_actions < 1:
            raise ValueError(f"num_actions must be an integer >= 1, got {num_actions!r}")
        if not isinstance(population_size, int) or population_size < 1:
            raise ValueError(f"population_size must be an integer >= 1, got {population_size!r}")
        for option, value, allowed in (
            ("emphasis", emphasis, EMPHASIS_KINDS),
            ("interest", interest, INTEREST_KINDS),
            ("actor_update", actor_update, ACTOR_UPDATES),
            ("critic", critic, tuple(CRITICS)),
            ("evaluation", evaluation, EVALUATION_KINDS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {option} {value!r}; allowed: {', '.join(allowed)}")
        if actor_update == "all_actions" and critic != "gq":
            raise ValueError(f"actor_update 'all_actions' needs critic 'gq' (action values), got critic {critic!r}")
        if critic == "gq" and actor_update != "all_actions":
            raise ValueError("critic 'gq' learns action values and is only used with actor_update 'all_actions'")
        if critic == "oracle" and not callable(oracle_values):
            raise ValueError("critic 'oracle' needs oracle_values: a callable theta [P, A, d] -> v [P, S]")
        if normalize_emphasis and emphasis not in ("followon", "learned"):
            raise ValueError(f"normalize_emphasis applies to emphasis 'followon' or 'learned', not {emphasis!r}")
        if not (isinstance(gamma, (int, float)) and 0.0 <= gamma <= 1.0):
            raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
            dtype = DTYPES[dtype]
        if dtype not in DTYPES.values():
            raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
        try:
            device_t = torch.device(device)
        except RuntimeError:
            raise ValueError(f"device {device!r} is not a torch device") from None
        why_not_numba = numba_unsupported(device_t, bool(features.binary), critic, emphasis, actor_update)
        if backend == "numba" and why_not_numba is not None:
            raise ValueError(why_not_numba)
        if backend == "auto":
            backend = "torch" if why_not_numba is not None else "numba"
        check_state_memory(
            population_size,
            num_actions,
            features.num_features,
            critic_features.num_features,
            num_streams or 1,
            dtype,
            critic,
            emphasis,
            features.num_active if emphasis == "ideal" and features.binary else features.num_features,
            ideal_history_cap,
        )
        P = population_size
        alpha_actor_64 = _hyperparameter(alpha_actor, "alpha_actor", P, 0.0, None, low_open=True)
        alpha_critic_64 = _hyperparameter(alpha_critic, "alpha_critic", P, 0.0, None, low_open=True)
        alpha_h_64 = (
            alpha_critic_64.clone()
            if alpha_h is None
            else _hyperparameter(alpha_h, "alpha_h", P, 0.0, None, low_open=True)
        )
        if emphasis == "learned":
            if alpha_emphasis is None:
                raise ValueError("emphasis 'learned' (ACE-direct) needs alpha_emphasis > 0")
            alpha_emphasis_64 = _hyperparameter(alpha_emphasis, "alpha_emphasis", P, 0.0, None, low_open=True)
        lambda_64 = _hyperparameter(critic_lambda, "critic_lambda", P, 0.0, 1.0, low_open=False)
        eta_64 = _hyperparameter(eta, "eta", P, 0.0, 1.0, low_open=False)
        if not tdrc_beta >= 0:
            raise ValueError(f"tdrc_beta must be >= 0, got {tdrc_beta!r}")

        if stream_of is None:
            stream_of_t = torch.arange(P)
        else:
            stream_of_t = torch.as_tensor(stream_of).detach().cpu()
            if stream_of_t.dtype.is_floating_point or tuple(stream_of_t.shape) != (P,):
                raise ValueError(
                    f"stream_of must be an integer tensor of shape [P={P}], got "
                    f"{stream_of_t.dtype} {tuple(stream_of_t.shape)}"
                )
            stream_of_t = stream_of_t.long()
        if num_streams is None:
            num_streams = int(stream_of_t.max()) + 1
        if not isinstance(num_streams, int) or num_streams < 1:
            raise ValueError(f"num_streams must be an integer >= 1, got {num_streams!r}")
        if bool(((stream_of_t < 0) | (stream_of_t >= num_streams)).any()):
            raise ValueError(f"stream_of entries must lie in [0, num_streams={num_streams})")

        # ---------------------------------------------------------------- build
        self.device = device_t
        self.dtype = dtype
        self.backend = backend
        self.features = features
        self.critic_features = critic_features
        self.num_actions = num_actions
        self.population_size = P
        self.num_streams = num_streams
        self.stream_of = stream_of_t.to(self.device)
        self.gamma = float(gamma)
        self.emphasis = emphasis
        self.interest = interest
        self.actor_update = actor_update
        self.critic_name = critic
        self.timeout_as_terminal = bool(timeout_as_terminal)
        self.evaluation = evaluation
        self.sparse = bool(features.binary)
        divisor = float(features.num_active) if (self.sparse and divide_step_sizes and features.num_active) else 1.0
        critic_divisor = (
            float(critic_features.num_active)
            if (self.sparse and divide_step_sizes and critic_features.num_active)
            else 1.0
        )
        self.step_size_divisor = divisor

        def per_step(alpha64: torch.Tensor, by: float = divisor) -> torch.Tensor:
            return (alpha64 / by).to(dtype=dtype, device=self.device)

        self.alpha_actor = per_step(alpha_actor_64)
        self.eta = eta_64.to(dtype=dtype, device=self.device)
        self.critic_lambda = lambda_64.to(dtype=dtype, device=self.device)
        d = features.num_features
        d_critic = critic_features.num_features
        self.policy = LinearSoftmaxPolicy(num_actions, d, P, device=self.device, dtype=dtype)
        common: dict[str, Any] = dict(num_features=d_critic, population_size=P, device=self.device, dtype=dtype)
        if critic == "oracle":
            assert oracle_values is not None  # checked above
            self.critic: Critic = OracleCritic(value_function=oracle_values, **common)
        else:
            kwargs: dict[str, Any] = dict(
                alpha=per_step(alpha_critic_64, critic_divisor), trace_decay=self.critic_lambda, **common
            )
            if critic in ("tdc", "gtd", "tdrc", "gq"):
                kwargs["alpha_h"] = per_step(alpha_h_64, critic_divisor)
            if critic == "tdrc":
                kwargs["beta"] = tdrc_beta
            if critic == "gq":
                kwargs["num_actions"] = num_actions
            self.critic = make_critic(critic, **kwargs)
        self.normalize_emphasis = bool(normalize_emphasis)
        self.followon_trace = (
            FollowonTrace(P, normalize_emphasis, self.device, dtype) if emphasis == "followon" else None
        )
        self.learned_emphasis = (
            LearnedEmphasis(
                d_critic,
                P,
                per_step(alpha_emphasis_64, critic_divisor),
                normalize_emphasis,
                self.device,
                dtype,
                fit_stream_start=fit_stream_start,
            )
            if emphasis == "learned"
            else None
        )
        self.ideal_trace: IdealTrace | None = None
        if emphasis == "ideal":
            feature_shape = (d,)
            if self.sparse:
                assert features.num_active is not None  # binary feature maps declare it
                feature_shape = (features.num_active,)
            self.ideal_trace = IdealTrace(
                num_streams,
                self.stream_of,
                feature_shape,
                self.sparse,
                self.gamma,
                ideal_history_cap,
                self.device,
                value_dtype=dtype,
            )
        # gamma_t = 0 at the start of the stream: every stream starts an episode
        self.episode_start = torch.ones(num_streams, dtype=torch.bool, device=self.device)
        self.stream_start = torch.ones(num_streams, dtype=torch.bool, device=self.device)
        self.fit_stream_start = bool(fit_stream_start)
        self.tdrc_beta = float(tdrc_beta)
        self.frozen = torch.zeros(P, dtype=torch.bool, device=self.device)
        self._any_frozen = False
        if self.backend == "numba":
            self._setup_numba()
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_preset(
        cls, preset: str, features: Features, num_actions: int, population_size: int = 1, **overrides: Any
    ) -> ActorCritic:
        """Build with ``PRESETS[preset]`` as defaults; ``overrides`` win."""
        settings = preset_settings(preset)
        settings.update(overrides)
        agent = cls(features, num_actions, population_size, **settings)
        agent.name = preset
        return agent

    # ------------------------------------------------------------------ the learning step
    def _interest(self, gamma: torch.Tensor) -> torch.Tensor:
        if self.interest == "uniform":
            return torch.ones_like(gamma)
        return (gamma == 0).to(gamma.dtype)

    def update_step(
        self,
        obs_features: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        terminated: torch.Tensor,
        truncated: torch.Tensor,
        next_features: torch.Tensor,
        behaviour_log_prob: torch.Tensor,
        critic_obs_features: torch.Tensor | None = None,
        critic_next_features: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Advance all ``P`` learners by one transition of each of the ``R`` streams.

        Args (each with leading axis ``R``):
            obs_features: ``x(S_t)``: active indices ``int64[R, K]`` or dense ``float[R, d]``.
            action: ``int64[R]``. reward: ``float[R]``. terminated, truncated: ``bool[R]``.
            next_features: ``x(S_{t+1})`` (the true next state, also at episode ends), like ``obs_features``.
            behaviour_log_prob: ``log mu(A_t|S_t)``, ``float[R]``.
            critic_obs_features, critic_next_features: the critic's features of ``S_t`` and ``S_{t+1}`` when
                they differ from the actor's (see ``critic_features``); default: the actor's.

        Returns metrics, each ``[P]``: ``td_error``, ``followon`` (``F_t``), ``emphatic_weighting`` (``M_t``),
        ``importance_ratio`` (``rho_t``).
        """
        R = self.num_streams
        if obs_features.shape[0] != R or action.shape != (R,) or next_features.shape != obs_features.shape:
            raise ValueError(
                f"update_step expects per-stream tensors with leading axis R={R}: got obs_features "
                f"{tuple(obs_features.shape)}, action {tuple(action.shape)}, next_features {tuple(next_features.shape)}"
            )
        if self.sparse == obs_features.dtype.is_floating_point:
            raise ValueError(
                "update_step: features must be int64 active indices for binary feature maps and "
                "float values for dense ones"
            )
        if self.backend == "numba":
            return self._numba_step(
                obs_features,
                action,
                reward,
                terminated,
                truncated,
                next_features,
                behaviour_log_prob,
                critic_obs_features,
                critic_next_features,
            )
        saved = [t.clone() for t in self._member_tensors()] if self._any_frozen else None
        dtype = self.dtype
        obs_features, next_features = self._as_dtype(obs_features), self._as_dtype(next_features)
        critic_obs_features, critic_next_features = (
            None if f is None else self._as_dtype(f) for f in (critic_obs_features, critic_next_features)
        )
        terminated = terminated.to(torch.bool)
        truncated = truncated.to(torch.bool)
        start_r = self.episode_start
        ends_flow_r = (terminated | truncated) if self.timeout_as_terminal else terminated
        gamma_t_r = torch.where(start_r, 0.0, torch.tensor(self.gamma, dtype=dtype, device=self.device))
        gamma_tp1_r = torch.where(ends_flow_r, 0.0, torch.tensor(self.gamma, dtype=dtype, device=self.device))
        interest_r = self._interest(gamma_t_r)
        next_interest_r = self._interest(gamma_tp1_r)

        streams = self.stream_of
        x_t = obs_features[streams]
        x_tp1 = next_features[streams]
        c_t = x_t if critic_obs_features is None else critic_obs_features[streams]
        c_tp1 = x_tp1 if critic_next_features is None else critic_next_features[streams]
        a_t = action.long()[streams]
        gamma_t = gamma_t_r[streams]
        gamma_tp1 = gamma_tp1_r[streams]
        interest_t = interest_r[streams]

        log_probs_t = self.policy.log_probs(x_t)  # theta before this step's updates
        probs_t = log_probs_t.exp()
        rho_t = torch.exp(log_probs_t.gather(1, a_t[:, None]).squeeze(1) - behaviour_log_prob.to(dtype)[streams])

        if self.emphasis == "none":
            followon = interest_t
        elif self.emphasis == "followon":
            assert self.followon_trace is not None  # made for emphasis="followon"
            followon = self.followon_trace.step(interest_t, gamma_t, rho_t)
        elif self.emphasis == "learned":
            assert self.learned_emphasis is not None  # made for emphasis="learned"
            followon = self.learned_emphasis.step(
                c_t,
                c_tp1,
                interest_t,
                next_interest_r[streams],
                gamma_t,
                gamma_tp1,
                rho_t,
                start_r[streams],
                ends_flow_r[streams],
                stream_start=self.stream_start[streams],
            )
        else:
            assert self.ideal_trace is not None  # made for emphasis="ideal"
            followon = self.ideal_trace.step(
                self.policy,
                interest_t,
                obs_features,
                action.long(),
                behaviour_log_prob.to(dtype),
                interest_r,
                start_r,
            )
        weighting = emphatic_weighting(interest_t, followon, self.eta)

        transition = CriticTransition(
            features=c_t,
            next_features=c_tp1,
            reward=reward.to(dtype)[streams],
            gamma=gamma_t,
            next_gamma=gamma_tp1,
            rho=rho_t,
            interest=interest_t,
            followon=followon,
            action=a_t,
            next_policy_probs=self.policy.probs(x_tp1) if self.critic.needs_next_policy else None,
            policy_theta=self.policy.theta if self.critic.needs_policy_theta else None,
        )
        td_error = self.critic.td_error(transition)  # critic weights BEFORE the critic update
        self.critic.update(transition, td_error)
        if self.actor_update == "sampled":
            coef = self.alpha_actor * actor_coefficient(rho_t, weighting, td_error)
            self.policy.add_grad_log_prob_(x_t, coef, probs_t, a_t)
        else:
            assert isinstance(self.critic, GQCritic)
            q_values = self.critic.action_values(c_t)  # after this step's critic update (the authors' order)
            self.policy.add_all_actions_(x_t, self.alpha_actor * weighting, probs_t, q_values)

        self.episode_start = terminated | truncated
        self.stream_start.fill_(False)
        if saved is not None:
            for tensor, old in zip(self._member_tensors(), saved, strict=True):
                mask = self.frozen.view(-1, *([1] * (tensor.dim() - 1)))
                tensor.copy_(torch.where(mask, old, tensor))
        return {
            "td_error": td_error,
            "followon": followon,
            "emphatic_weighting": weighting,
            "importance_ratio": rho_t,
        }

    def _as_dtype(self, features: torch.Tensor) -> torch.Tensor:
        """Dense features in the learners' dtype; active indices unchanged."""
        return features.to(self.dtype) if features.dtype.is_floating_point else features

    # ------------------------------------------------------------------ the numba backend
    def _setup_numba(self) -> None:
        """Lay the state out for the kernel and keep numpy views of it (shared memory with the torch tensors).

        Memory layout (the tensors keep their documented shapes as strided views). The ``A`` weights of ``theta``
        at one feature are adjacent, and so are the critic's ``w``, TDC/TDRC's ``h`` and the learned ``fhat`` at
        one feature (one ``[.., V]`` row). When every learner has ``lambda = 0`` (the kernel touches only active
        features) the blocks are **feature-major**, ``theta`` in ``[d, P, A]`` and the vectors in ``[d_c, P, V]``:
        at one feature the rows of all learners are adjacent, so learners that share a behaviour stream (same
        active features) and sit next to each other in the population (``stream_of`` sorted, as the sweep lays
        members out) read contiguous memory, and a step streams through the state instead of jumping (measured
        about 2x faster per learner-step at ``P = 3000`` and ``30000``). Learners with ``lambda > 0`` sweep their whole
        vectors every step, so with any of them (and for GQ) the blocks are learner-major, ``[P, d, A]`` and
        ``[P, d_c, V]``.
        """
        from emphatic_rl.agents.linear import kernels

        P, dtype = self.population_size, self.dtype
        critic, learned = self.critic, self.learned_emphasis
        theta = self.policy.theta
        action_values = isinstance(critic, GQCritic)
        self.feature_major = not action_values and bool((self.critic_lambda == 0).all())
        if self.feature_major:
            block = torch.zeros(theta.shape[2], P, theta.shape[1], dtype=dtype, device=self.device)
            block.copy_(theta.permute(2, 0, 1))
            self.policy.theta = block.permute(1, 2, 0)
        else:
            block = torch.zeros(P, theta.shape[2], theta.shape[1], dtype=dtype, device=self.device)
            block.copy_(theta.permute(0, 2, 1))
            self.policy.theta = block.permute(0, 2, 1)
        vectors: list[tuple[str, Critic | LearnedEmphasis]] = [] if action_values else [("weights", critic)]
        if critic.correction is not None and not action_values:
            vectors.append(("correction", critic))
        if learned is not None:
            vectors.append(("weights", learned))
        d_critic = self.critic_features.num_features
        if self.feature_major:
            shared = torch.zeros(d_critic, P, max(1, len(vectors)), dtype=dtype, device=self.device)
            for slot, (name, owner) in enumerate(vectors):
                shared[:, :, slot] = getattr(owner, name).T
                setattr(owner, name, shared[:, :, slot].T)
        else:
            shared = torch.zeros(P, d_critic, max(1, len(vectors)), dtype=dtype, device=self.device)
            for slot, (name, owner) in enumerate(vectors):
                shared[:, :, slot] = getattr(owner, name)
                setattr(owner, name, shared[:, :, slot])
        empty_rows = np.zeros((P, 0), dtype=np.float64 if dtype == torch.float64 else np.float32)
        if isinstance(critic, GQCritic):  # GQ: q weights, trace and h as one [3, P, A, d_c] block
            action_block = torch.stack([critic.weights, critic.trace, critic.correction]).contiguous()
            critic.weights, critic.trace, critic.correction = action_block.unbind(0)
        else:
            action_block = torch.zeros(3, P, 0, 0, dtype=dtype)
        self._kernels = kernels
        self._last_critic_index: torch.Tensor | None = None
        self._state_is_lazy = False
        # per-learner vectors packed into two blocks (the agent's and its modules' tensors become rows of them)
        alpha_h = critic.alpha if critic.alpha_h is None else critic.alpha_h
        alpha_emphasis = learned.alpha if learned is not None else torch.zeros(P, dtype=dtype)
        hyperparameters = torch.stack(
            [self.alpha_actor, critic.alpha, alpha_h, alpha_emphasis, self.critic_lambda, self.eta]
        ).contiguous()
        self.alpha_actor, critic.alpha = hyperparameters[0], hyperparameters[1]
        if critic.alpha_h is not None:
            critic.alpha_h = hyperparameters[2]
        if learned is not None:
            learned.alpha = hyperparameters[3]
        self.critic_lambda = critic.trace_decay = hyperparameters[4]
        self.eta = hyperparameters[5]
        followon = self.followon_trace
        scalars = torch.zeros(4, P, dtype=dtype)
        scalars[1] = 1.0  # h_scale
        scalars[3] = 1.0  # rho_{-1}
        if followon is not None:
            scalars[2], scalars[3] = followon.previous_followon, followon.previous_rho
            followon.previous_followon, followon.previous_rho = scalars[2], scalars[3]
        self._trace_coef, self._correction_scale = scalars[0], scalars[1]
        flags = torch.zeros(4, self.num_streams, dtype=torch.bool)  # terminated, truncated, episode/stream start
        flags[2], flags[3] = self.episode_start, self.stream_start
        self.episode_start, self.stream_start = flags[2], flags[3]
        self._numba_flags = flags.numpy()
        self._numba_state = dict(
            theta=self.policy.theta.numpy(),
            weights=empty_rows if action_values else critic.weights.numpy(),
            trace=critic.trace.numpy() if critic.trace is not None and not action_values else empty_rows,
            correction=(
                critic.correction.numpy() if critic.correction is not None and not action_values else empty_rows
            ),
            fhat=learned.weights.numpy() if learned is not None else empty_rows,
            action_block=action_block.numpy(),
            scalars=scalars.numpy(),
        )
        self._numba_learners = (self.stream_of.numpy(), self.frozen.numpy(), hyperparameters.numpy())
        self._numba_constants = (
            np.array([self.gamma, self.tdrc_beta if self.critic_name == "tdrc" else 0.0]),
            np.array(
                [
                    kernels.CRITIC_CODES[self.critic_name],
                    kernels.EMPHASIS_CODES[self.emphasis],
                    kernels.INTEREST_CODES[self.interest],
                    self.normalize_emphasis,
                    self.timeout_as_terminal,
                    self.fit_stream_start,
                ],
                dtype=np.int64,
            ),
        )

    def _numba_step(
        self,
        obs_features: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        terminated: torch.Tensor,
        truncated: torch.Tensor,
        next_features: torch.Tensor,
        behaviour_log_prob: torch.Tensor,
        critic_obs_features: torch.Tensor | None,
        critic_next_features: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        def array(tensor: torch.Tensor, dtype: Any) -> np.ndarray:
            values = (
                tensor.numpy()
                if tensor.device.type == "cpu" and not tensor.requires_grad
                else (tensor.detach().cpu().numpy())
            )
            return (
                values
                if values.dtype == dtype and values.flags.c_contiguous
                else (np.ascontiguousarray(values, dtype=dtype))
            )

        x_t = array(obs_features, np.int64)
        x_tp1 = array(next_features, np.int64)
        c_t = x_t if critic_obs_features is None else array(critic_obs_features, np.int64)
        c_tp1 = x_tp1 if critic_next_features is None else array(critic_next_features, np.int64)
        flags = self._numba_flags
        flags[0] = array(terminated, np.bool_)
        flags[1] = array(truncated, np.bool_)
        state = self._numba_state
        outputs = torch.empty(4, self.population_size, dtype=self.dtype)
        self._kernels.population_step_packed(
            x_t,
            x_tp1,
            c_t,
            c_tp1,
            array(action, np.int64),
            array(reward, np.float64),
            flags,
            array(behaviour_log_prob, np.float64),
            *self._numba_learners,
            state["theta"],
            state["weights"],
            state["trace"],
            state["correction"],
            state["fhat"],
            state["action_block"],
            state["scalars"],
            *self._numba_constants,
            outputs.numpy(),
        )
        self._last_critic_index = torch.from_numpy(c_t)
        self._state_is_lazy = True
        td_error, followon, weighting, rho = outputs.unbind(0)
        return {
            "td_error": td_error,
            "followon": followon,
            "emphatic_weighting": weighting,
            "importance_ratio": rho,
        }

    def _write_out_traces(self) -> None:
        """numba: write the ``lambda = 0`` learners' traces (kept as a scalar times the last step's features)
        densely into ``critic.trace``. The kernel never reads those entries, so this changes no result."""
        if self.backend != "numba" or not self._state_is_lazy:
            return
        state = self._numba_state
        if state["trace"].shape[1] and self._last_critic_index is not None:
            self._kernels.materialize_sparse_traces(
                state["trace"],
                state["scalars"][0],
                self.critic_lambda.numpy(),
                self._last_critic_index.numpy(),
                self.stream_of.numpy(),
                self.frozen.numpy(),
            )
        self._state_is_lazy = False

    def _lazy_correction(self) -> bool:
        return self.backend == "numba" and bool(self._numba_state["correction"].shape[1])

    def sync_state(self) -> None:
        """Write the numba backend's lazily kept state into the state tensors.

        With ``lambda = 0`` the kernel keeps each trace as a scalar times the last step's features, and TDRC's
        ``h`` as a scale times raw weights (``critic.correction`` holds the raw weights between calls). Call this
        before reading ``agent.critic.trace`` / ``agent.critic.correction`` directly (``state_dict`` needs no call:
        it writes out copies and leaves the kernel's representation alone, so a resumed run continues
        bit-identically). Writing ``h`` out rounds it once: a run that calls this continues with that rounding.
        A no-op on the torch backend.
        """
        self._write_out_traces()
        if self._lazy_correction():
            self._kernels.materialize_correction(self._numba_state["correction"], self._numba_state["scalars"][1])

    def update(self, buffer: TrajectoryBuffer, env_step: int) -> dict[str, torch.Tensor]:
        """Learn from ``buffer.latest()`` (one row per stream, ``N = R``)."""
        batch = buffer.latest()
        obs, next_obs = batch.obs.to(self.device), batch.next_obs.to(self.device)
        separate_critic = self.critic_features is not self.features
        return self.update_step(
            self.features(obs),
            batch.action.to(self.device),
            batch.reward.to(self.device),
            batch.terminated.to(self.device),
            batch.truncated.to(self.device),
            self.features(next_obs),
            batch.behaviour_log_prob.to(self.device),
            critic_obs_features=self.critic_features(obs) if separate_critic else None,
            critic_next_features=self.critic_features(next_obs) if separate_critic else None,
        )

    # ------------------------------------------------------------------ acting and evaluation
    def act(self, obs: torch.Tensor, env_step: int) -> ActionOutput:
        raise RuntimeError(
            "ActorCritic learns from a fixed behaviour policy (acts_in_env=False); the loop's Behaviour acts"
        )

    def evaluation_action(self, obs: torch.Tensor) -> torch.Tensor:
        """Target-policy actions ``int64[P, E]`` for ``obs: [P, E, *obs_shape]``: a draw from the softmax policy
        (``evaluation="sample"``, using the agent's generator) or its argmax (``"greedy"``)."""
        features = self._as_dtype(self.features(obs.to(self.device)))
        if self.evaluation == "greedy":
            return self.policy.greedy(features)
        if self._any_frozen:
            # diverged (frozen) members may hold a non-finite theta: draw their actions uniformly so the others can
            # still be evaluated (the training loop reports NaN for the diverged members' returns)
            probs = self.policy.probs(features)
            probs = torch.where(torch.isfinite(probs).all(-1, keepdim=True), probs, 1.0 / self.num_actions)
            flat = probs.reshape(-1, self.num_actions)
            return torch.multinomial(flat, 1, generator=self.generator).view(probs.shape[:-1])
        return self.policy.sample(features, self.generator)

    @torch.no_grad()
    def predict_action(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """The softmax policy's argmax (``deterministic``) or a draw from it, ``int64[P, E]``."""
        features = self._as_dtype(self.features(obs.to(self.device)))
        if deterministic:
            return self.policy.greedy(features)
        return self.policy.sample(features, self.generator)

    #: the exact lab of the tabular MDP the agent learns on (set by its builder), for ``exact_objective``
    exact_lab: DiscreteLab | None = None

    def exact_objective(self) -> torch.Tensor | None:
        """``J_mu [P]`` of every member's current policy (float64, exact) when ``exact_lab`` is set; else ``None``."""
        if self.exact_lab is None:
            return None
        return self.exact_lab.batched_objective_of_theta(self.policy.theta.detach().cpu())

    def action_probabilities(self, obs: torch.Tensor) -> torch.Tensor:
        """``pi(.|s)`` for ``obs: [P, E, *obs_shape]``: ``[P, E, A]``."""
        return self.policy.probs(self._as_dtype(self.features(obs.to(self.device))))

    # ------------------------------------------------------------------ divergence
    def _member_tensors(self) -> list[torch.Tensor]:
        """Every per-learner state tensor (leading axis ``P``). numba: TDRC's ``h`` as its raw weights (finite
        exactly when ``h`` is: its scale lies in (0, 1])."""
        self._write_out_traces()
        tensors = [self.policy.theta, *self.critic.tensors()]
        for module in (self.followon_trace, self.learned_emphasis):
            if module is not None:
                tensors.extend(module.tensors())
        return tensors

    def parameters_finite(self) -> torch.Tensor:
        """``bool[P]``: actor, critic and emphasis parameters all finite."""
        finite = torch.ones(self.population_size, dtype=torch.bool, device=self.device)
        for tensor in self._member_tensors():
            finite &= torch.isfinite(tensor.reshape(self.population_size, -1)).all(1)
        return finite

    def freeze(self, members: torch.Tensor) -> None:
        """Stop updating the members where ``members`` (``bool[P]``) is true; their parameters stay as they are."""
        members = torch.as_tensor(members, dtype=torch.bool, device=self.device)
        if members.shape != (self.population_size,):
            raise ValueError(f"freeze: members must be bool[P={self.population_size}], got {tuple(members.shape)}")
        self._write_out_traces()  # the kernel skips frozen members from now on: their traces must be written out
        self.frozen |= members
        self._any_frozen = bool(self.frozen.any())

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        self._write_out_traces()
        critic_state = self.critic.state_dict()
        state: dict[str, Any] = {
            "theta": self.policy.theta.clone(),
            "critic": critic_state,
            "episode_start": self.episode_start.clone(),
            "stream_start": self.stream_start.clone(),
            "frozen": self.frozen.clone(),
            "generator": self.generator.get_state(),
        }
        for key, module in (
            ("followon_trace", self.followon_trace),
            ("learned_emphasis", self.learned_emphasis),
            ("ideal_trace", self.ideal_trace),
        ):
            if module is not None:
                state[key] = module.state_dict()
        if self._lazy_correction():
            # h itself for readers and other backends; the raw weights and scale for an exact resume
            raw = critic_state["correction"]
            critic_state["correction"] = raw * self._correction_scale[:, None]
            state["numba_correction"] = {"raw": raw, "scale": self._correction_scale.clone()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.theta.copy_(state["theta"])
        self.critic.load_state_dict(state["critic"])
        self.episode_start.copy_(state["episode_start"])
        # checkpoints from before this field: a run that has a checkpoint has taken steps
        self.stream_start.copy_(state.get("stream_start", torch.zeros_like(self.stream_start)))
        self.frozen.copy_(state["frozen"])
        self._any_frozen = bool(self.frozen.any())
        self.generator.set_state(state["generator"])
        for key, module in (
            ("followon_trace", self.followon_trace),
            ("learned_emphasis", self.learned_emphasis),
            ("ideal_trace", self.ideal_trace),
        ):
            if module is not None:
                module.load_state_dict(state[key])
        if self.backend == "numba":
            self._state_is_lazy = False
            self._correction_scale.fill_(1.0)  # the loaded h is plain ...
            if self._lazy_correction() and "numba_correction" in state:  # ... unless this backend wrote it
                cast(TDCCritic, self.critic).correction.copy_(state["numba_correction"]["raw"])  # TDRC's h
                self._correction_scale.copy_(state["numba_correction"]["scale"])
