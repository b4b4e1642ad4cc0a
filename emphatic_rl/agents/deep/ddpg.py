"""Deterministic policy gradients: deep DDPG with an optional learned emphasis (deep emphatic DPG). Linear DPG /
emphatic DPG for the counterexample studies is a lab learner, in ``emphatic_rl.exact.continuous``.

The off-policy deterministic policy gradient theorem (Imani, Graves and White 2018, Thm. 2) weights each state by the
emphatic weighting ``m(s)``; DPG (Silver et al. 2014) and DDPG (Lillicrap et al. 2016) use ``d_mu(s) i(s)`` instead (the
semi-gradient). Emphatic DPG multiplies the per-state actor update by ``M_t ~ m(S_t) / d_mu(S_t)``:

    u += alpha_u M_t grad_u pi(S_t) grad_a q(S_t, a)|_{a = pi(S_t)}.

Where ``M_t`` comes from. ACE's follow-on trace ``F_t = i_t + gamma_t rho_{t-1} F_{t-1}`` needs the importance ratio
``rho = pi(A|S) / mu(A|S)``, and a deterministic ``pi`` has no density: the ratio is a Dirac delta, zero almost
surely, so the trace is useless as it stands. Replacing ``pi`` by a narrow Gaussian of width ``sigma`` around
``pi(s)`` gives finite ratios, but the trace *multiplies* them along a trajectory, so its variance grows like
``(mu-width / sigma)^k`` and explodes as ``sigma -> 0``. The learned estimator (ACE-direct, Graves et al. 2023) uses the
ratio once per transition inside a regression target, ``f(S_{t+1}) <- i_{t+1} + gamma rho_t f(S_t)``; the
regression averages the one-step ratios over the data, so its variance stays bounded and it generalises across
states. That makes it the practical choice here: ``emphasis = "learned"`` trains a network ``f`` with that target,
``rho_t`` taken between a Gaussian smoothing of the deterministic target policy (std ``emphasis_target_std`` times
the action half-width) and the recorded behaviour log-probability, truncated at ``rho_clip``. On tabular problems
the linear agents can use the oracle ``m / d_mu`` from the exact lab instead.

Deep agent (``dpg``): actor ``pi(s) = centre + half_width tanh(net(s))`` (raw output when the box is unbounded),
critic ``Q(s, a)``, target networks with Polyak averaging ``tau``, behaviour ``clip(pi(s) + N(0, (noise *
half_width)^2))`` with its clipped-Gaussian log-probability written to the buffer (uniform actions before
``learning_starts``). Critic target ``r + gamma (1 - terminated) Q'(s', pi'(s'))``; truncated transitions bootstrap
from the true final observation. Actor loss ``-mean_B M_t Q(s_t, pi(s_t))`` with ``M_t = (1 - eta) + eta
F_t``, ``F_t = min(max(f(s_t), 0), emphasis_clip)`` (``emphasis = "learned"``) or ``M_t = 1`` (``"none"``). The
learned emphasis uses the normalised target ``(1 - gamma) i + gamma rho max(f'(s_t), 0)`` (``f'`` the target copy)
so that ``E_{d_mu}[f] = 1`` and ``f`` only reweights states (the normalisation rescales ``m`` by the constant
``1 - gamma``, i.e. a step size); interest is uniform (``i = 1``). Where it differs from the deep discrete and
Gaussian agents (``deep_ace``, ``deep_gaussian``), it says so in an option or here:

- ``fit_start_state`` (default ``False``): no start-state term ``f(S_0) <- i_0``, only the backward-TD rule at
  non-terminal ``S_{t+1}`` (the other agents default to ``True``); ``True`` adds the squared start-state error of
  the replayed ``S_t`` that start an episode (read from the buffer as ``deep_ace`` does).
- ``clip_followon_at_zero`` (default ``True``): ``f`` is clipped at 0 where it is used as ``F`` (in ``M_t`` and in
  the bootstrap of the target); ``F_t`` is also capped at ``emphasis_clip`` in ``M_t``.
- ``normalize_emphasis`` (default ``True``, as ``deep_gaussian``; ``deep_ace`` defaults to ``False``): the
  normalised target above; ``False`` uses ``i + gamma rho max(f'(s_t), 0)``.
- ``followon_after_update`` (default ``True``): ``F_t`` (and so ``M_t``) is read from ``f`` after this step's
  emphasis update, as the learning rates were tuned; ``False`` reads it before the update, as ``deep_ace`` and
  ``deep_gaussian`` do.
- The emphasis loss is the squared error (twice ``emphatic.learned_emphasis_loss``) averaged over the rows that
  carry a term (the scale the learning rates were tuned at).

The equations (``M_t``, the emphasis target and loss) are those of ``emphatic_rl.emphatic``, defined there once.

Population: ``P`` independent learners as one batched program (``PopulationMLP``), member ``p`` acting in env copies
``p*E ... p*E + E - 1`` and learning only from them, exactly as ``dqn``. Counting follows ``dqn`` (``env_step``
counts loop iterations; ``buffer_size`` is transitions per member).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from emphatic_rl.agents.action_boxes import (
    ActionBox,
    clipped_gaussian_log_prob,
    require_box,
    sample_clipped_gaussian,
)
from emphatic_rl.agents.base import ActionOutput, Agent
from emphatic_rl.agents.deep.ace import replayed_episode_starts
from emphatic_rl.agents.deep.options import EMPHASIS_KINDS, EmphaticReplayOptions
from emphatic_rl.agents.networks import PopulationMLP, finite_members, mask_and_clip_member_gradients_, polyak_update_
from emphatic_rl.agents.registry import (
    AgentContext,
    check_positive,
    check_switches,
    check_unit_interval,
    register_agent,
)
from emphatic_rl.buffers.trajectory import TrajectoryBuffer, TransitionBatch
from emphatic_rl.emphatic import (
    emphatic_weighting,
    learned_emphasis_loss,
    learned_emphasis_start_target,
    learned_emphasis_target,
)
from emphatic_rl.seeding import stream_seed

EMPHASIS_CHOICES = EMPHASIS_KINDS  # the emphasis of the deep emphatic agents


@dataclass(frozen=True)
class DDPGOptions(EmphaticReplayOptions):
    """Hyperparameters of deep DDPG / emphatic DDPG (defaults tuned on native Pendulum, see experiments/results/dpg;
    the shared ones are those of ``EmphaticReplayOptions`` and ``ReplayOptions``).

    ``exploration_noise`` and ``emphasis_target_std`` are fractions of the action half-width. ``emphasis``:
    ``"none"`` (DDPG) or ``"learned"`` (deep emphatic DPG, see the module docstring, also for ``fit_start_state``
    and ``clip_followon_at_zero``).
    """

    actor_learning_rate: float = 1e-3
    tau: float = 0.005
    exploration_noise: float = 0.1
    emphasis: str = "none"
    emphasis_learning_rate: float = 3e-4
    emphasis_target_std: float = 0.1
    rho_clip: float = 5.0
    emphasis_clip: float = 10.0
    fit_start_state: bool = False
    followon_after_update: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_switches(self, ("followon_after_update",))
        check_unit_interval("tau", self.tau)
        for name in ("tau", "exploration_noise", "emphasis_target_std", "emphasis_clip"):
            check_positive(name, getattr(self, name))


class DDPG(Agent):
    """A population of ``P`` DDPG learners, optionally emphatic. See the module docstring.

    Args:
        context: run facts (specs, ``P``, ``E``, device, seed).
        options: ``DDPGOptions``.
    """

    name = "dpg"
    acts_in_env = True

    def __init__(self, context: AgentContext, options: DDPGOptions) -> None:
        spec = require_box(context.action_spec, "dpg")
        if len(context.observation_spec.shape) != 1:
            raise ValueError(f"agent 'dpg' needs vector observations, got shape {context.observation_spec.shape}")
        self.options = options
        self.device = context.device
        self.population_size = P = context.population_size
        self.envs_per_member = context.envs_per_member
        self.box = ActionBox.from_spec(spec, self.device)
        self.buffer_capacity = math.ceil(options.buffer_size / context.envs_per_member)
        obs_dim = context.observation_spec.shape[0]
        action_dim = self.box.num_dims
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)  # network initialisation only

            def make(in_dim: int, out_dim: int) -> PopulationMLP:
                return PopulationMLP(P, in_dim, out_dim, options.hidden).to(self.device)

            self.actor, self.actor_target = make(obs_dim, action_dim), make(obs_dim, action_dim)
            self.critic, self.critic_target = make(obs_dim + action_dim, 1), make(obs_dim + action_dim, 1)
            if options.emphasis == "learned":
                self.emphasis_net, self.emphasis_target = make(obs_dim, 1), make(obs_dim, 1)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=options.actor_learning_rate)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=options.critic_learning_rate)
        self.emphasis_optimizer = None
        if options.emphasis == "learned":
            self.emphasis_target.load_state_dict(self.emphasis_net.state_dict())
            self.emphasis_optimizer = torch.optim.Adam(
                self.emphasis_net.parameters(), lr=options.emphasis_learning_rate
            )
        self.noise_std = options.exploration_noise * self.box.scale  # [A]
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(stream_seed(context.seed, "agent"))
        self.active = torch.ones(P, dtype=torch.bool, device=self.device)
        self.gradient_updates = 0

    # ------------------------------------------------------------------ policy
    def policy(self, obs: torch.Tensor, target: bool = False) -> torch.Tensor:
        """Deterministic target-policy action ``[P, B, A]`` for ``obs [P, B, obs_dim]``."""
        return self.box.squash((self.actor_target if target else self.actor)(obs))

    def q_value(self, obs: torch.Tensor, action: torch.Tensor, target: bool = False) -> torch.Tensor:
        """``Q(s, a)``: ``[P, B]``."""
        net = self.critic_target if target else self.critic
        return net(torch.cat([obs.float(), action], dim=-1)).squeeze(-1)

    def act(self, obs: torch.Tensor, env_step: int) -> ActionOutput:
        """Behaviour: uniform in the box before ``learning_starts`` (bounded boxes), then ``clip(pi(s) + noise)``;
        returns ``action [P, E, A]`` and its log-probability ``[P, E]``."""
        if env_step <= self.options.learning_starts and self.box.bounded:
            return ActionOutput(*self.box.uniform(tuple(obs.shape[:2]), self.generator))
        with torch.no_grad():
            mean = self.policy(obs)
        action, log_prob = sample_clipped_gaussian(mean, self.noise_std, self.box, self.generator)
        return ActionOutput(*self.box.finite_actions(action, log_prob))  # a diverged member acts at the box centre

    def evaluation_action(self, obs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.box.finite_actions(self.policy(obs))

    # ------------------------------------------------------------------ learning
    def update(self, buffer: TrajectoryBuffer, env_step: int) -> dict[str, torch.Tensor]:
        o = self.options
        metrics: dict[str, torch.Tensor] = {}
        if env_step < o.learning_starts or env_step % o.train_every != 0:
            return metrics
        for _ in range(o.gradient_steps):
            batch = buffer.sample_transitions(o.batch_size, self.generator, num_groups=self.population_size)
            episode_start = None
            if self.emphasis_optimizer is not None and o.fit_start_state:
                episode_start = replayed_episode_starts(buffer, batch)
            metrics = self.learn(batch, episode_start)
        return metrics

    def learn(self, batch: TransitionBatch, episode_start: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One gradient step of critic, emphasis (if learned) and actor on ``batch`` (fields ``[P, B, ...]``).

        ``episode_start``: ``bool[P, B]``, the replayed ``S_t`` starts an episode; needed with a learned emphasis
        and ``fit_start_state``, unused otherwise.
        """
        o = self.options
        if self.emphasis_optimizer is not None and o.fit_start_state and episode_start is None:
            raise ValueError("fit_start_state needs episode_start (bool [P, B]: the replayed S_t starts an episode)")
        obs, next_obs = batch.obs.float(), batch.next_obs.float()
        action = batch.action.float()
        continuing = (~batch.terminated).float()
        with torch.no_grad():
            next_q = self.q_value(next_obs, self.policy(next_obs, target=True), target=True)
            target = batch.reward + o.gamma * continuing * next_q
        q_taken = self.q_value(obs, action)
        critic_loss = (q_taken - target).square().mean(dim=1)  # [P]
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.sum().backward()
        mask_and_clip_member_gradients_(list(self.critic.parameters()), self.active, o.max_grad_norm)
        self.critic_optimizer.step()

        weights = torch.ones_like(batch.reward)
        metrics: dict[str, torch.Tensor] = {}
        if self.emphasis_optimizer is not None:
            weights, emphasis_metrics = self._learn_emphasis(batch, obs, next_obs, action, continuing, episode_start)
            metrics.update(emphasis_metrics)

        q_policy = self.q_value(obs, self.policy(obs))
        actor_loss = -(weights * q_policy).mean(dim=1)  # [P]
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.sum().backward()
        mask_and_clip_member_gradients_(list(self.actor.parameters()), self.active, o.max_grad_norm)
        self.actor_optimizer.step()
        self.critic.zero_grad(set_to_none=True)  # the actor loss also reached the critic; drop those gradients

        polyak_update_(self.critic_target, self.critic, o.tau)
        polyak_update_(self.actor_target, self.actor, o.tau)
        if self.emphasis_optimizer is not None:
            polyak_update_(self.emphasis_target, self.emphasis_net, o.tau)
        self.gradient_updates += 1
        metrics.update(
            {
                "critic_loss": critic_loss.detach(),
                "actor_loss": actor_loss.detach(),
                "q_mean": q_taken.detach().mean(dim=1),
            }
        )
        return metrics

    def _learn_emphasis(
        self,
        batch: TransitionBatch,
        obs: torch.Tensor,
        next_obs: torch.Tensor,
        action: torch.Tensor,
        continuing: torch.Tensor,
        episode_start: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Backward-TD step of the emphasis network; returns the actor weights ``M_t [P, B]`` and metrics."""
        o = self.options
        assert self.emphasis_optimizer is not None  # only called with emphasis="learned"
        with torch.no_grad():
            smoothing_std = o.emphasis_target_std * self.box.scale
            target_log_prob = clipped_gaussian_log_prob(self.policy(obs), smoothing_std, action, self.box)
            rho = (target_log_prob - batch.behaviour_log_prob).exp().clamp(max=o.rho_clip)  # [P, B]
            carried = self.emphasis_target(obs).squeeze(-1)
            if o.clip_followon_at_zero:
                carried = carried.clamp(min=0.0)
            # uniform interest i = 1; a terminal S_{t+1} is masked out of the loss below
            emphasis_target = learned_emphasis_target(1.0, o.gamma, rho, carried, normalize=o.normalize_emphasis)
        prediction = self.emphasis_net(next_obs).squeeze(-1)
        # a terminal S_{t+1} receives no emphasis flow (the next step starts a new episode): skip it. The loss is the
        # squared error, twice learned_emphasis_loss (the scale the learning rate was tuned at).
        squared_error = continuing * (2 * learned_emphasis_loss(prediction, emphasis_target))
        if o.fit_start_state:  # f(S_0) <- i_0 (gamma_0 = 0 at a start, so normalised or not the target is i_0)
            assert episode_start is not None  # update() checked it
            start = episode_start.to(prediction.dtype)
            start_target = learned_emphasis_start_target(1.0, 0.0, normalize=o.normalize_emphasis)
            start_error = start * (2 * learned_emphasis_loss(self.emphasis_net(obs).squeeze(-1), start_target))
            emphasis_loss = (squared_error + start_error).sum(1) / (continuing + start).sum(1).clamp(min=1)
        else:
            emphasis_loss = squared_error.sum(1) / continuing.sum(1).clamp(min=1)
        if not o.followon_after_update:  # F_t = f(S_t) before this step's emphasis update (as deep ACE reads it)
            with torch.no_grad():
                emphasis = self.emphasis_net(obs).squeeze(-1)
        self.emphasis_optimizer.zero_grad(set_to_none=True)
        emphasis_loss.sum().backward()
        mask_and_clip_member_gradients_(list(self.emphasis_net.parameters()), self.active, o.max_grad_norm)
        self.emphasis_optimizer.step()
        with torch.no_grad():
            if o.followon_after_update:  # F_t = f(S_t) after this step's emphasis update (the tuned default)
                emphasis = self.emphasis_net(obs).squeeze(-1)
            emphasis = emphasis.clamp(0.0 if o.clip_followon_at_zero else None, o.emphasis_clip)
            weights = emphatic_weighting(1.0, emphasis, o.eta)  # M_t, uniform interest
        return weights, {
            "emphasis_loss": emphasis_loss.detach(),
            "followon_mean": emphasis.mean(dim=1),
            "importance_ratio_mean": rho.mean(dim=1),
        }

    # ------------------------------------------------------------------ divergence and checkpoints
    def _networks(self) -> dict[str, nn.Module]:
        nets: dict[str, nn.Module] = {
            "actor": self.actor,
            "actor_target": self.actor_target,
            "critic": self.critic,
            "critic_target": self.critic_target,
        }
        if self.emphasis_optimizer is not None:
            nets.update(emphasis_net=self.emphasis_net, emphasis_target=self.emphasis_target)
        return nets

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        optimizers: dict[str, torch.optim.Optimizer] = {
            "actor_optimizer": self.actor_optimizer,
            "critic_optimizer": self.critic_optimizer,
        }
        if self.emphasis_optimizer is not None:
            optimizers["emphasis_optimizer"] = self.emphasis_optimizer
        return optimizers

    def parameters_finite(self) -> torch.Tensor:
        finite = torch.ones(self.population_size, dtype=torch.bool, device=self.device)
        for net in self._networks().values():
            finite &= finite_members(net)
        return finite.cpu()

    def freeze(self, members: torch.Tensor) -> None:
        """Diverged members get zero gradients from now on and zeroed Adam moments (so Adam does not move them)."""
        members = members.to(self.device)
        self.active &= ~members
        for optimizer in self._optimizers().values():
            for state in optimizer.state.values():
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        state[key][members] = 0.0

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {name: net.state_dict() for name, net in self._networks().items()}
        state.update({name: opt.state_dict() for name, opt in self._optimizers().items()})
        state.update(
            generator=self.generator.get_state(), active=self.active.clone(), gradient_updates=self.gradient_updates
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, net in self._networks().items():
            net.load_state_dict(state[name])
        for name, opt in self._optimizers().items():
            opt.load_state_dict(state[name])
        self.generator.set_state(state["generator"])
        self.active.copy_(state["active"])
        self.gradient_updates = state["gradient_updates"]


@register_agent(
    "dpg", DDPGOptions, "deep DDPG (target networks, Gaussian behaviour noise); emphasis='learned' for emphatic DPG"
)
def make_ddpg(context: AgentContext, options: DDPGOptions) -> DDPG:
    return DDPG(context, options)
