"""Dyna with function approximation: the four planning variants of "Hallucinating Value" (Jafferjee, Imani, Talvitie,
White, Bowling 2020; JAIR 2024) with a neural Q, on vector-state envs (CartPole, Catcher, Puddle World).

The tabular agent (``agents.dyna.tabular``) with its tables replaced by networks. Our reading, each choice
ours where the paper is silent:

Value function. A population of ``P`` Q-networks (:class:`~emphatic_rl.agents.networks.PopulationMLP`, 2 x
``hidden`` ReLU), one per member, and a Polyak-averaged target copy (``target_tau`` per real step) that every
bootstrap reads. Each value update is one Adam step per member (the step size ``learning_rate`` may differ per
member) on the mean squared TD error of a batch, each member's gradient clipped to norm ``max_grad_norm``.

Each real step: act epsilon-greedily; store the transition in the member's own replay (the last ``replay_size``); a
*direct* update on ``replay_batch`` replayed real transitions; train the learned model (if any); then
``planning_steps`` planning steps of ``planning_batch`` simulated updates each; then the target update. Nothing is
learned before ``warmup`` real transitions. ``planning_steps = 0`` is the model-free baseline: the same agent with
the same real budget (it is DQN-style Q-learning with replay).

Search control, from real states: the successor variants draw real ``(s, a)`` pairs uniformly from the replay; the
predecessor variants pop the ``planning_batch`` highest-priority states of a queue of ``queue_size`` entries
(real states enter it with the ``|delta|`` of their direct update; entries below ``priority_threshold`` are replaced
by states drawn uniformly from the replay).

- ``one-step-successor`` (Dyna-Q): ``(r, s2) ~ forward(s, a)``; target ``r + gamma max_b Qt(s2, b)``.
- ``multi-step-successor``: ``n`` forward steps, greedy actions (online network) after the first; target
  ``sum_k gamma^k r_k + gamma^n max_b Qt(s_n, b)``; only ``Q(s, a)`` is updated.
- ``one-step-predecessor``: pop ``s~``; ``(s_, a_, r_) ~ backward(s~)``; update ``Q(s_, a_)`` toward
  ``r_ + gamma max_b Qt(s~, b)`` and push the *simulated* ``s_`` with ``|delta|``: later pops bootstrap from
  simulated states.
- ``multi-step-predecessor``: the queue only ever holds real states; a backward chain of ``n`` steps from the real
  ``s``; ``Q(s_k, a_k)`` is updated toward ``G_k = r_k + gamma G_{k-1}``, ``G_0 = max_b Qt(s, b)``: every target
  bootstraps from the real ``s`` only. The chain is cut after the first ``a_k`` that is not greedy at ``s_k``
  (checked with the network before the update; all ``n`` updates of a chain then make one gradient step).

Terminal handling: no bootstrap past a transition the model marks terminal; the env's time limit is bootstrapped.

Models (``agents.dyna.vector_models``): ``model = "perfect"`` is the true simulator (forward, and inverted
for the predecessor variants), ``"learned"`` a neural forward/backward model per member trained on ``model_batch``
replayed real transitions per real step (only the direction the variant plans with). ``dose`` (one value in
``[0, 1]`` per member allowed) injects error into either: each model output state is, with probability ``dose``,
replaced by a state the real dynamics cannot produce.

Instruments (as the tabular agent's, ``PLANNING_COUNTERS``): for every planning value update, per member, whether the
updated state is simulated (a model output) and whether it is hallucinated (the env's detector says no real dynamics
produce it), whether the target bootstraps from a simulated / hallucinated state, whether a *real* (reachable)
state is updated toward a simulated / hallucinated one, and whether a real state's target passed through a
hallucinated state (``real_via_hallucinated``). ``planning_statistics()`` gives the fractions ``[P]`` and
``fraction_model_outputs_hallucinated``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from emphatic_rl.agents.base import ActionOutput, Agent
from emphatic_rl.agents.dyna.learned_models import LearnedVectorModel
from emphatic_rl.agents.dyna.tabular import PLANNING_COUNTERS, VARIANTS, _as_member_tensor
from emphatic_rl.agents.dyna.vector_models import (
    MODEL_KINDS,
    VECTOR_ENVS,
    LearnedModel,
    MixedModel,
    SimulatorModel,
    VectorBackward,
    VectorForward,
    catcher_geometry_of,
    check_env_supported,
    inject_hallucinations,
    is_reachable,
)
from emphatic_rl.agents.networks import PopulationMLP, mask_and_clip_member_gradients_, polyak_update_
from emphatic_rl.agents.registry import AgentContext, register_agent

if TYPE_CHECKING:
    from emphatic_rl.buffers.trajectory import TrajectoryBuffer

__all__ = ["DynaFAOptions", "DynaFAAgent", "make_dyna_fa_for_env"]


@dataclass(frozen=True)
class DynaFAOptions:
    """Options of the ``dyna-fa`` agent (CLI: ``--agent dyna-fa --set variant=multi-step-predecessor``).

    - ``variant``: one of ``VARIANTS``; ``planning_steps`` (>= 0; 0: the model-free baseline), ``planning_batch``
      (simulated updates per planning step), ``rollout_length`` (``n`` >= 1 of the multi-step variants).
    - ``model``: ``perfect`` (the env's true simulator) or ``learned``; ``dose``: injected-error probability in
      ``[0, 1]`` per model output (a number, or one value per member).
    - ``learning_rate`` (Adam, > 0; number or per member), ``gamma`` in ``[0, 1]``, ``epsilon`` in ``[0, 1]``
      (number or per member), ``hidden`` (width of the Q-network's 2 layers), ``target_tau`` in ``(0, 1]``,
      ``max_grad_norm`` (> 0).
    - ``replay_size`` (real transitions kept per member), ``replay_batch`` (direct update batch), ``warmup`` (real
      transitions before learning starts), ``queue_size``, ``priority_threshold`` (>= 0).
    - ``model_hidden``, ``model_learning_rate``, ``model_batch``, ``model_train_steps``: the learned model's.
    """

    variant: str = "one-step-successor"
    planning_steps: int = 5
    planning_batch: int = 16
    rollout_length: int = 3
    model: str = "perfect"
    dose: float | tuple[float, ...] = 0.0
    learning_rate: float | tuple[float, ...] = 1e-3
    gamma: float = 0.99
    epsilon: float | tuple[float, ...] = 0.1
    hidden: int = 32
    target_tau: float = 0.05
    max_grad_norm: float = 10.0
    replay_size: int = 10_000
    replay_batch: int = 32
    warmup: int = 100
    queue_size: int = 256
    priority_threshold: float = 1e-3
    model_hidden: int = 64
    model_learning_rate: float = 1e-3
    model_batch: int = 64
    model_train_steps: int = 1

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {self.variant!r}")
        if self.model not in MODEL_KINDS:
            raise ValueError(f"model must be one of {', '.join(MODEL_KINDS)}; got {self.model!r}")
        for key, low in (
            ("planning_steps", 0),
            ("planning_batch", 1),
            ("rollout_length", 1),
            ("hidden", 1),
            ("replay_size", 1),
            ("replay_batch", 1),
            ("warmup", 1),
            ("queue_size", 1),
            ("model_hidden", 1),
            ("model_batch", 1),
            ("model_train_steps", 1),
        ):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
        if self.planning_batch > self.queue_size:
            raise ValueError(f"planning_batch ({self.planning_batch}) must be <= queue_size ({self.queue_size})")
        _as_member_tensor("dose", self.dose, None, 0.0, 1.0)
        _as_member_tensor("epsilon", self.epsilon, None, 0.0, 1.0)
        _as_member_tensor("learning_rate", self.learning_rate, None, 0.0, math.inf, low_open=True)
        _as_member_tensor("gamma", self.gamma, 1, 0.0, 1.0)
        _as_member_tensor("target_tau", self.target_tau, 1, 0.0, 1.0, low_open=True)
        for key in ("max_grad_norm", "model_learning_rate"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf):
                raise ValueError(f"{key} must be > 0, got {value!r}")
        if not (isinstance(self.priority_threshold, (int, float)) and self.priority_threshold >= 0):
            raise ValueError(f"priority_threshold must be >= 0, got {self.priority_threshold!r}")
        for key in ("dose", "epsilon", "learning_rate"):
            value = getattr(self, key)
            if isinstance(value, list):
                object.__setattr__(self, key, tuple(value))


class _PopulationAdam:
    """Adam (Kingma & Ba; PyTorch's defaults) over parameters with a leading member axis ``P`` and a step size per
    member, ``lr: [P]`` (``torch.optim.Adam`` takes one step size for all)."""

    def __init__(self, parameters: list[torch.Tensor], lr: torch.Tensor, betas=(0.9, 0.999), eps: float = 1e-8):
        self.parameters = parameters
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.step_count = 0
        self.m = [torch.zeros_like(p) for p in parameters]
        self.v = [torch.zeros_like(p) for p in parameters]

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        """One Adam step of every member with ``active[p]`` (the others keep their parameters), as multi-tensor
        (``torch._foreach_*``) kernels: a dozen ops per step whatever the number of layers."""
        self.step_count += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.step_count, 1 - b2**self.step_count
        live = [i for i, p in enumerate(self.parameters) if p.grad is not None]
        if not live:
            return
        params = [self.parameters[i] for i in live]
        grads = [g for p in params if (g := p.grad) is not None]
        m = [self.m[i] for i in live]
        v = [self.v[i] for i in live]
        torch._foreach_lerp_(m, grads, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
        denom = torch._foreach_div(v, c2)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, self.eps)
        rate = (self.lr * active.float()) / c1
        scales = [rate.view((-1,) + (1,) * (p.dim() - 1)) for p in params]
        update = torch._foreach_mul(m, scales)
        torch._foreach_div_(update, denom)
        torch._foreach_sub_(params, update)

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "m": [t.clone() for t in self.m], "v": [t.clone() for t in self.v]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        for mine, saved in zip(self.m + self.v, state["m"] + state["v"], strict=True):
            mine.copy_(saved)


class _Queue:
    """A fixed-size priority queue per member over vector states: ``states [P, K, D]``, ``priority [P, K]`` and the
    flags ``simulated``, ``hallucinated`` ``bool[P, K]``. Pushing keeps the ``K`` largest priorities."""

    def __init__(self, population: int, size: int, dim: int, device: torch.device) -> None:
        self.states = torch.zeros(population, size, dim, device=device)
        self.priority = torch.zeros(population, size, device=device)
        self.simulated = torch.zeros(population, size, dtype=torch.bool, device=device)
        self.hallucinated = torch.zeros(population, size, dtype=torch.bool, device=device)

    def push(self, states, priority, simulated, hallucinated) -> None:
        k = self.priority.shape[1]
        all_priority = torch.cat((self.priority, priority), dim=1)
        top = all_priority.topk(k, dim=1).indices
        self.priority = all_priority.gather(1, top)
        all_states = torch.cat((self.states, states), dim=1)
        self.states = all_states.gather(1, top.unsqueeze(-1).expand(-1, -1, all_states.shape[-1]))
        self.simulated = torch.cat((self.simulated, simulated), dim=1).gather(1, top)
        self.hallucinated = torch.cat((self.hallucinated, hallucinated), dim=1).gather(1, top)

    def pop(self, count: int, threshold: float):
        """The ``count`` highest entries per member (their priorities cleared) and whether each was above
        ``threshold``: ``(states [P, B, D], simulated, hallucinated, from_queue)``."""
        top_priority, top = self.priority.topk(count, dim=1)
        from_queue = top_priority > threshold
        states = self.states.gather(1, top.unsqueeze(-1).expand(-1, -1, self.states.shape[-1]))
        simulated = self.simulated.gather(1, top) & from_queue
        hallucinated = self.hallucinated.gather(1, top) & from_queue
        self.priority.scatter_(1, top, torch.where(from_queue, 0.0, top_priority))
        return states, simulated, hallucinated, from_queue


class DynaFAAgent(Agent):
    """A population of ``P`` Dyna learners with neural Q-functions on a vector-state env (module docstring).

    Args:
        env_name: one of ``VECTOR_ENVS`` (picks the hallucination detector and the injection).
        obs_dim: ``D``; ``num_actions``: ``A``; ``population_size``: ``P``.
        options: ``DynaFAOptions``.
        model: a ``SimulatorModel`` or ``LearnedModel`` (``None`` only with ``planning_steps = 0``).
        learned_network: the ``LearnedVectorModel`` behind a ``LearnedModel`` (trained by the agent).
        dose: optional per-member override ``float32[P]``.
        learning_rate: optional per-member override ``float32[P]``.
        epsilon: optional per-member override ``float32[P]``.
        planning_members: ``bool[P]``, the members that plan (default: all); the others are model-free baselines
            inside the same population (same real budget, same direct updates).
        geometry: Catcher's geometry for its detector (default screen otherwise).
        seed: the agent's generator seed (exploration, replay, models' draws).
        device: torch device.
    """

    name = "dyna-fa"
    acts_in_env = True

    def __init__(
        self,
        env_name: str,
        obs_dim: int,
        num_actions: int,
        population_size: int,
        options: DynaFAOptions,
        model: SimulatorModel | LearnedModel | MixedModel | None = None,
        learned_network: LearnedVectorModel | None = None,
        dose: torch.Tensor | None = None,
        learning_rate: torch.Tensor | None = None,
        epsilon: torch.Tensor | None = None,
        geometry=None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        planning_members: torch.Tensor | None = None,
    ) -> None:
        check_env_supported(env_name, "agent 'dyna-fa'")
        if options.planning_steps > 0 and model is None:
            raise ValueError(f"variant {options.variant!r} with planning_steps > 0 needs a model")
        self.env_name = env_name
        self.options = options
        self.device = torch.device(device)
        self.population_size = p = population_size
        self.obs_dim, self.num_actions = obs_dim, num_actions
        self.variant = options.variant
        self.gamma = float(options.gamma)
        self.geometry = geometry
        self.model = model
        self.learned_network = learned_network
        self.dose = _as_member_tensor("dose", options.dose if dose is None else dose, p, 0.0, 1.0).to(self.device)
        self.epsilon = _as_member_tensor("epsilon", options.epsilon if epsilon is None else epsilon, p, 0.0, 1.0).to(
            self.device
        )
        lr = _as_member_tensor(
            "learning_rate", options.learning_rate if learning_rate is None else learning_rate, p, 0.0, math.inf, True
        ).to(self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) + 104729)
            self.q_net = PopulationMLP(p, obs_dim, num_actions, (options.hidden, options.hidden)).to(self.device)
        self.target_net = copy.deepcopy(self.q_net)
        for parameter in self.target_net.parameters():
            parameter.requires_grad_(False)
        self.optimizer = _PopulationAdam(list(self.q_net.parameters()), lr)
        self.members = torch.arange(p, device=self.device)
        c = options.replay_size
        self.replay_obs = torch.zeros(p, c, obs_dim, device=self.device)
        self.replay_next = torch.zeros(p, c, obs_dim, device=self.device)
        self.replay_action = torch.zeros(p, c, dtype=torch.int64, device=self.device)
        self.replay_reward = torch.zeros(p, c, device=self.device)
        self.replay_terminated = torch.zeros(p, c, dtype=torch.bool, device=self.device)
        self.replay_cursor = 0
        self.replay_filled = 0
        self.queue = _Queue(p, options.queue_size, obs_dim, self.device)
        self.planning_counts = torch.zeros(p, len(PLANNING_COUNTERS), device=self.device)
        self.model_output_counts = torch.zeros(p, 2, device=self.device)
        self.frozen = torch.zeros(p, dtype=torch.bool, device=self.device)
        self.model_direction = ("forward",) if "successor" in self.variant else ("backward",)
        if planning_members is None:
            planning_members = torch.ones(p, dtype=torch.bool)
        if tuple(planning_members.shape) != (p,):
            raise ValueError(f"planning_members must be bool[{p}], got shape {tuple(planning_members.shape)}")
        self.planning_members = planning_members.bool().to(self.device)
        self._plans = options.planning_steps > 0 and bool(self.planning_members.any())

    # ------------------------------------------------------------------ acting
    def _q(self, obs: torch.Tensor, target: bool = False) -> torch.Tensor:
        """``obs [P, B, D]`` -> ``Q [P, B, A]`` (no gradient)."""
        with torch.no_grad():
            return (self.target_net if target else self.q_net)(obs)

    def act(self, obs: torch.Tensor, env_step: int) -> ActionOutput:
        """Epsilon-greedy actions for ``obs [P, E, D]`` -> ``action int64[P, E]``, ``log_prob [P, E]``."""
        obs = self._check_obs(obs)
        q = self._q(obs)
        p, e, a = q.shape
        greedy = q.argmax(dim=-1)
        explore = torch.rand(p, e, generator=self.generator, device=self.device) < self.epsilon.unsqueeze(1)
        random_action = torch.randint(a, (p, e), generator=self.generator, device=self.device)
        action = torch.where(explore, random_action, greedy)
        eps = self.epsilon.unsqueeze(1)
        prob = eps / a + (1 - eps) * (action == greedy).float()
        return ActionOutput(action, prob.log())

    def evaluation_action(self, obs: torch.Tensor) -> torch.Tensor:
        """Greedy actions for ``obs [P, E, D]``."""
        return self._q(self._check_obs(obs)).argmax(dim=-1)

    def _check_obs(self, obs: torch.Tensor) -> torch.Tensor:
        obs = torch.as_tensor(obs, device=self.device)
        if obs.dim() != 3 or obs.shape[0] != self.population_size or obs.shape[2] != self.obs_dim:
            raise ValueError(
                f"dyna-fa: obs must be float32[P={self.population_size}, E, D={self.obs_dim}], got {tuple(obs.shape)}"
            )
        return obs.float()

    # ------------------------------------------------------------------ learning
    def update(self, buffer: TrajectoryBuffer, env_step: int) -> dict[str, torch.Tensor]:
        """Learn from the newest row of ``buffer`` (the real step of every stream; ``next_obs`` is its true
        ``S_{t+1}``)."""
        step = buffer.latest()
        next_obs = step.next_obs
        shape = (self.population_size, -1)
        return self.observe(
            step.obs.reshape(*shape, self.obs_dim),
            step.action.reshape(shape),
            step.reward.reshape(shape),
            next_obs.reshape(*shape, self.obs_dim),
            step.terminated.reshape(shape),
        )

    def observe(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """One real step of every member (``obs, next_obs [P, E, D]``, the rest ``[P, E]``; ``next_obs`` is the
        true ``S_{t+1}``, ``StepResult.final_obs``). Returns metrics ``[P]``."""
        obs, next_obs = obs.float().to(self.device), next_obs.float().to(self.device)
        action, reward = action.long().to(self.device), reward.float().to(self.device)
        terminated = terminated.bool().to(self.device)
        e = obs.shape[1]
        slots = (self.replay_cursor + torch.arange(e, device=self.device)) % self.options.replay_size
        self.replay_obs[:, slots] = obs
        self.replay_next[:, slots] = next_obs
        self.replay_action[:, slots] = action
        self.replay_reward[:, slots] = reward
        self.replay_terminated[:, slots] = terminated
        self.replay_cursor = (self.replay_cursor + e) % self.options.replay_size
        self.replay_filled = min(self.replay_filled + e, self.options.replay_size)
        metrics: dict[str, torch.Tensor] = {}
        if "predecessor" in self.variant:
            q_now = self._q(obs, target=True)
            target = reward + self.gamma * (~terminated).float() * self._q(next_obs, target=True).max(-1).values
            delta = (target - q_now.gather(-1, action.unsqueeze(-1)).squeeze(-1)).abs()
            no = torch.zeros_like(terminated)
            self.queue.push(obs, delta * (~self.frozen).float().unsqueeze(1), no, no)
        if self.replay_filled < self.options.warmup:
            return {"td_error": torch.zeros(self.population_size), **self.planning_statistics()}
        index = self._replay_index(self.options.replay_batch)
        r_obs, r_action, r_reward, r_next, r_term = self._replay(index)
        r_target = r_reward + self.gamma * (~r_term).float() * self._q(r_next, target=True).max(-1).values
        td = self._gradient_step(r_obs, r_action, r_target, planning=False)
        metrics["td_error"] = td.abs().mean(dim=1).cpu()
        if self.learned_network is not None and self._plans:
            for _ in range(self.options.model_train_steps):
                m_index = self._replay_index(self.options.model_batch)
                losses = self.learned_network.train_step(*self._replay(m_index), directions=self.model_direction)
            metrics.update({f"model_{k}": v.cpu() for k, v in losses.items()})
        if self._plans:
            for _ in range(self.options.planning_steps):
                self._plan()
        polyak_update_(self.target_net, self.q_net, self.options.target_tau)
        metrics.update(self.planning_statistics())
        return metrics

    def _replay_index(self, count: int) -> torch.Tensor:
        return torch.randint(
            self.replay_filled, (self.population_size, count), generator=self.generator, device=self.device
        )

    def _replay(
        self, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(obs [P, B, D], action, reward, next_obs [P, B, D], terminated)`` at ``index [P, B]``."""
        expand = index.unsqueeze(-1).expand(-1, -1, self.obs_dim)
        return (
            self.replay_obs.gather(1, expand),
            self.replay_action.gather(1, index),
            self.replay_reward.gather(1, index),
            self.replay_next.gather(1, expand),
            self.replay_terminated.gather(1, index),
        )

    def _gradient_step(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        planning: bool = True,
    ) -> torch.Tensor:
        """One Adam step per member on ``0.5 sum_b w (target - Q(obs, action))^2 / sum_b w``; returns the TD errors
        ``[P, B]`` before the step. A planning step leaves the non-planning members unchanged."""
        q = self.q_net(obs).gather(-1, action.unsqueeze(-1)).squeeze(-1)
        delta = target.detach() - q
        w = torch.ones_like(delta) if weight is None else weight.float()
        loss = (0.5 * w * delta.square()).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
        for parameter in self.q_net.parameters():
            parameter.grad = None
        loss.sum().backward()
        active = ~self.frozen & self.planning_members if planning else ~self.frozen
        mask_and_clip_member_gradients_(list(self.q_net.parameters()), active, self.options.max_grad_norm)
        self.optimizer.step(active)
        return delta.detach()

    # ------------------------------------------------------------------ models, with injection and the detector
    def _flag(self, state: torch.Tensor, terminal: torch.Tensor | None) -> torch.Tensor:
        return is_reachable(self.env_name, state, terminal, self.geometry)

    def _count_outputs(self, real: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Count the model's output states (``real bool[P, B]``; ``valid``: those that exist)."""
        active = (~self.frozen & self.planning_members).float().unsqueeze(1)
        if valid is not None:
            active = active * valid.float()
        self.model_output_counts[:, 0] += active.sum(dim=1)
        self.model_output_counts[:, 1] += (active * (~real).float()).sum(dim=1)

    def _forward(
        self, state: torch.Tensor, action: torch.Tensor, used: torch.Tensor | None = None
    ) -> tuple[VectorForward, torch.Tensor]:
        """The model's step, with injected error, and ``real bool[P, B]`` (the detector's verdict). ``used``: the
        outputs the planning update will read (a rollout past a terminal step is not counted)."""
        assert self.model is not None  # planning (planning_steps > 0) has a model
        sample = self.model.forward(state, action, self.generator)
        nxt, terminal = sample.next_state, sample.terminal
        if bool((self.dose > 0).any()):
            nxt, injected = inject_hallucinations(self.env_name, nxt, self.dose, self.generator)
            terminal = terminal & ~injected
        real = self._flag(nxt, terminal)
        self._count_outputs(real, used)
        return VectorForward(nxt, sample.reward.float(), terminal), real

    def _backward(self, state: torch.Tensor, used: torch.Tensor | None = None) -> tuple[VectorBackward, torch.Tensor]:
        assert self.model is not None  # planning (planning_steps > 0) has a model
        sample = self.model.backward(state, self.generator)
        previous = sample.previous_state
        if bool((self.dose > 0).any()):
            previous, _ = inject_hallucinations(self.env_name, previous, self.dose, self.generator)
        real = self._flag(previous, torch.zeros_like(sample.terminal))
        self._count_outputs(real, sample.valid if used is None else sample.valid & used)
        return VectorBackward(previous, sample.action, sample.reward.float(), sample.terminal, sample.valid), real

    def _count(self, performed, updated_simulated, updated_real, bootstrap_simulated, bootstrap_hallucinated, path):
        """Accumulate the instruments of one batch of planning updates (all ``bool[P, B]``)."""
        columns = torch.stack(
            (
                torch.ones_like(performed),
                updated_simulated,
                updated_simulated & ~updated_real,
                bootstrap_simulated,
                bootstrap_hallucinated,
                updated_real & bootstrap_simulated,
                updated_real & bootstrap_hallucinated,
                updated_real & (bootstrap_hallucinated | path),
            ),
            dim=-1,
        )
        keep = performed & (~self.frozen & self.planning_members).unsqueeze(1)
        self.planning_counts += (columns & keep.unsqueeze(-1)).float().sum(dim=1)

    # ------------------------------------------------------------------ planning
    def _plan(self) -> None:
        if self.variant == "one-step-successor":
            self._plan_successor(1)
        elif self.variant == "multi-step-successor":
            self._plan_successor(self.options.rollout_length)
        elif self.variant == "one-step-predecessor":
            self._plan_one_step_predecessor()
        else:
            self._plan_multi_step_predecessor()

    def _plan_successor(self, length: int) -> None:
        start, start_action, _, _, _ = self._replay(self._replay_index(self.options.planning_batch))
        state, action = start, start_action
        ret = torch.zeros(start_action.shape, device=self.device)
        discount = torch.ones_like(ret)
        alive = torch.ones_like(start_action, dtype=torch.bool)
        path = torch.zeros_like(alive)
        real = torch.ones_like(alive)
        for k in range(length):
            if k > 0:
                path = path | (alive & ~real)
            sample, real = self._forward(state, action, alive)
            ret = ret + alive.float() * discount * sample.reward
            discount = discount * self.gamma
            alive = alive & ~sample.terminal
            state = sample.next_state
            if k + 1 < length:
                action = self._q(state).argmax(dim=-1)
        target = ret + alive.float() * discount * self._q(state, target=True).max(-1).values
        self._gradient_step(start, start_action, target)
        no = torch.zeros_like(alive)
        self._count(torch.ones_like(alive), no, torch.ones_like(alive), alive, alive & ~real, path)

    def _pop(self):
        """Search control of the predecessor variants: ``(states, simulated, hallucinated)`` ``[P, B, ...]``."""
        b = self.options.planning_batch
        states, simulated, hallucinated, from_queue = self.queue.pop(b, self.options.priority_threshold)
        uniform = self._replay(self._replay_index(b))[0]
        states = torch.where(from_queue.unsqueeze(-1), states, uniform)
        return states, simulated, hallucinated

    def _plan_one_step_predecessor(self) -> None:
        state, simulated, hallucinated = self._pop()
        sample, real = self._backward(state)
        bootstraps = ~sample.terminal
        target = sample.reward + self.gamma * bootstraps.float() * self._q(state, target=True).max(-1).values
        valid = sample.valid
        delta = self._gradient_step(sample.previous_state, sample.action, target, valid)
        active = (~self.frozen).float().unsqueeze(1) * valid.float()
        self.queue.push(sample.previous_state, delta.abs() * active, torch.ones_like(real), ~real)
        self._count(
            valid,
            torch.ones_like(real),
            real,
            simulated & bootstraps,
            hallucinated & bootstraps,
            torch.zeros_like(real),
        )

    def _plan_multi_step_predecessor(self) -> None:
        real_state, _, _ = self._pop()  # this variant's queue only ever holds real states
        value = self._q(real_state, target=True).max(-1).values
        alive = torch.ones(value.shape, dtype=torch.bool, device=self.device)
        path = torch.zeros_like(alive)
        no = torch.zeros_like(alive)
        current = real_state
        states, actions, targets, weights = [], [], [], []
        for k in range(self.options.rollout_length):
            sample, real = self._backward(current, alive)
            alive = alive & sample.valid
            if k == 0:
                value = value * (~sample.terminal).float()
            value = sample.reward + self.gamma * value
            states.append(sample.previous_state)
            actions.append(sample.action)
            targets.append(value)
            weights.append(alive)
            self._count(alive, torch.ones_like(alive), real, no, no, path)
            path = path | ~real
            # Watkins-style cut: a_k must be greedy at s_k for G_{k+1} to be a max-target.
            q_prev = self._q(sample.previous_state)
            greedy = q_prev.gather(-1, sample.action.unsqueeze(-1)).squeeze(-1) >= q_prev.max(-1).values
            alive = alive & greedy
            current = sample.previous_state
        self._gradient_step(
            torch.cat(states, dim=1), torch.cat(actions, dim=1), torch.cat(targets, dim=1), torch.cat(weights, dim=1)
        )

    # ------------------------------------------------------------------ instruments
    def planning_statistics(self) -> dict[str, torch.Tensor]:
        """Fractions of planning updates (``[P]`` each) since the last ``reset_statistics``, and their count."""
        updates = self.planning_counts[:, 0]
        safe = updates.clamp(min=1.0)
        stats = {"planning_updates": updates.cpu().clone()}
        for column, counter in enumerate(PLANNING_COUNTERS[1:], start=1):
            stats[f"fraction_{counter}"] = (self.planning_counts[:, column] / safe).cpu()
        outputs = self.model_output_counts[:, 0].clamp(min=1.0)
        stats["fraction_model_outputs_hallucinated"] = (self.model_output_counts[:, 1] / outputs).cpu()
        return stats

    def reset_statistics(self) -> None:
        self.planning_counts.zero_()
        self.model_output_counts.zero_()

    # ------------------------------------------------------------------ loop hooks and checkpoints
    def parameters_finite(self) -> torch.Tensor:
        finite = torch.ones(self.population_size, dtype=torch.bool, device=self.device)
        for parameter in self.q_net.parameters():
            finite &= torch.isfinite(parameter.detach()).flatten(1).all(dim=1)
        if self.learned_network is not None:
            finite &= self.learned_network.parameters_finite()
        return finite.cpu()

    def freeze(self, members: torch.Tensor) -> None:
        self.frozen |= members.to(self.device).bool()
        if self.learned_network is not None:
            self.learned_network.freeze(members)

    _TENSORS = (
        "replay_obs",
        "replay_next",
        "replay_action",
        "replay_reward",
        "replay_terminated",
        "planning_counts",
        "model_output_counts",
        "frozen",
    )

    def state_dict(self) -> dict[str, Any]:
        return {
            "q_net": {k: v.detach().clone() for k, v in self.q_net.state_dict().items()},
            "target_net": {k: v.detach().clone() for k, v in self.target_net.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "queue": {k: getattr(self.queue, k).clone() for k in ("states", "priority", "simulated", "hallucinated")},
            "replay_cursor": self.replay_cursor,
            "replay_filled": self.replay_filled,
            "generator": self.generator.get_state(),
            **{k: getattr(self, k).clone() for k in self._TENSORS},
            **({"learned_network": self.learned_network.state_dict()} if self.learned_network is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.q_net.load_state_dict(state["q_net"])
        self.target_net.load_state_dict(state["target_net"])
        self.optimizer.load_state_dict(state["optimizer"])
        for key, value in state["queue"].items():
            getattr(self.queue, key).copy_(value)
        self.replay_cursor = int(state["replay_cursor"])
        self.replay_filled = int(state["replay_filled"])
        self.generator.set_state(state["generator"])
        for key in self._TENSORS:
            getattr(self, key).copy_(state[key])
        if self.learned_network is not None:
            self.learned_network.load_state_dict(state["learned_network"])


def make_dyna_fa_for_env(
    env: Any,
    env_name: str,
    population_size: int,
    options: DynaFAOptions,
    seed: int = 0,
    dose: torch.Tensor | None = None,
    learning_rate: torch.Tensor | None = None,
    use_learned: torch.Tensor | None = None,
    planning_members: torch.Tensor | None = None,
) -> DynaFAAgent:
    """A ``DynaFAAgent`` for ``env`` (an instance of ``env_name``, one of ``VECTOR_ENVS``), its model attached.

    ``use_learned`` (``bool[P]``) mixes the model kinds in one population: those members plan with the learned model,
    the others with the perfect one (``options.model`` is then ignored). ``planning_members`` (``bool[P]``) makes the
    other members model-free baselines. ``dose`` and ``learning_rate`` override the options per member.

    Raises:
        ValueError: an env these models do not know, a model kind the env cannot give (a perfect model of an image
            observation), or a bad option.
    """
    check_env_supported(env_name, f"agent 'dyna-fa' (model {options.model!r})")
    spec = env.observation_spec
    if len(spec.shape) != 1:
        raise ValueError(
            f"agent 'dyna-fa' needs vector observations; env {env_name!r} gives shape {spec.shape} "
            "(catcher: observation='vector')"
        )
    obs_dim, num_actions = spec.shape[0], int(env.action_spec.n)
    model: SimulatorModel | LearnedModel | MixedModel | None = None
    network = None
    if use_learned is not None and tuple(use_learned.shape) != (population_size,):
        raise ValueError(f"use_learned must be bool[{population_size}], got shape {tuple(use_learned.shape)}")
    mixed = use_learned is not None and bool(use_learned.any()) and not bool(use_learned.all())
    learned = options.model == "learned" if use_learned is None else bool(use_learned.any())
    if options.planning_steps > 0:
        perfect = SimulatorModel(env_name, env) if (mixed or not learned) else None
        model = perfect
        if learned:
            network = LearnedVectorModel(
                obs_dim,
                num_actions,
                population_size,
                hidden=(options.model_hidden, options.model_hidden),
                learning_rate=options.model_learning_rate,
                seed=seed + 7919,
                device=env.device,
            )
            learned_model = LearnedModel(network)
            model = learned_model
            if mixed:
                assert perfect is not None and use_learned is not None  # made above for a mixed population
                model = MixedModel(perfect, learned_model, use_learned)
    return DynaFAAgent(
        env_name,
        obs_dim,
        num_actions,
        population_size,
        options,
        model=model,
        learned_network=network,
        dose=dose,
        learning_rate=learning_rate,
        geometry=catcher_geometry_of(env) if env_name == "catcher" else None,
        seed=seed,
        device=env.device,
        planning_members=planning_members,
    )


@register_agent(
    "dyna-fa",
    DynaFAOptions,
    "Dyna with a neural Q: one-/multi-step successor/predecessor planning, perfect/learned/injected models",
)
def make_dyna_fa(context: AgentContext, options: DynaFAOptions) -> DynaFAAgent:
    """Registry factory: the run's env must be one of ``VECTOR_ENVS`` (vector observations)."""
    if context.env_name not in VECTOR_ENVS:
        raise ValueError(
            f"agent 'dyna-fa' runs on {', '.join(VECTOR_ENVS)} (its models and hallucination detector); "
            f"got env {context.env_name!r}"
        )
    env = context.env
    if env is None:
        from emphatic_rl.envs import make_env

        env = make_env(context.env_name, num_envs=1, device=context.device)
    return make_dyna_fa_for_env(env, context.env_name, context.population_size, options, seed=context.seed)
