"""The options every deep replay agent shares, and their validation, written once (with the checks of
``emphatic_rl.validation``).

``ReplayOptions`` holds what DQN, deep ACE / OffPAC, Gaussian ACE / OffPAC and DDPG all have (the discount, the
replay buffer and how often to learn from it, the network's hidden widths, gradient clipping);
``EmphaticReplayOptions`` adds what the three emphatic actor-critics share (the emphatic weighting's ``eta``, the
learned emphasis and its two documented switches, the step sizes, the ratio clip). An agent's options dataclass
derives from one of them, redeclares a field only to change its default, and validates only its own fields in
``__post_init__`` after calling ``super().__post_init__()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from emphatic_rl.validation import (
    check_choice,
    check_count,
    check_number,
    check_positive,
    check_switches,
    check_unit_interval,
)

__all__ = ["ReplayOptions", "EmphaticReplayOptions", "EMPHASIS_KINDS"]

#: the emphasis of the deep emphatic agents: a learned ``fhat`` network (ACE-direct's), or none (``F_t = i_t``)
EMPHASIS_KINDS = ("learned", "none")


@dataclass(frozen=True)
class ReplayOptions:
    """What every deep replay agent has.

    - ``gamma``: discount in ``[0, 1]``.
    - ``buffer_size``: transitions kept per member (shared by the member's env copies or streams), ``>= 1``.
    - ``batch_size``: transitions per gradient step and member, ``>= 1``.
    - ``learning_starts``: env steps before the first update, ``>= 0``.
    - ``train_every``: update every this many env steps; ``gradient_steps``: gradient steps per update (``>= 1``).
    - ``hidden``: the hidden widths of the MLPs (each ``>= 1``).
    - ``max_grad_norm``: each member's gradient norm is clipped at this value (``> 0``).
    """

    gamma: float = 0.99
    buffer_size: int = 100_000
    batch_size: int = 256
    learning_starts: int = 1_000
    train_every: int = 1
    gradient_steps: int = 1
    hidden: tuple[int, ...] = (64, 64)
    max_grad_norm: float = 10.0

    def __post_init__(self) -> None:
        check_number("gamma", self.gamma)
        check_unit_interval("gamma", self.gamma)
        for name in ("buffer_size", "batch_size", "train_every", "gradient_steps"):
            check_count(name, getattr(self, name))
        check_count("learning_starts", self.learning_starts, minimum=0)
        check_number("max_grad_norm", self.max_grad_norm)
        check_positive("max_grad_norm", self.max_grad_norm)
        hidden = tuple(self.hidden)
        for width in hidden:
            check_count("each hidden width", width)
        object.__setattr__(self, "hidden", hidden)


@dataclass(frozen=True)
class EmphaticReplayOptions(ReplayOptions):
    """What the deep emphatic actor-critics (deep ACE, Gaussian ACE, emphatic DDPG) add to ``ReplayOptions``.

    - ``eta``: ``M_t = (1 - eta) i_t + eta F_t``, in ``[0, 1]`` (0: OffPAC, 1: ACE).
    - ``emphasis``: ``"learned"`` (an ``fhat`` network fit by backward TD, ACE-direct's) or ``"none"``.
    - ``normalize_emphasis``: the normalised target ``(1 - gamma_{t+1}) i_{t+1} + gamma_{t+1} rho_t fhat(S_t)``
      (``fhat`` then estimates ``m / d_mu`` times ``1 - gamma``, a constant scale of the actor's step).
    - ``fit_start_state``: also fit ``fhat(S_0) <- i_0`` at episode starts (a start state is never anyone's
      ``S_{t+1}``).
    - ``clip_followon_at_zero``: ``F_t = max(fhat(S_t), 0)`` (the true ratio ``m / d_mu`` is non-negative; the
      linear learner does not clip, which is ``False`` here).
    - ``actor_learning_rate``, ``critic_learning_rate``, ``emphasis_learning_rate``: Adam step sizes (``> 0``).
    - ``rho_clip``: the importance ratio ``rho_t`` is clipped at this value (``> 0``).
    """

    eta: float = 1.0
    emphasis: str = "learned"
    normalize_emphasis: bool = True
    fit_start_state: bool = True
    clip_followon_at_zero: bool = True
    actor_learning_rate: float = 3e-4
    critic_learning_rate: float = 1e-3
    emphasis_learning_rate: float = 1e-3
    rho_clip: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("emphasis", self.emphasis, EMPHASIS_KINDS)
        check_number("eta", self.eta)
        check_unit_interval("eta", self.eta)
        check_switches(self, ("normalize_emphasis", "fit_start_state", "clip_followon_at_zero"))
        for name in ("actor_learning_rate", "critic_learning_rate", "emphasis_learning_rate", "rho_clip"):
            check_number(name, getattr(self, name))
            check_positive(name, getattr(self, name))
