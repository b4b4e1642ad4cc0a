"""What the deep emphatic actor-critics share: networks, the critic and learned-emphasis losses, the gradient step,
divergence handling and checkpoints.

``deep-ace`` / ``deep-offpac`` (discrete actions, :mod:`emphatic_rl.agents.deep.ace`) and ``gaussian-ace`` /
``gaussian-offpac`` (continuous actions, :mod:`emphatic_rl.agents.deep.gaussian`) differ only in their policy
(softmax or clipped Gaussian), how they act, and how their target networks follow (a hard copy every
``target_update_every`` steps or Polyak averaging). Everything else lives here once:

- the networks of a population of ``P`` members: ``policy``, ``critic`` and its target, and with a learned emphasis
  ``emphasis`` (``f-hat``) and its target, initialised in that order from ``torch.manual_seed(seed)``; one Adam over
  the trained ones (per-group learning rates);
- :meth:`DeepActorCritic.critic_and_emphasis`: the importance-weighted TD(0) critic loss and TD error, the learned
  emphasis loss with its start-state term, the follow-on estimate ``F_t`` and the emphatic weighting ``M_t`` (the
  equations themselves are :mod:`emphatic_rl.emphatic`'s);
- :meth:`DeepActorCritic.gradient_step`: one Adam step on ``actor + critic + emphasis`` summed over members, with
  diverged members' gradients masked and each member's gradient norm clipped;
- :meth:`DeepActorCritic.parameters_finite`, :meth:`DeepActorCritic.freeze` and the checkpoint state (keys
  ``policy``, ``critic``, ``critic_target``, [``emphasis``, ``emphasis_target``], ``optimizer``, ``generator``,
  the subclass's extra generators, ``active``, ``gradient_updates``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from emphatic_rl.agents.base import Agent
from emphatic_rl.agents.networks import finite_members, mask_and_clip_member_gradients_
from emphatic_rl.agents.registry import AgentContext
from emphatic_rl.buffers.trajectory import TrajectoryBuffer, TransitionBatch
from emphatic_rl.emphatic import (
    emphatic_weighting,
    learned_emphasis_loss,
    learned_emphasis_start_target,
    learned_emphasis_target,
)
from emphatic_rl.seeding import stream_seed

__all__ = ["DeepActorCritic", "replayed_episode_starts"]


def replayed_episode_starts(buffer: TrajectoryBuffer, batch: TransitionBatch) -> torch.Tensor:
    """``bool`` of ``batch.time_index``'s shape: the replayed ``S_t`` starts an episode (the stream's first row, or
    the previous row of its stream ended). Unknown, hence ``False``, for the oldest stored row."""
    previous_time = batch.time_index - 1
    known = previous_time >= buffer.oldest_time
    previous = buffer.transitions_at(
        previous_time.clamp(min=buffer.oldest_time).flatten(), batch.stream_index.flatten()
    )
    return (batch.time_index == 0) | (known & previous.done.view(batch.time_index.shape))


class DeepActorCritic(Agent):
    """Base of the deep emphatic actor-critics (see the module docstring). A subclass calls :meth:`build` in its
    ``__init__`` after setting ``options``, ``device``, ``population_size`` and ``uses_emphasis``.

    ``options`` must have ``actor_learning_rate``, ``critic_learning_rate``, ``emphasis_learning_rate``, ``gamma``,
    ``eta``, ``rho_clip``, ``emphasis_rho_clip``, ``normalize_emphasis``, ``fit_start_state``,
    ``clip_followon_at_zero`` and ``max_grad_norm``.
    """

    options: Any
    device: torch.device
    population_size: int
    uses_emphasis: bool
    #: names of extra ``torch.Generator`` attributes saved in checkpoints besides ``generator``
    extra_generators: tuple[str, ...] = ()

    def build(self, context: AgentContext, make_network: Callable[[int], nn.Module], policy_outputs: int) -> None:
        """Create the networks (``make_network(out_dim)`` makes one population network), the optimizer, the
        acting/sampling ``generator`` (named stream ``"agent"``) and the per-member ``active`` mask."""
        options = self.options
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)  # initialisation only; acting and sampling use self.generator
            self.policy = make_network(policy_outputs)
            self.critic = make_network(1)
            self.critic_target = make_network(1)
            self.emphasis = make_network(1) if self.uses_emphasis else None
            self.emphasis_target = make_network(1) if self.uses_emphasis else None
        self.critic_target.load_state_dict(self.critic.state_dict())
        groups = [
            {"params": list(self.policy.parameters()), "lr": options.actor_learning_rate},
            {"params": list(self.critic.parameters()), "lr": options.critic_learning_rate},
        ]
        if self.emphasis is not None and self.emphasis_target is not None:
            self.emphasis_target.load_state_dict(self.emphasis.state_dict())
            groups.append({"params": list(self.emphasis.parameters()), "lr": options.emphasis_learning_rate})
        self.optimizer = torch.optim.Adam(groups)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(stream_seed(context.seed, "agent"))
        self.active = torch.ones(self.population_size, dtype=torch.bool, device=self.device)
        self.gradient_updates = 0

    # ------------------------------------------------------------------ the critic and the learned emphasis
    def critic_and_emphasis(
        self, batch: Any, episode_start: torch.Tensor, rho: torch.Tensor, rho_clipped: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The critic's and the emphasis network's part of one batch (fields ``[P, B, ...]``), uniform interest.

        Args:
            batch: a ``TransitionBatch`` with leading dims ``[P, B]``.
            episode_start: ``bool[P, B]``, ``S_t`` starts an episode (used only with ``fit_start_state``).
            rho: ``pi(A_t|S_t) / mu(A_t|S_t)``, ``[P, B]``, no gradient.
            rho_clipped: ``rho`` clipped at ``rho_clip`` (weights the critic's loss).

        Returns ``critic`` and ``emphasis`` losses (``[P]``, differentiable; ``emphasis`` zeros without an emphasis
        network) and, without gradient, ``delta`` (TD error), ``value``, ``followon`` (``F_t``: ``f-hat(S_t)``,
        clipped at 0 with ``clip_followon_at_zero``; ``i_t`` without an emphasis network), ``emphatic_weighting``
        (``M_t``) and ``emphasis_target`` (NaN without an emphasis network), each ``[P, B]``.
        """
        o = self.options
        P, B = episode_start.shape
        reward = batch.reward.view(P, B)
        not_terminated = (~batch.terminated.view(P, B)).float()
        next_gamma = o.gamma * not_terminated  # gamma_{t+1}
        interest = torch.ones_like(reward)  # uniform interest: i_t = i_{t+1} = 1

        value = self.critic(batch.obs).squeeze(-1)  # [P, B]
        with torch.no_grad():
            critic_target = reward + next_gamma * self.critic_target(batch.next_obs).squeeze(-1)
            delta = critic_target - value.detach()
        critic_loss = (0.5 * rho_clipped * (critic_target - value).pow(2)).mean(dim=1)

        if self.emphasis is not None and self.emphasis_target is not None:
            fhat_now = self.emphasis(batch.obs).squeeze(-1)  # [P, B]
            fhat_next = self.emphasis(batch.next_obs).squeeze(-1)
            with torch.no_grad():
                followon = fhat_now.detach()
                if o.clip_followon_at_zero:
                    followon = followon.clamp(min=0.0)
                fhat_target_now = self.emphasis_target(batch.obs).squeeze(-1)
                emphasis_rho = rho.clamp(max=o.emphasis_rho_clip)
                emphasis_target = learned_emphasis_target(
                    interest, next_gamma, emphasis_rho, fhat_target_now, normalize=o.normalize_emphasis
                )
            per_sample = not_terminated * learned_emphasis_loss(fhat_next, emphasis_target)
            if o.fit_start_state:  # gamma_0 = 0 at a start: the target is i_0 either way
                start_target = learned_emphasis_start_target(interest, 0.0, normalize=o.normalize_emphasis)
                per_sample = per_sample + episode_start.float() * learned_emphasis_loss(fhat_now, start_target)
            emphasis_loss = per_sample.mean(dim=1)
        else:
            followon = interest
            emphasis_target = torch.full_like(reward, math.nan)
            emphasis_loss = torch.zeros(P, device=reward.device)
        return {
            "critic": critic_loss,
            "emphasis": emphasis_loss,
            "delta": delta,
            "value": value.detach(),
            "followon": followon,
            "emphatic_weighting": emphatic_weighting(interest, followon, o.eta),  # M_t
            "emphasis_target": emphasis_target,
        }

    def gradient_step(self, losses: dict[str, torch.Tensor]) -> None:
        """One Adam step on ``actor + critic + emphasis`` (each ``[P]``) summed over members; a frozen member's
        gradients are zeroed and each member's norm is clipped at ``max_grad_norm``."""
        self.optimizer.zero_grad(set_to_none=True)
        (losses["actor"] + losses["critic"] + losses["emphasis"]).sum().backward()
        for net in self.trained_networks():
            mask_and_clip_member_gradients_(net.parameters(), self.active, self.options.max_grad_norm)
        self.optimizer.step()
        self.gradient_updates += 1

    def trained_networks(self) -> list[nn.Module]:
        """The networks the optimizer trains: policy, critic and (if any) the emphasis network."""
        return [net for net in (self.policy, self.critic, self.emphasis) if net is not None]

    # ------------------------------------------------------------------ divergence
    def parameters_finite(self) -> torch.Tensor:
        """``bool[P]`` on the CPU: every trained parameter of the member is finite."""
        finite = finite_members(self.policy) & finite_members(self.critic)
        if self.emphasis is not None:
            finite &= finite_members(self.emphasis)
        return finite.cpu()

    def freeze(self, members: torch.Tensor) -> None:
        """Diverged members keep their parameters, get zero gradients and zeroed Adam moments from now on."""
        members = members.to(self.device)
        self.active &= ~members
        for state in self.optimizer.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][members] = 0.0

    # ------------------------------------------------------------------ checkpointing
    def networks(self) -> dict[str, nn.Module]:
        """Every network by its checkpoint key (targets included)."""
        nets: dict[str, nn.Module] = {"policy": self.policy, "critic": self.critic, "critic_target": self.critic_target}
        if self.emphasis is not None and self.emphasis_target is not None:
            nets.update(emphasis=self.emphasis, emphasis_target=self.emphasis_target)
        return nets

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {name: net.state_dict() for name, net in self.networks().items()}
        state.update(
            optimizer=self.optimizer.state_dict(),
            generator=self.generator.get_state(),
            active=self.active.clone(),
            gradient_updates=self.gradient_updates,
        )
        for name in self.extra_generators:
            state[name] = getattr(self, name).get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, net in self.networks().items():
            net.load_state_dict(state[name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        for name in self.extra_generators:
            getattr(self, name).set_state(state[name])
        self.active.copy_(state["active"])
        self.gradient_updates = state["gradient_updates"]
