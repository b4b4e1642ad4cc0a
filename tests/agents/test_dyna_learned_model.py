"""Learned (neural) Dyna models: fit on real data, hallucination flags, the agent with model='learned', bad input."""

import math

import pytest
import torch

from emphatic_rl.agents.dyna.learned_models import LearnedTabularModel, LearnedVectorModel
from emphatic_rl.agents.dyna.models import ForwardSample
from emphatic_rl.agents.dyna.tabular import DynaAgent, DynaOptions, learned_model_of, make_dyna_for_env
from emphatic_rl.buffers.trajectory import TrajectoryBuffer
from emphatic_rl.envs.gridworld import BorderedGridworld


def random_policy_buffer(env, population: int, steps: int, seed: int = 0) -> TrajectoryBuffer:
    """``steps`` uniformly random steps of ``env`` (one copy per member) in a ``TrajectoryBuffer``."""
    obs = env.reset(seed=seed)
    buffer = TrajectoryBuffer(steps, env.num_envs, tuple(obs.shape[1:]), obs.dtype)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        action = torch.randint(env.action_spec.n, (env.num_envs,), generator=generator)
        result = env.step(action)
        buffer.add(obs, action, result.reward, result.terminated, result.truncated, result.final_obs)
        obs = result.obs
    return buffer


def loop_buffer(agent, env) -> TrajectoryBuffer:
    """The loop's buffer for ``agent`` (one stream per env copy, the rows the agent asks for)."""
    return TrajectoryBuffer(agent.buffer_capacity, env.num_envs, (), torch.int64)


def loop_step(agent, env, buffer: TrajectoryBuffer, obs: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
    """One iteration of the training loop (act, step, store, update); returns the next obs and the metrics."""
    action, log_prob = agent.act(obs.view(agent.population_size, -1), step)
    result = env.step(action.view(-1))
    buffer.add(obs, action.view(-1), result.reward, result.terminated, result.truncated, result.final_obs)
    return result.obs, agent.update(buffer, step)


def add_step(buffer: TrajectoryBuffer, obs, action, reward, next_obs, terminated) -> None:
    """Store one step given as ``[P, 1]`` tensors (one stream per member)."""
    buffer.add(
        obs.view(-1), action.view(-1), reward.view(-1), terminated.view(-1), torch.zeros_like(terminated.view(-1)),
        next_obs.view(-1),
    )  # fmt: skip


def fit(model, buffer: TrajectoryBuffer, population: int, iterations: int, batch: int = 32) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(iterations):
        b = buffer.sample_transitions(batch, generator, num_groups=population)
        model.train_step(b.obs, b.action, b.reward, b.next_obs, b.terminated)


def test_learned_gridworld_models_fit_random_policy_transitions_from_the_trajectory_buffer():
    torch.manual_seed(0)
    population = 2
    env = BorderedGridworld(num_envs=population, height=4, width=4, max_episode_steps=40)
    buffer = random_policy_buffer(env, population, 300)
    model = learned_model_of(env, population, DynaOptions(model="learned", model_learning_rate=1e-2), seed=0)
    fit(model, buffer, population, 300)
    # Every distinct real transition the buffer holds, per member (member m owns stream m).
    data = buffer.transitions_at(torch.arange(300).repeat_interleave(population), torch.arange(population).repeat(300))
    pairs = data.obs * env.num_actions + data.action
    for member in range(population):
        mine = data.stream_index == member
        unique = torch.unique(pairs[mine])
        state, action = unique // env.num_actions, unique % env.num_actions
        with torch.no_grad():
            logits, reward, terminal_logit = model.forward_heads(
                state.expand(population, -1), action.expand(population, -1)
            )
        correct = logits[member].argmax(-1) == env.next_state_table[state, action]
        assert correct.float().mean().item() > 0.95
        assert ((terminal_logit[member] > 0) == env.terminal_table[state, action]).float().mean().item() > 0.95
        assert (reward[member] + 1).abs().mean().item() < 0.2  # an untrained head says about 0
        # Backward: the mass p(s | s', a) on true predecessors of (s', a) (a bump makes s' its own predecessor).
        successor = env.next_state_table[state, action]
        with torch.no_grad():
            _, previous_logits, _, _ = model.backward_heads(successor.expand(population, -1))
        probs = torch.softmax(previous_logits[member, torch.arange(len(unique)), action], -1)  # [U, S]
        is_predecessor = env.next_state_table[:, action].T == successor.unsqueeze(1)  # [U, S]
        assert (probs * is_predecessor).sum(-1).mean().item() > 0.95


def test_a_fresh_learned_model_hallucinates_and_training_reduces_it_in_the_agent_instruments():
    population = 64
    env = BorderedGridworld(num_envs=population, height=3, width=3, max_episode_steps=30)
    model = learned_model_of(env, population, DynaOptions(model="learned"), seed=0)
    generator = torch.Generator().manual_seed(0)
    real = torch.nonzero(env.real_state_mask).squeeze(1)
    state = real[torch.randint(len(real), (population,), generator=generator)]
    action = torch.randint(4, (population,), generator=generator)
    forward = model.sample_forward(state, action, generator)
    fresh_rate = (~model.is_real(forward.next_state)).float().mean().item()
    assert fresh_rate > 0.2, "an untrained categorical model spreads mass over the border ring too"
    assert torch.equal(model.is_real(forward.next_state), env.real_state_mask[forward.next_state])
    backward = model.sample_backward(state, generator)
    assert (~model.is_real(backward.previous_state)).float().mean().item() > 0.2

    population = 4
    env = BorderedGridworld(num_envs=population, height=3, width=3, max_episode_steps=30)
    options = DynaOptions(variant="one-step-successor", model="learned", planning_steps=2, model_learning_rate=1e-2)
    agent = make_dyna_for_env(env, population, options, seed=0)
    obs = env.reset(seed=0)
    buffer = loop_buffer(agent, env)

    def run(steps: int) -> dict:
        nonlocal obs
        for step in range(steps):
            obs, metrics = loop_step(agent, env, buffer, obs, step)
        return metrics

    early = run(10)
    assert (early["fraction_model_outputs_hallucinated"] > 0.05).all()
    assert (early["fraction_bootstrap_hallucinated"] > 0).all(), "the instruments see the learned hallucinations"
    run(250)
    agent.reset_statistics()
    late = run(50)
    assert (
        late["fraction_model_outputs_hallucinated"].mean() < 0.25 * early["fraction_model_outputs_hallucinated"].mean()
    )
    assert torch.isfinite(late["model_forward_loss"]).all()


def test_dyna_with_a_learned_model_runs_through_the_training_loop_and_resumes(tmp_path):
    from emphatic_rl.train import TrainConfig, build_run, train

    config = TrainConfig(
        agent="dyna",
        env="bordered-gridworld",
        steps=300,
        population_size=2,
        num_envs=1,
        log_every=100,
        eval_every=150,
        eval_episodes=1,
        progress=False,
        agent_options={"model": "learned", "variant": "one-step-successor"},
    )
    run = build_run(config)
    assert isinstance(run.agent.forward_model, LearnedTabularModel)
    result = train(config, tmp_path / "run", run=run)
    assert result.final_eval_return.shape == (2,)
    metrics = (tmp_path / "run" / "metrics.csv").read_text()
    assert "fraction_model_outputs_hallucinated" in metrics and "model_forward_loss" in metrics

    # Checkpoint round trip: the same continuation after load_state_dict.
    agent = run.agent
    saved = agent.state_dict()
    step = (
        torch.tensor([[8], [9]]),
        torch.tensor([[1], [2]]),
        torch.tensor([[-1.0], [-1.0]]),
        torch.tensor([[9], [17]]),
        torch.tensor([[False], [False]]),
    )
    saved_buffer = run.buffer.state_dict()
    add_step(run.buffer, *step)
    agent.update(run.buffer, 301)
    after = agent.q.clone(), [p.detach().clone() for p in agent.forward_model.parameters]
    agent.load_state_dict(saved)
    run.buffer.load_state_dict(saved_buffer)
    add_step(run.buffer, *step)
    agent.update(run.buffer, 301)
    assert torch.equal(agent.q, after[0])
    assert all(torch.equal(p, q) for p, q in zip(agent.forward_model.parameters, after[1], strict=True))


@pytest.mark.parametrize("variant", ["multi-step-successor", "one-step-predecessor", "multi-step-predecessor"])
def test_every_variant_plans_with_the_learned_model(variant):
    population = 2
    env = BorderedGridworld(num_envs=population, height=3, width=3)
    agent = make_dyna_for_env(env, population, DynaOptions(variant=variant, model="learned", planning_steps=2))
    obs = env.reset(seed=0)
    buffer = loop_buffer(agent, env)
    for step in range(20):
        obs, metrics = loop_step(agent, env, buffer, obs, step)
    assert (metrics["planning_updates"] > 0).all() and agent.parameters_finite().all()
    if variant == "multi-step-predecessor":
        assert (metrics["fraction_bootstrap_simulated"] == 0).all(), "the invariant holds with a learned model too"


def cartpole_region(state: torch.Tensor, terminal: torch.Tensor) -> torch.Tensor:
    """The CartPole validity region written out by hand (the paper's example for CartPole: beyond the bounds without
    termination)."""
    x, theta = state[:, 0].abs(), state[:, 2].abs()
    inside = (x <= 2.4) & (theta <= 12 * math.pi / 180)
    near = (x <= 2.6) & (theta <= 12 * math.pi / 180 + 0.2)
    return inside | (terminal & near)


def test_learned_cartpole_model_predicts_real_steps_and_its_predictions_are_flagged_by_the_validity_region():
    pytest.importorskip("emphatic_rl.envs.classic")
    from emphatic_rl.envs import make_env

    torch.manual_seed(0)
    population = 2
    env = make_env("cartpole", num_envs=population)
    buffer = random_policy_buffer(env, population, 400)
    model = LearnedVectorModel(4, 2, population, env_name="cartpole", learning_rate=3e-3, seed=0)
    generator = torch.Generator().manual_seed(0)
    # A fresh model on states drawn around the bounds: its flags follow the validity region, both kinds occur.
    wide = (torch.rand(population * 200, 4, generator=generator) * 2 - 1) * torch.tensor([3.0, 2.0, 0.3, 2.0])
    flags, states, terminals = [], [], []
    for chunk in wide.split(population):
        sample = model.sample_forward(chunk, torch.randint(2, (population,), generator=generator), generator)
        flags.append(sample.is_real), states.append(sample.next_state), terminals.append(sample.terminal)
    flags, states, terminals = torch.cat(flags), torch.cat(states), torch.cat(terminals)
    assert torch.equal(flags, cartpole_region(states, terminals))
    assert flags.any() and (~flags).any()

    fit(model, buffer, population, 600, batch=64)
    batch = buffer.sample_transitions(64, generator, num_groups=population)
    with torch.no_grad():
        predicted, reward, _ = model.forward_heads(batch.obs, batch.action)
    true_change = (batch.next_obs - batch.obs).abs().mean().item()
    assert (predicted - batch.next_obs).abs().mean().item() < 0.2 * true_change
    assert torch.allclose(reward, torch.ones_like(reward), atol=0.1)
    # From real states, the trained model's predictions are almost always real; every flag matches the region.
    real_fraction = []
    for column in range(32):
        sample = model.sample_forward(batch.obs[:, column], batch.action[:, column], generator)
        assert torch.equal(sample.is_real, cartpole_region(sample.next_state, sample.terminal))
        real_fraction.append(sample.is_real.float())
    assert torch.stack(real_fraction).mean().item() > 0.95
    backward = model.sample_backward(batch.next_obs[:, 0], generator)
    assert backward.previous_state.shape == (population, 4) and backward.is_real is not None


def test_learned_puddle_world_model_flags_positions_outside_the_unit_square():
    from emphatic_rl.envs import make_env

    population = 2
    env = make_env("puddle-world", num_envs=population)
    buffer = random_policy_buffer(env, population, 200)
    model = LearnedVectorModel(2, 4, population, env_name="puddle-world", learning_rate=3e-3)
    fit(model, buffer, population, 300)
    generator = torch.Generator().manual_seed(0)
    edge = torch.tensor([[0.99, 0.5], [0.5, 0.01]])  # pushing right from the right edge / down from the bottom
    sample = model.sample_forward(edge, torch.tensor([2, 1]), generator)
    inside = ((sample.next_state >= 0) & (sample.next_state <= 1)).all(1)
    assert torch.equal(sample.is_real, inside)
    # On the real transitions of the buffer, the predicted move is close to the true one (noise std 0.01).
    batch = buffer.sample_transitions(64, generator, num_groups=population)
    with torch.no_grad():
        predicted, _, _ = model.forward_heads(batch.obs, batch.action)
    true_change = (batch.next_obs - batch.obs).abs().mean().item()
    assert (predicted - batch.next_obs).abs().mean().item() < 0.5 * true_change


class WrongShapeLearned(LearnedTabularModel):
    def sample_forward(self, state, action, generator):
        sample = super().sample_forward(state, action, generator)
        return ForwardSample(sample.next_state.view(-1, 1).expand(-1, 2), sample.reward, sample.terminal)


def test_bad_input_raises_one_clear_error():
    env = BorderedGridworld(height=3, width=3)
    model = WrongShapeLearned(torch.eye(env.num_states), 4, 3, real_state_mask=env.real_state_mask)
    with pytest.raises(ValueError, match=r"returned next_state of shape \(3, 2\); expected \(3,\)"):
        DynaAgent(env.num_states, 4, 3, DynaOptions(model="learned"), forward_model=model)
    with pytest.raises(ValueError, match="with model='learned' it must be 0"):
        DynaOptions(model="learned", hallucination_probability=0.1)
    with pytest.raises(ValueError, match="model_features must be one of one-hot, coordinates"):
        DynaOptions(model="learned", model_features="pixels")
    with pytest.raises(ValueError, match="model must be one of given, learned"):
        DynaOptions(model="oracle")
    with pytest.raises(ValueError, match=r"state must be int64\[P=3\]"):
        model.sample_backward(torch.zeros(2, dtype=torch.long), torch.Generator())
    with pytest.raises(ValueError, match="next_obs must have shape"):
        model.train_step(
            torch.zeros(3, 4, dtype=torch.long),
            torch.zeros(3, 4, dtype=torch.long),
            torch.zeros(3, 4),
            torch.zeros(3, 5, dtype=torch.long),
            torch.zeros(3, 4, dtype=torch.bool),
        )
    vector = LearnedVectorModel(4, 2, 3, env_name="cartpole")
    with pytest.raises(ValueError, match=r"state must be float32\[P=3, D=4\]"):
        vector.sample_forward(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="declares no test of which states are real"):
        LearnedVectorModel(4, 2, 3, env_name="catcher")


def test_study_runner_with_the_learned_model_writes_the_hallucination_column_and_rejects_p_h(tmp_path, capsys):
    from emphatic_rl.cli import main as cli_main

    config = "experiments/dyna_learned_gridworld.toml"
    tiny = ["--set", "seeds=2", "--set", "steps=40", "--set", "eval_every=20", "--set", "height=3", "--set", "width=3"]
    tiny += ["--set", 'variants=["one-step-successor"]']
    assert cli_main(["dyna", config, "--out", str(tmp_path / "run"), *tiny]) == 0
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "model 'learned'" in summary and "model outputs halluc." in summary
    bad = ["--out", str(tmp_path / "bad"), "--set", "hallucination_probabilities=[0.0, 0.1]"]
    assert cli_main(["dyna", config, *bad]) == 2
    assert "must be [0.0] with model = 'learned'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_the_agent_trains_only_the_direction_its_variant_plans_with():
    env = BorderedGridworld(num_envs=1, height=3, width=3)
    for variant, trained, untouched in (
        ("one-step-successor", "forward_net", "backward_net"),
        ("multi-step-predecessor", "backward_net", "forward_net"),
    ):
        agent = make_dyna_for_env(env, 1, DynaOptions(variant=variant, model="learned", planning_steps=1))
        model = agent.forward_model
        before = {
            name: [p.detach().clone() for p in getattr(model, name).parameters()] for name in (trained, untouched)
        }
        step = (torch.tensor([[6]]), torch.tensor([[1]]), torch.tensor([[-1.0]]), torch.tensor([[7]]))
        buffer = loop_buffer(agent, env)
        add_step(buffer, *step, torch.tensor([[False]]))
        metrics = agent.update(buffer, 0)
        assert f"model_{trained.split('_')[0]}_loss" in metrics
        changed = [
            not torch.equal(p, q) for p, q in zip(getattr(model, trained).parameters(), before[trained], strict=True)
        ]
        assert all(changed)
        assert all(
            torch.equal(p, q) for p, q in zip(getattr(model, untouched).parameters(), before[untouched], strict=True)
        )
    with pytest.raises(ValueError, match="directions must be a non-empty subset"):
        model.train_step(*(torch.zeros(1, 2, dtype=torch.long),) * 5, directions=("sideways",))


def test_learned_models_train_on_the_last_model_replay_size_transitions_of_the_loop_buffer():
    from emphatic_rl.agents.dyna.models import BackwardModel, ForwardModel, TrainableModel, given_model_of

    class Spy(TrainableModel, ForwardModel, BackwardModel):
        """The given model, declared trainable: records what the agent trains it on."""

        def __init__(self, model):
            self.model, self.batches = model, []

        def sample_forward(self, state, action, generator):
            return self.model.sample_forward(state, action, generator)

        def sample_backward(self, state, generator):
            return self.model.sample_backward(state, generator)

        def train_step(self, obs, action, reward, next_obs, terminated, directions=("forward", "backward")):
            self.batches.append(torch.stack((obs, action, next_obs), dim=-1))  # [P, B, 3]
            return {"forward_loss": torch.zeros(obs.shape[0])}

        def parameters_finite(self):
            return torch.ones(2, dtype=torch.bool)

        def freeze(self, members):
            pass

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    population, kept = 2, 3
    env = BorderedGridworld(num_envs=population, height=3, width=3)
    spy = Spy(given_model_of(env, 0.0, population))
    options = DynaOptions(model_replay_size=kept, model_batch=64, planning_steps=1)
    agent = DynaAgent(env.num_states, 4, population, options, forward_model=spy, backward_model=spy)
    assert agent.learned_models == [spy] and agent.buffer_rows(1) == kept
    buffer = TrajectoryBuffer(20, population, (), torch.int64)  # more rows than the models replay
    obs = env.reset(seed=0)
    for step in range(12):
        obs, metrics = loop_step(agent, env, buffer, obs, step)
        recent = buffer.transitions_at(
            torch.arange(max(0, buffer.total_steps - kept), buffer.total_steps).repeat(population, 1),
            torch.arange(population).unsqueeze(1).expand(-1, min(kept, step + 1)),
        )
        expected = torch.stack((recent.obs, recent.action, recent.next_obs), dim=-1)  # [P, kept, 3]
        trained = spy.batches[-1]
        for member in range(population):
            allowed = {tuple(row) for row in expected[member].tolist()}
            assert {tuple(row) for row in trained[member].tolist()} <= allowed
    assert "model_forward_loss" in metrics
    with pytest.raises(ValueError, match=r"learned models train from the loop's TrajectoryBuffer; call update"):
        agent.observe(
            obs.view(population, 1),
            torch.zeros(population, 1, dtype=torch.long),
            torch.zeros(population, 1),
            obs.view(population, 1),
            torch.zeros(population, 1, dtype=torch.bool),
        )
