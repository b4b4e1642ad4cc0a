"""The counterexample MDPs of the emphatic off-policy literature, as exact descriptions and batched envs.

Each ``*_mdp`` builder returns the float64 description the exact lab uses (:class:`TabularMDP` or
:class:`ContinuousActionMDP`); each registered env name builds the matching batched ``TensorEnv``:

==============================  ===========================================================================
``counterexample-three-state``  N18's three-state counterexample with aliasing (Imani et al. 2018)
``counterexample-long``         N18's long counterexample, option ``middle_steps`` (Imani et al. 2018)
``counterexample-dpg``          N18's continuous-action DPG counterexample (Imani et al. 2018)
``collision``                   the 8-state Collision prediction task (Ghiassian et al.'s TDRC paper)
``baird``                       Baird's seven-state star counterexample (Baird 1995; Sutton & Barto §11.2)
==============================  ===========================================================================

Terminal transitions follow :mod:`emphatic_rl.envs.tabular`: ``gamma = 0`` and ``s'`` is the restart state
drawn from ``d0``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from emphatic_rl.envs.registry import register_env
from emphatic_rl.envs.tabular import (
    ContinuousActionEnv,
    ContinuousActionMDP,
    ObservationKind,
    TabularEnv,
    TabularMDP,
)

#: behaviour policy of the N18 counterexamples, (a0, a1) in every state (the authors' N18 data generator).
N18_BEHAVIOUR = (0.25, 0.75)


def long_counterexample_mdp(middle_steps: int = 5) -> TabularMDP:
    """N18's long counterexample (docs/environments.md); ``middle_steps = 1`` is the three-state counterexample.

    States: ``s0 = 0``; the left chain ``L_j = 2j - 1`` and the right chain ``R_j = 2j`` for ``j =
    1..middle_steps``. From ``s0``, ``a0 -> L_1`` and ``a1 -> R_1``. In the left chain ``a0`` moves deeper and
    ``a1`` back (``L_1`` back to ``s0``); in the right chain ``a1`` moves deeper and ``a0`` back. The chain
    ends terminate: ``L_k`` pays 2 for ``a0`` and 0 for ``a1``, ``R_k`` pays 0 for ``a0`` and 1 for ``a1``;
    every other reward is 0; gamma = 1; episodes restart in ``s0``.

    Features (actor and critic): one-hot over ``2 * middle_steps`` indices, state ``s`` on index
    ``min(s, 2k - 1)``, so the two chain ends ``L_k`` and ``R_k`` are aliased.

    Behaviour: ``mu = (0.25, 0.75)`` in every state (source: the authors' N18 scripts, R18
    ``generate_data.py``). Interest: ones (the excursions objective used by N18).
    """
    if not isinstance(middle_steps, int) or isinstance(middle_steps, bool) or middle_steps < 1:
        raise ValueError(f"middle_steps must be an integer >= 1, got {middle_steps!r}")
    k = middle_steps
    S, A = 2 * k + 1, 2
    P = torch.zeros(S, A, S, dtype=torch.float64)
    R = torch.zeros(S, A, dtype=torch.float64)
    gamma = torch.ones(S, A, S, dtype=torch.float64)
    P[0, 0, 1] = 1.0
    P[0, 1, 2] = 1.0

    def left(j: int) -> int:
        return 0 if j == 0 else 2 * j - 1

    def right(j: int) -> int:
        return 0 if j == 0 else 2 * j

    for j in range(1, k):
        P[left(j), 0, left(j + 1)] = 1.0
        P[left(j), 1, left(j - 1)] = 1.0
        P[right(j), 1, right(j + 1)] = 1.0
        P[right(j), 0, right(j - 1)] = 1.0
    for end in (left(k), right(k)):
        P[end, :, 0] = 1.0  # terminal transition, restart in s0
        gamma[end, :, :] = 0.0
    R[left(k), 0] = 2.0
    R[right(k), 1] = 1.0
    features = torch.zeros(S, 2 * k, dtype=torch.float64)
    features[torch.arange(S), torch.arange(S).clamp_max(2 * k - 1)] = 1.0
    start = torch.zeros(S, dtype=torch.float64)
    start[0] = 1.0
    name = "counterexample-three-state" if k == 1 else "counterexample-long"
    return TabularMDP(
        transition=P,
        reward=R,
        discount=gamma,
        start=start,
        actor_features=features,
        critic_features=features,
        behaviour=torch.tensor(N18_BEHAVIOUR, dtype=torch.float64).expand(S, A),
        name=name,
        notes="N18 counterexample; behaviour (0.25, 0.75) from the authors' R18 generate_data.py",
    )


def three_state_counterexample_mdp() -> TabularMDP:
    """N18's three-state counterexample (docs/environments.md): ``s0 -a0-> s1``, ``s0 -a1-> s2``, ``s1``: ``a0`` pays
    2,
    ``s2``: ``a1`` pays 1, both end the episode; ``x(s0) = [1, 0]``, ``x(s1) = x(s2) = [0, 1]`` (aliased);
    gamma = 1; behaviour ``(0.25, 0.75)`` everywhere (the authors' N18 code). ``d_mu = (0.5, 0.125, 0.375)``;
    OffPAC's fixed point has J = 0.875, the optimum J* = 1.25."""
    return long_counterexample_mdp(1)


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x)


def dpg_counterexample_mdp() -> ContinuousActionMDP:
    """N18's continuous-action DPG counterexample (docs/environments.md).

    ``s0``: action ``a`` in R, reward 0, next state ``s1`` with probability ``sigmoid(-a)``, else ``s2``.
    ``s1`` pays ``2 sigmoid(-a)``, ``s2`` pays ``sigmoid(a)``, then the episode ends (restart in ``s0``).
    Features as in §3.1 (``s1``, ``s2`` aliased). gamma = 1. Behaviour: ``a ~ N(1, 1)`` in every state
    (source: the authors' R18 ``dpg_ce_env.py`` / ``oracle_critic_dpg_ce.py``). Unlike the authors' oracle,
    which approximates ``d_mu`` with a probit formula, the exact lab integrates the behaviour exactly
    (Gauss-Hermite).
    """

    def next_state_probs(action: torch.Tensor) -> torch.Tensor:
        zeros, ones = torch.zeros_like(action[0]), torch.ones_like(action[0])
        to_s1 = _sigmoid(-action[0])
        from_s0 = torch.stack([zeros, to_s1, 1 - to_s1], -1)  # [K, 3]
        restart = torch.stack([ones, zeros, zeros], -1)
        return torch.stack([from_s0, restart, restart])  # [3, K, 3]

    def expected_reward(action: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros_like(action[0])
        return torch.stack([zeros, 2 * _sigmoid(-action[1]), _sigmoid(action[2])])

    discount = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    return ContinuousActionMDP(
        next_state_probs=next_state_probs,
        expected_reward=expected_reward,
        discount=discount,
        start=torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64),
        actor_features=features,
        critic_features=features,
        behaviour_mean=torch.ones(3, dtype=torch.float64),
        behaviour_std=torch.ones(3, dtype=torch.float64),
        name="counterexample-dpg",
    )


def collision_mdp(feature_seed: int = 0) -> TabularMDP:
    """The Collision task (Ghiassian, Patterson, Garg, Gupta, White, White 2020, "Gradient TD learning with
    regularized corrections"; layout as in the authors' public code).

    Eight states in a row; the first state of an episode is uniform over states 0-3. Actions: ``right = 0``
    moves one state right (reward 0, gamma 0.9); in state 7 it collides: reward 1 and the episode ends.
    ``retreat = 1`` ends the episode with reward 0. Target policy: always right, so ``v_pi(s) = 0.9 ** (7 -
    s)``. Behaviour: always right in states 0-3, right/retreat with probability 1/2 each in states 4-7.

    Critic features: 8 distinct binary vectors with 3 of 6 entries on, drawn with ``feature_seed`` (the
    authors draw them at random too). Actor features: one-hot states.

    The behaviour never retreats in states 0-3, so an importance-sampled (OffPAC/ACE) gradient of a *softmax*
    target is undefined here; the lab raises a clear error for those estimators. It is a prediction task.
    """
    S, A = 8, 2
    P = torch.zeros(S, A, S, dtype=torch.float64)
    R = torch.zeros(S, A, dtype=torch.float64)
    gamma = torch.full((S, A, S), 0.9, dtype=torch.float64)
    start = torch.zeros(S, dtype=torch.float64)
    start[:4] = 0.25
    for s in range(S - 1):
        P[s, 0, s + 1] = 1.0
    P[S - 1, 0] = start
    gamma[S - 1, 0] = 0.0
    R[S - 1, 0] = 1.0
    P[:, 1] = start
    gamma[:, 1] = 0.0
    generator = torch.Generator().manual_seed(int(feature_seed))
    candidates = torch.tensor(
        [[1.0 if j in combo else 0.0 for j in range(6)] for combo in _combinations(6, 3)], dtype=torch.float64
    )
    critic_features = candidates[torch.randperm(len(candidates), generator=generator)[:S]]
    behaviour = torch.tensor([[1.0, 0.0]] * 4 + [[0.5, 0.5]] * 4, dtype=torch.float64)
    target = torch.tensor([[1.0, 0.0]] * S, dtype=torch.float64)
    return TabularMDP(
        transition=P,
        reward=R,
        discount=gamma,
        start=start,
        actor_features=torch.eye(S, dtype=torch.float64),
        critic_features=critic_features,
        behaviour=behaviour,
        target_policy=target,
        name="collision",
        notes="Collision (Ghiassian et al. 2020); behaviour retreats half the time in states 4-7",
    )


def _combinations(n: int, k: int) -> list[tuple[int, ...]]:
    from itertools import combinations

    return list(combinations(range(n), k))


def baird_mdp(discount: float = 0.99) -> TabularMDP:
    """Baird's seven-state star counterexample (Baird 1995; the version of Sutton & Barto 2018, §11.2).

    States 0-5 (upper) and 6 (lower). ``dashed = 0`` goes to one of the upper states uniformly, ``solid = 1``
    goes to the lower state. All rewards 0, a continuing task with ``gamma = discount`` (0.99). Behaviour:
    dashed 6/7, solid 1/7 (so ``d_mu`` is uniform); target: always solid; ``v_pi = 0``. Critic features (8-d):
    upper state
    ``i`` is ``2 e_i + e_7``, the lower state ``e_6 + 2 e_7``. Actor features: one-hot states. ``d0`` is
    uniform. There are no terminal transitions, so the "episodic" interest is zero everywhere.
    """
    S, A = 7, 2
    P = torch.zeros(S, A, S, dtype=torch.float64)
    P[:, 0, :6] = 1.0 / 6.0
    P[:, 1, 6] = 1.0
    critic_features = torch.zeros(S, 8, dtype=torch.float64)
    for s in range(6):
        critic_features[s, s] = 2.0
        critic_features[s, 7] = 1.0
    critic_features[6, 6] = 1.0
    critic_features[6, 7] = 2.0
    behaviour = torch.tensor([6.0 / 7.0, 1.0 / 7.0], dtype=torch.float64).expand(S, A)
    target = torch.tensor([0.0, 1.0], dtype=torch.float64).expand(S, A)
    return TabularMDP(
        transition=P,
        reward=torch.zeros(S, A, dtype=torch.float64),
        discount=torch.full((S, A, S), float(discount), dtype=torch.float64),
        start=torch.full((S,), 1.0 / S, dtype=torch.float64),
        actor_features=torch.eye(S, dtype=torch.float64),
        critic_features=critic_features,
        behaviour=behaviour,
        target_policy=target,
        name="baird",
        notes="Baird (1995) star counterexample; behaviour dashed 6/7, solid 1/7 as in Sutton & Barto (2018)",
    )


#: exact descriptions by CLI name (used by the exact lab and ``emphatic-rl gradients``).
MDP_BUILDERS: dict[str, Callable[..., TabularMDP | ContinuousActionMDP]] = {
    "counterexample-three-state": three_state_counterexample_mdp,
    "counterexample-long": long_counterexample_mdp,
    "counterexample-dpg": dpg_counterexample_mdp,
    "collision": collision_mdp,
    "baird": baird_mdp,
}


def make_mdp(name: str, **options) -> TabularMDP | ContinuousActionMDP:
    """The exact description of a counterexample by its CLI name (options as in the builders)."""
    if name not in MDP_BUILDERS:
        raise ValueError(f"unknown tabular env {name!r}; allowed: {', '.join(MDP_BUILDERS)}")
    return MDP_BUILDERS[name](**options)


# ---------------------------------------------------------------------- batched envs by name


@register_env("counterexample-three-state")
def make_three_state_env(
    num_envs: int = 1,
    device: torch.device | str = "cpu",
    observation: ObservationKind = "actor",
    max_episode_steps: int | None = None,
) -> TabularEnv:
    """N18 three-state counterexample with aliasing (behaviour (0.25, 0.75) is the data policy)."""
    return TabularEnv(three_state_counterexample_mdp(), num_envs, device, observation, max_episode_steps)


@register_env("counterexample-long")
def make_long_env(
    num_envs: int = 1,
    device: torch.device | str = "cpu",
    middle_steps: int = 5,
    observation: ObservationKind = "actor",
    max_episode_steps: int | None = None,
) -> TabularEnv:
    """N18 long counterexample: two chains of ``middle_steps`` states with aliased ends."""
    return TabularEnv(long_counterexample_mdp(middle_steps), num_envs, device, observation, max_episode_steps)


@register_env("counterexample-dpg")
def make_dpg_env(
    num_envs: int = 1, device: torch.device | str = "cpu", max_episode_steps: int | None = None
) -> ContinuousActionEnv:
    """N18 continuous-action DPG counterexample (behaviour N(1, 1))."""
    return ContinuousActionEnv(dpg_counterexample_mdp(), num_envs, device, max_episode_steps)


@register_env("collision")
def make_collision_env(
    num_envs: int = 1,
    device: torch.device | str = "cpu",
    feature_seed: int = 0,
    observation: ObservationKind = "critic",
    max_episode_steps: int | None = None,
) -> TabularEnv:
    """Collision: 8-state chain, target always right, behaviour retreats half the time in states 4-7."""
    return TabularEnv(collision_mdp(feature_seed), num_envs, device, observation, max_episode_steps)


@register_env("baird")
def make_baird_env(
    num_envs: int = 1,
    device: torch.device | str = "cpu",
    discount: float = 0.99,
    observation: ObservationKind = "critic",
    max_episode_steps: int | None = None,
) -> TabularEnv:
    """Baird's seven-state star counterexample (continuing, gamma 0.99)."""
    return TabularEnv(baird_mdp(discount), num_envs, device, observation, max_episode_steps)


def _register_gymnasium_ids() -> None:
    """``gymnasium.make("emphatic_rl/CounterexampleThreeState-v0")`` etc. (no time limit)."""
    from emphatic_rl.envs.registration import register_gymnasium_env

    register_gymnasium_env("emphatic_rl/CounterexampleThreeState-v0", "counterexample-three-state")
    register_gymnasium_env("emphatic_rl/CounterexampleLong-v0", "counterexample-long")
    register_gymnasium_env("emphatic_rl/CounterexampleDPG-v0", "counterexample-dpg")
    register_gymnasium_env("emphatic_rl/Collision-v0", "collision")
    register_gymnasium_env("emphatic_rl/Baird-v0", "baird")


_register_gymnasium_ids()
