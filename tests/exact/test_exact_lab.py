"""Identities of the exact lab on random small MDPs (hypothesis) and on the DPG counterexample."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emphatic_rl.envs.counterexamples import dpg_counterexample_mdp, three_state_counterexample_mdp
from emphatic_rl.envs.tabular import TabularMDP
from emphatic_rl.exact import ContinuousLab, DiscreteLab, monte_carlo_updates

D = torch.float64


def random_mdp(seed: int, S: int, A: int, d: int, max_gamma: float = 0.95, min_mu: float = 0.0) -> TabularMDP:
    """A random MDP whose behaviour process is irreducible, with some terminal (gamma = 0) transitions."""
    g = torch.Generator().manual_seed(seed)
    P = torch.rand(S, A, S, generator=g, dtype=D) + 0.05
    P = P / P.sum(-1, keepdim=True)
    gamma = max_gamma * torch.rand(S, A, S, generator=g, dtype=D)
    gamma[torch.rand(S, A, S, generator=g) < 0.2] = 0.0  # terminal transitions
    mu = torch.rand(S, A, generator=g, dtype=D) + 0.1
    mu = mu / mu.sum(-1, keepdim=True)
    mu = min_mu + (1 - A * min_mu) * mu
    start = torch.rand(S, generator=g, dtype=D) + 0.1
    return TabularMDP(
        transition=P,
        reward=torch.randn(S, A, S, generator=g, dtype=D),
        discount=gamma,
        start=start / start.sum(),
        actor_features=torch.randn(S, d, generator=g, dtype=D),
        critic_features=torch.randn(S, d, generator=g, dtype=D),
        behaviour=mu,
        interest=torch.rand(S, generator=g, dtype=D) + 0.5,
        name="random",
    )


mdp_args = st.tuples(st.integers(0, 10**6), st.integers(2, 5), st.integers(2, 3), st.integers(1, 4))
interests = st.sampled_from(["uniform", "episodic", "tensor"])


def make(args, interest):
    seed, S, A, d = args
    mdp = random_mdp(seed, S, A, d)
    spec = (
        torch.rand(S, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
        if interest == "tensor"
        else interest
    )
    lab = DiscreteLab(mdp, spec)
    theta = 2 * torch.randn(A, d, generator=torch.Generator().manual_seed(seed + 2), dtype=D)
    return mdp, lab, theta


def policy_gradient_with_weights(lab, theta, weights):
    """sum_s w(s) sum_a grad pi(a|s) q(s, a), with grad pi from torch.func.jacrev (an independent path)."""
    q = lab.action_values(theta)
    jac = torch.func.jacrev(lab.policy)(theta)  # [S, A, A, d]
    return torch.einsum("s,sa,sabd->bd", weights, q, jac)


@settings(max_examples=40, deadline=None)
@given(mdp_args, interests)
def test_ace_eta1_and_all_actions_equal_autograd_gradient(args, interest):
    _, lab, theta = make(args, interest)
    true = lab.true_gradient(theta)
    assert torch.allclose(lab.expected_update("ace", theta, 1.0), true, atol=1e-8, rtol=0)
    assert torch.allclose(lab.expected_update("all-actions", theta, 1.0), true, atol=1e-8, rtol=0)


@settings(max_examples=40, deadline=None)
@given(mdp_args, interests)
def test_emphatic_weighting_satisfies_its_recursion(args, interest):
    mdp, lab, theta = make(args, interest)
    m = lab.emphatic_weighting(theta, 1.0)
    pi = torch.softmax(mdp.actor_features @ theta.T, -1)
    P_pg = torch.einsum("sa,sat,sat->st", pi, mdp.transition, mdp.discount)
    assert torch.allclose(m, lab.interest_weights + P_pg.T @ m, atol=1e-10)
    # eta interpolates linearly between OffPAC's weighting and m
    assert torch.allclose(
        lab.emphatic_weighting(theta, 0.3), 0.3 * m + 0.7 * lab.interest_weights, atol=1e-12
    )


@settings(max_examples=40, deadline=None)
@given(mdp_args, interests)
def test_offpac_differs_from_true_gradient_exactly_by_the_emphasis_term(args, interest):
    _, lab, theta = make(args, interest)
    m = lab.emphatic_weighting(theta, 1.0)
    difference = lab.true_gradient(theta) - lab.expected_update("offpac", theta)
    term = policy_gradient_with_weights(lab, theta, m - lab.interest_weights)
    assert torch.allclose(difference, term, atol=1e-8, rtol=0)
    # ... and ACE with eta is the same interpolation of the two
    ace_half = lab.expected_update("ace", theta, 0.5)
    assert torch.allclose(ace_half, lab.expected_update("offpac", theta) + 0.5 * term, atol=1e-8, rtol=0)


@settings(max_examples=20, deadline=None)
@given(mdp_args)
def test_stationary_distribution_and_episodic_interest(args):
    mdp, lab, _ = make(args, "episodic")
    chain = torch.einsum("sa,sat->st", mdp.behaviour, mdp.transition)
    assert torch.allclose(lab.d_mu @ chain, lab.d_mu, atol=1e-12)
    assert abs(float(lab.d_mu.sum()) - 1) < 1e-12
    # episodic interest weight = P(the step is an episode start, i.e. follows a gamma = 0 transition)
    terminal = (mdp.discount == 0).to(D)
    expected = torch.einsum("s,sa,sat,sat->t", lab.d_mu, mdp.behaviour, mdp.transition, terminal)
    assert torch.allclose(lab.interest_weights, expected, atol=1e-14)


@settings(max_examples=20, deadline=None)
@given(st.tuples(st.integers(0, 10**6), st.integers(2, 5), st.integers(2, 3)))
def test_learned_emphasis_with_tabular_features_is_m_over_d_mu(args):
    seed, S, A = args
    mdp = random_mdp(seed, S, A, 2)
    mdp.critic_features = torch.eye(S, dtype=D)
    lab = DiscreteLab(mdp)
    theta = torch.randn(A, 2, generator=torch.Generator().manual_seed(seed), dtype=D)
    assert torch.allclose(lab.learned_emphasis(theta), lab.followon_expectation(theta), atol=1e-9)
    assert torch.allclose(lab.expected_update("ace-direct", theta), lab.true_gradient(theta), atol=1e-8)


@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_followon_trace_conditional_mean_matches_m_over_d_mu(seed):
    mdp = random_mdp(seed, 4, 2, 3, max_gamma=0.6, min_mu=0.3)
    lab = DiscreteLab(mdp)
    theta = torch.randn(2, 3, generator=torch.Generator().manual_seed(seed), dtype=D)
    result = monte_carlo_updates(lab, theta, "ace", num_streams=1000, num_steps=300, burn_in=50, seed=seed)
    assert torch.allclose(result.followon_mean, result.followon_expected, rtol=0.03)
    # the sampled ACE update is unbiased: within 4.5 standard errors of the exact expected update
    assert result.max_abs_z() < 4.5


def test_sampled_offpac_and_all_actions_are_unbiased_for_their_expectations():
    lab = DiscreteLab(three_state_counterexample_mdp())
    theta = torch.tensor([[0.3, -0.5], [0.1, 0.4]], dtype=D)
    for estimator in ("offpac", "all-actions"):
        result = monte_carlo_updates(lab, theta, estimator, num_streams=500, num_steps=200, seed=3)
        assert result.max_abs_z() < 4.5, estimator
    # the Monte Carlo check detects OffPAC's bias: its mean is far from the true gradient
    offpac = monte_carlo_updates(lab, theta, "offpac", num_streams=500, num_steps=200, seed=4)
    true = lab.true_gradient(theta)
    assert ((offpac.mean - true).abs() / offpac.standard_error.clamp_min(1e-12)).max() > 10


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=3, max_size=3))
def test_continuous_lab_theorem_deterministic_and_gaussian(values):
    mdp = dpg_counterexample_mdp()
    deterministic = ContinuousLab(mdp, "deterministic")
    u = torch.tensor(values[:2], dtype=D)
    assert torch.allclose(
        deterministic.expected_update("emphatic-dpg", u), deterministic.true_gradient(u), atol=1e-8
    )
    m = deterministic.emphatic_weighting(u)
    assert torch.allclose(m, deterministic.interest_weights + deterministic.policy_transition(u)[0].T @ m)
    gaussian = ContinuousLab(mdp, "gaussian")
    theta = torch.tensor([values[0], values[1], values[2] / 3], dtype=D)
    true = gaussian.true_gradient(theta)
    # The Gaussian expectations use 64-node Gauss-Hermite quadrature; the score-function form and autograd of the
    # quadrature objective agree to the quadrature error (up to ~1e-7 at std = e), far below any estimator's bias.
    assert torch.allclose(gaussian.expected_update("ace", theta), true, atol=1e-6)
    assert torch.allclose(gaussian.expected_update("all-actions", theta), true, atol=1e-6)


def test_dpg_counterexample_behaviour_distribution_is_exact():
    lab = ContinuousLab(dpg_counterexample_mdp())
    # Pr(s1 | s0) = E[sigmoid(-a)], a ~ N(1, 1), by brute-force quadrature on a fine grid
    a = torch.linspace(-12, 14, 200001, dtype=D)
    density = torch.exp(-0.5 * (a - 1) ** 2) / (2 * torch.pi) ** 0.5
    p1 = float(torch.trapezoid(torch.sigmoid(-a) * density, a))
    assert torch.allclose(lab.d_mu, torch.tensor([0.5, 0.5 * p1, 0.5 * (1 - p1)], dtype=D), atol=1e-12)
