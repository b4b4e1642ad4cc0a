"""Deep Gaussian ACE / OffPAC (``gaussian-ace``, ``gaussian-offpac``): bad input, the Gaussian policy's bounds and
log-probs, the actor gradient against the hand-computed ``-rho M delta grad ln pi``, the emphasis and critic targets,
the training loop, resume exactness and the CLI."""

from __future__ import annotations

import math

import pytest
import torch

from emphatic_rl.agents import load_agents, make_agent
from emphatic_rl.agents.action_boxes import clipped_gaussian_log_prob
from emphatic_rl.agents.deep.gaussian import GaussianACE, GaussianACEOptions
from emphatic_rl.agents.registry import AgentContext
from emphatic_rl.buffers.trajectory import TransitionBatch
from emphatic_rl.checkpoints import load_checkpoint
from emphatic_rl.config import TrainConfig
from emphatic_rl.envs.base import BoxSpec, DiscreteSpec
from emphatic_rl.train import train

load_agents()
P, B, D = 2, 6, 3  # members, batch, observation dim


def _context(action_spec=None, population=P) -> AgentContext:
    return AgentContext(
        BoxSpec((D,), -1.0, 1.0),
        action_spec or BoxSpec((1,), -math.inf, math.inf),
        population,
        1,
        1,
        torch.device("cpu"),
        seed=0,
        total_steps=100,
    )


def _linear_agent(**options) -> GaussianACE:
    """Networks with no hidden layer (linear mean / std heads, linear V and fhat) with random weights."""
    defaults = dict(hidden=(), rho_clip=math.inf, emphasis_rho_clip=math.inf, gamma=0.9)
    agent = GaussianACE(_context(), GaussianACEOptions(**{**defaults, **options}))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for net in (agent.policy, agent.critic, agent.critic_target, agent.emphasis, agent.emphasis_target):
            if net is None:
                continue
            for parameter in net.parameters():
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    return agent


def _linear(net, x):
    layer = net.layers[0]
    return torch.einsum("pbd,pdo->pbo", x, layer.weight.detach()) + layer.bias.detach()


def _batch():
    generator = torch.Generator().manual_seed(3)
    obs = torch.randn(P, B, D, generator=generator)
    behaviour_mean, behaviour_std = 0.3, 1.2
    action = behaviour_mean + behaviour_std * torch.randn(P, B, 1, generator=generator)
    log_mu = (
        -0.5 * ((action - behaviour_mean) / behaviour_std).square()
        - math.log(behaviour_std)
        - 0.5 * math.log(2 * math.pi)
    ).squeeze(-1)
    terminated = torch.zeros(P, B, dtype=torch.bool)
    terminated[0, 1] = terminated[1, 4] = True
    batch = TransitionBatch(
        obs=obs,
        action=action,
        reward=torch.randn(P, B, generator=generator),
        terminated=terminated,
        truncated=torch.zeros(P, B, dtype=torch.bool),
        next_obs=torch.randn(P, B, D, generator=generator),
        behaviour_log_prob=log_mu,
        interest=torch.ones(P, B),
        time_index=torch.zeros(P, B, dtype=torch.int64),
        stream_index=torch.zeros(P, B, dtype=torch.int64),
    )
    episode_start = torch.zeros(P, B, dtype=torch.bool)
    episode_start[0, 0] = episode_start[1, 3] = True
    return batch, episode_start


def _hand_actor_update(agent: GaussianACE, batch, emphasis_weight):
    """``mean_B rho M delta grad ln pi`` for the linear heads, by hand (unbounded box: plain Gaussian density)."""
    x, a = batch.obs, batch.action[..., 0]
    out = _linear(agent.policy, x)
    mean, raw_std = out[..., 0], out[..., 1]
    o = agent.options
    std = torch.nn.functional.softplus(raw_std + agent.std_offset) + o.min_std
    log_pi = -0.5 * ((a - mean) / std).square() - std.log() - 0.5 * math.log(2 * math.pi)
    rho = (log_pi - batch.behaviour_log_prob).exp()
    gamma = o.gamma * (~batch.terminated).float()
    delta = (
        batch.reward + gamma * _linear(agent.critic_target, batch.next_obs)[..., 0] - _linear(agent.critic, x)[..., 0]
    )
    d_mean = (a - mean) / std**2  # d ln N / d mean
    d_raw_std = (-1 / std + (a - mean) ** 2 / std**3) * torch.sigmoid(raw_std + agent.std_offset)
    coefficient = (rho * emphasis_weight * delta / B).unsqueeze(-1) * torch.stack([d_mean, d_raw_std], -1)
    return torch.einsum("pbd,pbo->pdo", x, coefficient), coefficient.sum(1, keepdim=True), rho, delta


def _actor_gradient(agent, batch, episode_start):
    out = agent.losses(batch, episode_start)
    agent.optimizer.zero_grad()
    out["actor"].sum().backward()
    layer = agent.policy.layers[0]
    return out, layer.weight.grad.clone(), layer.bias.grad.clone()


# ---------------------------------------------------------------------------------------------- bad input
def test_discrete_env_is_a_clear_error():
    with pytest.raises(ValueError, match="agent 'gaussian-ace' needs a continuous .*4 discrete actions"):
        make_agent("gaussian-ace", _context(DiscreteSpec(4)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"emphasis": "trace"}, "unknown emphasis 'trace'; allowed: learned, none"),
        ({"eta": 1.5}, "eta must be in"),
        ({"eta": "1"}, "eta must be a number"),
        ({"rho_clip": 0.0}, "rho_clip must be > 0"),
        ({"min_std": 0.6}, "init_std must be > min_std"),
        ({"batch_size": 2.5}, "batch_size must be an integer"),
        ({"bogus": 1}, "unknown option"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        make_agent("gaussian-ace", _context(BoxSpec((1,), -2.0, 2.0)), **options)


# ---------------------------------------------------------------------------------------------- policy
def test_std_is_positive_starts_at_init_std_and_actions_respect_the_box():
    agent = make_agent("gaussian-ace", _context(BoxSpec((2,), -2.0, 2.0)), learning_starts=0, hidden=[8])
    with torch.no_grad():
        agent.policy.layers[-1].weight.zero_()
        agent.policy.layers[-1].bias.zero_()
    obs = torch.randn(P, 400, D)
    mean, std = agent.distribution(obs)
    assert torch.allclose(std, torch.full_like(std, 0.5 * 2.0))  # init_std half-widths
    with torch.no_grad():
        agent.policy.layers[-1].bias.fill_(-50.0)
    assert float(agent.distribution(obs)[1].detach().min()) >= 0.05 * 2.0 - 1e-6  # floored at min_std, never <= 0
    with torch.no_grad():
        agent.policy.layers[-1].bias.fill_(3.0)  # wide: many actions land on the bounds
    out = agent.act(obs, env_step=10)
    assert out.action.shape == (P, 400, 2) and out.log_prob.shape == (P, 400)
    assert float(out.action.abs().max()) <= 2.0 and bool((out.action.abs() == 2.0).any())
    assert torch.allclose(out.log_prob, agent.log_prob(obs, out.action), atol=1e-5)
    assert torch.equal(agent.evaluation_action(obs), agent.distribution(obs)[0])
    uniform = agent.act(obs, env_step=0)  # before learning_starts (0 here: step 0 is still uniform)
    assert torch.allclose(uniform.log_prob, torch.full((P, 400), -2 * math.log(4.0)))


# ---------------------------------------------------------------------------------------------- the updates
def test_offpac_actor_gradient_is_minus_rho_delta_grad_log_pi():
    agent = _linear_agent(eta=0.0, emphasis="none")
    batch, episode_start = _batch()
    out, grad_weight, grad_bias = _actor_gradient(agent, batch, episode_start)
    update_weight, update_bias, rho, delta = _hand_actor_update(agent, batch, torch.ones(P, B))
    assert agent.emphasis is None
    assert torch.allclose(out["rho"], rho, rtol=1e-5)
    assert (rho > 2).any() and (rho < 0.5).any()  # the ratios genuinely differ from 1
    assert torch.allclose(out["delta"], delta, atol=1e-5)
    assert torch.allclose(-grad_weight, update_weight, atol=1e-5)
    assert torch.allclose(-grad_bias, update_bias, atol=1e-5)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ace_actor_gradient_is_minus_rho_m_delta_grad_log_pi(eta):
    agent = _linear_agent(eta=eta)
    batch, episode_start = _batch()
    fhat = _linear(agent.emphasis, batch.obs)[..., 0]
    assert (fhat < 0).any() and (fhat > 0).any()  # the clamp at 0 is exercised
    emphasis_weight = (1 - eta) + eta * fhat.clamp(min=0.0)
    out, grad_weight, grad_bias = _actor_gradient(agent, batch, episode_start)
    update_weight, update_bias, _, _ = _hand_actor_update(agent, batch, emphasis_weight)
    assert torch.allclose(out["emphatic_weighting"], emphasis_weight, atol=1e-6)
    assert torch.allclose(-grad_weight, update_weight, atol=1e-5)
    assert torch.allclose(-grad_bias, update_bias, atol=1e-5)


def test_rho_clip_applies_to_actor_weight_and_critic():
    clipped, free = _linear_agent(eta=0.0, emphasis="none", rho_clip=1.0), _linear_agent(eta=0.0, emphasis="none")
    batch, episode_start = _batch()
    _, grad_clipped, _ = _actor_gradient(clipped, batch, episode_start)
    update, _, rho, _ = _hand_actor_update(free, batch, torch.ones(P, B))
    expected, _, _, _ = _hand_actor_update(free, batch, rho.clamp(max=1.0) / rho)
    assert torch.allclose(-grad_clipped, expected, atol=1e-5) and not torch.allclose(expected, update, atol=1e-3)
    out = clipped.losses(batch, episode_start)
    value = _linear(clipped.critic, batch.obs)[..., 0]
    target = value + out["delta"]
    assert torch.allclose(out["critic"], (0.5 * rho.clamp(max=1.0) * (target - value) ** 2).mean(1), atol=1e-4)


@pytest.mark.parametrize("normalize", [True, False])
def test_emphasis_loss_is_the_backward_td_of_ace_md(normalize):
    agent = _linear_agent(eta=1.0, normalize_emphasis=normalize)
    batch, episode_start = _batch()
    out = agent.losses(batch, episode_start)
    gamma = 0.9 * (~batch.terminated).float()
    base = (1 - gamma) if normalize else torch.ones(P, B)
    target = base + gamma * out["rho"] * _linear(agent.emphasis_target, batch.obs)[..., 0]
    assert torch.allclose(out["emphasis_target"], target, atol=1e-5)
    fhat_next = _linear(agent.emphasis, batch.next_obs)[..., 0]
    fhat_now = _linear(agent.emphasis, batch.obs)[..., 0]
    expected = 0.5 * (
        (~batch.terminated).float() * (fhat_next - target) ** 2 + episode_start.float() * (fhat_now - 1) ** 2
    ).mean(1)
    assert torch.allclose(out["emphasis"], expected, atol=1e-5)


def test_fit_start_state_and_clip_followon_switches():
    """``fit_start_state=False`` drops the start term only; ``clip_followon_at_zero=False`` gives ``F_t = fhat``."""
    agent = _linear_agent(eta=0.5, fit_start_state=False, clip_followon_at_zero=False)
    batch, episode_start = _batch()
    out = agent.losses(batch, episode_start)
    fhat_next = _linear(agent.emphasis, batch.next_obs)[..., 0]
    fhat_now = _linear(agent.emphasis, batch.obs)[..., 0]
    expected = 0.5 * ((~batch.terminated).float() * (fhat_next - out["emphasis_target"]) ** 2).mean(1)
    assert torch.allclose(out["emphasis"], expected, atol=1e-5)
    assert (fhat_now < 0).any()
    assert torch.allclose(out["followon"], fhat_now, atol=1e-6)
    assert torch.allclose(out["emphatic_weighting"], 0.5 + 0.5 * fhat_now, atol=1e-6)


# ---------------------------------------------------------------------------------------------- loop, resume, CLI
def _config(steps: int) -> TrainConfig:
    return TrainConfig(
        agent="gaussian-ace",
        env="pendulum",
        steps=steps,
        num_envs=2,
        population_size=2,
        eval_every=0,
        eval_episodes=1,
        eval_max_steps=20,
        checkpoint_every=20,
        log_every=20,
        progress=False,
        agent_options={"learning_starts": 10, "hidden": [16], "batch_size": 16},
    )


def test_resume_through_the_loop_is_bit_identical(tmp_path):
    full = train(_config(40), tmp_path / "full")
    train(_config(20), tmp_path / "resumed")
    resumed = train(_config(40), tmp_path / "resumed", resume=True)
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["agent"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["agent"]
    for name in ("policy", "critic", "emphasis", "emphasis_target"):
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name])
    assert a["gradient_updates"] == b["gradient_updates"] > 0
    assert torch.equal(full.final_eval_return, resumed.final_eval_return)


def test_cli_train_gaussian_ace_on_pendulum(tmp_path, capsys):
    from emphatic_rl.cli import main
    from emphatic_rl.logging import read_metrics

    out = tmp_path / "run"
    main(
        [
            "train",
            "--agent",
            "gaussian-ace",
            "--env",
            "pendulum",
            "--steps",
            "200",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            "agent.learning_starts=50",
            "--set",
            "agent.batch_size=32",
        ]
    )
    names = {row[1] for row in read_metrics(out / "metrics.csv")}
    assert {"eval/return", "train/followon_mean", "train/importance_ratio_mean", "train/policy_std"} <= names


def test_stored_log_prob_is_the_clipped_gaussian_of_the_acting_policy():
    agent = make_agent("gaussian-offpac", _context(BoxSpec((1,), -2.0, 2.0)), learning_starts=0, hidden=[8])
    obs = torch.randn(P, 50, D)
    out = agent.act(obs, env_step=5)
    mean, std = agent.distribution(obs)
    assert torch.allclose(out.log_prob, clipped_gaussian_log_prob(mean, std, out.action, agent.box))
    assert agent.name == "gaussian-offpac" and agent.emphasis is None
