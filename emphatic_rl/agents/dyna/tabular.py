"""Tabular Dyna with the four planning variants of "Hallucinating Value" (Jafferjee et al. 2020).

One agent, switches for the variant (docs/algorithms/hallucinated-value.md). Our reading of the paper, each choice
tagged: [inferred] from the paper and standard Dyna, [ours] our choice where the paper is silent:

Common loop [inferred: Dyna-Q, Sutton and Barto 2018, Sec. 8.2]. Each real step: act epsilon-greedily on ``Q``; one
direct Q-learning update on the real transition ``(s, a, r, s')``; remember ``(s, a)`` as visited and push ``s`` onto
the search-control queue with priority ``|delta|``; then ``planning_steps`` planning steps. ``planning_steps = 0`` is
the model-free baseline (plain Q-learning) from the same agent.

Planning step per variant (``n`` = ``rollout_length``):

- ``one-step-successor`` (Dyna-Q): draw a visited real pair ``(s, a)`` uniformly; ``(r, s2) ~ forward model``;
  ``Q(s, a) += alpha [r + gamma max_b Q(s2, b) - Q(s, a)]``.
- ``multi-step-successor``: draw ``(s, a0)`` as above; roll the forward model out ``n`` steps with greedy actions
  ``a_k = argmax Q(s_k, .)`` for ``k >= 1`` [ours]; ``G = sum_k gamma^k r_{k+1} + gamma^n max_b Q(s_n, b)``;
  ``Q(s, a0) += alpha [G - Q(s, a0)]``. Only ``Q(s, a0)`` is updated [ours].
- ``one-step-predecessor`` (prioritized-sweeping style): pop the state ``s~`` of highest priority (above
  ``priority_threshold``; if the queue is empty, a uniformly drawn visited real state [ours]); sample a predecessor
  ``(s_, a_, r_) ~ backward model(s~)``; ``delta = r_ + gamma max_b Q(s~, b) - Q(s_, a_)``; update ``Q(s_, a_)``;
  push ``s_`` (a *simulated* state) back with priority ``|delta|``.
- ``multi-step-predecessor`` (the proposed variant): pop a *real* state ``s`` the same way (only real updates ever
  push, so the queue holds only states observed in the environment); sample a backward chain
  ``s_k --a_k, r_k--> s_{k-1}``, ``s_0 = s``, ``k = 1..n``; update each ``Q(s_k, a_k)`` toward
  ``G_k = r_k + gamma G_{k-1}``, ``G_0 = max_b Q(s, b)``: every target bootstraps from the real ``s`` only. The chain
  is truncated before ``k`` when ``a_{k-1}`` is not greedy at ``s_{k-1}`` (checked after its own update, ties count
  as greedy) [inferred from the JAIR version's "Is On Policy" step]. One planning step therefore makes up to ``n`` value
  updates.

Terminal handling: no bootstrap past a transition the model marks terminal. Priorities: a table ``[P, S]`` (a
priority queue that keeps one entry per state, the larger priority wins); popping takes the arg-max and clears it.

Instruments (the invariant the paper's hypothesis rests on). For every planning value update the agent records, per
member: whether the updated entry's state is simulated (a model output) and whether it is hallucinated (a model output
that is not a real, reachable state, as the env's ``real_state_mask`` tells), and whether its target bootstraps from a
simulated or a hallucinated state; and whether a real entry's target was computed along a simulated path through a
hallucinated state (``real_via_hallucinated``: bootstrapping from one, or a multi-step rollout/chain passing through
one, which the multi-step predecessor variant can do when the model's hallucinated states connect back to real ones).
``planning_statistics()`` returns the fractions ``[P]``, and ``update`` reports them as metrics, together with
``fraction_model_outputs_hallucinated``: the fraction of all states the models returned during planning that are not
real (for a learned model, how often it hallucinates).

Models. ``model = "given"``: the env's true dynamics with hallucinations injected at rate ``p_h``
(:func:`emphatic_rl.agents.dyna.models.given_model_of`). ``model = "learned"``: a learned neural forward and backward
model per member (:class:`emphatic_rl.agents.dyna.learned_models.LearnedTabularModel`: categorical distributions over
all cells, the unreachable ring included), trained by ``model_train_steps`` Adam steps per real step on
``model_batch`` real transitions per member replayed uniformly from the loop's ``TrajectoryBuffer`` (the last
``model_replay_size`` real transitions of each member; ``update(buffer, step)``); only the direction the variant
plans with is trained. It hallucinates by itself (untrained or badly fitted ``(s, a)`` pairs put mass on border
cells); ``p_h`` must be 0.

Env capabilities. The agent needs an env that declares tabular dynamics (``TensorEnv.has_tabular_dynamics``: the
Bordered Gridworld); its ``TabularDynamics`` give the given model's tables, the real states and the state
coordinates. Any other env is one clear error naming the capability.

Population. ``Q: [P, S, A]``; every hyperparameter that is a rate (``step_size``, ``epsilon``, the model's
``p_h``) may be one value per member, so one run holds seeds x a p_h sweep. Acting takes ``obs: int64[P, E]``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from emphatic_rl.agents.base import ActionOutput, Agent
from emphatic_rl.agents.dyna.learned_models import LearnedTabularModel
from emphatic_rl.agents.dyna.models import (
    BackwardModel,
    ForwardModel,
    GivenTabularModel,
    TrainableModel,
    given_model_of,
    tabular_dynamics_of,
)
from emphatic_rl.agents.registry import AgentContext, register_agent
from emphatic_rl.envs.base import BoxSpec, TensorEnv
from emphatic_rl.seeding import stream_seed
from emphatic_rl.validation import check_count, check_number, check_positive

if TYPE_CHECKING:
    from emphatic_rl.buffers.trajectory import TrajectoryBuffer

VARIANTS: tuple[str, ...] = (
    "one-step-successor",
    "multi-step-successor",
    "one-step-predecessor",
    "multi-step-predecessor",
)
SEARCH_CONTROLS: tuple[str, ...] = ("default", "uniform", "priority")
MODELS: tuple[str, ...] = ("given", "learned")
MODEL_FEATURES: tuple[str, ...] = ("one-hot", "coordinates")
VALUE_FUNCTIONS: tuple[str, ...] = ("tabular", "mlp")
#: names of the planning counters, in the order of ``DynaAgent.planning_counts`` columns.
PLANNING_COUNTERS: tuple[str, ...] = (
    "updates",
    "updated_simulated",
    "updated_hallucinated",
    "bootstrap_simulated",
    "bootstrap_hallucinated",
    "real_toward_simulated",
    "real_toward_hallucinated",
    "real_via_hallucinated",
)


def _as_member_tensor(
    name: str,
    value: float | list[float] | tuple[float, ...] | torch.Tensor,
    population_size: int | None,
    low: float,
    high: float,
    low_open: bool = False,
) -> torch.Tensor:
    """A rate as ``float32[P]`` (scalar or one per member), each value in its allowed range, or one clear error.

    ``population_size=None`` checks only the range (any number of values).
    """
    try:
        tensor = torch.as_tensor(value, dtype=torch.float32).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a number or a list of numbers, got {value!r}") from None
    if population_size is None:  # range check only
        population_size = tensor.numel()
    if tensor.numel() == 1:
        tensor = tensor.expand(population_size).clone()
    if tensor.numel() != population_size or tensor.numel() == 0:
        raise ValueError(
            f"{name} must be a scalar or have one value per member ({population_size}), got {tensor.numel()} values"
        )
    bad_low = (tensor <= low) if low_open else (tensor < low)
    if not bool(torch.isfinite(tensor).all()) or bool((bad_low | (tensor > high)).any()):
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{name} must be in {interval}, got {tensor.tolist()}")
    return tensor


@dataclass(frozen=True)
class DynaOptions:
    """Options of the ``dyna`` agent (CLI: ``--set variant=multi-step-predecessor``).

    - ``variant``: one of ``VARIANTS``.
    - ``planning_steps``: planning steps per real step (>= 0; 0 is the model-free Q-learning baseline).
    - ``rollout_length``: ``n`` of the multi-step variants (>= 1; ignored by the one-step variants).
    - ``step_size``: ``alpha`` in ``(0, 1]``; ``gamma`` in ``[0, 1]``; ``epsilon``: exploration in ``[0, 1]``.
      ``step_size``, ``epsilon`` and ``hallucination_probability`` are a number, or a list with one value per
      member (so one run can sweep them).
    - ``search_control``: ``default`` (uniform visited pairs for successor variants, the priority queue for
      predecessor variants), ``uniform`` or ``priority`` (predecessor variants only).
    - ``priority_threshold``: smallest ``|delta|`` that enters the queue (>= 0).
    - ``model``: ``given`` (the env's true dynamics with hallucinations at rate ``hallucination_probability``) or
      ``learned`` (neural forward/backward models trained from replayed real transitions; ``p_h`` must be 0).
    - ``model_hidden`` (width of the learned models' 2 hidden layers), ``model_learning_rate`` (Adam),
      ``model_batch`` (transitions per member per training step), ``model_train_steps`` (training steps per real
      step), ``model_replay_size`` (model training replays each member's last this many real transitions from the
      loop's ``TrajectoryBuffer``, which keeps at least that many), ``model_features``
      (``one-hot`` cells or ``coordinates``: ``(row, col)`` in ``[-1, 1]``), ``model_sampling`` (``sample`` from
      the predicted distributions, or ``mode``: arg-max): options of ``model = "learned"`` only.
    - ``hallucination_probability``: ``p_h`` in ``[0, 1]``.
    - ``border_physics``: how the given model moves from unreachable states, ``closed`` or ``open`` (see
      :meth:`emphatic_rl.envs.gridworld.BorderedGridworld.model_transitions`).
    - ``q_init``: initial value of every ``Q`` entry (tabular).
    - ``value_function``: ``tabular`` (``Q[P, S, A]``, step size ``alpha``) or ``mlp`` (a 2 x ``hidden`` ReLU
      network per member on the env's state features, Adam with ``learning_rate``; every value update, real or
      planned, is one gradient step on the squared TD error; the direct update replays ``replay_batch`` real
      transitions per member from the loop's ``TrajectoryBuffer``, which keeps ``buffer_size`` transitions).
    """

    variant: str = "one-step-successor"
    planning_steps: int = 5
    rollout_length: int = 3
    step_size: float | tuple[float, ...] = 0.5
    gamma: float = 0.95
    epsilon: float | tuple[float, ...] = 0.1
    search_control: str = "default"
    priority_threshold: float = 1e-4
    model: str = "given"
    hallucination_probability: float | tuple[float, ...] = 0.0
    border_physics: str = "closed"
    q_init: float = 0.0
    value_function: str = "tabular"
    hidden: int = 64
    learning_rate: float = 1e-3
    replay_batch: int = 16
    buffer_size: int = 10_000
    model_hidden: int = 64
    model_learning_rate: float = 3e-3
    model_batch: int = 32
    model_train_steps: int = 1
    model_replay_size: int = 5000
    model_features: str = "one-hot"
    model_sampling: str = "sample"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {self.variant!r}")
        for key in ("planning_steps", "rollout_length"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{key} must be an integer, got {value!r}")
        if self.planning_steps < 0:
            raise ValueError(f"planning_steps must be >= 0, got {self.planning_steps}")
        if self.rollout_length < 1:
            raise ValueError(f"rollout_length (n) must be >= 1, got {self.rollout_length}")
        if self.search_control not in SEARCH_CONTROLS:
            raise ValueError(f"search_control must be one of {', '.join(SEARCH_CONTROLS)}; got {self.search_control!r}")
        if self.search_control == "priority" and "successor" in self.variant:
            raise ValueError(
                f"search_control 'priority' applies to predecessor variants only; variant "
                f"{self.variant!r} allows 'default' or 'uniform'"
            )
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}; got {self.model!r}")
        if self.border_physics not in ("closed", "open"):
            raise ValueError(f"border_physics must be 'closed' or 'open'; got {self.border_physics!r}")
        if not self.priority_threshold >= 0:
            raise ValueError(f"priority_threshold must be >= 0, got {self.priority_threshold!r}")
        if self.value_function not in VALUE_FUNCTIONS:
            raise ValueError(f"value_function must be one of {', '.join(VALUE_FUNCTIONS)}; got {self.value_function!r}")
        for key in (
            "hidden",
            "replay_batch",
            "buffer_size",
            "model_hidden",
            "model_batch",
            "model_train_steps",
            "model_replay_size",
        ):
            check_count(key, getattr(self, key))
        for key in ("learning_rate", "model_learning_rate"):
            check_number(key, getattr(self, key))
            check_positive(key, getattr(self, key))
        if self.model_features not in MODEL_FEATURES:
            raise ValueError(f"model_features must be one of {', '.join(MODEL_FEATURES)}; got {self.model_features!r}")
        if self.model_sampling not in ("sample", "mode"):
            raise ValueError(f"model_sampling must be 'sample' or 'mode'; got {self.model_sampling!r}")
        if not math.isfinite(self.q_init):
            raise ValueError(f"q_init must be finite, got {self.q_init!r}")
        # Rates: one clear error each. step_size, epsilon and p_h may be lists (one value per member; the agent
        # checks the count against P).
        _as_member_tensor("step_size", self.step_size, None, 0.0, 1.0, low_open=True)
        _as_member_tensor("gamma", self.gamma, 1, 0.0, 1.0)
        _as_member_tensor("epsilon", self.epsilon, None, 0.0, 1.0)
        _as_member_tensor("hallucination_probability (p_h)", self.hallucination_probability, None, 0.0, 1.0)
        for key in ("step_size", "epsilon", "hallucination_probability"):
            value = getattr(self, key)
            if isinstance(value, list):
                object.__setattr__(self, key, tuple(value))
        if self.model == "learned" and bool(
            (torch.as_tensor(self.hallucination_probability, dtype=torch.float32) != 0).any()
        ):
            raise ValueError(
                "hallucination_probability (p_h) injects errors into the given model only; with model='learned' "
                f"it must be 0, got {self.hallucination_probability!r}"
            )

    @property
    def uses_priority_queue(self) -> bool:
        if "successor" in self.variant:
            return False
        return self.search_control in ("default", "priority")


class DynaAgent(Agent):
    """A population of ``P`` tabular Dyna learners over ``S`` states and ``A`` actions (see the module docstring).

    Args:
        num_states: ``S`` (observations are state indices ``int64`` in ``0 .. S - 1``).
        num_actions: ``A``.
        population_size: ``P``.
        options: ``DynaOptions``; ``step_size``, ``epsilon`` may be overridden per member by passing tensors.
        forward_model: a ``ForwardModel`` (successor variants).
        backward_model: a ``BackwardModel`` (predecessor variants).
        real_state_mask: ``bool[S]``, which states are real and reachable (for the instruments); ``None``: all.
        step_size: optional per-member override of the step size, ``float32[P]``.
        epsilon: optional per-member override of the exploration rate, ``float32[P]``.
        features: ``float32[S, F]`` state features of the ``mlp`` value function (default: one-hot states).
        seed: seeds the agent's generator (exploration, search control, model sampling).
        device: torch device.

    Raises:
        ValueError: a bad option, or a model whose outputs have the wrong shape or dtype (probed at construction).
    """

    name = "dyna"
    acts_in_env = True

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        population_size: int,
        options: DynaOptions,
        forward_model: ForwardModel | None = None,
        backward_model: BackwardModel | None = None,
        real_state_mask: torch.Tensor | None = None,
        step_size: torch.Tensor | None = None,
        epsilon: torch.Tensor | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        features: torch.Tensor | None = None,
    ) -> None:
        for key, value in (
            ("num_states", num_states),
            ("num_actions", num_actions),
            ("population_size", population_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        self.options = options
        self.device = torch.device(device)
        self.population_size = population_size
        self.num_states, self.num_actions = num_states, num_actions
        self.variant = options.variant
        self.planning_steps = options.planning_steps
        self.rollout_length = options.rollout_length
        self.gamma = float(options.gamma)
        self.step_size = _as_member_tensor(
            "step_size",
            options.step_size if step_size is None else step_size,
            population_size,
            0.0,
            1.0,
            True,
        ).to(self.device)
        self.epsilon = _as_member_tensor(
            "epsilon", options.epsilon if epsilon is None else epsilon, population_size, 0.0, 1.0
        ).to(self.device)
        self.forward_model = forward_model
        self.backward_model = backward_model
        if self.planning_steps > 0:
            if "successor" in self.variant and forward_model is None:
                raise ValueError(f"variant {self.variant!r} needs a forward model")
            if "predecessor" in self.variant and backward_model is None:
                raise ValueError(f"variant {self.variant!r} needs a backward model")
        if real_state_mask is None:
            real_state_mask = torch.ones(num_states, dtype=torch.bool)
        if tuple(real_state_mask.shape) != (num_states,):
            raise ValueError(f"real_state_mask must have shape ({num_states},), got {tuple(real_state_mask.shape)}")
        self.real_state_mask = real_state_mask.to(self.device).bool()
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.members = torch.arange(population_size, device=self.device)

        self.q = torch.full((population_size, num_states, num_actions), float(options.q_init), device=self.device)
        # Visited real pairs / states: a membership mask and an append-only list per member (uniform draws are
        # then one gather, no multinomial over the whole table).
        self.visited_pair = torch.zeros(population_size, num_states * num_actions, dtype=torch.bool, device=self.device)
        self.visited_pair_list = torch.zeros(
            population_size, num_states * num_actions, dtype=torch.int64, device=self.device
        )
        self.visited_pair_count = torch.zeros(population_size, dtype=torch.int64, device=self.device)
        self.visited_state = torch.zeros(population_size, num_states, dtype=torch.bool, device=self.device)
        self.visited_state_list = torch.zeros(population_size, num_states, dtype=torch.int64, device=self.device)
        self.visited_state_count = torch.zeros(population_size, dtype=torch.int64, device=self.device)
        self.priority = torch.zeros(population_size, num_states, device=self.device)
        #: ``bool[P, S]``: the queue entry of a state was last pushed from a model output (a simulated state).
        self.pushed_by_model = torch.zeros(population_size, num_states, dtype=torch.bool, device=self.device)
        self.planning_counts = torch.zeros(population_size, len(PLANNING_COUNTERS), device=self.device)
        self.frozen = torch.zeros(population_size, dtype=torch.bool, device=self.device)
        #: ``[P, 2]``: states returned by the models during planning, and how many of them were not real.
        self.model_output_counts = torch.zeros(population_size, 2, device=self.device)
        self.uses_network = options.value_function == "mlp"
        if self.uses_network:
            self._build_network(features)
        self._build_model_replay()
        #: time rows of the loop's buffer for one env copy per member (``make_dyna`` sizes it for the run's copies)
        self.buffer_capacity = self.buffer_rows(1)
        if self.planning_steps > 0:
            self._probe_models()

    # ------------------------------------------------------------------ learned models: training data
    def _build_model_replay(self) -> None:
        """Learned models (every :class:`~emphatic_rl.agents.dyna.models.TrainableModel` among the forward and backward
        models) train from the loop's ``TrajectoryBuffer``: the last ``model_replay_size`` real transitions of each
        member (see :meth:`_train_models`)."""
        self.learned_models: list[TrainableModel] = []
        for model in (self.forward_model, self.backward_model):
            if isinstance(model, TrainableModel) and all(model is not known for known in self.learned_models):
                self.learned_models.append(model)
        #: which learned models the variant plans with, and so trains (an unused direction is not trained).
        self.model_directions = ("forward",) if "successor" in self.variant else ("backward",)

    def buffer_rows(self, envs_per_member: int = 1) -> int:
        """Time rows the loop's ``TrajectoryBuffer`` must keep for this agent with ``envs_per_member`` env copies
        per member: ``buffer_size`` transitions per member for the ``mlp`` value function's replay, and
        ``model_replay_size`` for learned models' training (1 row: the tabular agent reads only the latest step)."""
        rows = [1]
        if self.uses_network:
            rows.append(math.ceil(self.options.buffer_size / envs_per_member))
        if self.learned_models:
            rows.append(math.ceil(self.options.model_replay_size / envs_per_member))
        return max(rows)

    def _train_models(self, buffer: TrajectoryBuffer | None) -> dict[str, torch.Tensor]:
        """``model_train_steps`` training steps of every learned model, each on ``model_batch`` transitions per
        member drawn uniformly from the member's last ``model_replay_size`` real transitions in ``buffer`` (the
        newest ``ceil(model_replay_size / E)`` time rows of its ``E`` streams; streams are member-major)."""
        if not self.learned_models:
            return {}
        if buffer is None:
            raise ValueError(
                "dyna: learned models train from the loop's TrajectoryBuffer; call update(buffer, env_step) "
                "(observe() without a buffer serves given models only)"
            )
        p = self.population_size
        e = buffer.num_streams // p
        rows = min(len(buffer), math.ceil(self.options.model_replay_size / e))
        oldest = buffer.total_steps - rows
        first_stream = (self.members * e).unsqueeze(1)
        losses: dict[str, torch.Tensor] = {}
        for _ in range(self.options.model_train_steps):
            index = torch.randint(rows * e, (p, self.options.model_batch), generator=self.generator, device=self.device)
            time_index = oldest + torch.div(index, e, rounding_mode="floor")
            batch = buffer.transitions_at(time_index, first_stream + index % e)
            for model in self.learned_models:
                losses = model.train_step(
                    batch.obs.long(),
                    batch.action.long(),
                    batch.reward,
                    batch.next_obs.long(),
                    batch.terminated,
                    directions=self.model_directions,
                )
        return {f"model_{key}": value for key, value in losses.items()}

    # ------------------------------------------------------------------ the MLP value function
    def _build_network(self, features: torch.Tensor | None) -> None:
        """A 2-hidden-layer ReLU network per member: weights ``[P, fan_in, fan_out]``, biases ``[P, fan_out]``."""
        if features is None:
            features = torch.eye(self.num_states)
        if features.dim() != 2 or features.shape[0] != self.num_states:
            raise ValueError(f"features must be [S={self.num_states}, F], got shape {tuple(features.shape)}")
        self.features = features.float().to(self.device)
        sizes = (self.features.shape[1], self.options.hidden, self.options.hidden, self.num_actions)
        self.network: list[torch.Tensor] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)
            for shape in ((fan_in, fan_out), (fan_out,)):
                draw = torch.rand((self.population_size, *shape), generator=self.generator, device=self.device)
                self.network.append(((2 * draw - 1) * bound).requires_grad_(True))
        self.optimizer = torch.optim.Adam(self.network, lr=self.options.learning_rate)
        self._any_frozen = False
        self._refresh_q()

    def _network_q(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [P, B, F]`` -> ``Q: [P, B, A]``."""
        w1, b1, w2, b2, w3, b3 = self.network
        hidden = torch.relu(torch.baddbmm(b1.unsqueeze(1), x, w1))
        hidden = torch.relu(torch.baddbmm(b2.unsqueeze(1), hidden, w2))
        return torch.baddbmm(b3.unsqueeze(1), hidden, w3)

    def _refresh_q(self) -> None:
        """Recompute the cached table ``self.q [P, S, A]`` from the network (S is small)."""
        with torch.no_grad():
            self.q = self._network_q(self.features.expand(self.population_size, -1, -1)).contiguous()

    def _gradient_step(
        self, state: torch.Tensor, action: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
    ) -> None:
        """One Adam step per member on ``0.5 mean_b weight (target - Q(state, action))^2`` (all ``[P, B]``)."""
        frozen_copy = [t.detach().clone() for t in self.network] if self._any_frozen else None
        q = self._network_q(self.features[state]).gather(-1, action.unsqueeze(-1)).squeeze(-1)
        loss = 0.5 * (weight * (target.detach() - q).square()).mean(dim=1).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if frozen_copy is not None:
            with torch.no_grad():
                for tensor, old in zip(self.network, frozen_copy, strict=True):
                    mask = self.frozen.view(-1, *([1] * (tensor.dim() - 1)))
                    tensor.copy_(torch.where(mask, old, tensor))
        self._refresh_q()

    # ------------------------------------------------------------------ model output checks
    def _probe_models(self) -> None:
        """Call the models once on a dummy batch so that a wrong output shape fails before any work starts."""
        probe_generator = torch.Generator(device=self.device)
        probe_generator.manual_seed(0)
        state = torch.zeros(self.population_size, dtype=torch.int64, device=self.device)
        if "successor" in self.variant:
            assert self.forward_model is not None  # __init__ requires it for the successor variants
            self._check_forward(self.forward_model.sample_forward(state, state, probe_generator), check_range=True)
        else:
            assert self.backward_model is not None  # __init__ requires it for the predecessor variants
            self._check_backward(self.backward_model.sample_backward(state, probe_generator), check_range=True)

    def _check_fields(self, model: Any, sample: tuple, names: tuple[str, ...], check_range: bool) -> None:
        expected = (self.population_size,)
        for field_name, value in zip(names, sample, strict=True):
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(
                    f"model {type(model).__name__} returned {field_name} of shape {shape}; expected {expected} "
                    "(one tabular state index / value per population member)"
                )
        for field_name in ("next_state", "previous_state", "action"):
            if field_name in names:
                value = sample[names.index(field_name)]
                if value.dtype != torch.int64:
                    raise ValueError(
                        f"model {type(model).__name__} returned {field_name} of dtype {value.dtype}; "
                        "expected torch.int64 state/action indices"
                    )
                if check_range:
                    limit = self.num_actions if field_name == "action" else self.num_states
                    if bool(((value < 0) | (value >= limit)).any()):
                        raise ValueError(f"model {type(model).__name__} returned {field_name} outside 0..{limit - 1}")

    def _check_forward(self, sample, check_range: bool = False):
        self._check_fields(self.forward_model, sample, ("next_state", "reward", "terminal"), check_range)
        if not check_range:
            self._count_model_output(sample.next_state)
        return sample

    def _check_backward(self, sample, check_range: bool = False):
        self._check_fields(self.backward_model, sample, ("previous_state", "action", "reward", "terminal"), check_range)
        if not check_range:
            self._count_model_output(sample.previous_state)
        return sample

    def _count_model_output(self, state: torch.Tensor) -> None:
        """Count the model outputs ``state int64[P]`` of active members, and the hallucinated ones."""
        active = (~self.frozen).float()
        self.model_output_counts[:, 0] += active
        self.model_output_counts[:, 1] += active * (~self.real_state_mask[state]).float()

    # ------------------------------------------------------------------ acting
    def _greedy_ties_random(self, q_values: torch.Tensor) -> torch.Tensor:
        """``q_values: [B, A]`` -> a greedy action ``int64[B]``, ties broken uniformly at random."""
        ties = q_values == q_values.max(dim=-1, keepdim=True).values
        noise = torch.rand(q_values.shape, generator=self.generator, device=self.device)
        return (ties.float() + 0.5 * noise).argmax(dim=-1)

    def act(self, obs: torch.Tensor, env_step: int) -> ActionOutput:
        """Epsilon-greedy actions for ``obs: int64[P, E]`` -> ``action int64[P, E]``, ``log_prob [P, E]``."""
        obs = self._check_obs(obs)
        p, e = obs.shape
        q_values = self.q[self.members.unsqueeze(1), obs]  # [P, E, A]
        flat = q_values.reshape(p * e, self.num_actions)
        greedy = self._greedy_ties_random(flat).view(p, e)
        epsilon = self.epsilon.unsqueeze(1)
        explore = torch.rand(p, e, generator=self.generator, device=self.device) < epsilon
        random_action = torch.randint(self.num_actions, (p, e), generator=self.generator, device=self.device)
        action = torch.where(explore, random_action, greedy)
        ties = q_values == q_values.max(dim=-1, keepdim=True).values
        is_greedy = ties.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        prob = epsilon / self.num_actions + (1 - epsilon) * is_greedy.float() / ties.sum(-1)
        return ActionOutput(action, prob.log())

    def evaluation_action(self, obs: torch.Tensor) -> torch.Tensor:
        """Greedy actions (first arg-max) for ``obs: int64[P, E]`` -> ``int64[P, E]``."""
        obs = self._check_obs(obs)
        return self.q[self.members.unsqueeze(1), obs].argmax(dim=-1)

    def _check_obs(self, obs: torch.Tensor) -> torch.Tensor:
        obs = torch.as_tensor(obs, device=self.device)
        if obs.dim() != 2 or obs.shape[0] != self.population_size:
            raise ValueError(f"dyna: obs must be int64[P={self.population_size}, E], got shape {tuple(obs.shape)}")
        return obs.long()

    # ------------------------------------------------------------------ learning
    def update(self, buffer: TrajectoryBuffer, env_step: int) -> dict[str, torch.Tensor]:
        """Learn from the newest row of ``buffer`` (the real step of every stream, streams member-major: member
        ``p`` owns streams ``p*E ... p*E + E - 1``): the direct update (the ``mlp`` value function replays
        ``replay_batch`` real transitions per member from ``buffer`` instead), learned models' training on
        transitions replayed from ``buffer``, then planning. Returns the metrics of :meth:`observe`."""
        latest = buffer.latest()
        shape = (self.population_size, -1)
        replay = None
        if self.uses_network:
            batch = buffer.sample_transitions(
                self.options.replay_batch, self.generator, num_groups=self.population_size
            )
            replay = (batch.obs, batch.action, batch.reward, batch.next_obs, batch.terminated)
        return self._learn(
            latest.obs.reshape(shape),
            latest.action.reshape(shape),
            latest.reward.reshape(shape),
            latest.next_obs.reshape(shape),
            latest.terminated.reshape(shape),
            replay,
            buffer,
        )

    def observe(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
        replay: tuple[torch.Tensor, ...] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One real step for every member, without a loop buffer: direct update, bookkeeping, then planning (given
        models only: learned models train from the loop's ``TrajectoryBuffer``, through :meth:`update`).

        Args (all ``[P, E]``): ``obs`` (state indices), ``action``, ``reward``, ``next_obs`` (the true ``S_{t+1}``,
        i.e. ``StepResult.final_obs``), ``terminated``. ``replay`` (``mlp`` only): real transitions
        ``(obs, action, reward, next_obs, terminated)``, each ``[P, B]``, for the direct update instead of the
        latest step.

        Returns: metrics, each ``[P]``: ``td_error`` (mean absolute real TD error), the planning fractions, and the
        learned models' losses (``model_<name>``).

        Raises:
            ValueError: the agent has learned models (they need the buffer: use ``update``).
        """
        return self._learn(obs, action, reward, next_obs, terminated, replay, None)

    def _learn(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
        replay: tuple[torch.Tensor, ...] | None,
        buffer: TrajectoryBuffer | None,
    ) -> dict[str, torch.Tensor]:
        if self.learned_models and buffer is None:
            self._train_models(None)  # raises the error that names update()
        obs, next_obs, action = obs.long(), next_obs.long(), action.long()
        p, e = obs.shape
        member = self.members.unsqueeze(1).expand(p, e)
        active = (~self.frozen).float().unsqueeze(1)
        bootstrap = self.q[member, next_obs].max(dim=-1).values * (~terminated.bool()).float()
        delta = reward.float() + self.gamma * bootstrap - self.q[member, obs, action]
        if not self.uses_network:
            self.q.index_put_((member, obs, action), self.step_size.unsqueeze(1) * delta * active, accumulate=True)
        else:
            if replay is None:
                replay = (obs, action, reward, next_obs, terminated)
            r_obs, r_action, r_reward, r_next, r_terminated = (t.reshape(p, -1) for t in replay)
            r_member = self.members.unsqueeze(1).expand_as(r_obs)
            r_next_value = self.q[r_member, r_next.long()].max(dim=-1).values * (~r_terminated.bool()).float()
            r_target = r_reward.float() + self.gamma * r_next_value
            self._gradient_step(r_obs.long(), r_action.long(), r_target, active.expand_as(r_target))
        pair = obs * self.num_actions + action
        for column in range(e):  # E is small (usually 1); one column at a time keeps the append lists unique
            self._remember(self.visited_pair, self.visited_pair_list, self.visited_pair_count, pair[:, column])
            self._remember(self.visited_state, self.visited_state_list, self.visited_state_count, obs[:, column])
        if self.options.uses_priority_queue:
            self._push(
                member.reshape(-1),
                obs.reshape(-1),
                delta.abs().reshape(-1) * active.expand(p, e).reshape(-1),
                by_model=False,
            )
        model_metrics = self._train_models(buffer)
        for _ in range(self.planning_steps):
            self._plan()
        metrics = {"td_error": delta.abs().mean(dim=1), **model_metrics}
        metrics.update(self.planning_statistics())
        return metrics

    def _push(self, member: torch.Tensor, state: torch.Tensor, priority: torch.Tensor, by_model: bool) -> None:
        """Push ``state`` (``[B]``, with ``member [B]``) with ``priority [B]`` where it exceeds the threshold."""
        enter = priority > self.options.priority_threshold
        flat = member * self.num_states + state
        current = self.priority.view(-1)
        current.scatter_reduce_(0, flat, torch.where(enter, priority, torch.zeros_like(priority)), reduce="amax")
        provenance = self.pushed_by_model.view(-1)
        provenance[flat] = torch.where(enter, torch.full_like(enter, by_model), provenance[flat])

    def _remember(self, mask: torch.Tensor, items: torch.Tensor, count: torch.Tensor, item: torch.Tensor) -> None:
        """Append ``item [P]`` to each member's list unless ``mask`` says it is already there."""
        new = ~mask[self.members, item]
        slot = count.clamp(max=items.shape[1] - 1)
        items[self.members, slot] = torch.where(new, item, items[self.members, slot])
        count += new.long()
        mask[self.members, item] = True

    def _draw(self, items: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """One uniform draw per member from its list (``0`` for members whose list is empty)."""
        u = torch.rand(self.population_size, generator=self.generator, device=self.device)
        index = (u * count).long().clamp(max=items.shape[1] - 1)
        return items[self.members, index]

    def _sample_visited_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A uniformly drawn visited real ``(state, action)`` per member."""
        pair = self._draw(self.visited_pair_list, self.visited_pair_count)
        return pair // self.num_actions, pair % self.num_actions

    def _pop_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(state int64[P], bootstrap_simulated bool[P])``: the search-control state of each member."""
        uniform_state = self._draw(self.visited_state_list, self.visited_state_count)
        if not self.options.uses_priority_queue:
            return uniform_state, torch.zeros_like(uniform_state, dtype=torch.bool)
        top_priority, top_state = self.priority.max(dim=1)
        from_queue = top_priority > self.options.priority_threshold
        state = torch.where(from_queue, top_state, uniform_state)
        simulated = from_queue & self.pushed_by_model[self.members, state]
        self.priority[self.members, state] = torch.where(
            from_queue, torch.zeros_like(top_priority), self.priority[self.members, state]
        )
        return state, simulated

    def _max_q(self, state: torch.Tensor) -> torch.Tensor:
        return self.q[self.members, state].max(dim=-1).values

    def _apply(
        self,
        state: torch.Tensor,
        action: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``Q[p, state, action] += alpha (target - Q)`` where ``mask`` (and not frozen); returns ``delta [P]``."""
        delta = target - self.q[self.members, state, action]
        keep = ~self.frozen if mask is None else (mask & ~self.frozen)
        if self.uses_network:
            self._gradient_step(state.unsqueeze(1), action.unsqueeze(1), target.unsqueeze(1), keep.float().unsqueeze(1))
        else:
            self.q[self.members, state, action] += self.step_size * delta * keep.float()
        return delta

    def _count(
        self,
        performed: torch.Tensor,
        updated_simulated: torch.Tensor,
        updated_state: torch.Tensor,
        bootstrap_simulated: torch.Tensor,
        bootstrap_state: torch.Tensor,
        bootstraps: torch.Tensor,
        path_hallucinated: torch.Tensor | None = None,
    ) -> None:
        """Accumulate the instruments of one batched planning update (all arguments ``[P]``).

        ``path_hallucinated``: the target was computed along a simulated path that passed through a hallucinated
        state before its bootstrap state (multi-step variants); the bootstrap state itself is counted separately.
        """
        updated_real = self.real_state_mask[updated_state]
        if path_hallucinated is None:
            path_hallucinated = torch.zeros_like(performed)
        bootstrap_simulated = bootstrap_simulated & bootstraps
        bootstrap_hallucinated = bootstrap_simulated & ~self.real_state_mask[bootstrap_state]
        columns = torch.stack(
            (
                torch.ones_like(performed),
                updated_simulated,
                updated_simulated & ~updated_real,
                bootstrap_simulated,
                bootstrap_hallucinated,
                updated_real & bootstrap_simulated,
                updated_real & bootstrap_hallucinated,
                updated_real & (bootstrap_hallucinated | path_hallucinated),
            ),
            dim=1,
        )
        self.planning_counts += (columns & performed.unsqueeze(1)).float()

    def _plan(self) -> None:
        if self.variant == "one-step-successor":
            self._plan_successor(1)
        elif self.variant == "multi-step-successor":
            self._plan_successor(self.rollout_length)
        elif self.variant == "one-step-predecessor":
            self._plan_one_step_predecessor()
        else:
            self._plan_multi_step_predecessor()

    def _plan_successor(self, length: int) -> None:
        start_state, start_action = self._sample_visited_pair()
        state, action = start_state, start_action
        ret = torch.zeros(self.population_size, device=self.device)
        discount = torch.ones(self.population_size, device=self.device)
        alive = torch.ones(self.population_size, dtype=torch.bool, device=self.device)
        path_hallucinated = torch.zeros_like(alive)
        assert self.forward_model is not None  # __init__ requires it for the successor variants
        for k in range(length):
            sample = self._check_forward(self.forward_model.sample_forward(state, action, self.generator))
            if k > 0:  # the state this step starts from lies on the path (the last one is the bootstrap state)
                path_hallucinated = path_hallucinated | (alive & ~self.real_state_mask[state])
            ret = ret + torch.where(alive, discount * sample.reward.float(), torch.zeros_like(ret))
            discount = discount * self.gamma
            alive = alive & ~sample.terminal.bool()
            state = sample.next_state
            if k + 1 < length:
                action = self.q[self.members, state].argmax(dim=-1)
        target = ret + torch.where(alive, discount * self._max_q(state), torch.zeros_like(ret))
        self._apply(start_state, start_action, target)
        performed = ~self.frozen
        self._count(
            performed, torch.zeros_like(alive), start_state, torch.ones_like(alive), state, alive, path_hallucinated
        )

    def _plan_one_step_predecessor(self) -> None:
        state, state_simulated = self._pop_state()
        assert self.backward_model is not None  # __init__ requires it for the predecessor variants
        sample = self._check_backward(self.backward_model.sample_backward(state, self.generator))
        bootstraps = ~sample.terminal.bool()
        target = sample.reward.float() + self.gamma * self._max_q(state) * bootstraps.float()
        delta = self._apply(sample.previous_state, sample.action, target)
        performed = ~self.frozen
        if self.options.uses_priority_queue:
            self._push(self.members, sample.previous_state, delta.abs() * performed.float(), by_model=True)
        self._count(performed, torch.ones_like(bootstraps), sample.previous_state, state_simulated, state, bootstraps)

    def _plan_multi_step_predecessor(self) -> None:
        real_state, _ = self._pop_state()  # the queue of this variant only ever holds real states
        value = self._max_q(real_state)
        bootstraps = torch.ones(self.population_size, dtype=torch.bool, device=self.device)
        alive = ~self.frozen
        current = real_state
        never_simulated = torch.zeros_like(alive)
        path_hallucinated = torch.zeros_like(alive)  # a chain state between the updated one and s is hallucinated
        assert self.backward_model is not None  # __init__ requires it for the predecessor variants
        for k in range(self.rollout_length):
            sample = self._check_backward(self.backward_model.sample_backward(current, self.generator))
            if k == 0:
                bootstraps = ~sample.terminal.bool()
                value = value * bootstraps.float()
            value = sample.reward.float() + self.gamma * value
            self._apply(sample.previous_state, sample.action, value, alive)
            self._count(
                alive,
                torch.ones_like(alive),
                sample.previous_state,
                never_simulated,
                real_state,
                bootstraps,
                path_hallucinated,
            )
            path_hallucinated = path_hallucinated | ~self.real_state_mask[sample.previous_state]
            # Watkins-style truncation: a_k must be greedy at s_k for G_{k+1} to be a max-target.
            q_prev = self.q[self.members, sample.previous_state]
            greedy = q_prev.gather(1, sample.action.unsqueeze(1)).squeeze(1) >= q_prev.max(dim=1).values
            alive = alive & greedy
            current = sample.previous_state

    # ------------------------------------------------------------------ instruments
    def planning_statistics(self) -> dict[str, torch.Tensor]:
        """Fractions of planning updates (``[P]`` each) since the last ``reset_statistics``, and their count."""
        updates = self.planning_counts[:, 0]
        safe = updates.clamp(min=1.0)
        stats = {"planning_updates": updates.clone()}
        for column, counter in enumerate(PLANNING_COUNTERS[1:], start=1):
            stats[f"fraction_{counter}"] = self.planning_counts[:, column] / safe
        outputs = self.model_output_counts[:, 0].clamp(min=1.0)
        stats["fraction_model_outputs_hallucinated"] = self.model_output_counts[:, 1] / outputs
        return stats

    def reset_statistics(self) -> None:
        self.planning_counts.zero_()
        self.model_output_counts.zero_()

    # ------------------------------------------------------------------ loop hooks and checkpoints
    def parameters_finite(self) -> torch.Tensor:
        finite = torch.isfinite(self.q).flatten(1).all(dim=1)
        if self.uses_network:
            for tensor in self.network:
                finite &= torch.isfinite(tensor.detach()).flatten(1).all(dim=1)
        for model in self.learned_models:
            finite &= model.parameters_finite().to(finite.device)
        return finite.cpu()

    def freeze(self, members: torch.Tensor) -> None:
        self.frozen |= members.to(self.device).bool()
        for model in self.learned_models:
            model.freeze(members)
        self._any_frozen = bool(self.frozen.any())

    def state_dict(self) -> dict[str, Any]:
        return {
            "q": self.q.clone(),
            "visited_pair": self.visited_pair.clone(),
            "visited_pair_list": self.visited_pair_list.clone(),
            "visited_pair_count": self.visited_pair_count.clone(),
            "visited_state": self.visited_state.clone(),
            "visited_state_list": self.visited_state_list.clone(),
            "visited_state_count": self.visited_state_count.clone(),
            "priority": self.priority.clone(),
            "pushed_by_model": self.pushed_by_model.clone(),
            "planning_counts": self.planning_counts.clone(),
            "model_output_counts": self.model_output_counts.clone(),
            "frozen": self.frozen.clone(),
            "generator": self.generator.get_state(),
            **(
                {"learned_models": [model.state_dict() for model in self.learned_models]} if self.learned_models else {}
            ),
            **(
                {
                    "network": [t.detach().clone() for t in self.network],
                    "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                }
                if self.uses_network
                else {}
            ),
        }

    #: keys of the learned models' own replay ring, kept in checkpoints before the models trained from the loop's
    #: ``TrajectoryBuffer``
    OLD_MODEL_REPLAY_KEYS = ("model_replay_states", "model_replay_values", "model_replay_cursor", "model_replay_size")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``.

        Raises:
            CheckpointError: ``state`` was written by an older tabular Dyna with learned models, which kept its own
                replay of real transitions (``model_replay_*``). The models now train from the run's trajectory
                buffer, and such a checkpoint's buffer holds only the latest step, so the run cannot continue as it
                would have: it is refused rather than resumed differently.
        """
        if any(key in state for key in self.OLD_MODEL_REPLAY_KEYS):
            from emphatic_rl.checkpoints import CheckpointError

            raise CheckpointError(
                "it was written by an older tabular Dyna whose learned models kept their own replay of real "
                "transitions (model_replay_*); the models now train from the run's trajectory buffer, which that "
                "checkpoint does not hold (its buffer keeps only the latest step), so the run cannot continue as it "
                "would have: start it again"
            )
        for key in (
            "q",
            "visited_pair",
            "visited_pair_list",
            "visited_pair_count",
            "visited_state",
            "visited_state_list",
            "visited_state_count",
            "priority",
            "pushed_by_model",
            "planning_counts",
            "frozen",
        ):
            getattr(self, key).copy_(state[key].to(self.device))
        self.generator.set_state(state["generator"])
        if "model_output_counts" in state:
            self.model_output_counts.copy_(state["model_output_counts"].to(self.device))
        if self.learned_models:
            for model, saved in zip(self.learned_models, state["learned_models"], strict=True):
                model.load_state_dict(saved)
        if self.uses_network:
            with torch.no_grad():
                for tensor, saved in zip(self.network, state["network"], strict=True):
                    tensor.copy_(saved.to(self.device))
            self.optimizer.load_state_dict(state["optimizer"])
            self._any_frozen = bool(self.frozen.any())
            self._refresh_q()


def state_features(env: TensorEnv) -> torch.Tensor:
    """``float32[S, F]``: the env's declared state coordinates (``TabularDynamics.state_coordinates``; the
    gridworld's ``(row, col)`` in ``[-1, 1]`` over the full grid, border included, so a network generalises between
    neighbouring cells), or one-hot states where the env declares none.

    Raises:
        ValueError: the env declares no tabular dynamics.
    """
    dynamics = tabular_dynamics_of(env, needed_by="tabular Dyna")
    if dynamics.state_coordinates is None:
        return torch.eye(dynamics.num_states, device=env.device)
    return dynamics.state_coordinates


def learned_model_of(env: TensorEnv, population_size: int, options: DynaOptions, seed: int = 0) -> LearnedTabularModel:
    """The untrained learned forward/backward model of a tabular env (``DynaOptions.model = "learned"``).

    Input features: ``one-hot`` cells (``[S, S]``) or ``coordinates`` (the env's declared state coordinates,
    ``[S, F]``); the hallucination flags come from the env's real states. ``seed`` is the run seed; the model
    samples from its own ``model`` stream (:mod:`emphatic_rl.seeding`).

    Raises:
        ValueError: the env declares no tabular dynamics, or no state coordinates for ``model_features =
            "coordinates"``.
    """
    dynamics = tabular_dynamics_of(env, needed_by="tabular Dyna with a learned model")
    if options.model_features == "one-hot":
        features = torch.eye(dynamics.num_states)
    elif dynamics.state_coordinates is None:
        raise ValueError(
            f"model_features='coordinates' needs an env that declares state coordinates; env {env.name!r} does "
            "not (use model_features='one-hot')"
        )
    else:
        features = dynamics.state_coordinates
    return LearnedTabularModel(
        features,
        dynamics.num_actions,
        population_size,
        hidden=(options.model_hidden, options.model_hidden),
        learning_rate=options.model_learning_rate,
        sampling=options.model_sampling,
        real_state_mask=dynamics.real_state_mask,
        seed=stream_seed(seed, "model"),  # its own stream: not the agent's generator, nor the value function's weights
        device=env.device,
    )


def make_dyna_for_env(
    env: TensorEnv,
    population_size: int,
    options: DynaOptions,
    seed: int = 0,
    step_size: torch.Tensor | None = None,
    epsilon: torch.Tensor | None = None,
    hallucination_probability: float | Sequence[float] | torch.Tensor | None = None,
) -> DynaAgent:
    """A ``DynaAgent`` for an env that declares tabular dynamics (``has_tabular_dynamics``: the
    ``bordered-gridworld``), its model attached: the given model of the env's tables, or a learned one.

    ``seed`` is the run seed: the agent's one generator (initialisation, exploration, search control, model samples)
    is the ``init`` stream of :mod:`emphatic_rl.seeding`, a learned model's own sampling the ``model`` stream.
    ``hallucination_probability`` overrides ``options.hallucination_probability`` (scalar or ``[P]``).

    Raises:
        ValueError: the env declares no tabular dynamics (one line naming it), or a bad option.
    """
    p_h = options.hallucination_probability if hallucination_probability is None else hallucination_probability
    needed_by = f"tabular Dyna (model={options.model!r})"
    dynamics = tabular_dynamics_of(env, options.border_physics if options.model == "given" else "closed", needed_by)
    if options.model == "learned":
        if bool((torch.as_tensor(p_h, dtype=torch.float32) != 0).any()):
            raise ValueError("hallucination_probability (p_h) must be 0 with model='learned' (it is the given model's)")
        model: LearnedTabularModel | GivenTabularModel = learned_model_of(env, population_size, options, seed=seed)
    else:
        model = given_model_of(env, p_h, population_size, options.border_physics)
    return DynaAgent(
        dynamics.num_states,
        dynamics.num_actions,
        population_size,
        options,
        forward_model=model,
        backward_model=model,
        real_state_mask=dynamics.real_state_mask,
        step_size=step_size,
        epsilon=epsilon,
        seed=stream_seed(seed, "init"),
        device=env.device,
        features=state_features(env) if options.value_function == "mlp" else None,
    )


@register_agent(
    "dyna", DynaOptions, "tabular Dyna: one-/multi-step successor/predecessor planning (Hallucinating Value)"
)
def make_dyna(context: AgentContext, options: DynaOptions) -> DynaAgent:
    """Registry factory: the run's env must be a tabular env with dynamics tables (``bordered-gridworld``).

    The given model is the dynamics of ``context.env`` (the run's env, with its options) when the loop provides
    it, else of ``make_env(context.env_name)`` with default options, checked against the run's observation spec.
    """
    env = context.env
    if env is None:
        from emphatic_rl.envs import make_env

        if not context.env_name:
            raise ValueError("agent 'dyna' needs the env (or its name) in its context: its model is the env's dynamics")
        env = make_env(context.env_name, num_envs=1, device=context.device)
    if not env.has_tabular_dynamics:
        raise ValueError(
            f"agent 'dyna' is tabular and needs an env that declares tabular dynamics (has_tabular_dynamics, e.g. "
            f"'bordered-gridworld'); env {context.env_name or env.name!r} does not"
        )
    agent = make_dyna_for_env(env, context.population_size, options, seed=context.seed)
    spec = context.observation_spec  # a tabular env observes its state index: a scalar box [0, S - 1]
    spec_states = int(spec.high) + 1 if isinstance(spec, BoxSpec) and isinstance(spec.high, int | float) else -1
    if spec_states != agent.num_states:
        raise ValueError(
            f"agent 'dyna': the run's env has {spec_states} states but the model's env has {agent.num_states}; "
            "build the agent with emphatic_rl.agents.dyna.tabular.make_dyna_for_env(env, ...)"
        )
    agent.buffer_capacity = agent.buffer_rows(context.envs_per_member)
    return agent
