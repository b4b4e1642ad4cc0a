"""Linear critics (docs/algorithms/critics.md) against their exact fixed points on a small random MDP, and on Baird's
star.

Ground truth is computed here in float64 from the MDP: with ``D = diag(d_mu)``, ``P_pi``, ``r_pi``, features ``X``:

- off-policy TD(lambda): ``A = X^T D (I - g l P_pi)^-1 (I - g P_pi) X``,
  ``b = X^T D (I - g l P_pi)^-1 r_pi``, w = A^-1 b;
- TDC / TDRC (lambda = 0): the joint zero of the expected (w, h) updates
  ``b - A w - g X^T P_pi^T D X h = 0`` and ``b - A w - (X^T D X + beta I) h = 0``. Eliminating ``h`` gives
  ``(A^T + beta I)(X^T D X + beta I)^-1 (b - A w) = 0``: as long as ``-beta`` is not an eigenvalue of ``A^T``
  TDRC's ``w`` is the TD fixed point (and ``h = 0``); the regulariser changes the path of ``h``, not ``w``.
- ETD (lambda = 0, i = 1): ``m = (I - g P_pi^T)^-1 d_mu``, ``w = (X^T M (I - g P_pi) X)^-1 X^T M r_pi``.

Each learner of a population of ``P`` critics reads its own behaviour stream; the estimate is the average over the
population and over the last quarter of the run (so a few thousand steps suffice), and every test also checks that
the closest *wrong* answer is many tolerances away.
"""

import pytest
import torch

from emphatic_rl.agents.linear.critics import (
    CriticTransition,
    ETDCritic,
    GQCritic,
    OracleCritic,
    TDCCritic,
    TDCritic,
    TDRCCritic,
)
from emphatic_rl.features import indices_to_dense

GAMMA = 0.8


def random_problem(seed: int = 5, num_states: int = 5, num_actions: int = 2):
    """A random MDP with near-tabular features: states 0-3 one-hot, state 4 a convex mix of them (aliased), so
    the TD, emphatic and tabular answers differ. The seed gives a well-conditioned problem with
    ``gamma^2 max_s E_mu[rho^2 | s] < 0.8`` (finite-variance follow-on trace)."""
    g = torch.Generator().manual_seed(seed)
    exponential = -torch.log(torch.rand(num_states, num_actions, num_states, generator=g).double())
    transitions = exponential / exponential.sum(-1, keepdim=True)  # Dirichlet(1, ..., 1) rows
    rewards = torch.randn(num_states, num_actions, generator=g).double()
    mu = torch.softmax(0.5 * torch.randn(num_states, num_actions, generator=g), -1).double()
    pi = torch.softmax(torch.log(mu) + torch.randn(num_states, num_actions, generator=g), -1).double()
    mix = torch.rand(num_states - 1, generator=g).double()
    features = torch.cat([torch.eye(num_states - 1, dtype=torch.float64), (mix / mix.sum())[None]])
    return transitions, rewards, mu, pi, features


def exact_quantities(transitions, rewards, mu, pi):
    num_states = transitions.shape[0]
    p_mu = torch.einsum("sa,sat->st", mu, transitions)
    p_pi = torch.einsum("sa,sat->st", pi, transitions)
    r_pi = (pi * rewards).sum(1)
    # stationary distribution of mu: d^T P_mu = d^T, sum d = 1
    system = torch.cat([(p_mu.T - torch.eye(num_states, dtype=torch.float64)), torch.ones(1, num_states).double()])
    rhs = torch.cat([torch.zeros(num_states), torch.ones(1)]).double()
    d_mu = torch.linalg.lstsq(system, rhs[:, None]).solution.squeeze(1)
    return d_mu, p_pi, r_pi


def td_solution(features, d_mu, p_pi, r_pi, lam=0.0):
    eye = torch.eye(len(d_mu), dtype=torch.float64)
    weighting = torch.diag(d_mu) @ torch.linalg.inv(eye - GAMMA * lam * p_pi)
    a = features.T @ weighting @ (eye - GAMMA * p_pi) @ features
    b = features.T @ weighting @ r_pi
    return torch.linalg.solve(a, b), a


def tdrc_solution(features, d_mu, p_pi, r_pi, beta):
    eye = torch.eye(len(d_mu), dtype=torch.float64)
    d = features.shape[1]
    dm = torch.diag(d_mu)
    a = features.T @ dm @ (eye - GAMMA * p_pi) @ features
    b = features.T @ dm @ r_pi
    cross = GAMMA * features.T @ p_pi.T @ dm @ features
    c = features.T @ dm @ features
    top = torch.cat([a, cross], 1)
    bottom = torch.cat([a, c + beta * torch.eye(d, dtype=torch.float64)], 1)
    joint = torch.linalg.solve(torch.cat([top, bottom]), torch.cat([b, b]))
    return joint[:d], joint[d:]


def etd_solution(features, d_mu, p_pi, r_pi):
    eye = torch.eye(len(d_mu), dtype=torch.float64)
    m = torch.linalg.solve(eye - GAMMA * p_pi.T, d_mu)
    mm = torch.diag(m)
    return torch.linalg.solve(features.T @ mm @ (eye - GAMMA * p_pi) @ features, features.T @ mm @ r_pi)


def run_critic(critic, problem, num_steps, seed=0, one_hot=False, iid=False):
    """Feed ``critic`` (population P) with P independent behaviour streams; return its averaged weights.

    ``iid``: draw each ``S_t`` afresh from ``d_mu`` (exact for one-step critics, and free of the O(alpha) bias that
    Markovian data gives a constant-step iterate); otherwise follow trajectories (needed by traces and ETD's F).
    The step sizes are annealed (x 1/4 at half-time and again at 3/4) and the iterates averaged over the last
    quarter."""
    transitions, rewards, mu, pi, features = problem
    d_mu, _, _ = exact_quantities(transitions, rewards, mu, pi)
    g = torch.Generator().manual_seed(seed)
    num_streams = critic.population_size
    num_states = transitions.shape[0]
    x_table = torch.eye(num_states) if one_hot else features.float()
    state = torch.multinomial(d_mu.float().expand(num_streams, -1), 1, generator=g).squeeze(1)
    followon = torch.zeros(num_streams)
    previous_rho = torch.ones(num_streams)
    total = torch.zeros_like(critic.weights)
    count = 0
    for t in range(num_steps):
        action = torch.multinomial(mu[state].float(), 1, generator=g).squeeze(1)
        next_state = torch.multinomial(transitions[state, action].float(), 1, generator=g).squeeze(1)
        rho = (pi[state, action] / mu[state, action]).float()
        gamma_t = torch.full((num_streams,), 0.0 if t == 0 else GAMMA)
        followon = 1.0 + gamma_t * previous_rho * followon
        step = CriticTransition(
            features=x_table[state],
            next_features=x_table[next_state],
            reward=rewards[state, action].float(),
            gamma=gamma_t,
            next_gamma=torch.full((num_streams,), GAMMA),
            rho=rho,
            interest=torch.ones(num_streams),
            followon=followon,
            action=action,
            next_policy_probs=pi[next_state].float(),
        )
        critic.update(step, critic.td_error(step))
        previous_rho, state = rho, next_state
        if iid:
            state = torch.multinomial(d_mu.float().expand(num_streams, -1), 1, generator=g).squeeze(1)
        if t in (num_steps // 2, (3 * num_steps) // 4):  # anneal
            for step_size in (critic.alpha, critic.alpha_h):  # alpha_h: None for critics without h
                if step_size is not None:
                    step_size.mul_(0.25)
        if t >= num_steps - num_steps // 4:
            total += critic.weights
            count += 1
    return (total / count).mean(0).double()


@pytest.fixture(scope="module")
def problem():
    problem = random_problem()
    d_mu, p_pi, _ = exact_quantities(*problem[:4])
    _, a = td_solution(problem[4], d_mu, p_pi, problem[1][:, 0])
    assert (torch.linalg.eigvals(a).real > 0.04).all()  # off-policy TD is stable on this problem
    return problem


def test_tabular_td_converges_to_v_pi(problem):
    transitions, rewards, mu, pi, _ = problem
    d_mu, p_pi, r_pi = exact_quantities(transitions, rewards, mu, pi)
    v_pi = torch.linalg.solve(torch.eye(5, dtype=torch.float64) - GAMMA * p_pi, r_pi)
    critic = TDCritic(5, 256, alpha=0.3)
    estimate = run_critic(critic, problem, 2000, one_hot=True, iid=True)
    assert torch.allclose(estimate, v_pi, atol=0.03), (estimate, v_pi)
    # the wrong answer (no importance sampling: v_mu) is far away
    r_mu = (mu * rewards).sum(1)
    v_mu = torch.linalg.solve(
        torch.eye(5, dtype=torch.float64) - GAMMA * torch.einsum("sa,sat->st", mu, transitions), r_mu
    )
    assert (v_mu - v_pi).abs().max() > 0.2


def test_td_zero_fixed_point(problem):
    d_mu, p_pi, r_pi = exact_quantities(*problem[:4])
    expected, _ = td_solution(problem[4], d_mu, p_pi, r_pi)
    estimate = run_critic(TDCritic(4, 256, alpha=0.1), problem, 2000, iid=True)
    assert (estimate - expected).norm() < 0.03, (estimate, expected)
    assert (etd_solution(problem[4], d_mu, p_pi, r_pi) - expected).norm() > 0.1


def test_td_lambda_fixed_point_depends_on_lambda(problem):
    """Trajectories (the trace needs them): the estimate sits at the TD(0.5) solution, not at TD(0)'s."""
    d_mu, p_pi, r_pi = exact_quantities(*problem[:4])
    expected, _ = td_solution(problem[4], d_mu, p_pi, r_pi, lam=0.5)
    td_zero, _ = td_solution(problem[4], d_mu, p_pi, r_pi)
    estimate = run_critic(TDCritic(4, 256, alpha=0.1, trace_decay=0.5), problem, 2000)
    error = (estimate - expected).norm()
    assert error < 0.07 and (estimate - td_zero).norm() > 2 * error, (estimate, expected, td_zero)


@pytest.mark.parametrize("critic_class", [TDCCritic, TDRCCritic])
def test_gradient_td_critics_reach_their_exact_fixed_point(problem, critic_class):
    d_mu, p_pi, r_pi = exact_quantities(*problem[:4])
    beta = 1.0 if critic_class is TDRCCritic else 0.0
    expected_w, expected_h = tdrc_solution(problem[4], d_mu, p_pi, r_pi, beta)
    td_w, _ = td_solution(problem[4], d_mu, p_pi, r_pi)
    assert torch.allclose(expected_w, td_w, atol=1e-9) and expected_h.abs().max() < 1e-9  # derivation above
    alpha = 0.3 if critic_class is TDCCritic else 0.1  # TDC's correction slows its slowest mode
    critic = critic_class(4, 256, alpha=alpha, alpha_h=alpha)
    estimate = run_critic(critic, problem, 2000, iid=True)
    assert (estimate - expected_w).norm() < 0.05, (estimate, expected_w)
    assert (etd_solution(problem[4], d_mu, p_pi, r_pi) - expected_w).norm() > 0.12


def test_etd_reaches_the_emphatic_fixed_point(problem):
    d_mu, p_pi, r_pi = exact_quantities(*problem[:4])
    expected = etd_solution(problem[4], d_mu, p_pi, r_pi)
    td_w, _ = td_solution(problem[4], d_mu, p_pi, r_pi)
    estimate = run_critic(ETDCritic(4, 256, alpha=0.03), problem, 2000)
    error = (estimate - expected).norm()
    assert error < 0.1 and (estimate - td_w).norm() > 2 * error, (estimate, expected, td_w)


def test_gq_tabular_reaches_q_pi(problem):
    transitions, rewards, mu, pi, _ = problem
    d_mu, p_pi, r_pi = exact_quantities(transitions, rewards, mu, pi)
    v_pi = torch.linalg.solve(torch.eye(5, dtype=torch.float64) - GAMMA * p_pi, r_pi)
    q_pi = rewards + GAMMA * torch.einsum("sat,t->sa", transitions, v_pi)
    critic = GQCritic(5, 256, alpha=0.3, alpha_h=0.3, num_actions=2)
    estimate = run_critic(critic, problem, 2000, one_hot=True, iid=True)  # [A, d] with one-hot states
    assert torch.allclose(estimate.T, q_pi, atol=0.06), (estimate.T, q_pi)
    v_mu = torch.linalg.solve(
        torch.eye(5, dtype=torch.float64) - GAMMA * torch.einsum("sa,sat->st", mu, transitions),
        (mu * rewards).sum(1),
    )
    q_mu = rewards + GAMMA * torch.einsum("sat,t->sa", transitions, v_mu)
    assert (q_mu - q_pi).abs().max() > 0.15  # the on-policy answer is far


def test_oracle_critic_uses_exact_values():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    critic = OracleCritic(3, 2, value_function=lambda theta: values + theta.sum((1, 2))[:, None])
    theta = torch.zeros(2, 2, 3)
    theta[1] = 0.5  # member 1 sees values + 3
    step = CriticTransition(
        features=torch.tensor([[0], [2]]),
        next_features=torch.tensor([[1], [1]]),
        reward=torch.tensor([1.0, 0.0]),
        gamma=torch.zeros(2),
        next_gamma=torch.tensor([0.5, 1.0]),
        rho=torch.ones(2),
        interest=torch.ones(2),
        followon=torch.ones(2),
        action=torch.zeros(2, dtype=torch.long),
        policy_theta=theta,
    )
    assert torch.allclose(critic.td_error(step), torch.tensor([1 + 0.5 * 2 - 1, 0 + 8 - 9.0]))


def baird_problem():
    """Baird's star (Sutton & Barto §11.2): 7 states, 8 features, dashed (to a random upper state) w.p. 6/7,
    solid (to the lower state) w.p. 1/7; the target always takes solid; reward 0; gamma 0.99."""
    features = torch.zeros(7, 8)
    for s in range(6):
        features[s, s], features[s, 7] = 2.0, 1.0
    features[6, 6], features[6, 7] = 1.0, 2.0
    return features


def run_baird(critic, num_steps=1000, seed=0):
    features = baird_problem()
    g = torch.Generator().manual_seed(seed)
    n = critic.population_size
    critic.weights.copy_(torch.tensor([1.0, 1, 1, 1, 1, 1, 10, 1]).expand(n, -1))
    state = torch.randint(7, (n,), generator=g)
    norms = []
    for t in range(num_steps):
        solid = torch.rand(n, generator=g) < 1 / 7
        next_state = torch.where(solid, 6, torch.randint(6, (n,), generator=g))
        rho = torch.where(solid, 7.0, 0.0)
        step = CriticTransition(
            features=features[state],
            next_features=features[next_state],
            reward=torch.zeros(n),
            gamma=torch.full((n,), 0.0 if t == 0 else 0.99),
            next_gamma=torch.full((n,), 0.99),
            rho=rho,
            interest=torch.ones(n),
            followon=torch.ones(n),
            action=solid.long(),
        )
        critic.update(step, critic.td_error(step))
        norms.append(critic.weights.norm(dim=1).max().item())
        state = next_state
    return torch.tensor(norms)


def test_tdc_and_tdrc_stay_bounded_on_baird_where_td_diverges():
    initial = torch.tensor([1.0, 1, 1, 1, 1, 1, 10, 1]).norm().item()
    td_norms = run_baird(TDCritic(8, 8, alpha=0.01))
    assert td_norms[-1] > 30 * initial  # off-policy TD blows up
    for critic in (TDCCritic(8, 8, alpha=0.005, alpha_h=0.05), TDRCCritic(8, 8, alpha=0.005)):
        norms = run_baird(critic)
        assert torch.isfinite(norms).all() and norms.max() < 2 * initial, (type(critic).__name__, norms.max())


def test_sparse_and_dense_features_give_the_same_critic(problem):
    """Binary features as indices or as dense 0/1 vectors drive the same updates."""
    g = torch.Generator().manual_seed(5)
    indices = torch.stack([torch.randperm(12, generator=g)[:3] for _ in range(40)])
    dense = indices_to_dense(indices, 12)
    results = []
    for feats in (indices, dense):
        critic = TDRCCritic(12, 4, alpha=0.1, trace_decay=0.5)
        for t in range(0, 36, 4):
            step = CriticTransition(
                features=feats[t : t + 4],
                next_features=feats[t + 4 : t + 8],
                reward=torch.arange(4.0),
                gamma=torch.full((4,), 0.9),
                next_gamma=torch.full((4,), 0.9),
                rho=torch.full((4,), 1.5),
                interest=torch.ones(4),
                followon=torch.ones(4),
                action=torch.zeros(4, dtype=torch.long),
            )
            critic.update(step, critic.td_error(step))
        results.append(critic.weights)
    assert torch.allclose(results[0], results[1], atol=1e-5)


@pytest.mark.parametrize("name", ["td", "tdc", "gtd", "tdrc", "etd", "gq", "oracle"])
def test_every_critic_declares_its_trace_and_correction(name):
    """The actor-critic and its compiled backend read ``trace``, ``correction`` and ``alpha_h`` as declared
    attributes (a tensor, or None for a critic without one), never by probing: each critic's declaration matches
    the state it saves."""
    from emphatic_rl.agents.linear.critics import CRITICS, Critic

    kwargs = {"value_function": lambda theta: torch.zeros(2, 3)} if name == "oracle" else {"alpha": 0.1}
    critic = CRITICS[name](num_features=3, population_size=2, **kwargs)
    assert isinstance(critic, Critic)
    assert (critic.trace is not None) == ("trace" in critic.state_names)
    assert (critic.correction is not None) == ("correction" in critic.state_names)
    assert (critic.alpha_h is not None) == (critic.correction is not None)
    for tensor in (critic.trace, critic.correction):
        if tensor is not None:
            assert tensor.shape == critic.weights.shape
    if critic.alpha_h is not None:
        assert critic.alpha_h.shape == (2,)


def test_the_actor_critic_does_not_probe_its_critic():
    import inspect

    import emphatic_rl.agents.linear.actor_critic as module

    source = inspect.getsource(module)
    assert "hasattr(" not in source and "getattr(critic" not in source
