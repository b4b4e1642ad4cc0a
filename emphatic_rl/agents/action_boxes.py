"""Continuous-action helpers shared by the DPG and Gaussian agents: the action box and clipped-Gaussian densities.

Bounds rule (documented once, used by every continuous agent here):

- An env with a *finite* action box (``BoxSpec`` with finite ``low``/``high``, e.g. Pendulum's ``[-2, 2]``): every
  action an agent emits lies in the box. Deterministic networks squash with ``tanh`` and rescale; sampled actions
  (behaviour noise, Gaussian policies) are **clipped** to the box, and their log-probability is that of the *clipped*
  Gaussian (the density inside the box, the tail mass ``log Phi`` on a bound), so that importance ratios between two
  such policies are exact ratios of the same kind of measure.
- An env with an unbounded box (the DPG counterexample): nothing is clipped; the plain Gaussian density is used.
- A user-supplied action outside the box is not rejected by these agents' envs: Pendulum clips torques itself (like
  Gymnasium). ``ActionBox.clip`` is what our agents apply before acting.

A discrete action space is an error for these agents (``require_box``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from emphatic_rl.envs.base import BoxSpec, DiscreteSpec, Spec

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def require_box(spec: Spec, agent_name: str) -> BoxSpec:
    """Return ``spec`` if it is a 1-d ``BoxSpec``; raise one clear ``ValueError`` otherwise."""
    if isinstance(spec, DiscreteSpec):
        raise ValueError(
            f"agent {agent_name!r} needs a continuous (Box) action space; this env has {spec.n} discrete actions "
            "(use 'dqn' or 'ace' for discrete actions)"
        )
    if not isinstance(spec, BoxSpec) or len(spec.shape) != 1:
        raise ValueError(f"agent {agent_name!r} needs a 1-d Box action space, got {spec!r}")
    return spec


@dataclass
class ActionBox:
    """The action box ``[low, high]`` (``float32[A]`` each) of an env, and the maps our agents need.

    ``bounded`` is true when every bound is finite; ``centre``/``half_width`` then map ``tanh`` outputs into the box,
    and ``scale`` (the half width, or 1 when unbounded) sets the scale of exploration noise.
    """

    low: torch.Tensor
    high: torch.Tensor

    @classmethod
    def from_spec(cls, spec: BoxSpec, device: torch.device | str = "cpu") -> ActionBox:
        low, high = spec.low_tensor(device).clone(), spec.high_tensor(device).clone()
        if bool((high <= low).any()):
            raise ValueError(f"action box must have low < high, got low={low.tolist()}, high={high.tolist()}")
        return cls(low, high)

    @property
    def bounded(self) -> bool:
        return bool(torch.isfinite(self.low).all() and torch.isfinite(self.high).all())

    @property
    def num_dims(self) -> int:
        return int(self.low.shape[0])

    @property
    def scale(self) -> torch.Tensor:
        """``[A]``: half the box width, or ones when unbounded."""
        return (self.high - self.low) / 2 if self.bounded else torch.ones_like(self.low)

    def squash(self, raw: torch.Tensor) -> torch.Tensor:
        """Network output ``raw [..., A]`` to an action: ``centre + half_width tanh(raw)`` (bounded) or ``raw``."""
        if not self.bounded:
            return raw
        return (self.high + self.low) / 2 + self.scale * torch.tanh(raw)

    def clip(self, action: torch.Tensor) -> torch.Tensor:
        """``action [..., A]`` clipped to the box (a no-op when unbounded)."""
        return torch.maximum(torch.minimum(action, self.high), self.low)

    def finite_actions(self, action: torch.Tensor, log_prob: torch.Tensor | None = None) -> Any:
        """Replace the actions of members whose policy gave a non-finite action (a diverged member, NaN parameters)
        by the box's centre (0 when unbounded), so that no non-finite action reaches the env; their log-probabilities
        become 0. ``action [P, E, A]``, ``log_prob [P, E]``; returns ``action`` (and ``log_prob`` if given)."""
        bad = ~torch.isfinite(action).all(dim=-1, keepdim=True)
        centre = (self.high + self.low) / 2 if self.bounded else torch.zeros_like(self.low)
        action = torch.where(bad, centre, action)
        if log_prob is None:
            return action
        return action, torch.where(bad.squeeze(-1) | ~torch.isfinite(log_prob), 0.0, log_prob)

    def uniform(self, shape: tuple[int, ...], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform actions ``[*shape, A]`` in a bounded box and their log-density ``[*shape]``."""
        if not self.bounded:
            raise ValueError("uniform actions need a bounded action box")
        u = torch.rand((*shape, self.num_dims), generator=generator, device=self.low.device)
        log_density = -torch.log(self.high - self.low).sum()
        return self.low + (self.high - self.low) * u, log_density.expand(shape).clone()


def clipped_gaussian_log_prob(
    mean: torch.Tensor, std: torch.Tensor, action: torch.Tensor, box: ActionBox
) -> torch.Tensor:
    """``log`` probability of ``action [..., A]`` under ``clip(N(mean, std^2), low, high)``, summed over ``A``.

    Inside the box this is the Gaussian log-density; an action on a finite bound gets the log of the Gaussian mass
    beyond that bound (``log Phi``). ``mean``, ``std`` broadcast against ``action``; ``std > 0``. Returns ``[...]``.
    """
    z = (action - mean) / std
    log_density = -0.5 * z.square() - std.log() - LOG_SQRT_2PI
    if box.bounded:
        at_high = action >= box.high
        at_low = action <= box.low
        log_upper_tail = torch.special.log_ndtr((mean - box.high) / std)
        log_lower_tail = torch.special.log_ndtr((box.low - mean) / std)
        log_density = torch.where(at_high, log_upper_tail, torch.where(at_low, log_lower_tail, log_density))
    return log_density.sum(-1)


def sample_clipped_gaussian(
    mean: torch.Tensor, std: torch.Tensor, box: ActionBox, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``clip(mean + std * eps)`` for ``mean [..., A]``; return the action and its log-probability ``[...]``."""
    noise = torch.randn(mean.shape, generator=generator, device=mean.device)
    action = box.clip(mean + std * noise)
    return action, clipped_gaussian_log_prob(mean, std, action, box)
