"""The ACE / OffPAC / ACE-direct actor-critic: per-step order by hand, switches, populations, freezing, bad input."""

import math

import pytest
import torch

from emphatic_rl.agents.linear.actor_critic import PRESETS, ActorCritic
from emphatic_rl.features import DenseFeatures, OneHotFeatures, TileCoder

LOG_MU = torch.log(torch.tensor([0.25, 0.75]))


def one_hot_agent(**kwargs):
    settings = dict(
        alpha_actor=0.5,
        alpha_critic=0.5,
        critic="td",
        critic_lambda=0.0,
        gamma=0.9,
        eta=1.0,
        emphasis="followon",
        interest="uniform",
    )
    settings.update(kwargs)
    return ActorCritic(OneHotFeatures(2), 2, 1, **settings)


def step(agent, state, action, reward, next_state, terminated=False, truncated=False):
    return agent.update_step(
        torch.tensor([[state]]),
        torch.tensor([action]),
        torch.tensor([reward]),
        torch.tensor([terminated]),
        torch.tensor([truncated]),
        torch.tensor([[next_state]]),
        LOG_MU[[action]],
    )


def test_per_step_order_by_hand():
    """The per-step order of docs/algorithms/actor-critic.md on two one-hot states, mu = (0.25, 0.75), TD(0) critic,
    alphas 0.5, gamma 0.9, eta 1."""
    agent = one_hot_agent()
    # t = 0: gamma_0 = 0 (stream start), pi = (.5, .5), rho_0 = .5/.75 = 2/3, F_0 = i = 1, M = 1,
    # delta = 1 + .9 * 0 - 0 = 1; w(s0) = .5 * 1 * rho = 1/3; theta[:, s0] += .5 * rho * 1 * 1 * (e_1 - pi)
    m = step(agent, 0, 1, 1.0, 1)
    assert m["followon"].item() == pytest.approx(1.0)
    assert m["importance_ratio"].item() == pytest.approx(2 / 3)
    assert m["td_error"].item() == pytest.approx(1.0)
    assert agent.critic.weights[0].tolist() == pytest.approx([1 / 3, 0.0])
    assert agent.policy.theta[0, :, 0].tolist() == pytest.approx([-1 / 6, 1 / 6])
    # t = 1: gamma_1 = .9, rho_1 = .5/.25 = 2 (s1 untouched), F_1 = 1 + .9 * rho_0 * F_0 = 1.6 (stale rho_0),
    # delta = 0 + .9 * w(s0) - w(s1) = .3 with the critic BEFORE its update; w(s1) += .5 * .3 * 2 = .3;
    # theta[:, s1] += .5 * 2 * 1.6 * .3 * (e_0 - pi) = .48 * (.5, -.5)
    m = step(agent, 1, 0, 0.0, 0)
    assert m["followon"].item() == pytest.approx(1.6)
    assert m["emphatic_weighting"].item() == pytest.approx(1.6)
    assert m["td_error"].item() == pytest.approx(0.3)
    assert agent.critic.weights[0].tolist() == pytest.approx([1 / 3, 0.3])
    assert agent.policy.theta[0, :, 1].tolist() == pytest.approx([0.24, -0.24])
    # t = 2: terminal; pi(s0) = softmax(-1/6, 1/6), rho_2 = pi_1 / .75 with the updated theta,
    # F_2 = 1 + .9 * rho_1 * F_1 = 3.88, delta = 2 + 0 - 1/3 = 5/3
    pi_1 = 1 / (1 + math.exp(-1 / 3))
    rho_2 = pi_1 / 0.75
    m = step(agent, 0, 1, 2.0, 1, terminated=True)
    assert m["importance_ratio"].item() == pytest.approx(rho_2, rel=1e-5)
    assert m["followon"].item() == pytest.approx(3.88, rel=1e-6)
    assert m["td_error"].item() == pytest.approx(5 / 3, rel=1e-6)
    assert agent.critic.weights[0, 0].item() == pytest.approx(1 / 3 + 0.5 * (5 / 3) * rho_2, rel=1e-5)
    coef = 0.5 * rho_2 * 3.88 * (5 / 3)
    expected_theta = [-1 / 6 + coef * (0 - (1 - pi_1)), 1 / 6 + coef * (1 - pi_1)]
    assert agent.policy.theta[0, :, 0].tolist() == pytest.approx(expected_theta, rel=1e-5)
    # t = 3: a new episode: gamma_3 = 0 so F_3 = i = 1 whatever rho_2 and F_2 were
    m = step(agent, 1, 0, 0.0, 0)
    assert m["followon"].item() == pytest.approx(1.0)


def test_eta_interpolates_and_episodic_interest():
    agent = one_hot_agent(eta=0.25, interest="episodic")
    m0 = step(agent, 0, 1, 0.0, 1)  # episode start: i = 1, F = 1
    m1 = step(agent, 1, 1, 0.0, 0)  # i = 0, F = 0 + .9 * (2/3) * 1 = .6, M = .75 * 0 + .25 * .6
    assert (m0["emphatic_weighting"].item(), m1["followon"].item()) == pytest.approx((1.0, 0.6))
    assert m1["emphatic_weighting"].item() == pytest.approx(0.15)


def test_timeouts_terminal_or_bootstrapped():
    for as_terminal, expected_delta in ((True, 1.0), (False, 1.0 + 0.9 * 0.5)):
        agent = one_hot_agent(timeout_as_terminal=as_terminal)
        agent.critic.weights[0, 1] = 0.5
        m = step(agent, 0, 1, 1.0, 1, truncated=True)
        assert m["td_error"].item() == pytest.approx(expected_delta)
        m = step(agent, 1, 0, 0.0, 0)
        assert m["followon"].item() == pytest.approx(1.0)  # the trace restarts on the next episode either way


def random_stream(num_streams, num_steps, seed=0):
    """Mountain-Car-shaped random transitions: (obs, action, reward, terminated, next_obs, log_mu) per step."""
    g = torch.Generator().manual_seed(seed)
    low, span = torch.tensor([-1.2, -0.07]), torch.tensor([1.8, 0.14])
    obs = torch.rand(num_streams, 2, generator=g) * span + low
    data = []
    for _ in range(num_steps):
        action = torch.randint(3, (num_streams,), generator=g)
        next_obs = (obs + 0.05 * (torch.rand(num_streams, 2, generator=g) - 0.5) * span).clamp(low, low + span)
        terminated = torch.rand(num_streams, generator=g) < 0.02
        data.append(
            (
                obs,
                action,
                -torch.ones(num_streams),
                terminated,
                next_obs,
                torch.full((num_streams,), -math.log(3)),
            )
        )
        obs = torch.where(terminated[:, None], torch.rand(num_streams, 2, generator=g) * span + low, next_obs)
    return data


def feed(agent, data, features):
    for obs, action, reward, terminated, next_obs, log_mu in data:
        agent.update_step(
            features(obs),
            action,
            reward,
            terminated,
            torch.zeros_like(terminated),
            features(next_obs),
            log_mu,
        )


MC_TILES = TileCoder((-1.2, -0.07), (0.6, 0.07), (4, 4), 8)


@pytest.mark.parametrize("critic", ["etd", "tdrc"])
def test_offpac_is_ace_with_eta_zero(critic):
    data = random_stream(2, 200)
    common = dict(alpha_actor=0.5, alpha_critic=0.25, critic=critic, critic_lambda=0.5, gamma=0.95)
    offpac = ActorCritic.from_preset("offpac", MC_TILES, 3, 2, **common)
    ace = ActorCritic.from_preset("ace", MC_TILES, 3, 2, **{**common, "eta": 0.0})
    feed(offpac, data, MC_TILES)
    feed(ace, data, MC_TILES)
    assert torch.equal(offpac.policy.theta, ace.policy.theta)
    assert torch.equal(offpac.critic.weights, ace.critic.weights)
    assert offpac.policy.theta.abs().max() > 0.01  # it learned something
    if critic == "tdrc":  # without an emphatic critic, the 'none' switch is OffPAC too
        none = ActorCritic(MC_TILES, 3, 2, emphasis="none", eta=1.0, **common)
        feed(none, data, MC_TILES)
        assert torch.allclose(none.policy.theta, offpac.policy.theta, atol=1e-6)
    assert PRESETS["offpac"]["eta"] == 0.0


@pytest.mark.parametrize("preset", ["ace", "ace-direct"])
def test_population_equals_members_run_alone(preset):
    """Four learners with different step sizes and lambdas on two streams == each learner run with P = 1."""
    data = random_stream(2, 100, seed=1)
    alphas = torch.tensor([0.1, 0.5, 0.2, 1.0])
    lambdas = torch.tensor([0.0, 0.5, 0.9, 0.0])
    stream_of = torch.tensor([0, 1, 1, 0])
    population = ActorCritic.from_preset(
        preset,
        MC_TILES,
        3,
        4,
        stream_of=stream_of,
        num_streams=2,
        alpha_actor=alphas,
        alpha_critic=alphas / 2,
        alpha_emphasis=alphas / 4,
        critic="etd",
        critic_lambda=lambdas,
    )
    feed(population, data, MC_TILES)
    for p in range(4):
        alone = ActorCritic.from_preset(
            preset,
            MC_TILES,
            3,
            1,
            alpha_actor=float(alphas[p]),
            alpha_critic=float(alphas[p] / 2),
            alpha_emphasis=float(alphas[p] / 4),
            critic="etd",
            critic_lambda=float(lambdas[p]),
        )
        r_p = [int(stream_of[p])]
        single = [(o[r_p], a[r_p], r[r_p], te[r_p], no[r_p], lm[r_p]) for o, a, r, te, no, lm in data]
        feed(alone, single, MC_TILES)
        assert torch.allclose(alone.policy.theta[0], population.policy.theta[p], atol=1e-6)
        assert torch.allclose(alone.critic.weights[0], population.critic.weights[p], atol=1e-6)


def test_ideal_trace_equals_followon_trace_for_a_fixed_policy():
    data = random_stream(3, 60, seed=2)
    agents = [
        ActorCritic(MC_TILES, 3, 3, alpha_actor=1e-30, emphasis=kind, ideal_history_cap=64)
        for kind in ("followon", "ideal")
    ]
    for obs, action, reward, terminated, next_obs, _ in data:
        log_mu = torch.log(torch.tensor([0.2, 0.3, 0.5]))[action]
        emphases = [
            agent.update_step(
                MC_TILES(obs),
                action,
                reward,
                terminated,
                torch.zeros_like(terminated),
                MC_TILES(next_obs),
                log_mu,
            )["followon"]
            for agent in agents
        ]
        assert torch.allclose(emphases[0], emphases[1], rtol=1e-5)


def test_ideal_trace_uses_the_current_policy():
    agent = ActorCritic(OneHotFeatures(2), 2, 1, alpha_actor=0.5, emphasis="ideal", critic="td", gamma=0.9)
    step(agent, 0, 1, 1.0, 1)
    theta_now = agent.policy.theta.clone()
    m = step(agent, 1, 0, 0.0, 0)
    rho_0_now = torch.softmax(theta_now[0, :, 0], 0)[1].item() / 0.75  # recomputed with theta after step 0
    assert m["followon"].item() == pytest.approx(1 + 0.9 * rho_0_now, rel=1e-6)
    assert rho_0_now != pytest.approx(2 / 3)


def test_all_actions_with_gq_learns_and_dense_features_work():
    features = DenseFeatures(3, normalize=True)
    agent = ActorCritic(features, 2, 2, critic="gq", actor_update="all_actions", alpha_actor=0.5, alpha_critic=0.5)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        obs = torch.rand(2, 3, generator=g)
        action = torch.randint(2, (2,), generator=g)
        agent.update_step(
            features(obs),
            action,
            (action == 1).float(),
            torch.ones(2, dtype=torch.bool),
            torch.zeros(2, dtype=torch.bool),
            features(obs),
            LOG_MU[action],
        )
    probs = agent.action_probabilities(torch.rand(2, 4, 3, generator=g))
    assert probs.shape == (2, 4, 2) and (probs[..., 1] > 0.6).all()  # action 1 pays 1, action 0 pays 0


def test_freeze_keeps_diverged_members_unchanged():
    data = random_stream(2, 30)
    agent = ActorCritic.from_preset("ace", MC_TILES, 3, 2, alpha_actor=0.5, alpha_critic=0.5)
    feed(agent, data[:10], MC_TILES)
    agent.policy.theta[1, 0, 0] = float("nan")
    assert agent.parameters_finite().tolist() == [True, False]
    agent.freeze(~agent.parameters_finite())
    theta_before = agent.policy.theta.clone()
    weights_before = agent.critic.weights.clone()
    feed(agent, data[10:], MC_TILES)
    assert torch.equal(agent.policy.theta[1].nan_to_num(), theta_before[1].nan_to_num())
    assert torch.equal(agent.critic.weights[1], weights_before[1])
    assert not torch.equal(agent.policy.theta[0], theta_before[0])


def test_state_dict_round_trip_continues_identically():
    data = random_stream(2, 40)
    first = ActorCritic.from_preset("ace-direct", MC_TILES, 3, 2, alpha_emphasis=0.1)
    feed(first, data[:20], MC_TILES)
    second = ActorCritic.from_preset("ace-direct", MC_TILES, 3, 2, alpha_emphasis=0.1)
    second.load_state_dict(first.state_dict())
    feed(first, data[20:], MC_TILES)
    feed(second, data[20:], MC_TILES)
    assert torch.equal(first.policy.theta, second.policy.theta)
    assert torch.equal(first.evaluation_action(torch.zeros(2, 5, 2)), second.evaluation_action(torch.zeros(2, 5, 2)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eta": 1.5}, "eta must lie in"),
        ({"eta": [0.0, -0.1]}, "eta must lie in"),
        ({"critic_lambda": -0.1}, "critic_lambda must lie in"),
        ({"critic_lambda": 1.01}, "critic_lambda must lie in"),
        ({"actor_update": "all_actions", "critic": "tdrc"}, "needs critic 'gq'"),
        ({"alpha_actor": 0.0}, "alpha_actor must lie in"),
        ({"alpha_critic": -1.0}, "alpha_critic must lie in"),
        ({"emphasis": "learned"}, "needs alpha_emphasis"),
        ({"emphasis": "learned", "alpha_emphasis": 0.0}, "alpha_emphasis must lie in"),
        ({"emphasis": "trace"}, "unknown emphasis 'trace'; allowed: none, followon, learned, ideal"),
        ({"critic": "oracle"}, "needs oracle_values"),
        ({"stream_of": [0, 3], "num_streams": 2}, "stream_of entries"),
        ({"gamma": 1.5}, "gamma must be"),
    ],
)
def test_bad_input_raises_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ActorCritic(MC_TILES, 3, 2, **kwargs)


def test_unknown_preset():
    with pytest.raises(ValueError, match="allowed: ace, ace-direct, offpac"):
        ActorCritic.from_preset("acer", MC_TILES, 3)
