"""Deep ACE / OffPAC on replay: hand-checked actor, critic and emphasis updates on a linear (one-hot) problem, episode
starts read from the buffer, bad input, the real training loop and resume exactness."""

from __future__ import annotations

import math

import pytest
import torch

from emphatic_rl.agents.deep.ace import DeepACE, DeepACEOptions, DeepOffPACOptions
from emphatic_rl.agents.registry import AgentContext, get_agent_entry, make_agent
from emphatic_rl.buffers import TrajectoryBuffer
from emphatic_rl.buffers.trajectory import TransitionBatch
from emphatic_rl.checkpoints import load_checkpoint
from emphatic_rl.config import TrainConfig
from emphatic_rl.envs.base import BoxSpec, DiscreteSpec
from emphatic_rl.train import train

STATES, ACTIONS, P, B = 4, 3, 2, 5


def _context(population=P, streams=1, obs_shape=(STATES,), action_spec=None) -> AgentContext:
    return AgentContext(
        BoxSpec(obs_shape, 0.0, 1.0),
        action_spec or DiscreteSpec(ACTIONS),
        population,
        streams,
        streams,
        torch.device("cpu"),
        seed=0,
        total_steps=100,
    )


def _linear_agent(**options) -> DeepACE:
    """One-hot observations through networks with no hidden layer: a linear softmax actor, linear V and fhat."""
    defaults = dict(hidden=(), rho_clip=math.inf, emphasis_rho_clip=math.inf, entropy_coef=0.0, gamma=0.9)
    agent = DeepACE(_context(), DeepACEOptions(**{**defaults, **options}))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for net in (agent.policy, agent.critic, agent.emphasis):
            if net is None:
                continue
            for parameter in net.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
        agent.critic_target.layers[0].weight.add_(0.3)  # a target critic that differs from the online one
        if agent.emphasis is not None:
            agent.emphasis_target.layers[0].weight.copy_(
                torch.randn(agent.emphasis_target.layers[0].weight.shape, generator=generator)
            )
    return agent


def _linear(net, x):
    """``x [P, B, d] -> [P, B, out]`` by hand from a one-layer population network."""
    layer = net.layers[0]
    return torch.einsum("pbd,pdo->pbo", x, layer.weight.detach()) + layer.bias.detach()


def _batch():
    generator = torch.Generator().manual_seed(3)
    state = torch.randint(STATES, (P, B), generator=generator)
    next_state = torch.randint(STATES, (P, B), generator=generator)
    terminated = torch.tensor([[False, True, False, False, True], [False, False, True, False, False]])
    behaviour_probs = torch.tensor([0.2, 0.3, 0.5])
    action = torch.randint(ACTIONS, (P, B), generator=generator)
    eye = torch.eye(STATES)
    batch = TransitionBatch(
        obs=eye[state],
        action=action,
        reward=torch.randn(P, B, generator=generator),
        terminated=terminated,
        truncated=torch.zeros(P, B, dtype=torch.bool),
        next_obs=eye[next_state],
        behaviour_log_prob=behaviour_probs.log()[action],
        interest=torch.ones(P, B),
        time_index=torch.zeros(P, B, dtype=torch.int64),
        stream_index=torch.zeros(P, B, dtype=torch.int64),
    )
    episode_start = torch.tensor([[True, False, False, True, False], [False, False, False, False, True]])
    return batch, episode_start, behaviour_probs[action]


def _hand_update(agent: DeepACE, batch, behaviour_prob, emphasis_weight):
    """The OffPAC / ACE sampled ascent direction, mean over the batch: rho M delta grad ln pi, for weight and bias."""
    x, x_next, gamma = batch.obs, batch.next_obs, agent.options.gamma * (~batch.terminated).float()
    pi = torch.softmax(_linear(agent.policy, x), dim=-1)  # [P, B, A]
    rho = pi.gather(-1, batch.action.unsqueeze(-1)).squeeze(-1) / behaviour_prob
    delta = batch.reward + gamma * _linear(agent.critic_target, x_next)[..., 0] - _linear(agent.critic, x)[..., 0]
    grad_log_pi = torch.nn.functional.one_hot(batch.action, ACTIONS).float() - pi  # d ln pi / d logits
    coefficient = (rho * emphasis_weight * delta).unsqueeze(-1) * grad_log_pi / B  # [P, B, A]
    return torch.einsum("pbd,pba->pda", x, coefficient), coefficient.sum(dim=1, keepdim=True), rho, delta


def _actor_gradient(agent: DeepACE, batch, episode_start):
    out = agent.losses(batch, episode_start)
    agent.optimizer.zero_grad()
    out["actor"].sum().backward()
    layer = agent.policy.layers[0]
    return out, layer.weight.grad.clone(), layer.bias.grad.clone()


def test_offpac_actor_gradient_is_the_offpac_update_with_rho_from_stored_behaviour_log_probs():
    agent = _linear_agent(eta=0.0, emphasis="none")
    batch, episode_start, behaviour_prob = _batch()
    out, grad_weight, grad_bias = _actor_gradient(agent, batch, episode_start)
    update_weight, update_bias, rho, delta = _hand_update(agent, batch, behaviour_prob, torch.ones(P, B))
    assert torch.allclose(out["rho"], rho, atol=1e-5)
    assert torch.allclose(out["delta"], delta, atol=1e-5)
    assert torch.allclose(-grad_weight, update_weight, atol=1e-5)  # gradient descent on the loss = the ascent step
    assert torch.allclose(-grad_bias, update_bias, atol=1e-5)
    assert agent.emphasis is None  # OffPAC trains no emphasis network


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ace_actor_gradient_weights_each_sample_by_the_learned_emphasis(eta):
    agent = _linear_agent(eta=eta)
    batch, episode_start, behaviour_prob = _batch()
    followon = _linear(agent.emphasis, batch.obs)[..., 0].clamp(min=0.0)  # F_t = max(fhat(x_t), 0)
    assert (_linear(agent.emphasis, batch.obs) < 0).any()  # the clamp is exercised
    out, grad_weight, grad_bias = _actor_gradient(agent, batch, episode_start)
    emphasis_weight = (1 - eta) + eta * followon
    update_weight, update_bias, _, _ = _hand_update(agent, batch, behaviour_prob, emphasis_weight)
    assert torch.allclose(out["emphatic_weighting"], emphasis_weight, atol=1e-5)
    assert torch.allclose(-grad_weight, update_weight, atol=1e-5)
    assert torch.allclose(-grad_bias, update_bias, atol=1e-5)


def test_rho_clip_bounds_the_actor_and_critic_ratio():
    agent = _linear_agent(eta=0.0, emphasis="none", rho_clip=0.5)
    batch, episode_start, behaviour_prob = _batch()
    _, grad_weight, _ = _actor_gradient(agent, batch, episode_start)
    pi = torch.softmax(_linear(agent.policy, batch.obs), dim=-1)
    rho = pi.gather(-1, batch.action.unsqueeze(-1)).squeeze(-1) / behaviour_prob
    assert (rho > 0.5).any()
    update_weight, *_ = _hand_update(agent, batch, behaviour_prob, rho.clamp(max=0.5) / rho)
    assert torch.allclose(-grad_weight, update_weight, atol=1e-5)


@pytest.mark.parametrize("normalize", [False, True])
def test_emphasis_target_and_loss_are_the_backward_td_of_ace_md(normalize):
    """target = i_{t+1} + gamma_{t+1} rho_t fhat_target(x_t) (Graves et al. 2023), regressed at x_{t+1}; no update at a
    terminal x_{t+1}; fhat(S_0) regressed to i_0 at episode starts."""
    agent = _linear_agent(eta=1.0, normalize_emphasis=normalize, emphasis_rho_clip=1.5)
    batch, episode_start, behaviour_prob = _batch()
    out = agent.losses(batch, episode_start)
    gamma_next = 0.9 * (~batch.terminated).float()
    pi = torch.softmax(_linear(agent.policy, batch.obs), dim=-1)
    rho = (pi.gather(-1, batch.action.unsqueeze(-1)).squeeze(-1) / behaviour_prob).clamp(max=1.5)
    base = (1 - gamma_next) if normalize else torch.ones(P, B)
    target = base + gamma_next * rho * _linear(agent.emphasis_target, batch.obs)[..., 0]
    assert torch.allclose(out["emphasis_target"], target, atol=1e-5)
    fhat_next = _linear(agent.emphasis, batch.next_obs)[..., 0]
    fhat_now = _linear(agent.emphasis, batch.obs)[..., 0]
    loss = 0.5 * ((~batch.terminated).float() * (fhat_next - target) ** 2 + episode_start.float() * (fhat_now - 1) ** 2)
    assert torch.allclose(out["emphasis"], loss.mean(dim=1), atol=1e-5)


def test_fit_start_state_off_drops_only_the_start_term():
    """``fit_start_state=False`` (DDPG's default): only the backward-TD term at non-terminal S_{t+1}."""
    on, off = _linear_agent(eta=1.0), _linear_agent(eta=1.0, fit_start_state=False)
    batch, episode_start, _ = _batch()
    out_on, out_off = on.losses(batch, episode_start), off.losses(batch, episode_start)
    fhat_next = _linear(off.emphasis, batch.next_obs)[..., 0]
    fhat_now = _linear(off.emphasis, batch.obs)[..., 0]
    backward = 0.5 * (~batch.terminated).float() * (fhat_next - out_off["emphasis_target"]) ** 2
    start = 0.5 * episode_start.float() * (fhat_now - 1) ** 2
    assert torch.allclose(out_off["emphasis"], backward.mean(dim=1), atol=1e-5)
    assert torch.allclose(out_on["emphasis"], (backward + start).mean(dim=1), atol=1e-5)
    assert not torch.allclose(out_on["emphasis"], out_off["emphasis"])


def test_clip_followon_at_zero_off_uses_the_raw_fhat():
    """``clip_followon_at_zero=False`` (the linear agent's rule): ``F_t = fhat(S_t)``, negative values included."""
    agent = _linear_agent(eta=0.5, clip_followon_at_zero=False)
    batch, episode_start, _ = _batch()
    fhat = _linear(agent.emphasis, batch.obs)[..., 0]
    assert (fhat < 0).any()
    out = agent.losses(batch, episode_start)
    assert torch.allclose(out["followon"], fhat, atol=1e-6)
    assert torch.allclose(out["emphatic_weighting"], 0.5 + 0.5 * fhat, atol=1e-6)
    with pytest.raises(ValueError, match="clip_followon_at_zero must be true or false"):
        get_agent_entry("deep-ace").build_options({"clip_followon_at_zero": 1})


def test_critic_loss_is_rho_weighted_td0_toward_the_target_critic():
    agent = _linear_agent(eta=0.0, emphasis="none", rho_clip=1.2)
    batch, episode_start, behaviour_prob = _batch()
    out = agent.losses(batch, episode_start)
    _, _, rho, delta = _hand_update(agent, batch, behaviour_prob, torch.ones(P, B))
    assert torch.allclose(out["critic"], (0.5 * rho.clamp(max=1.2) * delta**2).mean(dim=1), atol=1e-5)


def test_episode_starts_are_read_from_the_buffer():
    """S_t starts an episode iff it is a stream's first row or the previous row of its stream ended."""
    agent = DeepACE(_context(population=2, streams=3), DeepACEOptions(batch_size=64, hidden=(8,)))
    buffer = TrajectoryBuffer(capacity=6, num_streams=3, obs_shape=(STATES,), obs_dtype=torch.float32)
    ends = torch.zeros(10, 3, dtype=torch.bool)
    ends[[1, 4, 7], [0, 1, 2]] = True
    ends[5, 0] = True
    for t in range(10):  # 10 rows into a 6-row ring: times 4..9 stay, time 4 is the oldest
        buffer.add(
            torch.rand(3, STATES),
            torch.zeros(3, dtype=torch.int64),
            torch.zeros(3),
            ends[t],
            torch.zeros(3, dtype=torch.bool),
            torch.rand(3, STATES),
        )
    batch, start = agent._sample(buffer)
    assert batch.obs.shape == (2, 64, STATES) and start.shape == (2, 64)
    t, n = batch.time_index, batch.stream_index
    expected = (t > buffer.oldest_time) & ends[(t - 1).clamp(min=0), n]
    assert torch.equal(start, expected)
    assert start.any() and (~start).any()


def test_bad_input_raises_one_clear_error():
    for options, message in (
        ({"eta": 1.5}, "eta must be in"),
        ({"eta": -0.1}, "eta must be in"),
        ({"actor_learning_rate": 0.0}, "actor_learning_rate must be > 0"),
        ({"critic_learning_rate": -1e-3}, "critic_learning_rate must be > 0"),
        ({"emphasis_learning_rate": 0.0}, "emphasis_learning_rate must be > 0"),
        ({"rho_clip": 0.0}, "rho_clip must be > 0"),
        ({"behaviour": "greedy"}, "unknown behaviour 'greedy'; allowed: fixed, epsilon-greedy"),
        ({"emphasis": "followon"}, "unknown emphasis 'followon'; allowed: learned, none"),
        ({"interest": "episodic"}, "unknown interest"),
        ({"batch_size": 0}, "batch_size must be"),
    ):
        with pytest.raises(ValueError, match=message):
            get_agent_entry("deep-ace").build_options(options)
    with pytest.raises(ValueError, match="unknown option"):
        get_agent_entry("deep-offpac").build_options({"alpha": 1.0})
    continuous = _context(action_spec=BoxSpec((1,), -1.0, 1.0))
    with pytest.raises(ValueError, match="needs a discrete action space"):
        make_agent("deep-ace", continuous)


def test_presets_and_behaviour_switch():
    assert DeepOffPACOptions().eta == 0.0 and DeepACEOptions().eta == 1.0
    fixed = make_agent("deep-ace", _context(streams=4), buffer_size=100)
    greedy = make_agent("deep-offpac", _context(streams=4), buffer_size=100, behaviour="epsilon-greedy")
    assert not fixed.acts_in_env and greedy.acts_in_env and greedy.name == "deep-offpac"
    assert fixed.emphasis is not None and greedy.emphasis is None
    out = greedy.act(torch.eye(STATES)[torch.randint(STATES, (P, 4))], env_step=10**6)  # epsilon_end = 0.1
    argmax = greedy.policy(torch.eye(STATES)[torch.zeros(P, 4, dtype=torch.long)]).argmax(-1)
    assert argmax.shape == out.action.shape
    allowed = {round(math.log(0.1 / ACTIONS + 0.9), 5), round(math.log(0.1 / ACTIONS), 5)}
    assert {round(v, 5) for v in out.log_prob.flatten().tolist()} <= allowed


def _config(behaviour: str, steps: int, **top) -> TrainConfig:
    return TrainConfig(
        agent="deep-ace",
        env="minatar-breakout",
        steps=steps,
        num_envs=2,
        population_size=2,
        behaviour="uniform",
        eval_every=20,
        eval_episodes=1,
        eval_max_steps=30,
        checkpoint_every=20,
        log_every=20,
        progress=False,
        **top,
        agent_options={
            "learning_starts": 10,
            "batch_size": 8,
            "target_update_every": 7,
            "behaviour": behaviour,
            "epsilon_decay_steps": 30,
        },
    )


@pytest.mark.parametrize("behaviour", ["fixed", "epsilon-greedy"])
def test_resume_through_the_loop_is_bit_identical(tmp_path, behaviour):
    config = _config(behaviour, steps=40)
    full = train(config, tmp_path / "full")
    train(TrainConfig(**{**config.to_dict(), "steps": 20}), tmp_path / "resumed")
    resumed = train(config, tmp_path / "resumed", resume=True)
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["agent"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["agent"]
    assert a.keys() == b.keys()
    for name in ("policy", "critic", "critic_target", "emphasis", "emphasis_target"):
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    assert torch.equal(a["generator"], b["generator"])
    assert torch.equal(full.final_eval_return, resumed.final_eval_return)


def test_cli_train_on_minatar_breakout(tmp_path, capsys):
    from emphatic_rl.cli import main

    code = main(
        [
            "train",
            "--agent",
            "deep-ace",
            "--env",
            "minatar-breakout",
            "--steps",
            "200",
            "--no-progress",
            "--out",
            str(tmp_path / "run"),
            "--set",
            "agent.learning_starts=100",
            "--set",
            "agent.batch_size=8",
            "--set",
            "eval_episodes=1",
            "--set",
            "eval_every=0",
        ]
    )
    assert code == 0
    from emphatic_rl.logging import read_metrics

    names = {name for _, name, *_ in read_metrics(tmp_path / "run" / "metrics.csv")}
    expected = {"train/actor_loss", "train/critic_loss", "train/emphasis_loss", "train/importance_ratio_mean"}
    assert expected | {"eval/return"} <= names


def test_learned_emphasis_network_fits_m_over_d_mu_on_replayed_tabular_data():
    """One-hot states, a fixed uniform target policy, behaviour (0.7, 0.3): fhat trained on replayed transitions
    (boundary rules included) reaches the exact m / d_mu of the episodic MDP of test_ace_emphasis.py."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "ace_emphasis_problem", Path(__file__).with_name("test_ace_emphasis.py")
    )
    problem = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(problem)
    MU, NUM_STATES, episodic_problem, exact_emphasis = (  # noqa: N806
        problem.MU,
        problem.NUM_STATES,
        problem.episodic_problem,
        problem.exact_emphasis,
    )
    transitions, start = episodic_problem()
    expected, _ = exact_emphasis(transitions, start)  # gamma 0.8
    streams, rows = 64, 250
    g = torch.Generator().manual_seed(0)
    buffer = TrajectoryBuffer(capacity=rows, num_streams=streams, obs_shape=(NUM_STATES + 1,), obs_dtype=torch.float32)
    eye = torch.eye(NUM_STATES + 1)
    state = torch.multinomial(start.float().expand(streams, -1), 1, generator=g).squeeze(1)
    for _ in range(rows):
        action = torch.multinomial(MU.expand(streams, -1), 1, generator=g).squeeze(1)
        next_state = torch.multinomial(transitions[state, action].float(), 1, generator=g).squeeze(1)
        terminated = next_state == NUM_STATES
        buffer.add(
            eye[state],
            action,
            torch.zeros(streams),
            terminated,
            torch.zeros(streams, dtype=torch.bool),
            eye[next_state],
            MU.log()[action],
        )
        restart = torch.multinomial(start.float().expand(streams, -1), 1, generator=g).squeeze(1)
        state = torch.where(terminated, restart, next_state)
    context = AgentContext(
        BoxSpec((NUM_STATES + 1,), 0.0, 1.0),
        DiscreteSpec(2),
        1,
        streams,
        streams,
        torch.device("cpu"),
        seed=0,
        total_steps=1,
    )
    agent = DeepACE(
        context,
        DeepACEOptions(
            hidden=(),
            gamma=0.8,
            emphasis_rho_clip=math.inf,
            actor_learning_rate=1e-12,
            emphasis_learning_rate=0.02,
            batch_size=512,
            learning_starts=0,
            target_update_every=20,
            buffer_size=streams * rows,
        ),
    )
    with torch.no_grad():
        for parameter in agent.policy.parameters():
            parameter.zero_()  # uniform target policy, held fixed by the vanishing actor step
    average = torch.zeros(NUM_STATES)
    for step in range(1, 1001):
        agent.update(buffer, step)
        if step > 700:
            average += agent.emphasis(eye[:NUM_STATES].unsqueeze(0)).detach()[0, :, 0] / 300
    assert torch.allclose(average.double(), expected, rtol=0.08), (average, expected)
    assert (expected - 1).abs().max() > 0.3  # the emphasis is not trivially the interest
