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

Speed. Per step the loop does one forward for all ``P * E`` env copies, vectorised epsilon-greedy, one buffer write,
and per gradient step one gather of ``P`` groups, one target forward, one forward, one backward and one Adam step over
the whole population, with no host sync. Every member's parameters live in one flat ``[P, D]`` tensor (the network's
parameters are views of it), so the per-member gradient clipping is three tensor ops, the optimiser is fused Adam on
one tensor and the target update is one copy. For MLP Q-networks the backward pass is written out (about a dozen
batched matmuls and reductions in place of the autograd graph); other networks (the MinAtar convnet) use autograd.
On CPU, where each tensor op costs microseconds, this is what decides steps per second at small batch sizes.

Backends (``DQNOptions.backend``). ``"torch"``: the batched tensor program above, on any device and network.
``"numba"``: on the CPU, for MLP Q-networks, acting and the whole gradient step (targets, forward, loss, backward,
clipping, Adam) are each one compiled call on the same flat parameters and the same optimiser state
(:mod:`emphatic_rl.agents.deep.dqn_kernels`); the random numbers come from the same generator in the same order, so the
two backends act alike and their updates agree to float32 rounding. ``"auto"`` (default) takes ``"numba"`` where it
applies and ``"torch"`` elsewhere (GPUs, the MinAtar convnet).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from emphatic_rl.agents.base import ActionOutput, Agent
from emphatic_rl.agents.deep import dqn_kernels
from emphatic_rl.agents.deep.options import ReplayOptions
from emphatic_rl.agents.networks import (
    PopulationLinear,
    PopulationMLP,
    flatten_member_parameters_,
    make_population_network,
)
from emphatic_rl.agents.registry import (
    AgentContext,
    check_positive,
    check_switches,
    check_unit_interval,
    register_agent,
)
from emphatic_rl.buffers.trajectory import TrajectoryBuffer, TransitionBatch
from emphatic_rl.envs.base import DiscreteSpec
from emphatic_rl.seeding import stream_seed
from emphatic_rl.validation import check_count

BACKENDS = ("auto", "torch", "numba")


@dataclass(frozen=True)
class DQNOptions(ReplayOptions):
    """Hyperparameters of DQN (defaults reach CartPole's 475 within 100k steps; see
    tests/agents/test_dqn_learning.py). The replay ones are those of ``ReplayOptions``."""

    learning_rate: float = 1e-3
    buffer_size: int = 50_000
    batch_size: int = 128
    target_update_every: int = 500
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    epsilon_decay_steps: int = 10_000
    eval_epsilon: float = 0.0
    hidden: tuple[int, ...] = (128, 128)
    double_q: bool = False
    #: ``"auto"`` (the compiled kernels on CPU for MLP Q-networks, else torch), ``"torch"`` or ``"numba"`` (an error
    #: where it does not apply); see the module docstring
    backend: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; allowed: {', '.join(BACKENDS)}")
        check_positive("learning_rate", self.learning_rate)
        for name in ("target_update_every", "epsilon_decay_steps"):
            check_count(name, getattr(self, name))
        for name in ("epsilon_start", "epsilon_end", "eval_epsilon"):
            check_unit_interval(name, getattr(self, name))
        check_switches(self, ("double_q",))


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
        # One flat [P, D] tensor of parameters per network, the modules' parameters views of it (see the module
        # docstring); the optimiser sees one tensor whose gradient is the flat [P, D] buffer written below.
        self.flat_parameters = flatten_member_parameters_(self.q_network)
        self.target_flat_parameters = flatten_member_parameters_(self.target_network)
        self.flat_parameters.grad = torch.zeros_like(self.flat_parameters)
        self.optimizer = torch.optim.Adam(
            [self.flat_parameters], lr=options.learning_rate, **_fused_adam_if_available(self.device)
        )
        self._mlp = (
            _MLPViews(self.q_network, self.flat_parameters) if isinstance(self.q_network, PopulationMLP) else None
        )
        self._target_mlp = (
            _MLPViews(self.target_network, self.target_flat_parameters)
            if self._mlp is not None and isinstance(self.target_network, PopulationMLP)
            else None
        )
        self._any_frozen = False
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(stream_seed(context.seed, "agent"))
        self.active = torch.ones(self.population_size, dtype=torch.bool, device=self.device)
        self.gradient_updates = 0
        why_not = self._why_not_numba()
        if options.backend == "numba" and why_not is not None:
            raise ValueError(f"agent 'dqn': backend 'numba' cannot run here: {why_not}; use backend 'torch' or 'auto'")
        self.backend = "torch" if options.backend == "torch" or why_not is not None else "numba"
        self._kernels = _KernelPath(self) if self.backend == "numba" else None

    def _why_not_numba(self) -> str | None:
        """Why the compiled kernels cannot run this agent (one phrase), or ``None`` when they can."""
        if self.device.type != "cpu":
            return f"the kernels run on the CPU, not on device {str(self.device)!r}"
        if self._mlp is None:
            return "the kernels cover MLP Q-networks, not the convolutional network of image observations"
        if self.flat_parameters.dtype != torch.float32:
            return f"the kernels run in float32, not {self.flat_parameters.dtype}"
        return None

    # ------------------------------------------------------------------ acting
    def epsilon(self, env_step: int) -> float:
        o = self.options
        fraction = min(1.0, env_step / o.epsilon_decay_steps)
        return o.epsilon_start + fraction * (o.epsilon_end - o.epsilon_start)

    def _q_values(self, obs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._mlp.forward(obs) if self._mlp is not None else self.q_network(obs)

    def _epsilon_greedy(self, obs: torch.Tensor, epsilon: float) -> ActionOutput:
        if self._kernels is not None:
            return self._kernels.act(obs, epsilon)
        greedy = self._q_values(obs).argmax(dim=-1)  # [P, E]
        random_action = torch.randint(self.num_actions, greedy.shape, generator=self.generator, device=self.device)
        explore = torch.rand(greedy.shape, generator=self.generator, device=self.device) < epsilon
        action = torch.where(explore, random_action, greedy)
        # mu(a|s) = eps / A + (1 - eps) [a greedy]: two values, picked in one op
        log_other = math.log(epsilon / self.num_actions) if epsilon > 0 else -math.inf
        log_greedy = math.log(epsilon / self.num_actions + 1.0 - epsilon)
        return ActionOutput(action, torch.where(action == greedy, log_greedy, log_other))

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
    def _sample(self, buffer: TrajectoryBuffer):
        """A batch ``[P, B, ...]`` where member ``p`` sees only its own streams ``p*E ... p*E + E - 1``."""
        return buffer.sample_transitions(self.options.batch_size, self.generator, num_groups=self.population_size)

    def update(self, buffer: TrajectoryBuffer, env_step: int) -> dict[str, torch.Tensor]:
        o = self.options
        metrics: dict[str, torch.Tensor] = {}
        if env_step < o.learning_starts or env_step % o.train_every != 0:
            return metrics
        for _ in range(o.gradient_steps):
            batch = self._sample(buffer)
            if self._kernels is not None:
                member_loss, q_mean = self._kernels.gradient_step(batch)
                self.gradient_updates += 1
                metrics = {"loss": member_loss, "q_mean": q_mean}
                continue
            with torch.no_grad():
                next_value = self._next_value(batch.next_obs)  # [P, B]
                target = torch.add(batch.reward, next_value.masked_fill_(batch.terminated, 0.0), alpha=o.gamma)
            if self._mlp is not None:
                member_loss, q_taken = self._mlp_gradient(batch.obs, batch.action, target)
            else:
                member_loss, q_taken = self._autograd_gradient(batch.obs, batch.action, target)
            self._clip_member_gradients()
            self._adam_step()
            self.gradient_updates += 1
            metrics = {"loss": member_loss, "q_mean": q_taken.mean(dim=1)}
        if env_step % o.target_update_every == 0:
            self.target_flat_parameters.copy_(self.flat_parameters)
        epsilon = torch.full((self.population_size,), self.epsilon(env_step), device=self.device)
        metrics["rollout/exploration_rate"] = epsilon
        return metrics

    def _next_value(self, next_obs: torch.Tensor) -> torch.Tensor:
        """``max_a Q_target(s', a)`` (double Q: ``Q_target(s', argmax_a Q(s', a))``), ``[P, B]``."""
        next_q_target = (
            self._target_mlp.forward(next_obs) if self._target_mlp is not None else self.target_network(next_obs)
        )
        if self.options.double_q:
            next_action = self._q_values(next_obs).argmax(dim=-1, keepdim=True)
            return next_q_target.gather(-1, next_action).squeeze(-1)
        return next_q_target.amax(dim=-1)

    def _mlp_gradient(self, obs: torch.Tensor, action: torch.Tensor, target: torch.Tensor):
        """Forward, Huber loss and the written-out backward into ``flat_parameters.grad``; ``(loss [P], q [P, B])``."""
        mlp, grad = self._mlp, self.flat_parameters.grad
        assert mlp is not None and grad is not None  # an MLP Q-network; the gradient buffer is made in __init__
        with torch.no_grad():
            q_all, activations = mlp.forward(obs, keep=True)
            index = action.long().unsqueeze(-1)
            q_taken = q_all.gather(-1, index).squeeze(-1)  # [P, B]
            diff = q_taken - target
            member_loss = nn.functional.smooth_l1_loss(q_taken, target, reduction="none").mean(dim=1)
            # d(sum_p mean_b huber(diff))/d q_taken = clamp(diff, -1, 1) / B, scattered to the taken actions
            grad_q = torch.zeros_like(q_all).scatter_(
                -1, index, diff.clamp_(-1.0, 1.0).div_(diff.shape[1]).unsqueeze(-1)
            )
            mlp.backward(activations, grad_q, grad)
        return member_loss, q_taken

    def _autograd_gradient(self, obs: torch.Tensor, action: torch.Tensor, target: torch.Tensor):
        """The same through autograd (any network); gradients land in ``flat_parameters.grad``."""
        q_taken = self.q_network(obs).gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
        member_loss = nn.functional.smooth_l1_loss(q_taken, target, reduction="none").mean(dim=1)  # [P]
        parameters = list(self.q_network.parameters())
        grads = torch.autograd.grad(member_loss.sum(), parameters)
        P = self.population_size
        torch.cat([g.reshape(P, -1) for g in grads], dim=1, out=self.flat_parameters.grad)
        return member_loss.detach(), q_taken.detach()

    def _adam_step(self) -> None:
        """``optimizer.step()``; with fused Adam, after the first step, the fused kernel is called directly on the
        optimiser's own state (the same update without ``Optimizer.step``'s per-call bookkeeping, which costs more
        than the kernel at these sizes)."""
        state = self.optimizer.state.get(self.flat_parameters)
        group = self.optimizer.param_groups[0]
        if not group.get("fused") or not state or group["amsgrad"] or group["weight_decay"] or group["maximize"]:
            self.optimizer.step()
            return
        beta1, beta2 = group["betas"]
        grad = self.flat_parameters.grad
        assert grad is not None  # made in __init__, written in place by every update
        state["step"].add_(1)
        torch._fused_adam_(
            [self.flat_parameters],
            [grad],
            [state["exp_avg"]],
            [state["exp_avg_sq"]],
            [],
            [state["step"]],
            amsgrad=False,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=0.0,
            eps=group["eps"],
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )

    def _clip_member_gradients(self) -> None:
        """Clip each member's gradient norm to ``max_grad_norm`` on its own; frozen members get zero gradients."""
        grad = self.flat_parameters.grad
        assert grad is not None  # made in __init__, written in place by every update
        norm = torch.linalg.vector_norm(grad, dim=1, keepdim=True)  # [P, 1]
        grad.mul_(norm.add_(1e-6).reciprocal_().mul_(self.options.max_grad_norm).clamp_(max=1.0))
        if self._any_frozen:
            grad.masked_fill_(~self.active.unsqueeze(1), 0.0)

    def parameters_finite(self) -> torch.Tensor:
        return torch.isfinite(self.flat_parameters).all(dim=1)

    def freeze(self, members: torch.Tensor) -> None:
        """Diverged members keep their parameters and get zero gradients from now on; their Adam moments are zeroed
        so that Adam does not keep moving them."""
        members = members.to(self.device)
        self.active &= ~members
        self._any_frozen = bool((~self.active).any())
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
        # a copy: torch's Optimizer.load_state_dict keeps the given moment tensors, which an in-memory state (another
        # live agent's) would then share
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.generator.set_state(state["generator"])
        self.active.copy_(state["active"])
        self._any_frozen = bool((~self.active).any())
        self.gradient_updates = state["gradient_updates"]


def _fused_adam_if_available(device: torch.device) -> dict[str, Any]:
    """``fused=True`` (one kernel for the whole update) where this torch has it for ``device``."""
    try:
        probe = torch.zeros(1, 1, device=device)
        probe.grad = torch.zeros_like(probe)
        torch.optim.Adam([probe], fused=True).step()
    except (RuntimeError, TypeError):
        return {}
    return {"fused": True}


class _MLPViews:
    """A ``PopulationMLP``'s layers as ``(weight, bias)`` views of its flat parameters, with a written-out backward.

    ``forward(obs [P, B, *obs_shape]) -> q [P, B, A]``; with ``keep=True`` also the inputs of every layer, which
    ``backward`` needs. ``backward(activations, grad_q, grad_flat)`` writes ``d loss / d parameters`` into
    ``grad_flat [P, D]`` (the same layout as the parameters), overwriting it.
    """

    def __init__(self, network: PopulationMLP, flat: torch.Tensor) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor, int, int]] = []
        offset = 0
        for layer in network.layers:
            assert isinstance(layer, PopulationLinear)
            weight, bias = layer.weight.data, layer.bias.data
            assert weight.data_ptr() == flat[:, offset:].data_ptr(), "parameters are not views of the flat tensor"
            self.layers.append((weight, bias, offset, offset + weight[0].numel()))
            offset += weight[0].numel() + bias[0].numel()

    def forward(self, obs: torch.Tensor, keep: bool = False):
        x = obs.reshape(*obs.shape[:2], -1)
        if x.dtype != torch.float32:
            x = x.float()
        activations = [x]
        last = len(self.layers) - 1
        for index, (weight, bias, _, _) in enumerate(self.layers):
            x = torch.baddbmm(bias, x, weight)
            if index < last:
                x = x.relu_()
            activations.append(x)
        return (x, activations) if keep else x

    def backward(self, activations: list[torch.Tensor], grad_q: torch.Tensor, grad_flat: torch.Tensor) -> None:
        P = grad_flat.shape[0]
        grad = grad_q
        for index in range(len(self.layers) - 1, -1, -1):
            weight, bias, weight_at, bias_at = self.layers[index]
            inputs = activations[index]
            torch.bmm(inputs.transpose(1, 2), grad, out=grad_flat[:, weight_at:bias_at].view(weight.shape))
            torch.sum(grad, dim=1, keepdim=True, out=grad_flat[:, bias_at : bias_at + bias[0].numel()].view(P, 1, -1))
            if index > 0:  # through the layer and the ReLU before it (its output is this layer's input)
                grad = torch.ops.aten.threshold_backward(torch.bmm(grad, weight.transpose(1, 2)), inputs, 0)


class _KernelPath:
    """The ``"numba"`` backend of a :class:`DQN`: its acting and gradient step as compiled calls
    (:mod:`emphatic_rl.agents.deep.dqn_kernels`) on numpy views of the agent's own tensors (flat parameters, gradient,
    activity flags, and the optimiser's moments and step count, read at every step so that a restored optimiser
    state is used)."""

    def __init__(self, agent: DQN) -> None:
        self.agent = agent
        dqn_kernels.limit_blas_threads(torch.get_num_threads())  # the training's thread count (TrainConfig.num_threads)
        mlp, grad = agent._mlp, agent.flat_parameters.grad
        assert mlp is not None and grad is not None
        widths = [weight.shape[1] for weight, _, _, _ in mlp.layers] + [agent.num_actions]  # weight: [P, in, out]
        self.sizes = np.array(widths, dtype=np.int64)
        self.params = agent.flat_parameters.detach().numpy()
        self.target_params = agent.target_flat_parameters.detach().numpy()
        self.grad = grad.numpy()
        self.active = agent.active.numpy()
        self.work = np.empty(dqn_kernels.gradient_workspace_size(self.sizes, agent.options.batch_size), np.float32)
        self.act_work = np.empty(0, np.float32)
        self.act_rows = 0

    def act(self, obs: torch.Tensor, epsilon: float) -> ActionOutput:
        agent = self.agent
        P, E = obs.shape[:2]
        x = _float32_array(obs, P, E)
        # the same draws, in the same order, as the torch path
        random_action = torch.randint(agent.num_actions, (P, E), generator=agent.generator)
        explore_draw = torch.rand((P, E), generator=agent.generator)
        if E > self.act_rows:  # scratch for E rows (the training and evaluation envs may differ)
            self.act_work = np.empty(dqn_kernels.workspace_size(self.sizes, E), np.float32)
            self.act_rows = E
        log_other = math.log(epsilon / agent.num_actions) if epsilon > 0 else -math.inf
        log_greedy = math.log(epsilon / agent.num_actions + 1.0 - epsilon)
        action = np.empty((P, E), np.int64)
        log_prob = np.empty((P, E), np.float32)
        dqn_kernels.act_epsilon_greedy(
            self.params,
            self.sizes,
            x,
            np.float32(epsilon),
            explore_draw.numpy(),
            random_action.numpy(),
            log_greedy,
            log_other,
            self.act_work,
            action,
            log_prob,
        )
        return ActionOutput(torch.from_numpy(action), torch.from_numpy(log_prob))

    def gradient_step(self, batch: TransitionBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """One update of every member from ``batch`` (``[P, B, ...]``); returns ``(loss [P], q_mean [P])``."""
        agent, o = self.agent, self.agent.options
        optimizer = agent.optimizer
        state = optimizer.state[agent.flat_parameters]
        if not state:  # Adam's lazy initialisation, as torch.optim.Adam does it (checkpoints stay loadable)
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(agent.flat_parameters, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(agent.flat_parameters, memory_format=torch.preserve_format)
        group = optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        P, B = batch.action.shape[:2]
        loss = np.empty(P, np.float32)
        q_mean = np.empty(P, np.float32)
        dqn_kernels.gradient_step(
            self.params,
            self.target_params,
            self.grad,
            state["exp_avg"].numpy(),
            state["exp_avg_sq"].numpy(),
            state["step"].view(1).numpy(),
            self.active,
            self.sizes,
            _float32_array(batch.obs, P, B),
            np.ascontiguousarray(batch.action.numpy(), np.int64),
            np.ascontiguousarray(batch.reward.numpy(), np.float32),
            np.ascontiguousarray(batch.terminated.numpy()),
            _float32_array(batch.next_obs, P, B),
            o.gamma,
            o.double_q,
            o.max_grad_norm,
            float(group["lr"]),
            float(beta1),
            float(beta2),
            float(group["eps"]),
            self.work,
            loss,
            q_mean,
        )
        return torch.from_numpy(loss), torch.from_numpy(q_mean)


def _float32_array(x: torch.Tensor, P: int, rows: int) -> np.ndarray:
    """``x [P, rows, *shape]`` (a CPU tensor) as a C-contiguous float32 numpy array ``[P, rows, prod(shape)]``, a
    view where it can be."""
    array = x.numpy() if x.dtype == torch.float32 else x.float().numpy()
    return np.ascontiguousarray(array.reshape(P, rows, -1))


@register_agent("dqn", DQNOptions, "DQN with a target network, epsilon-greedy behaviour and uniform replay")
def make_dqn(context: AgentContext, options: DQNOptions) -> DQN:
    return DQN(context, options)
