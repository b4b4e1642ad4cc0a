"""DPG: deep DDPG (bad input, bounds, log-probs, learned emphasis, checkpoint), linear DPG against the exact lab, and
the deterministic policy gradient theorem on random continuous-action MDPs (hypothesis)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emphatic_rl.agents import AgentContext, load_agents, make_agent
from emphatic_rl.agents.action_boxes import ActionBox, clipped_gaussian_log_prob
from emphatic_rl.buffers import TrajectoryBuffer
from emphatic_rl.checkpoints import load_checkpoint
from emphatic_rl.config import TrainConfig
from emphatic_rl.envs import make_env
from emphatic_rl.envs.base import BoxSpec, DiscreteSpec
from emphatic_rl.envs.counterexamples import dpg_counterexample_mdp
from emphatic_rl.envs.tabular import ContinuousActionMDP
from emphatic_rl.exact import ContinuousLab
from emphatic_rl.exact.continuous import BatchedContinuousOracle, LinearDPG, run_sampled_linear_dpg
from emphatic_rl.train import train

D = torch.float64
load_agents()


def context(action_spec, population=1, obs_shape=(3,)):
    obs_spec = BoxSpec(obs_shape, -1.0, 1.0)
    return AgentContext(obs_spec, action_spec, population, 2, 2, torch.device("cpu"), 0, 1000)


# ---------------------------------------------------------------------------------------------- bad input
def test_discrete_env_is_a_clear_error():
    with pytest.raises(ValueError, match="agent 'dpg' needs a continuous .*3 discrete actions"):
        make_agent("dpg", context(DiscreteSpec(3)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"emphasis": "trace"}, "unknown emphasis .trace.; allowed: learned, none"),
        ({"tau": 0.0}, "tau must be > 0"),
        ({"exploration_noise": -0.1}, "exploration_noise must be > 0"),
        ({"eta": 2.0}, "eta must be in"),
        ({"bogus": 1}, "unknown option"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        make_agent("dpg", context(BoxSpec((1,), -2.0, 2.0)), **options)


def test_linear_dpg_bad_switches():
    with pytest.raises(ValueError, match="emphasis must be one of none, oracle, learned"):
        LinearDPG(2, 1, 0.1, emphasis="trace")
    with pytest.raises(ValueError, match="critic must be one of compatible, oracle"):
        LinearDPG(2, 1, 0.1, critic="td")


# ---------------------------------------------------------------------------------------------- bounds, log-probs
def test_clipped_gaussian_log_prob_is_a_probability_measure():
    box = ActionBox(torch.tensor([-1.0], dtype=D), torch.tensor([2.0], dtype=D))
    mean, std = torch.tensor([1.5], dtype=D), torch.tensor([0.7], dtype=D)
    grid = torch.linspace(-1, 2, 20001, dtype=D)[1:-1].unsqueeze(-1)
    inside = clipped_gaussian_log_prob(mean, std, grid, box).exp()
    interior_mass = float(inside.sum() * (3 / 20000))
    tails = clipped_gaussian_log_prob(mean, std, torch.tensor([[-1.0], [2.0]], dtype=D), box).exp().sum()
    assert interior_mass + float(tails) == pytest.approx(1.0, abs=1e-3)
    # an action beyond the bound is treated as the bound (the clipped action's mass)
    assert torch.allclose(
        clipped_gaussian_log_prob(mean, std, torch.tensor([[5.0]], dtype=D), box),
        clipped_gaussian_log_prob(mean, std, torch.tensor([[2.0]], dtype=D), box),
    )


def test_behaviour_actions_stay_in_the_box_and_log_probs_match():
    agent = make_agent(
        "dpg", context(BoxSpec((1,), -2.0, 2.0), population=2), learning_starts=0, exploration_noise=2.0, hidden=[8]
    )
    obs = torch.randn(2, 500, 3)
    out = agent.act(obs, env_step=10)
    assert out.action.shape == (2, 500, 1) and out.log_prob.shape == (2, 500)
    assert float(out.action.abs().max()) <= 2.0
    assert bool((out.action.abs() == 2.0).any())  # wide noise hits the bounds: clipped, not rejected
    expected = clipped_gaussian_log_prob(agent.policy(obs).detach(), agent.noise_std, out.action, agent.box)
    assert torch.allclose(out.log_prob, expected)
    assert float(agent.evaluation_action(obs * 100).abs().max()) <= 2.0  # tanh-squashed target policy


# ---------------------------------------------------------------------------------------------- learning path
def _fill(agent, population, steps=300):
    env = make_env("pendulum", num_envs=population * 2)
    buffer = TrajectoryBuffer(
        capacity=1000,
        num_streams=population * 2,
        obs_shape=(3,),
        obs_dtype=torch.float32,
        action_shape=(1,),
        action_dtype=torch.float32,
    )
    obs = env.reset(seed=0)
    for step in range(1, steps + 1):
        out = agent.act(obs.view(population, 2, 3), step)
        action = out.action.reshape(-1, 1)
        result = env.step(action)
        buffer.add(
            obs, action, result.reward, result.terminated, result.truncated, result.final_obs, out.log_prob.reshape(-1)
        )
        obs = result.obs
    return buffer


def test_learned_emphasis_update_runs_and_weights_are_positive():
    ctx = AgentContext(BoxSpec((3,), -8.0, 8.0), BoxSpec((1,), -2.0, 2.0), 2, 2, 4, torch.device("cpu"), 0, 1000)
    agent = make_agent("dpg", ctx, emphasis="learned", learning_starts=50, hidden=[16], batch_size=32)
    buffer = _fill(agent, 2, steps=120)
    before = [p.clone() for p in agent.actor.parameters()]
    metrics = agent.update(buffer, env_step=120)
    for key in ("critic_loss", "actor_loss", "emphasis_loss", "followon_mean", "importance_ratio_mean"):
        assert metrics[key].shape == (2,) and bool(torch.isfinite(metrics[key]).all())
    assert float(metrics["followon_mean"].min()) >= 0.0
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.actor.parameters(), strict=True))


def test_learned_emphasis_switches_fit_start_state_and_clip_followon_at_zero():
    """DDPG's defaults (no start-state term, F clipped at 0) are options; the other choices give other losses."""
    ctx = AgentContext(BoxSpec((3,), -8.0, 8.0), BoxSpec((1,), -2.0, 2.0), 2, 2, 4, torch.device("cpu"), 0, 1000)
    losses = {}
    for fit in (False, True):
        agent = make_agent(
            "dpg", ctx, emphasis="learned", learning_starts=50, hidden=[16], batch_size=64, fit_start_state=fit
        )
        assert agent.options.fit_start_state is fit and agent.options.clip_followon_at_zero
        buffer = _fill(agent, 2, steps=60)
        batch = buffer.sample_transitions(64, torch.Generator().manual_seed(0), num_groups=2)
        start = torch.zeros(2, 64, dtype=torch.bool)
        start[:, ::4] = True  # as if these rows started episodes
        if fit:
            with pytest.raises(ValueError, match="fit_start_state needs episode_start"):
                agent.learn(batch)
        losses[fit] = agent.learn(batch, start)["emphasis_loss"]
    assert not torch.allclose(losses[False], losses[True])
    raw = make_agent(
        "dpg", ctx, emphasis="learned", learning_starts=50, hidden=[16], batch_size=32, clip_followon_at_zero=False
    )
    with torch.no_grad():
        raw.emphasis_net.layers[-1].bias.fill_(-5.0)  # fhat < 0 everywhere
    metrics = raw.learn(_fill(raw, 2, steps=60).sample_transitions(32, torch.Generator().manual_seed(1), num_groups=2))
    assert float(metrics["followon_mean"].max()) < 0.0  # F_t = fhat(S_t), not clipped at 0


@pytest.mark.parametrize("after", [True, False])
def test_followon_after_update_reads_f_after_or_before_the_emphasis_step(after):
    """DDPG reads F_t = f(S_t) after this step's emphasis update by default (``followon_after_update``); False reads
    it before, as deep ACE does. The other reading differs (the step moved f)."""
    ctx = AgentContext(BoxSpec((3,), -8.0, 8.0), BoxSpec((1,), -2.0, 2.0), 2, 2, 4, torch.device("cpu"), 0, 1000)
    agent = make_agent(
        "dpg",
        ctx,
        emphasis="learned",
        learning_starts=50,
        hidden=[16],
        batch_size=32,
        followon_after_update=after,
        emphasis_learning_rate=0.05,
    )
    batch = _fill(agent, 2, steps=60).sample_transitions(32, torch.Generator().manual_seed(2), num_groups=2)
    obs = batch.obs.float()
    with torch.no_grad():
        before = agent.emphasis_net(obs).squeeze(-1).clamp(0.0, agent.options.emphasis_clip).mean(dim=1)
    metrics = agent.learn(batch)
    with torch.no_grad():
        now = agent.emphasis_net(obs).squeeze(-1).clamp(0.0, agent.options.emphasis_clip).mean(dim=1)
    assert not torch.allclose(before, now)
    assert torch.allclose(metrics["followon_mean"], now if after else before)


def test_normalize_emphasis_is_an_option_of_ddpg_too():
    ctx = AgentContext(BoxSpec((3,), -8.0, 8.0), BoxSpec((1,), -2.0, 2.0), 2, 2, 4, torch.device("cpu"), 0, 1000)
    losses = []
    for normalize in (True, False):
        agent = make_agent(
            "dpg", ctx, emphasis="learned", learning_starts=50, hidden=[16], batch_size=32, normalize_emphasis=normalize
        )
        batch = _fill(agent, 2, steps=60).sample_transitions(32, torch.Generator().manual_seed(3), num_groups=2)
        losses.append(agent.learn(batch)["emphasis_loss"])
    assert not torch.allclose(losses[0], losses[1])  # target (1 - gamma) + gamma rho f' against 1 + gamma rho f'


def test_linear_dpg_reports_followon_and_emphatic_weighting():
    learner = LinearDPG(1, 2, 0.1, emphasis="oracle", eta=0.25, dtype=D)
    x, ones = torch.ones(2, 1, dtype=D), torch.ones(2, dtype=D)
    ratio = torch.tensor([2.0, 4.0], dtype=D)
    m = learner.update_step(x, ones, ones, x, ones, ones, action_value_gradient=ones, emphatic_ratio=ratio)
    assert m["followon"].tolist() == [2.0, 4.0]  # F_t
    assert m["emphatic_weighting"].tolist() == [0.75 + 0.25 * 2.0, 0.75 + 0.25 * 4.0]  # M_t


def test_frozen_member_does_not_move():
    ctx = AgentContext(BoxSpec((3,), -8.0, 8.0), BoxSpec((1,), -2.0, 2.0), 2, 2, 4, torch.device("cpu"), 0, 1000)
    agent = make_agent("dpg", ctx, learning_starts=10, hidden=[16], batch_size=32, emphasis="learned")
    buffer = _fill(agent, 2, steps=40)
    agent.freeze(torch.tensor([True, False]))
    before = [p.detach().clone() for p in agent.actor.parameters()]
    agent.update(buffer, env_step=40)
    after = list(agent.actor.parameters())
    assert all(torch.equal(a[0], b[0]) for a, b in zip(before, after, strict=True))
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(before, after, strict=True))


def test_train_loop_and_resume_are_bit_identical(tmp_path):
    config = TrainConfig(
        agent="dpg",
        env="pendulum",
        steps=60,
        num_envs=2,
        population_size=2,
        eval_every=0,
        eval_episodes=1,
        eval_max_steps=20,
        checkpoint_every=30,
        log_every=30,
        progress=False,
        agent_options={"learning_starts": 20, "hidden": [16], "batch_size": 16, "emphasis": "learned"},
    )
    full = train(config, tmp_path / "full")
    half = TrainConfig(**{**config.to_dict(), "steps": 30})
    train(half, tmp_path / "resumed")
    resumed = train(config, tmp_path / "resumed", resume=True)
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["agent"]["actor"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["agent"]["actor"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(full.final_eval_return, resumed.final_eval_return)


# ---------------------------------------------------------------------------------------------- linear DPG vs lab
def test_batched_oracle_matches_the_lab():
    lab = ContinuousLab(dpg_counterexample_mdp(), "deterministic")
    oracle = BatchedContinuousOracle(lab)
    u = torch.tensor([[0.0, 0.0], [1.0, -2.0], [-3.0, 0.5]], dtype=D)
    mean = u @ lab.features.T
    values = oracle.values(mean)
    ratio = oracle.emphatic_ratio(mean)
    dq = oracle.action_value_gradient(mean, values)
    for p in range(3):
        assert torch.allclose(values[p], lab.values(u[p]))
        assert torch.allclose(ratio[p] * lab.d_mu, lab.emphatic_weighting(u[p]))
        assert torch.allclose(lab.features.T @ (lab.d_mu * ratio[p] * dq[p]), lab.expected_update("emphatic-dpg", u[p]))
        assert torch.allclose(lab.features.T @ (lab.d_mu * dq[p]), lab.expected_update("dpg", u[p]))


def _sampled_against_ascent(alpha, episodes, runs):
    lab = ContinuousLab(dpg_counterexample_mdp(), "deterministic")
    result = run_sampled_linear_dpg(lab, ("none", "oracle"), alpha=alpha, episodes=episodes, runs=runs, checkpoints=2)
    # two sampled steps per episode (s0, then s1 or s2): compare with 2 * episodes expected-update steps
    expected = [
        lab.ascent(name, torch.zeros(2), steps=2 * episodes, lr=alpha).final_objective
        for name in ("dpg", "emphatic-dpg")
    ]
    return lab.best_corner_objective()[0], result, expected


def test_sampled_linear_dpg_on_the_dpg_counterexample():
    """Plain DPG ends at a worse J than emphatic DPG (oracle m / d_mu), which reaches the lab's J*; both follow the
    expected-update ascent (loosely at this large step size; see the slow test for the tight agreement)."""
    j_star, result, (dpg_expected, emphatic_expected) = _sampled_against_ascent(0.5, 300, 4)
    final = result.objective[:, :, -1]
    assert float(final[1].mean()) == pytest.approx(emphatic_expected, abs=0.01)
    assert float(final[1].min()) > j_star - 0.03
    assert float(final[0].mean()) == pytest.approx(dpg_expected, abs=0.1)
    assert float(final[1].mean()) - float(final[0].mean()) > 0.3
    assert bool((result.final_actor[1, :, 1] < 0).all())  # emphatic DPG turns the aliased action the right way


@pytest.mark.slow
def test_sampled_linear_dpg_agrees_with_expected_ascent_at_small_step_size():
    j_star, result, (dpg_expected, emphatic_expected) = _sampled_against_ascent(0.1, 2000, 10)
    final = result.objective[:, :, -1]
    assert float(final[0].mean()) == pytest.approx(dpg_expected, abs=0.01)
    assert float(final[1].mean()) == pytest.approx(emphatic_expected, abs=0.01)
    assert j_star - float(final[0].mean()) > 0.4


def test_compatible_critic_learns_the_action_value_gradient_for_a_fixed_policy():
    """COPDAC-Q with a frozen actor (alpha_actor = 0) on a one-state bandit q(a) = -(a - 1)^2 at pi = 0:
    grad_a q(0) = 2, which is w . x at the critic's fixed point (Gaussian exploration around pi)."""
    torch.manual_seed(0)
    learner = LinearDPG(1, 4, 0.0, critic="compatible", alpha_critic=0.02, alpha_value=0.02)
    x = torch.ones(4, 1)
    for _ in range(20000):
        a = 0.5 * torch.randn(4)
        reward = -((a - 1) ** 2)
        learner.update_step(x, a, reward, x, torch.zeros(4), torch.zeros(4))
    assert torch.allclose(learner.advantage_weights.squeeze(1), torch.full((4,), 2.0), atol=0.2)


# ---------------------------------------------------------------------------------------------- theorem (property)
def random_continuous_mdp(seed: int, S: int, d: int) -> ContinuousActionMDP:
    """Transitions ``softmax(base + slope * tanh(a))`` over next states, reward ``c0 + c1 sin(a) - c2 a^2``,
    discounts in ``[0, 0.9]`` with some terminal (0) transitions."""
    g = torch.Generator().manual_seed(seed)
    base, slope = torch.randn(S, S, generator=g, dtype=D), 2 * torch.randn(S, S, generator=g, dtype=D)
    c0, c1, c2 = (torch.randn(S, generator=g, dtype=D) for _ in range(3))
    discount = 0.9 * torch.rand(S, S, generator=g, dtype=D)
    discount[torch.rand(S, S, generator=g) < 0.2] = 0.0
    start = torch.rand(S, generator=g, dtype=D) + 0.1

    def next_state_probs(action):  # [S, K] -> [S, K, S]
        return torch.softmax(base.unsqueeze(1) + slope.unsqueeze(1) * torch.tanh(action).unsqueeze(-1), -1)

    def expected_reward(action):
        return c0.unsqueeze(1) + c1.unsqueeze(1) * torch.sin(action) - c2.abs().unsqueeze(1) * 0.1 * action**2

    return ContinuousActionMDP(
        next_state_probs,
        expected_reward,
        discount,
        start / start.sum(),
        torch.randn(S, d, generator=g, dtype=D),
        torch.randn(S, d, generator=g, dtype=D),
        torch.randn(S, generator=g, dtype=D),
        torch.rand(S, generator=g, dtype=D) + 0.3,
        name="random-continuous",
    )


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10**6), st.integers(2, 5), st.integers(1, 3), st.sampled_from(["uniform", "episodic"]))
def test_deterministic_policy_gradient_theorem_on_random_mdps(seed, S, d, interest):
    """sum_s m(s) grad_u pi(s) grad_a q(s, pi(s)) = grad_u J (autograd through the exact solve), computed three
    ways: the lab's emphatic-dpg expected update, the batched oracle (an independent path), and autograd."""
    lab = ContinuousLab(random_continuous_mdp(seed, S, d), "deterministic", interest)
    u = torch.randn(d, generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    true = lab.true_gradient(u)
    assert torch.allclose(lab.expected_update("emphatic-dpg", u), true, atol=1e-8)
    oracle = BatchedContinuousOracle(lab)
    mean = (u @ lab.features.T).unsqueeze(0)
    m = oracle.emphatic_ratio(mean)[0] * lab.d_mu
    dq = oracle.action_value_gradient(mean, oracle.values(mean))[0]
    assert torch.allclose(lab.features.T @ (m * dq), true, atol=1e-8)
    # eta = 0 is the semi-gradient DPG weighting
    assert torch.allclose(lab.expected_update("emphatic-dpg", u, eta=0.0), lab.expected_update("dpg", u))
    assert math.isfinite(float(lab.objective(u)))


@pytest.mark.slow
def test_deep_dpg_solves_native_pendulum_within_30k_steps(tmp_path):
    """Priority (a) of issue 6: mean evaluation return better than -200 within 30k steps. The run is that of
    experiments/dpg_pendulum.toml (defaults, P = 5 seeds as one population, seed 0) stopped at 8000 steps, where the
    measured study run (experiments/results/dpg/pendulum_table.md) has mean -162.8 (it first passes -200 at 6000
    steps: -149.4); 8000 steps leave a 37-point margin and take minutes, not the hour 30k steps take on 2 shared
    cores."""
    config = TrainConfig(
        agent="dpg",
        env="pendulum",
        steps=8_000,
        seed=0,
        population_size=5,
        num_envs=1,
        eval_every=2_000,
        eval_episodes=10,
        eval_max_steps=200,
        checkpoint_every=0,
        log_every=1_000,
        progress=False,
        agent_options={"emphasis": "none"},
    )
    result = train(config, tmp_path / "run")
    assert float(result.final_eval_return.mean()) > -200
