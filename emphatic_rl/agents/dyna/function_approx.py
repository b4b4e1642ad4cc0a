"""Dyna with function approximation: the four planning variants of "Hallucinating Value" (Jafferjee, Imani, Talvitie,
White, Bowling 2020; JAIR 2024) with a neural Q, on vector-state envs (CartPole, Catcher, Puddle World).

The tabular agent (``agents.dyna.tabular``) with its tables replaced by networks. Our reading, each choice
ours where the paper is silent:

Value function. A population of ``P`` Q-networks (:class:`~emphatic_rl.agents.networks.PopulationMLP`, 2 x
``hidden`` ReLU), one per member, and a Polyak-averaged target copy (``target_tau`` per real step) that every
bootstrap reads. Value updates are Adam steps per member (the step size ``learning_rate`` may differ per member) on
the mean squared TD error of a batch, each member's gradient clipped to norm ``max_grad_norm``.

Each real step (the library's ``Runner``): act epsilon-greedily; the loop stores the transition in its
``TrajectoryBuffer``, which is the replay (each member's own streams, the last ``replay_size`` transitions); a
*direct* update on ``replay_batch`` replayed real transitions; train the learned model (if any); then
``planning_steps`` planning steps of ``planning_batch`` simulated updates each; then the target update. Nothing is
learned before ``warmup`` real transitions. ``planning_steps = 0`` (or ``plans = false`` for some members) is the
model-free baseline: the same agent with the same real budget (it is DQN-style Q-learning with replay).

The planning steps of one real step draw their search control, the model's answers and their targets in one
batch of ``planning_steps x planning_batch``: the same number and size of value updates as drawing step by step, in
a few kernels. (So a simulated predecessor that the one-step predecessor variant pushes can be popped from the next
real step on, and the multi-step variants' greedy checks use the network before this real step's planning updates.)
How those updates reach the optimizer is ``planning_update``:

- ``mixed`` (the default): one Adam step per real step for every member on the direct batch and the planning
  batches together (the planning drawn with the network before the step). A member's loss is the mean over its
  batches (the direct one and, if it plans, each planning step's) of each batch's mean squared TD error, so the
  planning updates add information to each step rather than more steps, as model-based agents that mix simulated
  data into the minibatch do (MBPO, Janner et al. 2019). Each member takes exactly one Adam step per real step, so
  a model-free member is plain DQN-style Q-learning with Adam. The Dyna-FA studies use this one
  (``experiments/results/dyna-fa/REPORT.md``).
- ``separate`` (this agent's first version): after the direct update's Adam step, one Adam step per planning step
  on its slice, drawn with the network as it is after the direct step. A member that does not plan keeps its
  parameters through the planning steps, but its Adam moments decay there as ``torch.optim.Adam``'s would with a
  zero gradient, so its optimizer is not plain Adam. With a perfect model on CartPole the one-step variants learned
  measurably more slowly than model-free this way (``experiments/results/dyna-fa/separate-updates/REPORT.md``).

The gradient of the 2-layer network is written by hand and its parameters are one flat ``[P, N]`` tensor, so
clipping and Adam are one pass each (tested against autograd and ``torch.optim.Adam``).

Search control, from real states: the successor variants draw real ``(s, a)`` pairs uniformly from the replay;
the predecessor variants pop the ``planning_steps x planning_batch`` highest-priority states of a queue of
``queue_size`` entries (entries below ``priority_threshold`` are replaced by real states drawn uniformly from the
replay). Each real transition ``(S_t, A_t, R, S_{t+1})`` pushes the state it *reached*, ``S_{t+1}``, with its
``|delta_t|`` (target network): prioritized sweeping (Moore and Atkeson 1993; Sutton and Barto 2018, Sec. 8.4) queues
the real pair ``(S_t, A_t)`` with that priority and updates it first, and here the direct update is a replayed
batch, not the newest transition, so the predecessor of ``S_{t+1}`` under ``A_t`` *is* that real transition, and the
terminal ones are planned from too (CartPole's only signal). ``predecessor_start = "state"`` pushes ``S_t`` instead
(this agent's first version: no planning update ever reaches a terminal transition; on CartPole it made the
predecessor variants slower than model-free, ``experiments/results/dyna-fa/separate-updates/REPORT.md``). With
``search_control = "uniform"`` (an ablation, not the paper's algorithm) the predecessor variants draw those real
states uniformly from the replay instead, and the queue is not used. The perfect backward model draws the
predecessor's action uniformly among the valid ones; ``predecessor_action = "behaviour"`` weights each by the
behaviour policy's probability of it at its own predecessor (the learned backward model learns ``p(a | s')`` from
the data, so it needs no such switch); ``predecessor_action = "replayed"`` (with uniform search control, an ablation)
takes the action of the replayed transition that reached the real state, on the first backward step, so the
predecessor's actions follow the data as a successor variant's do. Conversely ``successor_action = "uniform"`` (an
ablation) draws the successor variants' planning action uniformly instead of taking the replayed one, so their
actions follow the predecessor variants' distribution. ``predecessor_state = "replayed"`` (with the replayed action)
goes further: the first backward step returns the replayed transition's own ``S_t``, so that planning update is
exactly the real transition's (a control for everything but the model: the variant's update path, weights and
settings with the data's own predecessors).

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

Models (``agents.dyna.vector_models``, from the env's declared ``vector_dynamics()``): ``model = "perfect"`` is the
true simulator (forward, and inverted for the predecessor variants), ``"learned"`` a neural forward/backward model
per member trained on ``model_batch`` replayed real transitions per real step (only the direction the variant plans
with). ``dose`` (one value in ``[0, 1]`` per member allowed) injects error into either: each model output state is,
with probability ``dose``, replaced by a state the real dynamics cannot produce.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from emphatic_rl.agents.base import ActionOutput, Agent
from emphatic_rl.agents.dyna.learned_models import LearnedVectorModel
from emphatic_rl.agents.dyna.tabular import PLANNING_COUNTERS, VARIANTS, _as_member_tensor
from emphatic_rl.agents.dyna.vector_models import (
    MODEL_KINDS,
    LearnedModel,
    MixedModel,
    SimulatorModel,
    VectorBackward,
    VectorForward,
    inject_hallucinations,
    vector_dynamics_of,
)
from emphatic_rl.agents.networks import PopulationLinear, PopulationMLP, flatten_member_parameters_
from emphatic_rl.agents.registry import AgentContext, register_agent
from emphatic_rl.seeding import stream_seed

if TYPE_CHECKING:
    from emphatic_rl.buffers.trajectory import TrajectoryBuffer, TransitionBatch
    from emphatic_rl.envs.vector_dynamics import VectorDynamics

__all__ = [
    "DynaFAOptions",
    "DynaFAAgent",
    "make_dyna_fa_for_env",
    "PLANNING_UPDATES",
    "PREDECESSOR_ACTIONS",
    "PREDECESSOR_STATES",
    "SEARCH_CONTROLS",
    "SUCCESSOR_ACTIONS",
]

#: how the predecessor variants pick the real states they plan back from: the priority queue (the paper's, default)
#: or uniformly from the replay (an ablation)
SEARCH_CONTROLS = ("queue", "uniform")
#: which state of a real transition ``(S_t, A_t, R, S_{t+1})`` the predecessor variants plan back from: the state
#: it reached (``S_{t+1}``, the default: its predecessor under ``A_t`` is the real transition itself, terminal ones
#: included, as prioritized sweeping queues the real pair) or the state it left (``S_t``, this agent's first version)
PREDECESSOR_STARTS = ("next-state", "state")
#: how the perfect backward model picks the predecessor's action among the valid ones: uniformly, with the
#: behaviour policy's probability of that action at that predecessor, or (with ``search_control = "uniform"``) the
#: action of the replayed real transition that reached the queried state, on the first backward step (an ablation)
PREDECESSOR_ACTIONS = ("uniform", "behaviour", "replayed")
#: the predecessor's state on the first backward step: the backward model's (the default) or, with
#: ``predecessor_action = "replayed"``, the replayed transition's own ``S_t`` (a control: the planning update is then
#: exactly that real transition's, through the variant's own update path)
PREDECESSOR_STATES = ("model", "replayed")
#: the action of a successor variant's planning update at its replayed real state: the replayed transition's (Dyna-Q's
#: search control, the default) or drawn uniformly (an ablation: the predecessor variants' action distribution)
SUCCESSOR_ACTIONS = ("replayed", "uniform")
#: how the planning updates reach the optimizer: one Adam step per real step on the direct batch and every planning
#: step's batch together, each batch's loss weighted equally (``mixed``, the default) or one Adam step per planning
#: step after the direct update's (``separate``, this agent's first version)
PLANNING_UPDATES = ("mixed", "separate")


class _Updates(NamedTuple):
    """One batch of value updates: ``Q(obs, action)`` toward ``target``, all ``[P, B, ...]``; ``weight [P, B]``
    (``None``: every update counts) marks the valid ones."""

    obs: torch.Tensor
    action: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor | None


#: what a variant's planning hands back: one batch of updates per planning step, and what to do with their TD errors
_Planned = tuple[list[_Updates], Callable[[list[torch.Tensor]], None] | None]


class _Replayed(NamedTuple):
    """The replayed real transitions whose next states a predecessor variant plans back from: their actions
    ``int64[P, B]`` and (``predecessor_state = "replayed"``) their states ``[P, B, D]``, else ``None``."""

    action: torch.Tensor
    state: torch.Tensor | None


@dataclass(frozen=True)
class DynaFAOptions:
    """Options of the ``dyna-fa`` agent (CLI: ``--agent dyna-fa --set variant=multi-step-predecessor``).

    - ``variant``: one of ``VARIANTS``; ``planning_steps`` (>= 0; 0: the model-free baseline), ``planning_batch``
      (simulated updates per planning step), ``rollout_length`` (``n`` >= 1 of the multi-step variants).
    - ``model``: ``perfect`` (the env's true simulator) or ``learned``; ``dose``: injected-error probability in
      ``[0, 1]`` per model output (a number, or one value per member); ``plans``: whether a member plans (a bool, or
      one per member; the others are model-free baselines with the same real budget).
    - ``learning_rate`` (Adam, > 0; number or per member), ``gamma`` in ``[0, 1]``, ``epsilon`` in ``[0, 1]``
      (number or per member), ``hidden`` (width of the Q-network's 2 layers), ``target_tau`` in ``(0, 1]`` (the
      target network's Polyak step per real step; number or per member), ``max_grad_norm`` (> 0).
    - ``replay_size`` (real transitions kept per member), ``replay_batch`` (direct update batch), ``warmup`` (real
      transitions before learning starts), ``queue_size``, ``priority_threshold`` (>= 0), ``search_control``
      (``queue``, the default, or ``uniform``: how the predecessor variants pick the states they plan back from),
      ``predecessor_start`` (``next-state``, the default, or ``state``: which state of a real transition enters the
      queue), ``predecessor_action`` (``uniform``, the default, ``behaviour``, or ``replayed`` with
      ``search_control = "uniform"``: the perfect backward model's action), ``predecessor_state`` (``model``, the
      default, or ``replayed`` with ``predecessor_action = "replayed"``: the first backward step returns the replayed
      transition itself, a control), ``successor_action`` (``replayed``, the
      default, or ``uniform``: the action of a successor variant's planning update),
      ``planning_update`` (``mixed``, the default: one Adam step per real step on the direct and planning batches
      together, each batch weighted equally, or ``separate``: one Adam step per planning step after the direct
      update's).
    - ``model_hidden``, ``model_learning_rate``, ``model_batch``, ``model_train_steps``: the learned model's.
    """

    variant: str = "one-step-successor"
    planning_steps: int = 5
    planning_batch: int = 16
    rollout_length: int = 3
    model: str = "perfect"
    dose: float | tuple[float, ...] = 0.0
    plans: bool | tuple[bool, ...] = True
    learning_rate: float | tuple[float, ...] = 1e-3
    gamma: float = 0.99
    epsilon: float | tuple[float, ...] = 0.1
    hidden: int = 32
    target_tau: float | tuple[float, ...] = 0.05
    max_grad_norm: float = 10.0
    replay_size: int = 10_000
    replay_batch: int = 32
    warmup: int = 100
    queue_size: int = 256
    priority_threshold: float = 1e-3
    search_control: str = "queue"
    predecessor_start: str = "next-state"
    predecessor_action: str = "uniform"
    predecessor_state: str = "model"
    successor_action: str = "replayed"
    planning_update: str = "mixed"
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
        if self.planning_batch * max(self.planning_steps, 1) > self.queue_size:
            raise ValueError(
                f"planning_steps x planning_batch ({self.planning_steps} x {self.planning_batch}) must be <= "
                f"queue_size ({self.queue_size}): the predecessor variants pop one step's worth of states at once"
            )
        _as_member_flags("plans", self.plans, None)
        _as_member_tensor("dose", self.dose, None, 0.0, 1.0)
        _as_member_tensor("epsilon", self.epsilon, None, 0.0, 1.0)
        _as_member_tensor("learning_rate", self.learning_rate, None, 0.0, math.inf, low_open=True)
        _as_member_tensor("gamma", self.gamma, 1, 0.0, 1.0)
        _as_member_tensor("target_tau", self.target_tau, None, 0.0, 1.0, low_open=True)
        for key in ("max_grad_norm", "model_learning_rate"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf):
                raise ValueError(f"{key} must be > 0, got {value!r}")
        if self.search_control not in SEARCH_CONTROLS:
            raise ValueError(f"search_control must be one of {', '.join(SEARCH_CONTROLS)}; got {self.search_control!r}")
        if self.predecessor_start not in PREDECESSOR_STARTS:
            raise ValueError(
                f"predecessor_start must be one of {', '.join(PREDECESSOR_STARTS)}; got {self.predecessor_start!r}"
            )
        if self.predecessor_action not in PREDECESSOR_ACTIONS:
            raise ValueError(
                f"predecessor_action must be one of {', '.join(PREDECESSOR_ACTIONS)}; got {self.predecessor_action!r}"
            )
        if self.predecessor_action == "replayed" and (
            self.search_control != "uniform" or self.predecessor_start != "next-state"
        ):
            raise ValueError(
                'predecessor_action = "replayed" needs search_control = "uniform" and predecessor_start = "next-state" '
                "(the replayed transition's action is known only for the real state it reached, not for a queued one); "
                f"got search_control={self.search_control!r}, predecessor_start={self.predecessor_start!r}"
            )
        if self.predecessor_state not in PREDECESSOR_STATES:
            raise ValueError(
                f"predecessor_state must be one of {', '.join(PREDECESSOR_STATES)}; got {self.predecessor_state!r}"
            )
        if self.predecessor_state == "replayed" and self.predecessor_action != "replayed":
            raise ValueError(
                'predecessor_state = "replayed" needs predecessor_action = "replayed" (a replayed state goes with its '
                f"action); got predecessor_action={self.predecessor_action!r}"
            )
        if self.successor_action not in SUCCESSOR_ACTIONS:
            raise ValueError(
                f"successor_action must be one of {', '.join(SUCCESSOR_ACTIONS)}; got {self.successor_action!r}"
            )
        if self.planning_update not in PLANNING_UPDATES:
            raise ValueError(
                f"planning_update must be one of {', '.join(PLANNING_UPDATES)}; got {self.planning_update!r}"
            )
        if not (isinstance(self.priority_threshold, (int, float)) and self.priority_threshold >= 0):
            raise ValueError(f"priority_threshold must be >= 0, got {self.priority_threshold!r}")
        for key in ("dose", "epsilon", "learning_rate", "plans", "target_tau"):
            value = getattr(self, key)
            if isinstance(value, list):
                object.__setattr__(self, key, tuple(value))


def _as_member_flags(
    name: str, value: bool | tuple[bool, ...] | list[bool], population_size: int | None
) -> torch.Tensor:
    """A flag as ``bool[P]`` (one bool or one per member), or one clear error (``population_size=None``: any count)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must be true/false or a list of them (one per member), got {value!r}")
    if population_size is not None and len(values) not in (1, population_size):
        raise ValueError(f"{name} must be one flag or one per member ({population_size}), got {len(values)}")
    flags = torch.tensor(values, dtype=torch.bool)
    return flags.expand(population_size).clone() if population_size is not None and len(values) == 1 else flags


def _layer_views(module: PopulationMLP) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(weight [P, in, out], bias [P, 1, out])`` of each layer, as plain tensors (views of the flat parameters)."""
    layers: list[tuple[torch.Tensor, torch.Tensor]] = []
    for layer in module.layers:
        assert isinstance(layer, PopulationLinear)
        layers.append((layer.weight.detach(), layer.bias.detach()))
    return layers


def _mlp(layers: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    """The population MLP's forward pass on ``x [P, B, D]`` without ``nn.Module`` dispatch (no gradient)."""
    last = len(layers) - 1
    for index, (weight, bias) in enumerate(layers):
        x = torch.baddbmm(bias, x, weight)
        if index < last:
            x = x.relu_()
    return x


class _PopulationAdam:
    """Adam (Kingma & Ba; PyTorch's defaults) over the flat parameters ``[P, N]`` of a population with a step size per
    member, ``lr: [P]`` (``torch.optim.Adam`` takes one step size for all), each member's gradient first clipped to
    norm ``max_norm`` on its own: a dozen kernels per step over all layers at once.

    The second moment is kept at least 1e-35 (a normal float32: once a weight's gradient stays 0, as a dead ReLU
    unit's does, its moment would decay into denormal numbers, whose square roots cost a hundred times more on CPU);
    that changes no float32 update (``sqrt(1e-35 / c2)`` is below ``eps``'s rounding)."""

    def __init__(
        self, flat: torch.Tensor, lr: torch.Tensor, betas=(0.9, 0.999), eps: float = 1e-8, max_norm: float = math.inf
    ):
        self.flat = flat
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.max_norm = float(max_norm)
        self.step_count = 0
        self.m = torch.zeros_like(flat)
        self.v = torch.zeros_like(flat)

    @torch.no_grad()
    def step(self, grad: torch.Tensor, active: torch.Tensor) -> None:
        """Clip ``grad [P, N]`` per member (in place), then one Adam step of every member with ``active[p]`` (the
        others keep their parameters, and their moments decay as ``torch.optim.Adam``'s would with a zero
        gradient)."""
        self.step_count += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.step_count, 1 - b2**self.step_count
        if math.isfinite(self.max_norm):
            norm = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
            grad.mul_((self.max_norm / (norm + 1e-6)).clamp_(max=1.0).mul_(active.unsqueeze(1)))
        else:
            grad.mul_(active.unsqueeze(1))
        self.m.lerp_(grad, 1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2).clamp_(min=1e-35)
        denom = self.v.sqrt().mul_(1.0 / math.sqrt(c2)).add_(self.eps)
        self.flat.addcdiv_(self.m * ((self.lr * active) / c1).unsqueeze(1), denom, value=-1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "m": self.m.clone(), "v": self.v.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.m.copy_(state["m"])
        self.v.copy_(state["v"])


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

    The loop's :class:`~emphatic_rl.buffers.trajectory.TrajectoryBuffer` is the replay: :meth:`update` reads the
    newest real step of every stream from it and draws the direct updates' and the planning starts' real
    transitions from the member's own streams (``buffer_capacity`` rows: the last ``replay_size`` transitions).

    Args:
        env_name: the env's registered name (for messages).
        obs_dim: ``D``; ``num_actions``: ``A``; ``population_size``: ``P``.
        options: ``DynaFAOptions``.
        model: a ``SimulatorModel`` or ``LearnedModel`` (``None`` only with ``planning_steps = 0``).
        learned_network: the ``LearnedVectorModel`` behind a ``LearnedModel`` (trained by the agent).
        dose: optional per-member override ``float32[P]``.
        learning_rate: optional per-member override ``float32[P]``.
        epsilon: optional per-member override ``float32[P]``.
        planning_members: ``bool[P]``, the members that plan (default: ``options.plans``); the others are
            model-free baselines inside the same population (same real budget, same direct updates).
        dynamics: the env's :class:`~emphatic_rl.envs.vector_dynamics.VectorDynamics` (the hallucination detector
            and the injected error); ``None`` only with ``planning_steps = 0``.
        seed: the agent's generator seed (exploration, replay, models' draws); the Q-networks are initialised from
            the ``value_network`` stream of the same seed.
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
        dynamics: VectorDynamics | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        planning_members: torch.Tensor | None = None,
    ) -> None:
        if options.planning_steps > 0 and (model is None or dynamics is None):
            raise ValueError(
                f"variant {options.variant!r} with planning_steps > 0 needs a model and the env's dynamics"
            )
        self.env_name = env_name
        self.options = options
        self.device = torch.device(device)
        self.population_size = p = population_size
        self.obs_dim, self.num_actions = obs_dim, num_actions
        self.variant = options.variant
        self.gamma = float(options.gamma)
        self.dynamics = dynamics
        self.model = model
        self.learned_network = learned_network
        self.dose = _as_member_tensor("dose", options.dose if dose is None else dose, p, 0.0, 1.0).to(self.device)
        self._injects = bool((self.dose > 0).any())
        self.epsilon = _as_member_tensor("epsilon", options.epsilon if epsilon is None else epsilon, p, 0.0, 1.0).to(
            self.device
        )
        lr = _as_member_tensor(
            "learning_rate", options.learning_rate if learning_rate is None else learning_rate, p, 0.0, math.inf, True
        ).to(self.device)
        #: the target network's Polyak step per member ``[P, 1]``
        self.target_tau = (
            _as_member_tensor("target_tau", options.target_tau, p, 0.0, 1.0, True).to(self.device).unsqueeze(1)
        )
        #: per member, the mean over the latest replayed batch of ``max_a Q_target(S', a)`` (the bootstrap value of
        #: the direct update; 0 before learning starts): the study's instrument of value divergence
        self.replay_max_q = torch.zeros(p, device=self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(int(seed), "value_network"))
            self.q_net = PopulationMLP(p, obs_dim, num_actions, (options.hidden, options.hidden)).to(self.device)
        self.target_net = copy.deepcopy(self.q_net)
        for parameter in self.target_net.parameters():
            parameter.requires_grad_(False)
        self.q_flat = flatten_member_parameters_(self.q_net)
        self.target_flat = flatten_member_parameters_(self.target_net)
        self._layers = _layer_views(self.q_net)
        self._target_layers = _layer_views(self.target_net)
        self.grad_flat = torch.zeros_like(self.q_flat)
        self.optimizer = _PopulationAdam(self.q_flat, lr, max_norm=options.max_grad_norm)
        self.members = torch.arange(p, device=self.device)
        #: time rows of the loop's buffer for one env copy per member (``make_dyna_fa`` sizes it for the run)
        self.buffer_capacity = options.replay_size
        self.queue = _Queue(p, options.queue_size, obs_dim, self.device)
        self.planning_counts = torch.zeros(p, len(PLANNING_COUNTERS), device=self.device)
        self.model_output_counts = torch.zeros(p, 2, device=self.device)
        self.frozen = torch.zeros(p, dtype=torch.bool, device=self.device)
        self.model_direction = ("forward",) if "successor" in self.variant else ("backward",)
        if planning_members is None:
            planning_members = _as_member_flags("plans", options.plans, p)
        if tuple(planning_members.shape) != (p,):
            raise ValueError(f"planning_members must be bool[{p}], got shape {tuple(planning_members.shape)}")
        self.planning_members = planning_members.bool().to(self.device)
        self._plans = options.planning_steps > 0 and bool(self.planning_members.any())
        self._refresh_masks()

    def _refresh_masks(self) -> None:
        self._learning = ~self.frozen
        self._planning = ~self.frozen & self.planning_members
        self._planning_f = self._planning.float().unsqueeze(1)  # [P, 1]

    # ------------------------------------------------------------------ acting
    def _q(self, obs: torch.Tensor, target: bool = False) -> torch.Tensor:
        """``obs [P, B, D]`` -> ``Q [P, B, A]`` (no gradient)."""
        with torch.no_grad():
            return _mlp(self._target_layers if target else self._layers, obs)

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
    def _sample(self, buffer: TrajectoryBuffer, count: int) -> TransitionBatch:
        """``count`` real transitions per member, uniform over the member's stored ones: leading dims ``[P, count]``."""
        return buffer.sample_transitions(count, self.generator, num_groups=self.population_size)

    def update(self, buffer: TrajectoryBuffer, env_step: int) -> dict[str, torch.Tensor]:
        """One real step of every member: the newest row of ``buffer`` (streams member-major: member ``p`` owns
        streams ``p*E ... p*E + E - 1``; ``next_obs`` is the true ``S_{t+1}``) enters the predecessor queue, then
        the direct update on ``replay_batch`` transitions replayed from ``buffer``, the learned model's training,
        planning and the target update (``mixed``: the direct and the planning updates make one Adam step after
        planning has drawn its batches; ``separate``: the direct step comes first, then one per planning step).
        Returns metrics ``[P]``: ``td_error`` (the direct batch's) and :meth:`planning_statistics`."""
        p, d = self.population_size, self.obs_dim
        step = buffer.latest()
        e = buffer.num_streams // p
        if "predecessor" in self.variant:
            obs = step.obs.reshape(p, e, d).float()
            both = self._q(torch.cat((obs, step.next_obs.reshape(p, e, d).float()), dim=1), target=True)
            action = step.action.reshape(p, e, 1).long()
            not_done = (~step.terminated.reshape(p, e)).float()
            target = step.reward.reshape(p, e).float() + self.gamma * not_done * both[:, e:].max(-1).values
            delta = (target - both[:, :e].gather(-1, action).squeeze(-1)).abs()
            no = torch.zeros(p, e, dtype=torch.bool, device=self.device)
            start = step.next_obs if self.options.predecessor_start == "next-state" else step.obs
            self.queue.push(start.reshape(p, e, d).float(), delta * self._learning.float().unsqueeze(1), no, no)
        if len(buffer) * e < self.options.warmup:
            return {"td_error": torch.zeros(p), **self.planning_statistics()}
        replay = self._sample(buffer, self.options.replay_batch)
        r_next = self._q(replay.next_obs.float(), target=True).max(-1).values
        self.replay_max_q = r_next.mean(dim=1)
        r_target = replay.reward.float() + self.gamma * (~replay.terminated).float() * r_next
        direct = _Updates(replay.obs.float(), replay.action, r_target, None)
        mixed = self.options.planning_update == "mixed"
        if not mixed:
            td = self._gradient_step(*direct, planning=False)
        model_metrics: dict[str, torch.Tensor] = {}
        if self.learned_network is not None and self._plans:
            for _ in range(self.options.model_train_steps):
                batch = self._sample(buffer, self.options.model_batch)
                losses = self.learned_network.train_step(
                    batch.obs.float(),
                    batch.action,
                    batch.reward.float(),
                    batch.next_obs.float(),
                    batch.terminated,
                    directions=self.model_direction,
                )
            model_metrics = {f"model_{k}": v.cpu() for k, v in losses.items()}
        planned, after_planning = self._plan(buffer) if self._plans else ([], None)
        if mixed:
            td, *planning_deltas = self._mixed_step([direct, *planned])
        else:
            planning_deltas = [self._gradient_step(*updates) for updates in planned]
        if after_planning is not None:
            after_planning(planning_deltas)
        self.target_flat.lerp_(self.q_flat, self.target_tau)
        metrics: dict[str, torch.Tensor] = {"td_error": td.abs().mean(dim=1).cpu(), **model_metrics}
        metrics.update(self.planning_statistics())
        return metrics

    def _mixed_step(self, batches: list[_Updates]) -> list[torch.Tensor]:
        """``planning_update = "mixed"``: one Adam step of every learning member on the direct batch
        (``batches[0]``) and the planning steps' batches together. Each batch's loss is its mean over its (valid)
        updates, as a step of its own would take, and a member's loss is the mean over its batches: the direct one
        and, if it plans, each planning step's. Returns each batch's TD errors ``[P, B_i]`` before the step."""
        planning = self._planning_f  # [P, 1]
        batch_count = 1.0 + (len(batches) - 1) * planning
        weights = []
        for index, updates in enumerate(batches):
            weight = torch.ones_like(updates.target) if updates.weight is None else updates.weight.float()
            if index > 0:
                weight = weight * planning
            weights.append(weight / weight.sum(dim=1, keepdim=True).clamp(min=1.0))
        delta = self._gradient_step(
            torch.cat([updates.obs for updates in batches], dim=1),
            torch.cat([updates.action for updates in batches], dim=1),
            torch.cat([updates.target for updates in batches], dim=1),
            torch.cat(weights, dim=1) / batch_count,
            planning=False,
            normalized=True,
        )
        return list(delta.split([updates.target.shape[1] for updates in batches], dim=1))

    @torch.no_grad()
    def _gradient_step(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        planning: bool = True,
        normalized: bool = False,
    ) -> torch.Tensor:
        """One Adam step per member on ``0.5 sum_b w (target - Q(obs, action))^2 / max(sum_b w, 1)`` (``w = 1``
        without ``weight``; ``normalized``: ``weight`` is already divided by its sum, and the loss is
        ``0.5 sum_b w (target - Q)^2``), each member's gradient clipped to norm ``max_grad_norm``; returns the TD
        errors ``[P, B]`` before the step. A planning step leaves the non-planning members unchanged.

        The gradient is written by hand (the network is 2 ReLU layers and a linear head): the same numbers as
        autograd (``tests/agents/test_dyna_fa.py`` checks them) with a third of the kernels and no graph."""
        layers = self._layers
        inputs = [obs]
        x = obs
        last = len(layers) - 1
        for index, (w, b) in enumerate(layers):
            x = torch.baddbmm(b, x, w)
            if index < last:
                x = x.relu_()
                inputs.append(x)
        index_a = action.unsqueeze(-1)
        delta = target.unsqueeze(-1) - x.gather(-1, index_a)  # [P, B, 1]
        if weight is None:
            coefficient = delta * (-1.0 / delta.shape[1])
        elif normalized:
            coefficient = delta * weight.unsqueeze(-1).neg()
        else:
            w_f = weight.float().unsqueeze(-1)
            coefficient = (w_f * delta).div_(w_f.sum(dim=1, keepdim=True).clamp(min=1.0).neg_())
        upstream = torch.zeros_like(x).scatter_(-1, index_a, coefficient)  # dLoss / dQ
        p = x.shape[0]
        grads: list[torch.Tensor] = []
        for index in range(last, -1, -1):
            grads.append(upstream.sum(dim=1).view(p, -1))
            grads.append(torch.bmm(inputs[index].transpose(1, 2), upstream).view(p, -1))
            if index > 0:
                upstream = torch.ops.aten.threshold_backward(
                    torch.bmm(upstream, layers[index][0].transpose(1, 2)), inputs[index], 0.0
                )
        torch.cat(grads[::-1], dim=1, out=self.grad_flat)  # the flat layout: weight, bias of each layer in order
        self.optimizer.step(self.grad_flat, self._planning if planning else self._learning)
        return delta.squeeze(-1)

    # ------------------------------------------------------------------ models, with injection and the detector
    def _flag(self, state: torch.Tensor, terminal: torch.Tensor | None) -> torch.Tensor:
        assert self.dynamics is not None  # planning has the env's dynamics
        return self.dynamics.is_reachable(state, terminal)

    def _count_outputs(self, real: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Count the model's output states (``real bool[P, B]``; ``valid``: those that exist)."""
        active = self._planning_f if valid is None else self._planning_f * valid
        self.model_output_counts[:, 0] += active.sum(dim=1)
        self.model_output_counts[:, 1] += (active * ~real).sum(dim=1)

    def _forward(
        self, state: torch.Tensor, action: torch.Tensor, used: torch.Tensor | None = None
    ) -> tuple[VectorForward, torch.Tensor]:
        """The model's step, with injected error, and ``real bool[P, B]`` (the detector's verdict). ``used``: the
        outputs the planning update will read (a rollout past a terminal step is not counted)."""
        assert self.model is not None and self.dynamics is not None  # planning (planning_steps > 0) has a model
        sample = self.model.forward(state, action, self.generator)
        nxt, terminal = sample.next_state, sample.terminal
        if self._injects:
            nxt, injected = inject_hallucinations(self.dynamics, nxt, self.dose, self.generator)
            terminal = terminal & ~injected
        real = self._flag(nxt, terminal)
        self._count_outputs(real, used)
        return VectorForward(nxt, sample.reward.float(), terminal), real

    def _backward(
        self, state: torch.Tensor, used: torch.Tensor | None = None, replayed: _Replayed | None = None
    ) -> tuple[VectorBackward, torch.Tensor]:
        """The model's predecessor of each ``state [P, B, D]``, with injected error, and ``real bool[P, B]``.
        ``replayed``: the replayed transitions that reached ``state`` (``predecessor_action = "replayed"``): the
        perfect model's predecessor takes their action, and (``predecessor_state = "replayed"``) their state."""
        assert self.model is not None and self.dynamics is not None  # planning (planning_steps > 0) has a model
        weights: Callable[[torch.Tensor], torch.Tensor] | None = None
        if replayed is not None:
            chosen = torch.nn.functional.one_hot(replayed.action, self.num_actions).float()  # [P, B, A]

            def weights(previous: torch.Tensor) -> torch.Tensor:
                return chosen  # the one action (drawn only if its predecessor is valid)

        elif self.options.predecessor_action == "behaviour":
            weights = self._behaviour_weights
        sample = self.model.backward(state, self.generator, weights)
        previous = sample.previous_state
        if replayed is not None and replayed.state is not None:  # the real transition exists: it is the update
            previous = replayed.state
            sample = sample._replace(valid=torch.ones_like(sample.valid))
        if self._injects:
            previous, _ = inject_hallucinations(self.dynamics, previous, self.dose, self.generator)
        real = self._flag(previous, torch.zeros_like(sample.terminal))
        self._count_outputs(real, sample.valid if used is None else sample.valid & used)
        return VectorBackward(previous, sample.action, sample.reward.float(), sample.terminal, sample.valid), real

    def _behaviour_weights(self, previous: torch.Tensor) -> torch.Tensor:
        """The behaviour policy's probability of each action ``a`` at its candidate predecessor ``previous[a]``
        (``[A, P, B, D]`` -> ``[P, B, A]``): epsilon-greedy with the online network."""
        a, p, b, d = previous.shape
        q = self._q(previous.permute(1, 0, 2, 3).reshape(p, a * b, d)).view(p, a, b, a)
        own = torch.arange(a, device=self.device).view(1, a, 1)
        eps = self.epsilon.view(p, 1, 1)
        probability = eps / a + (1 - eps) * (q.argmax(dim=-1) == own).float()  # [P, A, B]
        return probability.transpose(1, 2)

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
        keep = performed & self._planning.unsqueeze(1)
        self.planning_counts += (columns & keep.unsqueeze(-1)).sum(dim=1, dtype=torch.float32)

    # ------------------------------------------------------------------ planning
    def _plan(self, buffer: TrajectoryBuffer) -> _Planned:
        """``planning_steps`` planning steps of ``planning_batch`` updates each. The search control, the model's
        answers and the targets of all steps are drawn at once (one batch of ``planning_steps x planning_batch``,
        with the networks as they are after the direct update's step, or before it with ``mixed`` updates): the
        same number and size of value updates as drawing step by step, in a few kernels. Returns one batch of
        updates per planning step and, for the one-step predecessor variant, what to do with their TD errors."""
        if self.variant == "one-step-successor":
            return self._plan_successor(1, buffer)
        if self.variant == "multi-step-successor":
            return self._plan_successor(self.options.rollout_length, buffer)
        if self.variant == "one-step-predecessor":
            return self._plan_one_step_predecessor(buffer)
        return self._plan_multi_step_predecessor(buffer)

    def _slices(self) -> list[slice]:
        b = self.options.planning_batch
        return [slice(k * b, (k + 1) * b) for k in range(self.options.planning_steps)]

    def _plan_successor(self, length: int, buffer: TrajectoryBuffer) -> _Planned:
        starts = self._sample(buffer, self.options.planning_steps * self.options.planning_batch)
        start, start_action = starts.obs.float(), starts.action
        if self.options.successor_action == "uniform":
            start_action = torch.randint(
                self.num_actions, start_action.shape, generator=self.generator, device=self.device
            )
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
        no = torch.zeros_like(alive)
        self._count(torch.ones_like(alive), no, torch.ones_like(alive), alive, alive & ~real, path)
        return [_Updates(start[:, part], start_action[:, part], target[:, part], None) for part in self._slices()], None

    def _pop(self, buffer: TrajectoryBuffer):
        """Search control of the predecessor variants: ``(states, simulated, hallucinated)`` ``[P, K x B, ...]`` and
        the replayed transitions that reached them (``predecessor_action = "replayed"``; else ``None``)."""
        count = self.options.planning_steps * self.options.planning_batch
        replayed = self._sample(buffer, count)
        uniform = (replayed.next_obs if self.options.predecessor_start == "next-state" else replayed.obs).float()
        if self.options.search_control == "uniform":
            no = torch.zeros(uniform.shape[:2], dtype=torch.bool, device=self.device)
            first = None
            if self.options.predecessor_action == "replayed":
                state = replayed.obs.float() if self.options.predecessor_state == "replayed" else None
                first = _Replayed(replayed.action, state)
            return uniform, no, no, first
        states, simulated, hallucinated, from_queue = self.queue.pop(count, self.options.priority_threshold)
        states = torch.where(from_queue.unsqueeze(-1), states, uniform)
        return states, simulated, hallucinated, None

    def _plan_one_step_predecessor(self, buffer: TrajectoryBuffer) -> _Planned:
        state, simulated, hallucinated, replayed = self._pop(buffer)
        sample, real = self._backward(state, replayed=replayed)
        bootstraps = ~sample.terminal
        target = sample.reward + self.gamma * bootstraps.float() * self._q(state, target=True).max(-1).values
        valid = sample.valid
        planned = [
            _Updates(sample.previous_state[:, part], sample.action[:, part], target[:, part], valid[:, part])
            for part in self._slices()
        ]

        def push_predecessors(deltas: list[torch.Tensor]) -> None:
            """Push each simulated predecessor with its ``|delta|``, then count the updates."""
            active = self._learning.float().unsqueeze(1) * valid.float()
            self.queue.push(
                sample.previous_state, torch.cat(deltas, dim=1).abs() * active, torch.ones_like(real), ~real
            )
            self._count(
                valid,
                torch.ones_like(real),
                real,
                simulated & bootstraps,
                hallucinated & bootstraps,
                torch.zeros_like(real),
            )

        return planned, push_predecessors

    def _plan_multi_step_predecessor(self, buffer: TrajectoryBuffer) -> _Planned:
        real_state, _, _, replayed = self._pop(buffer)  # this variant's queue only ever holds real states
        value = self._q(real_state, target=True).max(-1).values
        alive = torch.ones(value.shape, dtype=torch.bool, device=self.device)
        path = torch.zeros_like(alive)
        no = torch.zeros_like(alive)
        current = real_state
        states, actions, targets, weights = [], [], [], []
        for k in range(self.options.rollout_length):
            sample, real = self._backward(current, alive, replayed if k == 0 else None)
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
        # [P, n, K x B] -> per planning step k its chains, [P, n x B] (chain step major, as one step's batch)
        p, n = self.population_size, self.options.rollout_length
        k_steps, b = self.options.planning_steps, self.options.planning_batch

        def per_step(values: list[torch.Tensor]) -> torch.Tensor:
            stacked = torch.stack(values, dim=1)  # [P, n, K*B, ...]
            tail = stacked.shape[3:]
            return stacked.view(p, n, k_steps, b, *tail).transpose(1, 2).reshape(p, k_steps, n * b, *tail)

        all_states, all_actions = per_step(states), per_step(actions)
        all_targets, all_weights = per_step(targets), per_step(weights)
        planned = [
            _Updates(all_states[:, k], all_actions[:, k], all_targets[:, k], all_weights[:, k]) for k in range(k_steps)
        ]
        return planned, None

    # ------------------------------------------------------------------ instruments
    def planning_statistics(self) -> dict[str, torch.Tensor]:
        """Fractions of planning updates (``[P]`` each) since the last ``reset_statistics``, and their count."""
        counts = self.planning_counts.cpu()
        fractions = counts[:, 1:] / counts[:, :1].clamp(min=1.0)
        stats = {"planning_updates": counts[:, 0].clone()}
        for column, counter in enumerate(PLANNING_COUNTERS[1:]):
            stats[f"fraction_{counter}"] = fractions[:, column]
        outputs = self.model_output_counts.cpu()
        stats["fraction_model_outputs_hallucinated"] = outputs[:, 1] / outputs[:, 0].clamp(min=1.0)
        return stats

    def reset_statistics(self) -> None:
        self.planning_counts.zero_()
        self.model_output_counts.zero_()

    # ------------------------------------------------------------------ loop hooks and checkpoints
    def parameters_finite(self) -> torch.Tensor:
        finite = torch.isfinite(self.q_flat).all(dim=1)
        if self.learned_network is not None:
            finite &= self.learned_network.parameters_finite()
        return finite.cpu()

    def freeze(self, members: torch.Tensor) -> None:
        self.frozen |= members.to(self.device).bool()
        self._refresh_masks()
        if self.learned_network is not None:
            self.learned_network.freeze(members)

    _TENSORS = ("q_flat", "target_flat", "planning_counts", "model_output_counts", "frozen")

    def state_dict(self) -> dict[str, Any]:
        """Everything a bit-identical resume needs besides the loop's buffer (which holds the replay)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "queue": {k: getattr(self.queue, k).clone() for k in ("states", "priority", "simulated", "hallucinated")},
            "generator": self.generator.get_state(),
            **{k: getattr(self, k).clone() for k in self._TENSORS},
            **({"learned_network": self.learned_network.state_dict()} if self.learned_network is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        for key, value in state["queue"].items():
            setattr(self.queue, key, value.clone().to(self.device))
        self.generator.set_state(state["generator"])
        for key in self._TENSORS:
            getattr(self, key).copy_(state[key])
        self._refresh_masks()
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
    envs_per_member: int = 1,
) -> DynaFAAgent:
    """A ``DynaFAAgent`` for ``env`` (an env that declares vector dynamics, ``has_vector_dynamics``), its model
    attached, its ``buffer_capacity`` sized for ``envs_per_member`` env copies per member.

    ``use_learned`` (``bool[P]``) mixes the model kinds in one population: those members plan with the learned model,
    the others with the perfect one (``options.model`` is then ignored). ``planning_members`` (``bool[P]``) makes the
    other members model-free baselines (default: ``options.plans``). ``dose`` and ``learning_rate`` override the
    options per member. The learned model's networks are initialised from the ``model`` stream of ``seed``.

    Raises:
        ValueError: an env without vector observations, or one that declares no vector dynamics while the agent plans
            (a model kind the env cannot give), or a bad option.
    """
    spec = env.observation_spec
    if len(spec.shape) != 1:
        raise ValueError(
            f"agent 'dyna-fa' needs vector observations; env {env_name!r} gives shape {spec.shape} "
            "(catcher: observation='vector')"
        )
    dynamics = None
    if options.planning_steps > 0:
        dynamics = vector_dynamics_of(env, f"agent 'dyna-fa' (model {options.model!r})")
    obs_dim, num_actions = spec.shape[0], int(env.action_spec.n)
    model: SimulatorModel | LearnedModel | MixedModel | None = None
    network = None
    if use_learned is not None and tuple(use_learned.shape) != (population_size,):
        raise ValueError(f"use_learned must be bool[{population_size}], got shape {tuple(use_learned.shape)}")
    mixed = use_learned is not None and bool(use_learned.any()) and not bool(use_learned.all())
    learned = options.model == "learned" if use_learned is None else bool(use_learned.any())
    if dynamics is not None:
        perfect = SimulatorModel(dynamics) if (mixed or not learned) else None
        model = perfect
        if learned:
            network = LearnedVectorModel(
                obs_dim,
                num_actions,
                population_size,
                hidden=(options.model_hidden, options.model_hidden),
                learning_rate=options.model_learning_rate,
                seed=stream_seed(seed, "model"),
                device=env.device,
            )
            learned_model = LearnedModel(network)
            model = learned_model
            if mixed:
                assert perfect is not None and use_learned is not None  # made above for a mixed population
                model = MixedModel(perfect, learned_model, use_learned)
    agent = DynaFAAgent(
        env_name,
        obs_dim,
        num_actions,
        population_size,
        options,
        model=model,
        learned_network=network,
        dose=dose,
        learning_rate=learning_rate,
        dynamics=dynamics,
        seed=seed,
        device=env.device,
        planning_members=planning_members,
    )
    agent.buffer_capacity = math.ceil(options.replay_size / envs_per_member)
    return agent


@register_agent(
    "dyna-fa",
    DynaFAOptions,
    "Dyna with a neural Q: one-/multi-step successor/predecessor planning, perfect/learned/injected models",
)
def make_dyna_fa(context: AgentContext, options: DynaFAOptions) -> DynaFAAgent:
    """Registry factory: the run's env must give vector observations and, for planning, declare vector dynamics
    (``has_vector_dynamics``: cartpole, catcher, puddle-world)."""
    env = context.env
    if env is None:
        from emphatic_rl.envs import make_env

        env = make_env(context.env_name, num_envs=1, device=context.device)
    return make_dyna_fa_for_env(
        env,
        context.env_name,
        context.population_size,
        options,
        seed=context.seed,
        envs_per_member=context.envs_per_member,
    )
