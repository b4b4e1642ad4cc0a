"""DQN (Mnih et al. 2015): a baseline that exercises the replay path of the ``TrajectoryBuffer`` end to end.

A population of ``P`` independent DQN learners (``P`` seeds) runs as one batched program: the Q-networks are a
``PopulationNetwork`` and one Adam optimiser updates every member independently (the loss is the sum of the members'
losses, and Adam is elementwise). Member ``p`` acts in env copies ``p*E ... p*E + E - 1`` and learns only from the
transitions of those copies.

Counting. ``env_step`` counts loop iterations, i.e. steps of *each* env copy; one iteration adds ``E`` transitions per
member. ``learning_starts``, ``train_every``, ``target_update_every`` and ``epsilon_decay_steps`` are in iterations;
``buffer_size`` is in transitions per member (the buffer keeps ``ceil(buffer_size / E)`` rows per stream).

Targets: ``r + gamma * (1 - terminated) * max_a Q_target(s', a)``; truncated transitions bootstrap from the true final
observation (never from the reset observation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from emphatic_rl.agents.base import ActionOutput, Agent
from emphatic_rl.agents.networks import finite_members, make_population_network, mask_and_clip_member_gradients_
from emphatic_rl.agents.registry import AgentContext, check_positive, check_unit_interval, register_agent
from emphatic_rl.envs.base import DiscreteSpec
from emphatic_rl.seeding import stream_seed


@dataclass(frozen=True)
class DQNOptions:
    """Hyperparameters of DQN (defaults reach CartPole's 475 within 100k steps; see tests/agents/test_dqn.py)."""

    learning_rate: float = 1e-3
    gamma: float = 0.99
    buffer_size: int = 50_000
    batch_size: int = 128
    learning_starts: int = 1_000
    train_every: int = 1
    gradient_steps: int = 1
    target_update_every: int = 500
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    epsilon_decay_steps: int = 10_000
    eval_epsilon: float = 0.0
    hidden: tuple[int, ...] = (128, 128)
    double_q: bool = False
    max_grad_norm: float = 10.0

    def __post_init__(self) -> None:
        check_positive("learning_rate", self.learning_rate)
        check_unit_interval("gamma", self.gamma)
        for name in ("buffer_size", "batch_size", "train_every", "gradient_steps", "target_update_every"):
            check_positive(name, getattr(self, name))
        check_positive("learning_starts", self.learning_starts, allow_zero=True)
        check_positive("epsilon_decay_steps", self.epsilon_decay_steps)
        for name in ("epsilon_start", "epsilon_end", "eval_epsilon"):
            check_unit_interval(name, getattr(self, name))
        check_positive("max_grad_norm", self.max_grad_norm)
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))


class DQN(Agent):
    """A population of ``P`` DQN learners. See the module docstring for counting and targets.

    Args:
        context: run facts (specs, ``P``, ``E``, device, seed).
        options: ``DQNOptions``.
    """

    name = "dqn"
    acts_in_env = True

    def __init__(self, context: AgentContext, options: DQNOptions) -> None:
        if not isinstance(context.action_spec, DiscreteSpec):
            raise ValueError("agent 'dqn' needs a discrete action space; this env's actions are continuous")
        self.options = options
        self.device = context.device
        self.population_size = context.population_size
        self.envs_per_member = context.envs_per_member
        self.num_actions = context.action_spec.n
        self.buffer_capacity = math.ceil(options.buffer_size / context.envs_per_member)
        obs_shape = context.observation_spec.shape

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)  # network initialisation only; acting and sampling use self.generator
            self.q_network = make_population_network(
                self.population_size, obs_shape, self.num_actions, options.hidden
            ).to(self.device)
            self.target_network = make_population_network(
                self.population_size, obs_shape, self.num_actions, options.hidden
            ).to(self.device)
        self.target_network.load_state_dict(self.q_network.state_dict())
        self.optimizer = torch.optim.Adam(self.q_network.parameters(), lr=options.learning_rate)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(stream_seed(context.seed, "agent"))
        self.active = torch.ones(self.population_size, dtype=torch.bool, device=self.device)
        self.gradient_updates = 0

    # ------------------------------------------------------------------ acting
    def epsilon(self, env_step: int) -> float:
        o = self.options
        fraction = min(1.0, env_step / o.epsilon_decay_steps)
        return o.epsilon_start + fraction * (o.epsilon_end - o.epsilon_start)

    def _epsilon_greedy(self, obs: torch.Tensor, epsilon: float) -> ActionOutput:
        with torch.no_grad():
            q_values = self.q_network(obs)  # [P, E, A]
        greedy = q_values.argmax(dim=-1)
        random_action = torch.randint(self.num_actions, greedy.shape, generator=self.generator, device=self.device)
        explore = torch.rand(greedy.shape, generator=self.generator, device=self.device) < epsilon
        action = torch.where(explore, random_action, greedy)
        prob = epsilon / self.num_actions + (1.0 - epsilon) * (action == greedy).float()
        return ActionOutput(action, prob.log())

    def act(self, obs: torch.Tensor, env_step: int) -> ActionOutput:
        return self._epsilon_greedy(obs, self.epsilon(env_step))

    def evaluation_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self._epsilon_greedy(obs, self.options.eval_epsilon).action

    @torch.no_grad()
    def predict_action(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """``argmax_a Q(s, a)`` (``deterministic``, no random draw) or ``eval_epsilon``-greedy, ``int64[P, E]``."""
        if deterministic:
            return self.q_network(obs).argmax(dim=-1)
        return self.evaluation_action(obs)

    # ------------------------------------------------------------------ learning
    def _sample(self, buffer: Any):
        """A batch ``[P, B, ...]`` where member ``p`` sees only its own streams ``p*E ... p*E + E - 1``."""
        return buffer.sample_transitions(
            self.options.batch_size, self.generator, num_groups=self.population_size
        )

    def update(self, buffer: Any, env_step: int) -> dict[str, torch.Tensor]:
        o = self.options
        metrics: dict[str, torch.Tensor] = {}
        if env_step < o.learning_starts or env_step % o.train_every != 0:
            return metrics
        for _ in range(o.gradient_steps):
            batch = self._sample(buffer)
            with torch.no_grad():
                next_q_target = self.target_network(batch.next_obs)  # [P, B, A]
                if o.double_q:
                    next_action = self.q_network(batch.next_obs).argmax(dim=-1, keepdim=True)
                    next_value = next_q_target.gather(-1, next_action).squeeze(-1)
                else:
                    next_value = next_q_target.max(dim=-1).values
                target = batch.reward + o.gamma * (~batch.terminated).float() * next_value
            q_taken = self.q_network(batch.obs).gather(-1, batch.action.long().unsqueeze(-1)).squeeze(-1)
            member_loss = nn.functional.smooth_l1_loss(q_taken, target, reduction="none").mean(dim=1)  # [P]
            self.optimizer.zero_grad(set_to_none=True)
            member_loss.sum().backward()
            mask_and_clip_member_gradients_(self.q_network.parameters(), self.active, o.max_grad_norm)
            self.optimizer.step()
            self.gradient_updates += 1
            metrics = {"loss": member_loss.detach(), "q_mean": q_taken.detach().mean(dim=1)}
        if env_step % o.target_update_every == 0:
            self.target_network.load_state_dict(self.q_network.state_dict())
        epsilon = torch.full((self.population_size,), self.epsilon(env_step), device=self.device)
        metrics["rollout/exploration_rate"] = epsilon
        return metrics

    def parameters_finite(self) -> torch.Tensor:
        return finite_members(self.q_network)

    def freeze(self, members: torch.Tensor) -> None:
        """Diverged members keep their parameters and get zero gradients from now on; their Adam moments are zeroed
        so that Adam does not keep moving them."""
        members = members.to(self.device)
        self.active &= ~members
        for state in self.optimizer.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][members] = 0.0

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "q_network": self.q_network.state_dict(),
            "target_network": self.target_network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "active": self.active.clone(),
            "gradient_updates": self.gradient_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.q_network.load_state_dict(state["q_network"])
        self.target_network.load_state_dict(state["target_network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.active.copy_(state["active"])
        self.gradient_updates = state["gradient_updates"]


@register_agent("dqn", DQNOptions, "DQN with a target network, epsilon-greedy behaviour and uniform replay")
def make_dqn(context: AgentContext, options: DQNOptions) -> DQN:
    return DQN(context, options)
