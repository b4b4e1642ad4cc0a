"""Linear off-policy critics with eligibility traces, batched over a population ``P`` (the critics of the ACE
experiments of Graves, Imani, Kumaraswamy and White 2023; TDRC: Ghiassian et al. 2020).

Every critic keeps weights ``[P, d]`` (GQ: ``[P, A, d]``) and dense traces of the same shape. Features are active
indices ``int64[P, K]`` (binary features; updates of the weights through the features touch only the active
entries) or dense ``float[P, d]``. Step sizes and ``lambda`` are tensors ``[P]``; the caller has already divided
step sizes by the number of active features where it wants that (as the authors' code does with tile coding).

The update lines, with ``x_t = x(S_t)``, ``delta_t`` computed with the weights *before* the update, ``lambda`` the
critic's trace decay, ``gamma_t`` the discount into ``S_t`` (0 at episode starts) and ``gamma_{t+1}`` the discount
of this transition (0 on termination):

- TD(lambda):   z = rho_t (gamma_t lambda z + x_t);  w += alpha_w delta z
- TDC/GTD(lambda): z as TD;  w += alpha_w [delta z - gamma_{t+1} (1 - lambda) (z.h) x_{t+1}];
  h += alpha_h [delta z - (h.x_t) x_t]
- TDRC(lambda): z, w as TDC;  h += alpha_h delta z - alpha_h beta h - alpha_h (h.x_t) x_t  (beta = 1, alpha_h =
  alpha_w by default)
- ETD(lambda):  M^c_t = lambda i_t + (1 - lambda) F_t;  e = rho_t (gamma_t lambda e + M^c_t x_t);  w += alpha delta e
- GQ(lambda) (all-actions actor): delta = R + gamma_{t+1} sum_a' pi(a'|S_{t+1}) q(S_{t+1}, a') - q(S_t, A_t);
  z = rho_t (gamma_t lambda z + x(S_t, A_t));
  w += alpha_w delta z - alpha_w gamma_{t+1} (1 - lambda) (z.h) sum_a' pi(a'|S_{t+1}) x(S_{t+1}, a');
  h += alpha_h delta z - alpha_h (h.x(S_t, A_t)) x(S_t, A_t)
  with state-action features ``x(s, a)`` = ``x(s)`` placed in block ``a`` (weights ``[P, A, d]``).
- Oracle: exact ``v_pi`` from a callable (tabular MDPs); no learning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from emphatic_rl.emphatic import critic_emphasis
from emphatic_rl.features import action_values, add_action_scaled_, add_scaled_, linear_value

__all__ = [
    "CriticTransition",
    "Critic",
    "TDCritic",
    "TDCCritic",
    "TDRCCritic",
    "ETDCritic",
    "GQCritic",
    "OracleCritic",
    "CRITICS",
    "make_critic",
]


class CriticTransition(NamedTuple):
    """One transition for every learner; every field has leading axis ``P``.

    - ``features``, ``next_features``: ``x_t``, ``x_{t+1}``: ``int64[P, K]`` or ``float[P, d]``.
    - ``reward``: ``R_{t+1}``, ``[P]``.
    - ``gamma``: ``gamma_t`` (0 at episode starts), ``[P]``; ``next_gamma``: ``gamma_{t+1}``, ``[P]``.
    - ``rho``: ``pi(A_t|S_t) / mu(A_t|S_t)`` with the policy before this step's update, ``[P]``.
    - ``interest``: ``i_t``, ``[P]``; ``followon``: the actor's emphatic weighting estimate ``F_t``, ``[P]``.
    - ``action``: ``A_t``, ``int64[P]``.
    - ``next_policy_probs``: ``pi(.|S_{t+1})``, ``[P, A]`` (used by GQ).
    - ``policy_theta``: the actor's ``theta [P, A, d]`` now (used by the oracle critic).
    """

    features: torch.Tensor
    next_features: torch.Tensor
    reward: torch.Tensor
    gamma: torch.Tensor
    next_gamma: torch.Tensor
    rho: torch.Tensor
    interest: torch.Tensor
    followon: torch.Tensor
    action: torch.Tensor
    next_policy_probs: torch.Tensor | None = None
    policy_theta: torch.Tensor | None = None


def _population_tensor(
    value: Any, population_size: int, name: str, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=dtype, device=device)
    if tensor.dim() == 0:
        tensor = tensor.expand(population_size).clone()
    if tuple(tensor.shape) != (population_size,):
        raise ValueError(f"{name} must be a scalar or a tensor [P={population_size}], got shape {tuple(tensor.shape)}")
    return tensor


class Critic:
    """Base class: a linear state-value critic ``v(s) = w . x(s)``, ``w: [P, d]``.

    Args:
        num_features: ``d``.
        population_size: ``P``.
        alpha: step size of the main weights, scalar or ``[P]`` (already divided by the number of active features
            if the caller wants that).
        trace_decay: critic ``lambda``, scalar or ``[P]``.
        device: torch device.
    """

    name = ""
    #: tensors saved by ``state_dict``
    state_names: tuple[str, ...] = ("weights",)
    #: whether ``td_error`` needs ``next_policy_probs`` / ``policy_theta`` in the transition
    needs_next_policy = False
    needs_policy_theta = False
    #: Declared state, read by the actor-critic and its compiled backend (never probed with ``hasattr``):
    #: ``trace``, the eligibility trace shaped like ``weights`` (``None``: the critic keeps none, as the oracle);
    #: ``correction``, the gradient-TD auxiliary weights ``h`` shaped like ``weights``, and ``alpha_h [P]``, their
    #: step size (``None`` for critics without ``h``: TD, ETD, the oracle). Subclasses that keep one declare it
    #: as a tensor.
    trace: torch.Tensor | None = None
    correction: torch.Tensor | None = None
    alpha_h: torch.Tensor | None = None

    def __init__(
        self,
        num_features: int,
        population_size: int,
        alpha: Any,
        trace_decay: Any = 0.0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.device = torch.device(device)
        self.num_features = num_features
        self.population_size = population_size
        self.dtype = dtype
        self.alpha = _population_tensor(alpha, population_size, "alpha", self.device, dtype)
        self.trace_decay = _population_tensor(trace_decay, population_size, "trace_decay", self.device, dtype)
        self.weights = torch.zeros(population_size, num_features, device=self.device, dtype=dtype)

    def value(self, features: torch.Tensor) -> torch.Tensor:
        """``v(s) = w . x(s)``: ``[P]`` for features ``[P, K|d]``."""
        return linear_value(self.weights, features)

    def td_error(self, transition: CriticTransition) -> torch.Tensor:
        """``delta_t = R_{t+1} + gamma_{t+1} v(x_{t+1}) - v(x_t)`` with the current weights, ``[P]``."""
        return (
            transition.reward
            + transition.next_gamma * self.value(transition.next_features)
            - self.value(transition.features)
        )

    def update(self, transition: CriticTransition, td_error: torch.Tensor) -> None:
        """Apply one update given ``td_error = self.td_error(transition)`` computed before any change."""
        raise NotImplementedError

    def _decay_and_add_trace(self, trace: torch.Tensor, transition: CriticTransition, scale: torch.Tensor) -> None:
        """``trace = rho_t (gamma_t lambda trace + scale x_t)``."""
        trace.mul_((transition.rho * transition.gamma * self.trace_decay)[:, None])
        add_scaled_(trace, transition.features, transition.rho * scale)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).clone() for name in self.state_names}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.state_names:
            getattr(self, name).copy_(state[name])

    def tensors(self) -> list[torch.Tensor]:
        """Every state tensor, each with leading axis ``P`` (the actor-critic uses it to freeze members)."""
        return [getattr(self, name) for name in self.state_names]


class TDCritic(Critic):
    """Off-policy TD(lambda): ``z = rho_t (gamma_t lambda z + x_t)``, ``w += alpha delta z``."""

    name = "td"
    state_names = ("weights", "trace")
    trace: torch.Tensor

    def __init__(
        self,
        num_features: int,
        population_size: int,
        alpha: Any,
        trace_decay: Any = 0.0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(num_features, population_size, alpha, trace_decay, device, dtype)
        self.trace = torch.zeros_like(self.weights)

    def update(self, transition: CriticTransition, td_error: torch.Tensor) -> None:
        self._decay_and_add_trace(self.trace, transition, torch.ones_like(td_error))
        self.weights.add_((self.alpha * td_error)[:, None] * self.trace)


class TDCCritic(Critic):
    """TDC / GTD(lambda) with auxiliary weights ``h`` (step ``alpha_h``)."""

    name = "tdc"
    state_names = ("weights", "trace", "correction")
    trace: torch.Tensor
    correction: torch.Tensor
    alpha_h: torch.Tensor

    def __init__(
        self,
        num_features: int,
        population_size: int,
        alpha: Any,
        trace_decay: Any = 0.0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        alpha_h: Any = None,
    ) -> None:
        super().__init__(num_features, population_size, alpha, trace_decay, device, dtype)
        self.alpha_h = (
            self.alpha.clone()
            if alpha_h is None
            else _population_tensor(alpha_h, population_size, "alpha_h", self.device, dtype)
        )
        self.trace = torch.zeros_like(self.weights)
        self.correction = torch.zeros_like(self.weights)  # h

    def _correction_decay(self) -> torch.Tensor | None:
        return None

    def update(self, transition: CriticTransition, td_error: torch.Tensor) -> None:
        self._decay_and_add_trace(self.trace, transition, torch.ones_like(td_error))
        trace_dot_h = (self.trace * self.correction).sum(1)
        h_dot_x = linear_value(self.correction, transition.features)
        # w += alpha_w [delta z - gamma_{t+1} (1 - lambda) (z.h) x_{t+1}]
        self.weights.add_((self.alpha * td_error)[:, None] * self.trace)
        add_scaled_(
            self.weights,
            transition.next_features,
            -self.alpha * transition.next_gamma * (1 - self.trace_decay) * trace_dot_h,
        )
        # h += alpha_h [delta z - (h.x_t) x_t]   (TDRC also: - alpha_h beta h)
        decay = self._correction_decay()
        if decay is not None:
            self.correction.mul_((1 - self.alpha_h * decay)[:, None])
        self.correction.add_((self.alpha_h * td_error)[:, None] * self.trace)
        add_scaled_(self.correction, transition.features, -self.alpha_h * h_dot_x)


class TDRCCritic(TDCCritic):
    """TDRC(lambda): TDC with the regularised correction ``h += alpha_h delta z - alpha_h beta h -
    alpha_h (h.x_t) x_t``; ``beta = 1`` and ``alpha_h = alpha_w`` by default (TDRC's published defaults)."""

    name = "tdrc"

    def __init__(
        self,
        num_features: int,
        population_size: int,
        alpha: Any,
        trace_decay: Any = 0.0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        alpha_h: Any = None,
        beta: float = 1.0,
    ) -> None:
        super().__init__(num_features, population_size, alpha, trace_decay, device, dtype, alpha_h=alpha_h)
        if not beta >= 0:
            raise ValueError(f"TDRC beta must be >= 0, got {beta!r}")
        self.beta = torch.full((population_size,), float(beta), device=self.device, dtype=dtype)

    def _correction_decay(self) -> torch.Tensor:
        return self.beta


class ETDCritic(Critic):
    """Emphatic TD(lambda) using the actor's ``F_t`` and ``i_t``: ``M^c = lambda i + (1 - lambda) F``,
    ``e = rho_t (gamma_t lambda e + M^c x_t)``, ``w += alpha delta e``."""

    name = "etd"
    state_names = ("weights", "trace")
    trace: torch.Tensor

    def __init__(
        self,
        num_features: int,
        population_size: int,
        alpha: Any,
        trace_decay: Any = 0.0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(num_features, population_size, alpha, trace_decay, device, dtype)
        self.trace = torch.zeros_like(self.weights)

    def update(self, transition: CriticTransition, td_error: torch.Tensor) -> None:
        emphasis = critic_emphasis(transition.interest, transition.followon, self.trace_decay)
        self._decay_and_add_trace(self.trace, transition, emphasis)
        self.weights.add_((self.alpha * td_error)[:, None] * self.trace)


class GQCritic(Critic):
    """GQ(lambda) action-value critic ``q(s, a) = w_a . x(s)``, ``w: [P, A, d]`` (for the all-actions actor).

    Keeps the original code's quirk: ``rho_t`` multiplies the current feature too,
    ``z = rho_t (gamma_t lambda z + x(S_t, A_t))``.
    """

    name = "gq"
    state_names = ("weights", "trace", "correction")
    needs_next_policy = True
    trace: torch.Tensor
    correction: torch.Tensor
    alpha_h: torch.Tensor

    def __init__(
        self,
        num_features: int,
        population_size: int,
        alpha: Any,
        trace_decay: Any = 0.0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        alpha_h: Any = None,
        num_actions: int = 2,
    ) -> None:
        super().__init__(num_features, population_size, alpha, trace_decay, device, dtype)
        self.alpha_h = (
            self.alpha.clone()
            if alpha_h is None
            else _population_tensor(alpha_h, population_size, "alpha_h", self.device, dtype)
        )
        self.num_actions = num_actions
        self.weights = torch.zeros(population_size, num_actions, num_features, device=self.device, dtype=dtype)
        self.trace = torch.zeros_like(self.weights)
        self.correction = torch.zeros_like(self.weights)

    def action_values(self, features: torch.Tensor) -> torch.Tensor:
        """``q(s, .)``: ``[P, A]`` for features ``[P, K|d]``."""
        return action_values(self.weights, features)

    def value(self, features: torch.Tensor) -> torch.Tensor:
        raise TypeError("GQCritic estimates action values; use action_values(features)")

    def td_error(self, transition: CriticTransition) -> torch.Tensor:
        if transition.next_policy_probs is None:
            raise ValueError("GQCritic.td_error needs next_policy_probs = pi(.|S_{t+1}) in the transition")
        next_value = (transition.next_policy_probs * self.action_values(transition.next_features)).sum(-1)
        q_taken = self.action_values(transition.features).gather(1, transition.action[:, None]).squeeze(1)
        return transition.reward + transition.next_gamma * next_value - q_taken

    def update(self, transition: CriticTransition, td_error: torch.Tensor) -> None:
        if transition.next_policy_probs is None:
            raise ValueError("GQCritic.update needs next_policy_probs = pi(.|S_{t+1}) in the transition")
        rho = transition.rho
        one_hot = torch.nn.functional.one_hot(transition.action, self.num_actions).to(self.weights.dtype)
        self.trace.mul_((rho * transition.gamma * self.trace_decay)[:, None, None])
        add_action_scaled_(self.trace, transition.features, rho[:, None] * one_hot)
        trace_dot_h = (self.trace * self.correction).sum((1, 2))
        h_taken = action_values(self.correction, transition.features).gather(1, transition.action[:, None])
        self.weights.add_((self.alpha * td_error)[:, None, None] * self.trace)
        coef = -self.alpha * transition.next_gamma * (1 - self.trace_decay) * trace_dot_h
        add_action_scaled_(self.weights, transition.next_features, coef[:, None] * transition.next_policy_probs)
        self.correction.add_((self.alpha_h * td_error)[:, None, None] * self.trace)
        add_action_scaled_(self.correction, transition.features, -self.alpha_h[:, None] * h_taken * one_hot)


class OracleCritic(Critic):
    """Exact ``v_pi`` for tabular problems, recomputed from the actor's current ``theta`` at every TD error.

    ``value_function(theta: [P, A, d]) -> v: [P, S]`` gives the true state values of each member's target policy
    (e.g. from ``emphatic_rl.exact``); states are identified by one-hot features, so ``v(s) = v . x(s)`` with
    ``x`` the one-hot feature of ``s`` (``S = d``). Terminal next states are handled by ``gamma_{t+1} = 0``.
    ``OracleCritic.per_member(fn)`` wraps a function of one ``theta [A, d] -> v [S]``.
    """

    name = "oracle"
    state_names = ()
    needs_policy_theta = True

    def __init__(
        self,
        num_features: int,
        population_size: int,
        value_function: Callable[[torch.Tensor], Any],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(num_features, population_size, 1.0, 0.0, device)
        if not callable(value_function):
            raise ValueError("OracleCritic needs a callable value_function(theta [P, A, d]) -> v [P, S]")
        self.value_function = value_function

    @staticmethod
    def per_member(function: Callable[[torch.Tensor], Any]) -> Callable[[torch.Tensor], torch.Tensor]:
        """Lift ``theta [A, d] -> v [S]`` to ``theta [P, A, d] -> v [P, S]`` (a loop over members; tabular only)."""

        def lifted(theta: torch.Tensor) -> torch.Tensor:
            return torch.stack([torch.as_tensor(function(member)) for member in theta]).to(theta.device)

        return lifted

    def exact_values(self, theta: torch.Tensor) -> torch.Tensor:
        values = torch.as_tensor(self.value_function(theta)).to(device=self.device, dtype=self.dtype)
        if values.shape != (self.population_size, self.num_features):
            raise ValueError(
                f"oracle value_function must return v [P={self.population_size}, "
                f"S={self.num_features}], got {tuple(values.shape)}"
            )
        return values

    def td_error(self, transition: CriticTransition) -> torch.Tensor:
        if transition.policy_theta is None:
            raise ValueError("OracleCritic.td_error needs policy_theta in the transition")
        self.weights = self.exact_values(transition.policy_theta)
        return super().td_error(transition)

    def update(self, transition: CriticTransition, td_error: torch.Tensor) -> None:
        """The oracle does not learn."""


CRITICS: dict[str, type[Critic]] = {
    "td": TDCritic,
    "tdc": TDCCritic,
    "gtd": TDCCritic,
    "tdrc": TDRCCritic,
    "etd": ETDCritic,
    "gq": GQCritic,
    "oracle": OracleCritic,
}


def make_critic(name: str, **kwargs: Any) -> Critic:
    """Build a critic by name (one of ``CRITICS``); ``kwargs`` go to its constructor."""
    if name not in CRITICS:
        raise ValueError(f"unknown critic {name!r}; allowed: {sorted(CRITICS)}")
    return CRITICS[name](**kwargs)
