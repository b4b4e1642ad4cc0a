"""Emphasis estimators against the exact emphatic weighting m / d_mu on an episodic tabular MDP (Imani et al. 2018;
Graves et al. 2023).

The target policy is held fixed (uniform: theta = 0 and a vanishing actor step), the behaviour is not uniform, and
episodes end by termination. With ``P_N`` the transitions among non-terminal states:
``d_mu ∝ d_0^T (I - P_mu,N)^-1`` (the distribution of the states the agent updates at),
``m^T = (d_mu ∘ i)^T (I - gamma P_pi,N)^-1`` and the target is ``m / d_mu``.
"""

import torch

from emphatic_rl.agents.linear.actor_critic import ActorCritic
from emphatic_rl.features import OneHotFeatures

GAMMA = 0.8
NUM_STATES = 4  # non-terminal; index 4 is the terminal observation
MU = torch.tensor([0.7, 0.3])


def episodic_problem():
    g = torch.Generator().manual_seed(2)
    exponential = -torch.log(torch.rand(NUM_STATES, 2, NUM_STATES + 1, generator=g).double())
    exponential[..., NUM_STATES] *= 0.3  # terminate with moderate probability
    transitions = exponential / exponential.sum(-1, keepdim=True)
    start = torch.tensor([0.6, 0.4, 0.0, 0.0], dtype=torch.float64)
    return transitions, start


def exact_emphasis(transitions, start, interest_kind="uniform"):
    eye = torch.eye(NUM_STATES, dtype=torch.float64)
    mu = MU.double()
    pi = torch.full((2,), 0.5, dtype=torch.float64)
    p_mu = torch.einsum("a,sat->st", mu, transitions[..., :NUM_STATES])
    p_pi = torch.einsum("a,sat->st", pi, transitions[..., :NUM_STATES])
    occupancy = torch.linalg.solve(eye - p_mu.T, start)
    d_mu = occupancy / occupancy.sum()
    if interest_kind == "uniform":
        interest_weight = d_mu
    else:  # episodic: i = 1 on the first state of each episode, whose share of d_mu is start / E[length]
        interest_weight = start / occupancy.sum()
    m = torch.linalg.solve(eye - GAMMA * p_pi.T, interest_weight)
    return m / d_mu, d_mu


def run_agent(agent, transitions, start, num_steps, seed=0):
    """Feed the agent R = P streams of episodes; return per-stream sums and counts of F_t by state."""
    g = torch.Generator().manual_seed(seed)
    n = agent.num_streams
    state = torch.multinomial(start.float().expand(n, -1), 1, generator=g).squeeze(1)
    sums = torch.zeros(n, NUM_STATES, dtype=torch.float64)
    counts = torch.zeros(n, NUM_STATES, dtype=torch.float64)
    learned = torch.zeros(agent.population_size, NUM_STATES + 1)
    log_mu = MU.log()
    for t in range(num_steps):
        action = torch.multinomial(MU.expand(n, -1), 1, generator=g).squeeze(1)
        next_state = torch.multinomial(transitions[state, action].float(), 1, generator=g).squeeze(1)
        terminated = next_state == NUM_STATES
        metrics = agent.update_step(
            state[:, None],
            action,
            torch.zeros(n),
            terminated,
            torch.zeros(n, dtype=torch.bool),
            next_state[:, None],
            log_mu[action],
        )
        if t >= num_steps // 5:
            sums.index_put_((torch.arange(n), state), metrics["followon"].double(), accumulate=True)
            counts.index_put_((torch.arange(n), state), torch.ones(n, dtype=torch.float64), accumulate=True)
        if agent.learned_emphasis is not None and t >= num_steps - num_steps // 4:
            learned += agent.learned_emphasis.weights
        restart = torch.multinomial(start.float().expand(n, -1), 1, generator=g).squeeze(1)
        state = torch.where(terminated, restart, next_state)
    return sums, counts, learned / (num_steps // 4)


def make_agent(emphasis, n=200, interest="uniform", **kwargs):
    return ActorCritic(
        OneHotFeatures(NUM_STATES + 1),
        2,
        n,
        alpha_actor=1e-30,
        alpha_critic=0.1,
        critic="td",
        emphasis=emphasis,
        eta=1.0,
        interest=interest,
        gamma=GAMMA,
        **kwargs,
    )


def test_followon_trace_conditional_mean_is_m_over_d_mu():
    transitions, start = episodic_problem()
    expected, _ = exact_emphasis(transitions, start)
    sums, counts, _ = run_agent(make_agent("followon"), transitions, start, 1500)
    per_stream = sums / counts.clamp_min(1)
    mean = per_stream.mean(0)
    standard_error = per_stream.std(0) / per_stream.shape[0] ** 0.5
    assert ((mean - expected).abs() < 4 * standard_error + 0.01).all(), (mean, expected, standard_error)
    assert (expected - 1).abs().max() > 10 * standard_error.max()  # F is not trivially the interest


def test_followon_trace_with_episodic_interest():
    transitions, start = episodic_problem()
    expected, _ = exact_emphasis(transitions, start, "episodic")
    sums, counts, _ = run_agent(make_agent("followon", interest="episodic"), transitions, start, 1500)
    per_stream = sums / counts.clamp_min(1)
    mean, standard_error = per_stream.mean(0), per_stream.std(0) / per_stream.shape[0] ** 0.5
    assert ((mean - expected).abs() < 4 * standard_error + 0.01).all(), (mean, expected, standard_error)


def test_learned_emphasis_converges_to_m_over_d_mu():
    transitions, start = episodic_problem()
    expected, _ = exact_emphasis(transitions, start)
    agent = make_agent("learned", n=64, alpha_emphasis=0.05)
    _, _, learned = run_agent(agent, transitions, start, 3000)
    estimate = learned.mean(0)[:NUM_STATES].double()
    assert torch.allclose(estimate, expected, atol=0.05 * expected.max()), (estimate, expected)
