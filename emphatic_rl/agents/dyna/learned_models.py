"""Learned (neural) environment models for Dyna: forward ``(s, a) -> (s', r, terminal)`` and backward
``(s', a) -> s`` (predecessor), one network pair per population member, trained from replayed real transitions.

Design (our choice: the paper does not say how its models are parameterised). Both models are *action-headed* population
MLPs (:class:`~emphatic_rl.agents.networks.PopulationMLP`, ``[P, B, ...]``): the input is the state alone and the output
holds one head per action, so ``(s, a) -> ...`` is one network pass and a gather along the action axis.

``LearnedTabularModel`` (tabular states, e.g. the Bordered Gridworld, ``S`` cells including the unreachable ring):

- input: a fixed feature row of the state (``features [S, F]``; the agent uses one-hot cells or ``(row, col)`` in
  ``[-1, 1]`` over the full grid, border included; see ``DynaOptions.model_features``);
- forward heads per action: logits of a **categorical distribution over all S states** (softmax, trained with
  cross-entropy on the observed next state), the reward (squared error) and a terminal logit (binary
  cross-entropy). We predict a distribution rather than regress coordinates because the states are discrete:
  a sample is always a valid index, and a model that is unsure spreads mass over cells, unreachable border cells
  included, which is exactly how a learned model hallucinates here;
- backward heads: logits of ``p(a | s')`` (which action led into ``s'``), per action the logits of the
  predecessor ``p(s | s', a)`` and the reward, and one terminal logit (``s'`` was entered by an episode-ending
  transition). A backward sample draws ``a ~ p(a | s')``, then ``s ~ p(s | s', a)``;
- ``sampling="sample"`` (default) draws states and terminal flags from the predicted distributions;
  ``"mode"`` takes the arg-max state and ``terminal = p > 0.5`` (a deterministic model).

``LearnedVectorModel`` (vector observations ``[D]``, e.g. CartPole ``[4]``, Puddle World ``[2]``): deterministic
regression of the state change (forward ``s' - s``, backward ``s - s'``) in units of the running standard deviation
of the observations (inputs are standardised with the running mean/std of the training data, per member), reward
(squared error) and a terminal logit; the backward model also predicts ``p(a | s')`` and samples the action from it.
Every vector sample carries ``is_real`` from the env's declared real-state test
(:func:`emphatic_rl.agents.dyna.models.is_real_state`: CartPole beyond its termination bounds without a terminal signal,
Puddle World outside the unit square), or ``None`` where no env name was given.

Tabular samples are the plain :class:`~emphatic_rl.agents.dyna.models.ForwardSample` / ``BackwardSample``; the agent
flags them with the env's ``real_state_mask`` (``is_real`` gives the same flag here), so the Dyna instruments count
how often the learned model hallucinates exactly as they do for the given model.

Training: ``train_step(obs, action, reward, next_obs, terminated)`` (all ``[P, B, ...]``) is one Adam step of both
networks on the *sum over members* of each member's mean loss, so members learn independently; ``frozen``
members' parameters are kept unchanged.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import torch
from torch import nn

from emphatic_rl.agents.dyna.models import (
    BackwardModel,
    BackwardSample,
    ForwardModel,
    ForwardSample,
    TrainableModel,
    is_real_state,
)
from emphatic_rl.agents.networks import PopulationMLP

SAMPLINGS: tuple[str, ...] = ("sample", "mode")
DIRECTIONS: tuple[str, ...] = ("forward", "backward")


def _check_directions(directions: tuple[str, ...]) -> None:
    if not directions or any(d not in DIRECTIONS for d in directions):
        raise ValueError(f"directions must be a non-empty subset of {DIRECTIONS}, got {directions!r}")


class VectorForwardSample(NamedTuple):
    """``next_state float32[P, D]``, ``reward [P]``, ``terminal bool[P]``, ``is_real bool[P]`` (or ``None``)."""

    next_state: torch.Tensor
    reward: torch.Tensor
    terminal: torch.Tensor
    is_real: torch.Tensor | None


class VectorBackwardSample(NamedTuple):
    """One predecessor transition ``previous_state --action--> state``: ``previous_state [P, D]``, the rest ``[P]``."""

    previous_state: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    terminal: torch.Tensor
    is_real: torch.Tensor | None


def _check_int(name: str, value: Any, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row of ``probs [..., K]`` by inverse-CDF sampling with ``generator`` -> ``int64[...]``."""
    cdf = probs.cumsum(dim=-1)
    u = torch.rand(probs.shape[:-1], generator=generator, device=probs.device).unsqueeze(-1) * cdf[..., -1:]
    return torch.searchsorted(cdf.contiguous(), u.contiguous()).squeeze(-1).clamp(max=probs.shape[-1] - 1)


class _PopulationModelBase(TrainableModel):
    """Shared parts: the two networks, Adam over both, frozen members, state dicts (a ``TrainableModel``)."""

    population_size: int
    num_actions: int
    forward_net: PopulationMLP
    backward_net: PopulationMLP

    def _build_optimizer(self, learning_rate: float) -> None:
        if not (isinstance(learning_rate, (int, float)) and learning_rate > 0):
            raise ValueError(f"model learning_rate must be > 0, got {learning_rate!r}")
        self.parameters = [*self.forward_net.parameters(), *self.backward_net.parameters()]
        self.optimizer = torch.optim.Adam(self.parameters, lr=float(learning_rate))
        self.frozen = torch.zeros(self.population_size, dtype=torch.bool, device=self.device)

    def _optimise(self, loss_per_member: torch.Tensor) -> None:
        """One Adam step on ``loss_per_member [P]`` summed; frozen members keep their parameters."""
        keep = [p.detach().clone() for p in self.parameters] if bool(self.frozen.any()) else None
        self.optimizer.zero_grad(set_to_none=True)
        loss_per_member.sum().backward()
        self.optimizer.step()
        if keep is not None:
            with torch.no_grad():
                for parameter, old in zip(self.parameters, keep, strict=True):
                    mask = self.frozen.view(-1, *([1] * (parameter.dim() - 1)))
                    parameter.copy_(torch.where(mask, old, parameter))

    def freeze(self, members: torch.Tensor) -> None:
        """Stop training ``members`` (``bool[P]``)."""
        self.frozen |= members.to(self.device).bool()

    def parameters_finite(self) -> torch.Tensor:
        """``bool[P]``: members whose model parameters are all finite."""
        finite = torch.ones(self.population_size, dtype=torch.bool, device=self.device)
        for p in self.parameters:
            finite &= torch.isfinite(p.detach()).flatten(1).all(dim=1)
        return finite

    def state_dict(self) -> dict[str, Any]:
        return {
            "forward_net": {k: v.detach().clone() for k, v in self.forward_net.state_dict().items()},
            "backward_net": {k: v.detach().clone() for k, v in self.backward_net.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "frozen": self.frozen.clone(),
            **self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.forward_net.load_state_dict(state["forward_net"])
        self.backward_net.load_state_dict(state["backward_net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.frozen.copy_(state["frozen"].to(self.device))
        self._load_extra_state(state)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def _check_batch(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
        state_shape: tuple[int, ...],
    ) -> int:
        """Check a training batch laid out ``[P, B, *state_shape]`` / ``[P, B]``; return ``B``."""
        if obs.dim() < 2 or obs.shape[0] != self.population_size or tuple(obs.shape[2:]) != state_shape:
            raise ValueError(
                f"model training obs must be [P={self.population_size}, B, *{state_shape}], got {tuple(obs.shape)}"
            )
        lead = tuple(obs.shape[:2])
        for name, value, shape in (
            ("next_obs", next_obs, (*lead, *state_shape)),
            ("action", action, lead),
            ("reward", reward, lead),
            ("terminated", terminated, lead),
        ):
            if tuple(value.shape) != shape:
                raise ValueError(f"model training {name} must have shape {shape}, got {tuple(value.shape)}")
        if bool(((action < 0) | (action >= self.num_actions)).any()):
            raise ValueError(f"model training action must lie in 0..{self.num_actions - 1}")
        return lead[1]


class LearnedTabularModel(_PopulationModelBase, ForwardModel, BackwardModel):
    """Learned forward and backward models over ``S`` tabular states (see the module docstring).

    Args:
        features: ``float32[S, F]`` the network input of each state.
        num_actions: ``A``.
        population_size: ``P``.
        hidden: hidden widths of both MLPs.
        learning_rate: Adam step size.
        sampling: ``"sample"`` or ``"mode"``.
        real_state_mask: ``bool[S]``, the env's real states (for ``is_real``); ``None``: all real.
        seed: seeds the networks' initialisation.
        device: torch device.
    """

    def __init__(
        self,
        features: torch.Tensor,
        num_actions: int,
        population_size: int,
        hidden: tuple[int, ...] = (64, 64),
        learning_rate: float = 1e-3,
        sampling: str = "sample",
        real_state_mask: torch.Tensor | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] < 1:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"features must be float32[S, F] (one row per tabular state), got {shape}")
        self.num_actions = _check_int("num_actions", num_actions)
        self.population_size = _check_int("population_size", population_size)
        if sampling not in SAMPLINGS:
            raise ValueError(f"model sampling must be one of {', '.join(SAMPLINGS)}; got {sampling!r}")
        self.device = torch.device(device)
        self.sampling = sampling
        self.features = features.float().to(self.device)
        self.num_states = features.shape[0]
        if real_state_mask is None:
            real_state_mask = torch.ones(self.num_states, dtype=torch.bool)
        if tuple(real_state_mask.shape) != (self.num_states,):
            raise ValueError(
                f"real_state_mask must have shape ({self.num_states},), got {tuple(real_state_mask.shape)}"
            )
        self.real_state_mask = real_state_mask.to(self.device).bool()
        s, a = self.num_states, self.num_actions
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.forward_net = PopulationMLP(population_size, features.shape[1], a * (s + 2), tuple(hidden))
            self.backward_net = PopulationMLP(population_size, features.shape[1], a + a * (s + 1) + 1, tuple(hidden))
        self.forward_net.to(self.device)
        self.backward_net.to(self.device)
        self._build_optimizer(learning_rate)
        self.members = torch.arange(population_size, device=self.device)

    # ------------------------------------------------------------------ network heads
    def forward_heads(
        self, state: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``state, action: int64[P, B]`` -> ``(next_logits [P, B, S], reward [P, B], terminal_logit [P, B])``."""
        out = self.forward_net(self.features[state]).unflatten(-1, (self.num_actions, self.num_states + 2))
        out = out.gather(2, action[..., None, None].expand(*action.shape, 1, out.shape[-1])).squeeze(2)
        return out[..., : self.num_states], out[..., self.num_states], out[..., self.num_states + 1]

    def backward_heads(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``state: int64[P, B]`` (the successor ``s'``) -> ``(action_logits [P, B, A], previous_logits [P, B, A, S],
        reward [P, B, A], terminal_logit [P, B])``."""
        s, a = self.num_states, self.num_actions
        out = self.backward_net(self.features[state])
        per_action = out[..., a : a + a * (s + 1)].unflatten(-1, (a, s + 1))
        return out[..., :a], per_action[..., :s], per_action[..., s], out[..., -1]

    # ------------------------------------------------------------------ training
    def train_step(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
        directions: tuple[str, ...] = DIRECTIONS,
    ) -> dict[str, torch.Tensor]:
        """One Adam step of the models named in ``directions`` (``forward``, ``backward``) on real transitions, all
        ``[P, B]`` (``obs``/``next_obs`` state indices).

        Returns ``forward_loss`` / ``backward_loss``, ``[P]`` each (before the step), for the trained directions.
        """
        _check_directions(directions)
        self._check_batch(obs, action, reward, next_obs, terminated, ())
        obs, action, next_obs = obs.long(), action.long(), next_obs.long()
        reward, terminated = reward.float(), terminated.float()
        if bool(((obs < 0) | (obs >= self.num_states) | (next_obs < 0) | (next_obs >= self.num_states)).any()):
            raise ValueError(f"model training states must lie in 0..{self.num_states - 1}")
        ce = nn.functional.cross_entropy
        bce = nn.functional.binary_cross_entropy_with_logits
        losses: dict[str, torch.Tensor] = {}
        if "forward" in directions:
            next_logits, reward_hat, terminal_logit = self.forward_heads(obs, action)
            losses["forward_loss"] = (
                ce(next_logits.transpose(1, 2), next_obs, reduction="none")
                + (reward_hat - reward).square()
                + bce(terminal_logit, terminated, reduction="none")
            ).mean(dim=1)
        if "backward" in directions:
            action_logits, previous_logits, reward_back, terminal_back = self.backward_heads(next_obs)
            index = action[..., None]
            previous_logits = previous_logits.gather(2, index[..., None].expand(*index.shape, self.num_states))
            losses["backward_loss"] = (
                ce(action_logits.transpose(1, 2), action, reduction="none")
                + ce(previous_logits.squeeze(2).transpose(1, 2), obs, reduction="none")
                + (reward_back.gather(2, index).squeeze(2) - reward).square()
                + bce(terminal_back, terminated, reduction="none")
            ).mean(dim=1)
        self._optimise(sum(losses.values()))
        return {key: value.detach() for key, value in losses.items()}

    # ------------------------------------------------------------------ sampling (the ForwardModel/BackwardModel API)
    def _check_state(self, state: torch.Tensor, name: str = "state") -> torch.Tensor:
        if not isinstance(state, torch.Tensor) or tuple(state.shape) != (self.population_size,):
            shape = tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
            raise ValueError(f"learned model: {name} must be int64[P={self.population_size}], got {shape}")
        state = state.long()
        if bool(((state < 0) | (state >= self.num_states)).any()):
            raise ValueError(f"learned model: {name} must lie in 0..{self.num_states - 1}")
        return state

    def _draw(self, logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.sampling == "mode":
            return logits.argmax(dim=-1)
        return _categorical(torch.softmax(logits, dim=-1), generator)

    def _terminal(self, logit: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.sampling == "mode":
            return logit > 0
        return torch.rand(logit.shape, generator=generator, device=self.device) < torch.sigmoid(logit)

    @torch.no_grad()
    def sample_forward(self, state: torch.Tensor, action: torch.Tensor, generator: torch.Generator) -> ForwardSample:
        """``state, action: int64[P]`` -> one simulated step each (``ForwardSample``, ``[P]`` fields)."""
        state = self._check_state(state)
        if not isinstance(action, torch.Tensor) or tuple(action.shape) != (self.population_size,):
            raise ValueError(f"learned model: action must be int64[P={self.population_size}]")
        action = action.long()
        next_logits, reward, terminal_logit = self.forward_heads(state.unsqueeze(1), action.unsqueeze(1))
        next_state = self._draw(next_logits.squeeze(1), generator)
        return ForwardSample(next_state, reward.squeeze(1), self._terminal(terminal_logit.squeeze(1), generator))

    @torch.no_grad()
    def sample_backward(self, state: torch.Tensor, generator: torch.Generator) -> BackwardSample:
        """``state: int64[P]`` -> one simulated predecessor transition each (``BackwardSample``, ``[P]`` fields)."""
        state = self._check_state(state)
        action_logits, previous_logits, reward, terminal_logit = self.backward_heads(state.unsqueeze(1))
        action = self._draw(action_logits.squeeze(1), generator)
        chosen = previous_logits.squeeze(1)[self.members, action]
        previous = self._draw(chosen, generator)
        return BackwardSample(
            previous,
            action,
            reward.squeeze(1)[self.members, action],
            self._terminal(terminal_logit.squeeze(1), generator),
        )

    def is_real(self, state: torch.Tensor) -> torch.Tensor:
        """``bool[...]``: whether model-generated state indices are real states of the env (its real-state mask)."""
        return self.real_state_mask[state]


class LearnedVectorModel(_PopulationModelBase):
    """Learned forward and backward models over vector states ``[D]`` (see the module docstring).

    Args:
        obs_dim: ``D``.
        num_actions: ``A``.
        population_size: ``P``.
        env_name: the env whose validity region flags samples (``cartpole``, ``puddle-world``, see
            :func:`~emphatic_rl.agents.dyna.models.is_real_state`); ``None``: samples carry ``is_real = None``.
        hidden: as for ``LearnedTabularModel``.
        learning_rate: as for ``LearnedTabularModel``.
        seed: as for ``LearnedTabularModel``.
        device: as for ``LearnedTabularModel``.
    """

    def __init__(
        self,
        obs_dim: int,
        num_actions: int,
        population_size: int,
        env_name: str | None = None,
        hidden: tuple[int, ...] = (64, 64),
        learning_rate: float = 1e-3,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.obs_dim = _check_int("obs_dim", obs_dim)
        self.num_actions = _check_int("num_actions", num_actions)
        self.population_size = _check_int("population_size", population_size)
        if env_name is not None:  # fail now, not at the first sample, for an env whose states cannot be judged
            is_real_state(env_name, torch.zeros(1, obs_dim))
        self.env_name = env_name
        self.device = torch.device(device)
        d, a = obs_dim, num_actions
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.forward_net = PopulationMLP(population_size, d, a * (d + 2), tuple(hidden))
            self.backward_net = PopulationMLP(population_size, d, a + a * (d + 1) + 1, tuple(hidden))
        self.forward_net.to(self.device)
        self.backward_net.to(self.device)
        self._build_optimizer(learning_rate)
        self.members = torch.arange(population_size, device=self.device)
        # Running per-member statistics of the training observations (count, mean, sum of squared deviations).
        self.count = torch.zeros(population_size, device=self.device)
        self.mean = torch.zeros(population_size, d, device=self.device)
        self.m2 = torch.zeros(population_size, d, device=self.device)

    @property
    def std(self) -> torch.Tensor:
        """``[P, D]``: running standard deviation of the observations (1 before any data, floored at 1e-3)."""
        var = self.m2 / self.count.clamp(min=1.0).unsqueeze(1)
        return torch.where(self.count.unsqueeze(1) > 1, var.sqrt().clamp(min=1e-3), torch.ones_like(var))

    def _normalise(self, state: torch.Tensor) -> torch.Tensor:
        """``state [P, B, D]`` -> standardised with each member's running statistics."""
        return (state - self.mean.unsqueeze(1)) / self.std.unsqueeze(1)

    def _update_statistics(self, obs: torch.Tensor) -> None:
        """Chan et al.'s parallel update of the running mean/variance with ``obs [P, B, D]``."""
        batch = obs.shape[1]
        batch_mean = obs.mean(dim=1)
        batch_m2 = (obs - batch_mean.unsqueeze(1)).square().sum(dim=1)
        active = (~self.frozen).float()  # frozen members keep their statistics
        added = batch * active
        total = self.count + added
        delta = batch_mean - self.mean
        self.mean += delta * (added / total.clamp(min=1.0)).unsqueeze(1)
        self.m2 += (batch_m2 + delta.square() * (self.count * batch / total.clamp(min=1.0)).unsqueeze(1)) * active[
            :, None
        ]
        self.count = total

    def _extra_state(self) -> dict[str, Any]:
        return {"count": self.count.clone(), "mean": self.mean.clone(), "m2": self.m2.clone()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.count.copy_(state["count"])
        self.mean.copy_(state["mean"])
        self.m2.copy_(state["m2"])

    def forward_heads(
        self, state: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``state [P, B, D]``, ``action int64[P, B]`` -> ``(next_state [P, B, D], reward [P, B], terminal_logit)``."""
        d = self.obs_dim
        out = self.forward_net(self._normalise(state)).unflatten(-1, (self.num_actions, d + 2))
        out = out.gather(2, action[..., None, None].expand(*action.shape, 1, d + 2)).squeeze(2)
        next_state = state + out[..., :d] * self.std.unsqueeze(1)
        return next_state, out[..., d], out[..., d + 1]

    def backward_heads(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``state [P, B, D]`` (the successor) -> ``(action_logits [P, B, A], previous_state [P, B, A, D],
        reward [P, B, A], terminal_logit [P, B])``."""
        d, a = self.obs_dim, self.num_actions
        out = self.backward_net(self._normalise(state))
        per_action = out[..., a : a + a * (d + 1)].unflatten(-1, (a, d + 1))
        previous = state.unsqueeze(2) + per_action[..., :d] * self.std[:, None, None, :]
        return out[..., :a], previous, per_action[..., d], out[..., -1]

    def train_step(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        terminated: torch.Tensor,
        directions: tuple[str, ...] = DIRECTIONS,
    ) -> dict[str, torch.Tensor]:
        """One Adam step on real transitions: ``obs, next_obs [P, B, D]``, ``action, reward, terminated [P, B]``.

        Updates the running observation statistics first. Returns ``forward_loss`` / ``backward_loss`` ``[P]`` for
        the trained ``directions``.
        """
        _check_directions(directions)
        self._check_batch(obs, action, reward, next_obs, terminated, (self.obs_dim,))
        obs, next_obs, action = obs.float(), next_obs.float(), action.long()
        reward, terminated = reward.float(), terminated.float()
        self._update_statistics(torch.cat((obs, next_obs), dim=1))
        std = self.std.unsqueeze(1)
        bce = nn.functional.binary_cross_entropy_with_logits
        losses: dict[str, torch.Tensor] = {}
        if "forward" in directions:
            next_hat, reward_hat, terminal_logit = self.forward_heads(obs, action)
            losses["forward_loss"] = (
                ((next_hat - next_obs) / std).square().sum(-1)
                + (reward_hat - reward).square()
                + bce(terminal_logit, terminated, reduction="none")
            ).mean(dim=1)
        if "backward" in directions:
            action_logits, previous, reward_back, terminal_back = self.backward_heads(next_obs)
            index = action[..., None]
            previous = previous.gather(2, index[..., None].expand(*index.shape, self.obs_dim)).squeeze(2)
            losses["backward_loss"] = (
                nn.functional.cross_entropy(action_logits.transpose(1, 2), action, reduction="none")
                + ((previous - obs) / std).square().sum(-1)
                + (reward_back.gather(2, index).squeeze(2) - reward).square()
                + bce(terminal_back, terminated, reduction="none")
            ).mean(dim=1)
        self._optimise(sum(losses.values()))
        return {key: value.detach() for key, value in losses.items()}

    def _check_vector_state(self, state: torch.Tensor) -> torch.Tensor:
        if not isinstance(state, torch.Tensor) or tuple(state.shape) != (self.population_size, self.obs_dim):
            shape = tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
            raise ValueError(
                f"learned vector model: state must be float32[P={self.population_size}, D={self.obs_dim}], got {shape}"
            )
        return state.float().to(self.device)

    def _flag(self, state: torch.Tensor, terminal: torch.Tensor) -> torch.Tensor | None:
        return None if self.env_name is None else is_real_state(self.env_name, state, terminal)

    @torch.no_grad()
    def sample_forward(
        self, state: torch.Tensor, action: torch.Tensor, generator: torch.Generator | None = None
    ) -> VectorForwardSample:
        """``state [P, D]``, ``action int64[P]`` -> the predicted step (deterministic), flagged real/hallucinated."""
        state = self._check_vector_state(state)
        if tuple(action.shape) != (self.population_size,):
            raise ValueError(f"learned vector model: action must be int64[P={self.population_size}]")
        next_state, reward, terminal_logit = self.forward_heads(state.unsqueeze(1), action.long().unsqueeze(1))
        next_state, terminal = next_state.squeeze(1), terminal_logit.squeeze(1) > 0
        return VectorForwardSample(next_state, reward.squeeze(1), terminal, self._flag(next_state, terminal))

    @torch.no_grad()
    def sample_backward(self, state: torch.Tensor, generator: torch.Generator) -> VectorBackwardSample:
        """``state [P, D]`` -> ``a ~ p(a | s')`` (sampled with ``generator``) and the predicted predecessor."""
        state = self._check_vector_state(state)
        action_logits, previous, reward, terminal_logit = self.backward_heads(state.unsqueeze(1))
        action = _categorical(torch.softmax(action_logits.squeeze(1), dim=-1), generator)
        previous = previous.squeeze(1)[self.members, action]
        # The predecessor is a state the episode was still running in: judge it as a non-terminal state.
        flag = None if self.env_name is None else self._flag(previous, torch.zeros_like(action, dtype=torch.bool))
        return VectorBackwardSample(
            previous, action, reward.squeeze(1)[self.members, action], terminal_logit.squeeze(1) > 0, flag
        )
