"""Command-line agents ``ace``, ``ace-direct`` and ``offpac``: the linear ``ActorCritic`` with a preset, its features
chosen for the env, and per-member hyperparameters for population sweeps.

Any step size, ``critic_lambda`` or ``eta`` may be a list with one value per population member (``P`` values), so a
whole sweep runs as one batched agent; ``stream_of`` (``P`` stream indices) says which behaviour stream feeds each
member (default: member ``p`` reads stream ``p % R``).

Features (``features = "auto"``):

- ``mountain-car``: tile coding as in the authors' code (docs/environments.md): 4x4 tiles (5x5 internally), 8 tilings, a
  bias feature: 201 features, 9 active. Step sizes are divided by 9.
- ``puddle-world`` and ``puddle-world-gaussian``: 2x2 tiles, 2 tilings, bias (the authors' code): 19 features, 3 active.
- tabular MDPs observed as one-hot states (``--set env.observation="state"``): the actor sees the MDP's (possibly
  aliased) actor features, the critic the MDP's critic features, or the state itself for the ``oracle`` critic
  (exact ``v_pi`` from the exact lab). Observed as features (``"actor"``, the default), actor and critic share them.
- ``virtual-office`` and every other vector observation: the observation itself (``dense``), optionally L2-normalised
  (``dense-normalized``).

On tabular MDPs the agent also reports the exact objective ``J_mu`` of every member's current policy (``eval/exact_J``,
from the exact lab, with the agent's interest function).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from emphatic_rl.agents.linear.actor_critic import BACKENDS, DTYPES, ActorCritic, preset_settings
from emphatic_rl.agents.registry import (
    AgentContext,
    check_switches,
    check_unit_interval,
    per_member,
    register_agent,
)
from emphatic_rl.envs.base import BoxSpec, DiscreteSpec, TensorEnv
from emphatic_rl.envs.registry import ENV_REGISTRY
from emphatic_rl.envs.tabular import TabularEnv
from emphatic_rl.features import DenseFeatures, Features, TableFeatures, TileCoder

FEATURE_KINDS = ("auto", "tile", "dense", "dense-normalized", "tabular")

#: Tile-coding layouts of the registered envs that declare one (``TensorEnv.tile_layout``): (low, high, tiles per
#: dim, tilings). The envs own them; this mapping is read from the env registry (the J23 authors' tilings for Mountain
#: Car and Puddle World, docs/environments.md).
TILE_LAYOUTS: dict[str, tuple[tuple[float, ...], tuple[float, ...], tuple[int, ...], int]] = {
    name: entry.factory.tile_layout
    for name, entry in ENV_REGISTRY.items()
    if isinstance(entry.factory, type) and issubclass(entry.factory, TensorEnv) and entry.factory.tile_layout
}


@dataclass(frozen=True)
class ActorCriticOptions:
    """Options of ``ace`` / ``ace-direct`` / ``offpac`` (see ``ActorCritic`` for each one's meaning).

    ``None`` for ``eta``, ``emphasis`` and ``interest`` means "the preset's value"; ``None`` for ``gamma`` means
    0.95 (the J23 protocol), or the MDP's own discount on tabular MDPs (1 for the N18 counterexamples).
    """

    alpha_actor: Any = per_member(0.01, low=0.0, low_open=True)
    alpha_critic: Any = per_member(0.01, low=0.0, low_open=True)
    alpha_h: Any = per_member(None, low=0.0, low_open=True)
    alpha_emphasis: Any = per_member(0.01, low=0.0, low_open=True)
    critic_lambda: Any = per_member(0.0, low=0.0, high=1.0)
    eta: Any = per_member(None, low=0.0, high=1.0)
    gamma: float | None = None
    emphasis: str | None = None
    normalize_emphasis: bool = False
    interest: str | None = None
    actor_update: str = "sampled"
    critic: str = "tdrc"
    timeout_as_terminal: bool = True
    evaluation: str = "sample"
    features: str = "auto"
    tiles_per_dim: list[int] | None = None
    num_tilings: int | None = None
    stream_of: list[int] | None = None
    ideal_history_cap: int = 1000
    fit_stream_start: bool = True
    dtype: str = "float64"
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.features not in FEATURE_KINDS:
            raise ValueError(f"unknown features {self.features!r}; allowed: {', '.join(FEATURE_KINDS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; allowed: {', '.join(DTYPES)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; allowed: {', '.join(BACKENDS)}")
        check_switches(self, ("normalize_emphasis", "timeout_as_terminal", "fit_stream_start"))
        if self.gamma is not None:
            check_unit_interval("gamma", self.gamma)


def _tabular_env(env: Any) -> TabularEnv | None:
    return env if isinstance(env, TabularEnv) else None


def choose_features(options: ActorCriticOptions, context: AgentContext, env: Any) -> tuple[Features, Features]:
    """``(actor_features, critic_features)`` for the env (see the module docstring)."""
    obs_shape = context.observation_spec.shape
    kind = options.features
    tabular = _tabular_env(env)
    layout = env.tile_layout if isinstance(env, TensorEnv) else TILE_LAYOUTS.get(context.env_name)
    if kind == "auto":
        if layout is not None:
            kind = "tile"
        elif tabular is not None and tabular.observation_kind == "state":
            kind = "tabular"
        else:
            kind = "dense"
    if kind == "tile":
        if layout is not None:
            low, high, tiles, tilings = layout
        else:
            spec = context.observation_spec
            if not isinstance(spec, BoxSpec):
                raise ValueError(f"tile coding needs a box of observations; env {context.env_name!r} has none")
            low, high = tuple(spec.low_tensor().tolist()), tuple(spec.high_tensor().tolist())
            if not all(math.isfinite(v) for v in (*low, *high)):
                raise ValueError(f"tile coding needs a bounded observation box; env {context.env_name!r} has none")
            tiles, tilings = (4,) * len(low), 8
        tiles = tuple(options.tiles_per_dim or tiles)
        tilings = options.num_tilings or tilings
        coder = TileCoder(low, high, tiles, tilings, bias=True, device=context.device)
        return coder, coder
    if kind == "tabular":
        if tabular is None or tabular.observation_kind != "state":
            raise ValueError(
                "features 'tabular' need a tabular MDP observed as one-hot states (--set env.observation=\"state\")"
            )
        mdp = tabular.mdp
        actor = TableFeatures(mdp.actor_features)
        critic_table = torch.eye(mdp.num_states) if options.critic == "oracle" else mdp.critic_features
        return actor, TableFeatures(critic_table)
    if len(obs_shape) != 1:
        raise ValueError(
            f"the linear actor-critic needs vector observations; env {context.env_name!r} observes {obs_shape}"
        )
    dense = DenseFeatures(obs_shape[0], normalize=kind == "dense-normalized")
    return dense, dense


def build_actor_critic(preset: str, context: AgentContext, options: ActorCriticOptions) -> ActorCritic:
    if not isinstance(context.action_spec, DiscreteSpec):
        raise ValueError(f"agent {preset!r} needs a discrete action space; this env's actions are continuous")
    env = context.env
    tabular = _tabular_env(env)
    if options.critic == "oracle" and (tabular is None or tabular.observation_kind != "state"):
        raise ValueError(
            "critic 'oracle' needs a tabular MDP observed as one-hot states (--set env.observation=\"state\")"
        )
    actor_features, critic_features = choose_features(options, context, env)
    settings = preset_settings(preset)
    for key in ("eta", "emphasis", "interest"):
        if getattr(options, key) is not None:
            settings[key] = getattr(options, key)
    gamma = options.gamma
    if gamma is None:
        gamma = float(tabular.mdp.discount.max()) if tabular is not None else 0.95
    P = context.population_size
    stream_of = options.stream_of
    if stream_of is None:
        stream_of = [p % context.num_streams for p in range(P)]
    oracle_values = None
    lab = None
    if tabular is not None and tabular.observation_kind == "state":
        from emphatic_rl.exact.lab import DiscreteLab

        lab = DiscreteLab(tabular.mdp, settings.get("interest", "uniform"))

        def oracle_values(theta: torch.Tensor) -> torch.Tensor:
            logits = torch.einsum("sd,pad->psa", lab.features.double(), theta.detach().double().cpu())
            policy = torch.softmax(logits, -1)
            return lab.batched_values(policy).float().to(theta.device)

    agent = ActorCritic(
        actor_features,
        context.action_spec.n,
        P,
        critic_features=critic_features,
        stream_of=stream_of,
        num_streams=context.num_streams,
        alpha_actor=options.alpha_actor,
        alpha_critic=options.alpha_critic,
        alpha_h=options.alpha_h,
        alpha_emphasis=options.alpha_emphasis if settings["emphasis"] == "learned" else None,
        critic_lambda=options.critic_lambda,
        gamma=gamma,
        normalize_emphasis=options.normalize_emphasis,
        actor_update=options.actor_update,
        critic=options.critic,
        oracle_values=oracle_values if options.critic == "oracle" else None,
        timeout_as_terminal=options.timeout_as_terminal,
        ideal_history_cap=options.ideal_history_cap,
        evaluation=options.evaluation,
        fit_stream_start=options.fit_stream_start,
        dtype=options.dtype,
        backend=options.backend,
        seed=context.seed,
        device=context.device,
        **settings,
    )
    agent.name = preset
    agent.exact_lab = lab  # tabular MDPs: exact_objective() gives every member's J_mu
    return agent


@register_agent("ace", ActorCriticOptions, "ACE: linear actor-critic with the follow-on trace (eta = 1)")
def make_ace(context: AgentContext, options: ActorCriticOptions) -> ActorCritic:
    return build_actor_critic("ace", context, options)


@register_agent("ace-direct", ActorCriticOptions, "ACE-direct: ACE with the learned emphasis f-hat (eta = 1)")
def make_ace_direct(context: AgentContext, options: ActorCriticOptions) -> ActorCritic:
    return build_actor_critic("ace-direct", context, options)


@register_agent("offpac", ActorCriticOptions, "OffPAC: the semi-gradient off-policy actor-critic (ACE with eta = 0)")
def make_offpac(context: AgentContext, options: ActorCriticOptions) -> ActorCritic:
    return build_actor_critic("offpac", context, options)
