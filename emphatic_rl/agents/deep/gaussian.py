"""Deep Gaussian ACE / OffPAC on replay, for continuous (Box) actions: ``gaussian-ace`` and ``gaussian-offpac``.

The continuous-action sibling of ``deep_ace.py`` (same losses, same emphasis regression, same population layout as
``dpg.py``). A population of ``P`` learners runs as one batched program (``PopulationMLP`` networks, one Adam with
three parameter groups; gradients clipped per member and per network).

Networks (separate, no shared torso):

- policy: one MLP with ``2A`` outputs, a mean head and a std head. ``mean = centre + half_width tanh(raw_mean)``
  on a bounded box (``raw_mean`` unbounded otherwise) and ``std = half_width (softplus(raw_std + b) + min_std)``
  with ``b`` chosen so that ``raw_std = 0`` gives ``std = init_std half_width``: positive by construction, floored
  at ``min_std`` half-widths. ``pi(.|s) = clip(N(mean, std^2))`` to the box (action_boxes.py's bounds rule);
  its log-probability is the clipped-Gaussian one (the density inside the box, the tail mass on a bound), summed
  over action dimensions.
- critic ``V(s)`` and its target copy (Polyak ``tau``);
- emphasis ``fhat(s)`` and its target copy (only when ``emphasis="learned"`` and ``eta > 0``).

Behaviour: member ``p`` acts in its ``E`` env copies with its *own* current Gaussian (``acts_in_env = True``), so
``mu`` is the policy of the iteration that stored the transition, and its log-probability is written to the buffer
(uniform actions in the box before ``learning_starts``, with log-density ``-log(box volume)``). Replayed data are
therefore off-policy for the current ``pi`` by the policy's drift, and ``rho`` corrects for it. Evaluation runs the
mean action (deterministic).

One gradient step on replayed transitions ``(S_t, A_t, R_{t+1}, S_{t+1}, log mu(A_t|S_t))``, all ``[P, B]``,
uniform interest ``i = 1``, ``gamma_{t+1} = 0`` on termination (truncation bootstraps from the true final
observation)::

    rho_t   = exp(log pi(A_t|S_t) - log mu(A_t|S_t))          # densities; current pi, stored behaviour log-prob
    critic  : 0.5 min(rho_t, c) (R + gamma_{t+1} V_target(S_{t+1}) - V(S_t))^2
    delta_t = R + gamma_{t+1} V_target(S_{t+1}) - V(S_t)      # no gradient
    F_t     = max(fhat(S_t), 0)                               # read before this step's emphasis update
    M_t     = (1 - eta) i_t + eta F_t
    actor   : -min(rho_t, c) M_t delta_t log pi(A_t|S_t) - entropy_coef H(pi(.|S_t))   (H of the unclipped Gaussian)
    emphasis (ACE-direct's backward TD, Graves et al. 2023; semi-gradient, target network), normalised by default:
        target = (1 - gamma_{t+1}) i_{t+1} + gamma_{t+1} min(rho_t, c_f) fhat_target(S_t)
                 (normalize_emphasis=False: i_{t+1} + gamma_{t+1} min(rho_t, c_f) fhat_target(S_t))
        loss   = 0.5 [not terminated] (fhat(S_{t+1}) - target)^2 + 0.5 [S_t starts an episode] (fhat(S_t) - i_t)^2

The equations themselves (``F_t``, ``M_t``, the emphasis target and loss, the actor's ``rho M delta``) live in
``emphatic_rl.emphatic``, once for every agent; this module chooses their inputs (clipped ratios, target networks).

Choices (each one biases or departs from the linear ACE of ``emphatic_rl.agents.linear.actor_critic``; documented here):

- ``rho`` is clipped at ``c = rho_clip`` in the critic and the actor (a density ratio of two Gaussians is unbounded;
  ``rho_clip = inf`` turns clipping off). With clipping the critic evaluates ``pi_c ∝ min(pi, c mu)`` (V-trace's
  fixed point) and the actor trades the unbiasedness of ``E_mu[rho M delta grad ln pi] = grad J`` for bounded
  variance. The emphasis bootstrap has its own clip ``emphasis_rho_clip``.
- The emphasis target is *normalised* by default: with ``gamma = 0.99`` and uniform interest the unnormalised
  ``m / d_mu`` is about ``1 / (1 - gamma) = 100``, an actor step size multiplier; normalising divides ``m`` by the
  constant ``1 / (1 - gamma)`` so that ``E_{d_mu}[fhat] ~ 1`` and ``fhat`` only reweights states (as in ``dpg``).
- ``F_t`` is clipped at 0 (``m / d_mu >= 0``; an untrained ``fhat`` need not be) with ``clip_followon_at_zero``
  (default ``True``; the linear agent does not clip, as ``False`` here).
- The boundary rules of the emphasis regression and the way episode starts are read from the buffer are those of
  ``deep_ace.py`` (no update at a terminal ``S_{t+1}``; ``fhat(S_0) <- i_0`` with ``fit_start_state``, default
  ``True``; the oldest stored row gets no start term).
- ``eta = 0`` is OffPAC (``M_t = 1``; no emphasis network is built).

Counting follows ``dqn`` / ``dpg`` (``env_step`` counts loop iterations; ``buffer_size`` is transitions per member).
Presets: ``gaussian-ace`` (eta 1, learned emphasis) and ``gaussian-offpac`` (eta 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from emphatic_rl.agents.action_boxes import ActionBox, clipped_gaussian_log_prob, require_box
from emphatic_rl.agents.base import ActionOutput
from emphatic_rl.agents.deep.actor_critic import DeepActorCritic, replayed_episode_starts
from emphatic_rl.agents.deep.options import EMPHASIS_KINDS, EmphaticReplayOptions
from emphatic_rl.agents.networks import PopulationMLP, polyak_update_
from emphatic_rl.agents.registry import (
    AgentContext,
    check_positive,
    check_unit_interval,
    register_agent,
)
from emphatic_rl.buffers.trajectory import TrajectoryBuffer, TransitionBatch
from emphatic_rl.emphatic import (
    actor_coefficient,
)

__all__ = ["GaussianACE", "GaussianACEOptions", "GaussianOffPACOptions", "EMPHASIS_KINDS"]


@dataclass(frozen=True)
class GaussianACEOptions(EmphaticReplayOptions):
    """Hyperparameters of ``gaussian-ace`` (see the module docstring; the shared ones are those of
    ``EmphaticReplayOptions`` and ``ReplayOptions``). ``init_std`` and ``min_std`` are fractions of the action
    half-width (of 1 on an unbounded box)."""

    entropy_coef: float = 0.0
    emphasis_rho_clip: float = 2.0
    init_std: float = 0.5
    min_std: float = 0.05
    tau: float = 0.005

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit_interval("tau", self.tau)
        for name in ("emphasis_rho_clip", "init_std", "min_std", "tau"):
            check_positive(name, getattr(self, name))
        if not self.init_std > self.min_std:
            raise ValueError(f"init_std must be > min_std, got init_std={self.init_std!r}, min_std={self.min_std!r}")
        check_positive("entropy_coef", self.entropy_coef, allow_zero=True)


@dataclass(frozen=True)
class GaussianOffPACOptions(GaussianACEOptions):
    """``gaussian-offpac``: ``GaussianACEOptions`` with ``eta = 0`` and no emphasis network (``M_t = 1``)."""

    eta: float = 0.0
    emphasis: str = "none"


class GaussianACE(DeepActorCritic):
    """A population of ``P`` deep Gaussian actor-critics (ACE-direct / OffPAC) learning from replay.

    Args:
        context: run facts (specs, ``P``, ``E``, device, seed).
        options: ``GaussianACEOptions``.
    """

    name = "gaussian-ace"
    acts_in_env = True

    def __init__(self, context: AgentContext, options: GaussianACEOptions) -> None:
        spec = require_box(context.action_spec, self.name)
        if len(context.observation_spec.shape) != 1:
            raise ValueError(
                f"agent {self.name!r} needs vector observations, got shape {context.observation_spec.shape}"
            )
        self.options = options
        self.device = context.device
        self.population_size = P = context.population_size
        self.box = ActionBox.from_spec(spec, self.device)
        self.buffer_capacity = math.ceil(options.buffer_size / context.envs_per_member)
        self.uses_emphasis = options.emphasis == "learned" and options.eta > 0.0
        obs_dim, action_dim = context.observation_spec.shape[0], self.box.num_dims
        # softplus(b) + min_std = init_std  =>  b = softplus^{-1}(init_std - min_std)
        gap = options.init_std - options.min_std
        self.std_offset = gap + math.log(-math.expm1(-gap))

        def network(out_dim: int) -> PopulationMLP:
            return PopulationMLP(P, obs_dim, out_dim, options.hidden).to(self.device)

        self.build(context, network, 2 * action_dim)

    # ------------------------------------------------------------------ policy
    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` of ``pi(.|s)``, each ``[P, B, A]``, for ``obs: [P, B, obs_dim]``."""
        raw_mean, raw_std = self.policy(obs).chunk(2, dim=-1)
        mean = self.box.squash(raw_mean)
        std = self.box.scale * (nn.functional.softplus(raw_std + self.std_offset) + self.options.min_std)
        return mean, std

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``log pi(action|obs)`` (clipped-Gaussian, summed over ``A``): ``[P, B]``."""
        mean, std = self.distribution(obs)
        return clipped_gaussian_log_prob(mean, std, action, self.box)

    def act(self, obs: torch.Tensor, env_step: int) -> ActionOutput:
        """Behaviour ``mu`` = the member's current Gaussian (clipped to the box); uniform in a bounded box before
        ``learning_starts``. ``obs: [P, E, obs_dim]`` -> ``action [P, E, A]``, ``log_prob [P, E]``."""
        if env_step <= self.options.learning_starts and self.box.bounded:
            return ActionOutput(*self.box.uniform(tuple(obs.shape[:2]), self.generator))
        with torch.no_grad():
            mean, std = self.distribution(obs)
            noise = torch.randn(mean.shape, generator=self.generator, device=mean.device)
            action = self.box.clip(mean + std * noise)
            log_prob = clipped_gaussian_log_prob(mean, std, action, self.box)
            return ActionOutput(*self.box.finite_actions(action, log_prob))  # a diverged member: the box centre

    @torch.no_grad()
    def evaluation_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The mean action ``[P, E, A]`` (in the box by construction; the centre for a diverged member)."""
        return self.box.finite_actions(self.distribution(obs)[0])

    @torch.no_grad()
    def predict_action(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """The mean action (``deterministic``) or a draw of the clipped Gaussian ``pi``, ``[P, E, A]``."""
        mean, std = self.distribution(obs)
        if deterministic:
            return mean
        noise = torch.randn(mean.shape, generator=self.generator, device=mean.device)
        return self.box.clip(mean + std * noise)

    # ------------------------------------------------------------------ learning
    def _sample(self, buffer: TrajectoryBuffer) -> tuple[TransitionBatch, torch.Tensor]:
        """Member ``p``'s batch from its own streams (fields ``[P, B, ...]``) and ``episode_start: bool[P, B]``
        (``S_t`` starts an episode; read from the buffer only when an emphasis network fits start states)."""
        P, B = self.population_size, self.options.batch_size
        batch = buffer.sample_transitions(B, self.generator, num_groups=P)
        if self.emphasis is None or not self.options.fit_start_state:
            return batch, torch.zeros(P, B, dtype=torch.bool, device=self.device)
        return batch, replayed_episode_starts(buffer, batch).view(P, B)

    def losses(self, batch: TransitionBatch, episode_start: torch.Tensor) -> dict[str, torch.Tensor]:
        """The members' losses and diagnostics for one batch (fields ``[P, B, ...]``, ``action [P, B, A]``).

        Returns ``actor``, ``critic``, ``emphasis`` (``[P]``, differentiable; ``emphasis`` is zeros without an
        emphasis network) and, without gradient, ``rho``, ``delta``, ``followon`` (``F_t``), ``emphatic_weighting``
        (``M_t``), ``emphasis_target``, ``value`` (``[P, B]``), ``std`` (``[P]``, mean over batch and dims).
        ``episode_start`` is ignored when ``fit_start_state`` is off.
        """
        o = self.options
        P, B = episode_start.shape
        action = batch.action.float().view(P, B, -1)
        mean, std = self.distribution(batch.obs)
        log_pi = clipped_gaussian_log_prob(mean, std, action, self.box)  # [P, B]
        rho = (log_pi.detach() - batch.behaviour_log_prob.view(P, B)).exp()
        rho_clipped = rho.clamp(max=o.rho_clip)
        out = self.critic_and_emphasis(batch, episode_start, rho, rho_clipped)

        entropy = (std.log() + 0.5 + 0.5 * math.log(2 * math.pi)).sum(-1).mean(dim=1)  # [P], unclipped Gaussian
        actor_weight = actor_coefficient(rho_clipped, out["emphatic_weighting"], out["delta"]).detach()
        actor_loss = -(actor_weight * log_pi).mean(dim=1) - o.entropy_coef * entropy
        return {**out, "actor": actor_loss, "rho": rho, "std": std.detach().mean(dim=(1, 2))}

    def update(self, buffer: TrajectoryBuffer, env_step: int) -> dict[str, torch.Tensor]:
        o = self.options
        metrics: dict[str, torch.Tensor] = {}
        if env_step < o.learning_starts or env_step % o.train_every != 0:
            return metrics
        for _ in range(o.gradient_steps):
            batch, episode_start = self._sample(buffer)
            out = self.losses(batch, episode_start)
            self.gradient_step(out)
            polyak_update_(self.critic_target, self.critic, o.tau)
            if self.emphasis is not None and self.emphasis_target is not None:
                polyak_update_(self.emphasis_target, self.emphasis, o.tau)
            metrics = {
                "actor_loss": out["actor"].detach(),
                "critic_loss": out["critic"].detach(),
                "emphasis_loss": out["emphasis"].detach(),
                "importance_ratio_mean": out["rho"].mean(dim=1),
                "followon_mean": out["followon"].mean(dim=1),
                "policy_std": out["std"],
                "value_mean": out["value"].mean(dim=1),
            }
        return metrics


@register_agent(
    "gaussian-ace",
    GaussianACEOptions,
    "deep Gaussian ACE-direct on replay (learned emphasis net; eta 0 = OffPAC), continuous actions",
)
def make_gaussian_ace(context: AgentContext, options: GaussianACEOptions) -> GaussianACE:
    return GaussianACE(context, options)


@register_agent(
    "gaussian-offpac", GaussianOffPACOptions, "deep Gaussian OffPAC (gaussian-ace with eta 0) on replay, continuous"
)
def make_gaussian_offpac(context: AgentContext, options: GaussianOffPACOptions) -> GaussianACE:
    agent = GaussianACE(context, options)
    agent.name = "gaussian-offpac"
    return agent
