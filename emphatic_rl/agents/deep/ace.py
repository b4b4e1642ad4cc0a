"""Deep discrete off-policy actor-critic with emphatic weightings on replayed data: deep ACE-direct and deep OffPAC.

A population of ``P`` learners (seeds or settings) runs as one batched program, like ``dqn.py``: every network is a
population network (``PopulationMinAtarNet`` for channel-last images ``[H, W, C]``, ``PopulationMLP`` otherwise) and
one Adam (three parameter groups: actor, critic, emphasis) updates every member independently; gradients are clipped
per member and per network.

Networks (separate per head, not a shared torso): a softmax policy ``pi(.|s)`` (``A`` logits), a state-value critic
``V(s)``, a learned emphasis ``fhat(s)`` (only when ``emphasis="learned"`` and ``eta > 0``), and target copies of ``V``
and ``fhat`` refreshed every ``target_update_every`` iterations. Separate networks keep the emphasis regression (whose
targets can be large) and the critic's squared error from steering the actor's features, and need no loss weights.

One gradient step on a batch of replayed transitions ``(S_t, A_t, R_{t+1}, S_{t+1}, log mu(A_t|S_t))``, every
tensor ``[P, B]`` (interest is uniform, ``i = 1``; ``gamma_{t+1} = 0`` on termination, ``gamma`` otherwise, so a
truncated transition bootstraps from the true final observation)::

    rho_t   = exp(log pi(A_t|S_t) - log mu(A_t|S_t))            # current pi, stored behaviour log-probability
    critic  : 0.5 * min(rho_t, c) * (R + gamma_{t+1} V_target(S_{t+1}) - V(S_t))^2
    delta_t = R + gamma_{t+1} V_target(S_{t+1}) - V(S_t)        # no gradient, critic before this step's update
    F_t     = max(fhat(S_t), 0)                                 # read before this step's emphasis update
    M_t     = (1 - eta) i_t + eta F_t
    actor   : -min(rho_t, c) * M_t * delta_t * log pi(A_t|S_t) - entropy_coef * H(pi(.|S_t))
    emphasis (ACE-direct's backward TD, Graves et al. 2023; semi-gradient, with a target network):
        target  = i_{t+1} + gamma_{t+1} min(rho_t, c_f) fhat_target(S_t)
                  (normalize_emphasis: (1 - gamma_{t+1}) i_{t+1} + gamma_{t+1} min(rho_t, c_f) fhat_target(S_t))
        loss    = 0.5 * [not terminated] (fhat(S_{t+1}) - target)^2 + 0.5 * [S_t starts an episode] (fhat(S_t) - i_t)^2

The equations (``F_t``, ``M_t``, the emphasis target and loss, the actor's ``rho M delta``) are those of
``emphatic_rl.emphatic``, where each is defined once; this module only chooses their inputs (clipped ratios, target
networks, the options below).

Choices (documented here because they bias or differ from the linear ACE of ``actor_critic.py``):

- Critic: per-decision importance-weighted TD(0) for ``V_pi`` with the ratio clipped at ``c = rho_clip``. With
  ``c >= max rho`` its expected update is off-policy TD(0) for ``pi`` under ``d_mu``; with clipping it evaluates
  the policy ``pi_c ∝ min(pi, c mu)`` (the V-trace fixed point with rho-bar = c). A target network (hard copy)
  stabilises the bootstrap.
- Actor: the OffPAC / ACE sampled update with the same clipped ratio: clipping trades the unbiasedness of
  ``E_mu[rho M delta grad ln pi]`` for bounded variance (``rho_clip = inf`` turns it off). Under uniform behaviour
  ``rho <= A`` anyway; under epsilon-greedy ``rho`` can reach ``A / epsilon``.
- Emphasis: ``fhat`` regresses toward the backward-TD target at ``S_{t+1}`` exactly as the linear ACE-direct does
  (``emphasis.LearnedEmphasis``), including its two boundary rules: no update at a terminal ``S_{t+1}`` (it is never
  acted upon) and ``fhat(S_0) <- i_0`` at episode starts (a start state is never anyone's ``S_{t+1}``). Whether a
  replayed ``S_t`` starts an episode is read from the buffer (the previous row of its stream ended, or it is the
  stream's first row); for the oldest stored row it is unknown and that row gets no start term. The start-state
  term is the option ``fit_start_state`` (default ``True``, as the linear ACE-direct; ``dpg``'s DDPG defaults to
  ``False``). The bootstrap uses a target copy of ``fhat`` (the deep analogue of reading ``fhat`` before its
  update), and its ratio has its own clip ``emphasis_rho_clip``. With ``clip_followon_at_zero`` (default ``True``)
  ``F_t`` is clipped at 0 in ``M_t`` (the true emphatic ratio ``m / d_mu`` is non-negative; an untrained ``fhat``
  is not); the linear agent does not clip (``False`` here is the same rule). With tabular features and no
  clipping the fixed point is ``m / d_mu``.
- Interest is uniform (the excursions objective). ``eta = 0`` is OffPAC (``M_t = 1``) and then no emphasis
  network is trained.

Behaviour (``behaviour`` option):

- ``"fixed"``: the agent does not act (``acts_in_env = False``); the loop's fixed ``Behaviour`` (``--set
  behaviour=uniform``, or the env default) writes ``R = num_envs`` streams and *every* member samples its batch
  from the whole buffer (all streams). ``buffer_size`` is in transitions (``ceil(buffer_size / R)`` rows).
- ``"epsilon-greedy"``: member ``p`` acts in its ``E`` env copies, greedily w.r.t. its own ``pi`` (argmax) with
  probability ``1 - epsilon`` and uniformly otherwise; ``log mu = log(epsilon / A + (1 - epsilon) [a = argmax])`` is
  recorded and used for ``rho``. Member ``p`` learns only from its own streams; ``buffer_size`` is per member.
  ``epsilon`` decays linearly from ``epsilon_start`` to ``epsilon_end`` over ``epsilon_decay_steps`` iterations.

Counting: ``env_step`` counts loop iterations; ``learning_starts``, ``train_every``, ``target_update_every`` and
``epsilon_decay_steps`` are in iterations. Evaluation runs the target policy ``pi`` (``evaluation="sample"``) or
its argmax (``"greedy"``), with its own generator so evaluation never moves the training RNG.

Presets (registered names): ``deep-ace`` (eta 1, learned emphasis), ``deep-offpac`` (eta 0, no emphasis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from emphatic_rl.agents.base import ActionOutput
from emphatic_rl.agents.deep.actor_critic import DeepActorCritic, replayed_episode_starts
from emphatic_rl.agents.deep.options import EMPHASIS_KINDS, EmphaticReplayOptions
from emphatic_rl.agents.networks import make_population_network
from emphatic_rl.agents.registry import (
    AgentContext,
    check_positive,
    check_unit_interval,
    register_agent,
)
from emphatic_rl.buffers.trajectory import TrajectoryBuffer, TransitionBatch
from emphatic_rl.emphatic import actor_coefficient
from emphatic_rl.envs.base import DiscreteSpec
from emphatic_rl.seeding import stream_seed
from emphatic_rl.validation import check_count

__all__ = [
    "DeepACE",
    "DeepACEOptions",
    "DeepOffPACOptions",
    "BEHAVIOURS",
    "EMPHASIS_KINDS",
    "EVALUATION_KINDS",
    "replayed_episode_starts",
]

BEHAVIOURS = ("fixed", "epsilon-greedy")
INTEREST_KINDS = ("uniform",)
EVALUATION_KINDS = ("sample", "greedy")


@dataclass(frozen=True)
class DeepACEOptions(EmphaticReplayOptions):
    """Hyperparameters of ``deep-ace`` (see the module docstring for each one's role; the shared ones are those of
    ``EmphaticReplayOptions`` and ``ReplayOptions``)."""

    normalize_emphasis: bool = False
    interest: str = "uniform"
    behaviour: str = "fixed"
    entropy_coef: float = 0.01
    emphasis_rho_clip: float = 2.0
    batch_size: int = 64
    target_update_every: int = 250
    epsilon_start: float = 1.0
    epsilon_end: float = 0.1
    epsilon_decay_steps: int = 10_000
    evaluation: str = "sample"
    hidden: tuple[int, ...] = (128, 128)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value, allowed in (
            ("interest", self.interest, INTEREST_KINDS),
            ("behaviour", self.behaviour, BEHAVIOURS),
            ("evaluation", self.evaluation, EVALUATION_KINDS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
        check_positive("emphasis_rho_clip", self.emphasis_rho_clip)
        check_positive("entropy_coef", self.entropy_coef, allow_zero=True)
        for name in ("target_update_every", "epsilon_decay_steps"):
            check_count(name, getattr(self, name))
        for name in ("epsilon_start", "epsilon_end"):
            check_unit_interval(name, getattr(self, name))


@dataclass(frozen=True)
class DeepOffPACOptions(DeepACEOptions):
    """``deep-offpac``: ``DeepACEOptions`` with ``eta = 0`` and no emphasis network (``M_t = i_t = 1``)."""

    eta: float = 0.0
    emphasis: str = "none"


class DeepACE(DeepActorCritic):
    """A population of ``P`` deep discrete actor-critics (ACE-direct / OffPAC) learning from replay.

    Args:
        context: run facts (specs, ``P``, ``E`` or ``R``, device, seed).
        options: ``DeepACEOptions``.
    """

    name = "deep-ace"
    extra_generators = ("evaluation_generator",)

    def __init__(self, context: AgentContext, options: DeepACEOptions) -> None:
        if not isinstance(context.action_spec, DiscreteSpec):
            raise ValueError("agent 'deep-ace' needs a discrete action space; this env's actions are continuous")
        self.options = options
        self.device = context.device
        self.population_size = context.population_size
        self.num_actions = context.action_spec.n
        self.acts_in_env = options.behaviour == "epsilon-greedy"
        streams_per_member = context.envs_per_member if self.acts_in_env else context.num_streams
        self.buffer_capacity = math.ceil(options.buffer_size / streams_per_member)
        self.uses_emphasis = options.emphasis == "learned" and options.eta > 0.0
        obs_shape = context.observation_spec.shape
        P = self.population_size

        def network(out_dim: int) -> nn.Module:
            return make_population_network(P, obs_shape, out_dim, options.hidden).to(self.device)

        self.build(context, network, self.num_actions)
        self.evaluation_generator = torch.Generator(device=self.device)
        self.evaluation_generator.manual_seed(stream_seed(context.seed, "agent_eval"))

    # ------------------------------------------------------------------ networks
    def log_policy(self, obs: torch.Tensor) -> torch.Tensor:
        """``log pi(.|s)``: ``[P, B, A]`` for ``obs: [P, B, *obs_shape]``."""
        return torch.log_softmax(self.policy(obs), dim=-1)

    # ------------------------------------------------------------------ acting
    def epsilon(self, env_step: int) -> float:
        o = self.options
        fraction = min(1.0, env_step / o.epsilon_decay_steps)
        return o.epsilon_start + fraction * (o.epsilon_end - o.epsilon_start)

    def act(self, obs: torch.Tensor, env_step: int) -> ActionOutput:
        """Epsilon-greedy on ``argmax pi`` (``behaviour="epsilon-greedy"``) or uniform random (``"fixed"``, for
        completeness: the loop then uses its own ``Behaviour``). ``obs: [P, E, *obs_shape]``."""
        epsilon = self.epsilon(env_step) if self.acts_in_env else 1.0
        with torch.no_grad():
            greedy = self.policy(obs).argmax(dim=-1)  # [P, E]
        random_action = torch.randint(self.num_actions, greedy.shape, generator=self.generator, device=self.device)
        explore = torch.rand(greedy.shape, generator=self.generator, device=self.device) < epsilon
        action = torch.where(explore, random_action, greedy)
        prob = epsilon / self.num_actions + (1.0 - epsilon) * (action == greedy).float()
        return ActionOutput(action, prob.log())

    @torch.no_grad()
    def evaluation_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The target policy ``pi`` (sampled, or its argmax with ``evaluation="greedy"``) for ``obs: [P, E, ...]``."""
        logits = self.policy(obs)
        if self.options.evaluation == "greedy":
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits, dim=-1).flatten(0, 1)
        # a diverged member (NaN parameters) samples uniformly: the same random draws, no crash for the others
        probs = torch.where(torch.isfinite(probs).all(dim=-1, keepdim=True), probs, 1.0 / probs.shape[-1])
        action = torch.multinomial(probs, 1, generator=self.evaluation_generator).squeeze(1)
        return action.view(logits.shape[:2])

    @torch.no_grad()
    def predict_action(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """The argmax of ``pi`` (``deterministic``) or a draw from it (the evaluation generator), ``int64[P, E]``."""
        logits = self.policy(obs)
        if deterministic:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits, dim=-1).flatten(0, 1)
        return torch.multinomial(probs, 1, generator=self.evaluation_generator).squeeze(1).view(logits.shape[:2])

    # ------------------------------------------------------------------ learning
    def _sample(self, buffer: TrajectoryBuffer) -> tuple[TransitionBatch, torch.Tensor]:
        """A batch with leading dims ``[P, B]`` and ``episode_start: bool[P, B]`` (``S_t`` starts an episode; all
        False when no emphasis network is trained or ``fit_start_state`` is off: its only user is the start term).

        Fixed behaviour: every member draws from all streams; epsilon-greedy: member ``p`` from its own streams.
        """
        P, B = self.population_size, self.options.batch_size
        if self.acts_in_env:
            batch = buffer.sample_transitions(B, self.generator, num_groups=P)
        else:
            flat = buffer.sample_transitions(P * B, self.generator)
            batch = TransitionBatch(
                **{
                    f.name: getattr(flat, f.name).view(P, B, *getattr(flat, f.name).shape[1:])
                    for f in fields(flat)
                    if f.name != "extras"
                },
                extras={name: value.view(P, B, *value.shape[1:]) for name, value in flat.extras.items()},
            )
        if self.emphasis is None or not self.options.fit_start_state:  # only the start term needs episode starts
            return batch, torch.zeros(P, B, dtype=torch.bool, device=self.device)
        return batch, replayed_episode_starts(buffer, batch).view(P, B)

    def losses(self, batch: TransitionBatch, episode_start: torch.Tensor) -> dict[str, torch.Tensor]:
        """The members' losses and diagnostics for one batch (fields ``[P, B, ...]``).

        Returns ``actor``, ``critic``, ``emphasis`` (``[P]``, differentiable; ``emphasis`` is zeros when no emphasis
        network is trained) and, without gradient, ``rho``, ``delta``, ``followon`` (``F_t``), ``emphatic_weighting``
        (``M_t``), ``emphasis_target`` (``[P, B]``) and ``entropy`` (``[P]``). ``episode_start`` is ignored when
        ``fit_start_state`` is off.
        """
        o = self.options
        P, B = episode_start.shape
        action = batch.action.long().view(P, B)
        log_pi_all = self.log_policy(batch.obs)  # [P, B, A]
        log_pi = log_pi_all.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        rho = (log_pi.detach() - batch.behaviour_log_prob.view(P, B)).exp()
        rho_clipped = rho.clamp(max=o.rho_clip)
        out = self.critic_and_emphasis(batch, episode_start, rho, rho_clipped)

        probs = log_pi_all.exp()
        entropy = -(probs * log_pi_all).sum(dim=-1).mean(dim=1)  # [P]
        actor_weight = actor_coefficient(rho_clipped, out["emphatic_weighting"], out["delta"]).detach()
        actor_loss = -(actor_weight * log_pi).mean(dim=1) - o.entropy_coef * entropy
        return {**out, "actor": actor_loss, "rho": rho, "entropy": entropy.detach()}

    def update(self, buffer: TrajectoryBuffer, env_step: int) -> dict[str, torch.Tensor]:
        o = self.options
        metrics: dict[str, torch.Tensor] = {}
        if env_step < o.learning_starts or env_step % o.train_every != 0:
            return metrics
        for _ in range(o.gradient_steps):
            batch, episode_start = self._sample(buffer)
            out = self.losses(batch, episode_start)
            self.gradient_step(out)
            metrics = {
                "actor_loss": out["actor"].detach(),
                "critic_loss": out["critic"].detach(),
                "emphasis_loss": out["emphasis"].detach(),
                "importance_ratio_mean": out["rho"].mean(dim=1),
                "followon_mean": out["followon"].mean(dim=1),
                "entropy": out["entropy"],
                "value_mean": out["value"].mean(dim=1),
            }
        if env_step % o.target_update_every == 0:
            self.critic_target.load_state_dict(self.critic.state_dict())
            if self.emphasis is not None and self.emphasis_target is not None:
                self.emphasis_target.load_state_dict(self.emphasis.state_dict())
        if self.acts_in_env:
            epsilon = torch.full((self.population_size,), self.epsilon(env_step), device=self.device)
            metrics["rollout/exploration_rate"] = epsilon
        return metrics


@register_agent("deep-ace", DeepACEOptions, "deep ACE-direct (learned emphasis network, eta 1) on replay, discrete")
def make_deep_ace(context: AgentContext, options: DeepACEOptions) -> DeepACE:
    return DeepACE(context, options)


@register_agent("deep-offpac", DeepOffPACOptions, "deep OffPAC (deep-ace with eta 0) on replay, discrete actions")
def make_deep_offpac(context: AgentContext, options: DeepOffPACOptions) -> DeepACE:
    agent = DeepACE(context, options)
    agent.name = "deep-offpac"
    return agent
