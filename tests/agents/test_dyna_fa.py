"""Dyna with function approximation: the invariant, the hallucination detectors, the perfect models, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from emphatic_rl.agents.dyna.function_approx import DynaFAAgent, DynaFAOptions, _Updates, make_dyna_fa_for_env
from emphatic_rl.agents.dyna.tabular import VARIANTS
from emphatic_rl.agents.dyna.vector_models import (
    SimulatorModel,
    cartpole_forward,
    cartpole_inverse,
    inject_hallucinations,
    is_reachable,
)
from emphatic_rl.buffers.trajectory import TrajectoryBuffer
from emphatic_rl.cli import main as cli_main
from emphatic_rl.envs import make_env
from emphatic_rl.envs.catcher import CatcherGeometry

ENVS = ("cartpole", "catcher", "puddle-world")


def loop(env, agent: DynaFAAgent, steps: int, seed: int = 1) -> TrajectoryBuffer:
    """The Runner's loop by hand: act, step, store in the trajectory buffer, update (one env copy per member)."""
    population = agent.population_size
    spec = env.observation_spec
    buffer = TrajectoryBuffer(agent.buffer_capacity, population, spec.shape, spec.dtype)
    obs = env.reset(seed=seed)
    for step in range(1, steps + 1):
        action, log_prob = agent.act(obs.unsqueeze(1), step)
        result = env.step(action.view(population))
        buffer.add(obs, action.view(population), result.reward, result.terminated, result.truncated, result.final_obs)
        agent.update(buffer, step)
        obs = result.obs
    return buffer


def small_options(variant: str, **overrides) -> DynaFAOptions:
    """The tests' small planner: 2 planning steps of 8 updates, a queue of 32, warm-up 8, a 2 x 8 Q-network."""
    settings = {"planning_steps": 2, "planning_batch": 8, "queue_size": 32, "warmup": 8, "hidden": 8, **overrides}
    return DynaFAOptions(variant=variant, **settings)


def run(env_name: str, variant: str, steps: int = 40, population: int = 2, **options) -> dict[str, torch.Tensor]:
    env = make_env(env_name, num_envs=population)
    opts = small_options(variant, model_hidden=8, **options)
    agent = make_dyna_fa_for_env(env, env_name, population, opts, seed=1)
    loop(env, agent, steps)
    return agent.planning_statistics()


@pytest.mark.parametrize("env_name", ENVS)
def test_invariant_only_multi_step_predecessor_never_bootstraps_a_real_state_from_a_simulated_one(env_name):
    for variant in VARIANTS:
        for model, dose in (("perfect", 0.0), ("perfect", 0.3), ("learned", 0.0)):
            stats = run(env_name, variant, model=model, dose=dose)
            assert bool((stats["planning_updates"] > 0).all())
            for key, value in stats.items():
                if key.startswith("fraction_"):
                    assert bool(((value >= 0) & (value <= 1)).all()), (key, value)
            toward = stats["fraction_real_toward_simulated"]
            if variant == "multi-step-predecessor":
                assert float(stats["fraction_bootstrap_simulated"].max()) == 0.0
                assert float(toward.max()) == 0.0, (env_name, model, dose)
            elif model == "perfect":
                assert float(toward.min()) > 0.0, (env_name, variant, model, dose)
            else:  # an early learned model may call every step terminal (then nothing bootstraps) in some members
                assert float(toward.max()) > 0.0, (env_name, variant, model, dose)
            if dose > 0 and variant != "one-step-predecessor":
                # injected error shows in the detector's count of model outputs
                assert float(stats["fraction_model_outputs_hallucinated"].min()) > 0.0
            if model == "perfect" and dose == 0.0:
                assert float(stats["fraction_model_outputs_hallucinated"].max()) == 0.0, (env_name, variant)


@pytest.mark.parametrize("env_name", ENVS)
def test_detector_accepts_every_real_state_and_rejects_every_injected_one(env_name):
    env = make_env(env_name, num_envs=16)
    generator = torch.Generator().manual_seed(0)
    obs = env.reset(seed=0)
    for _ in range(150):
        result = env.step(torch.randint(env.action_spec.n, (16,), generator=generator))
        assert bool(is_reachable(env, result.final_obs, result.terminated).all())
        assert bool(is_reachable(env, result.obs, None).all())
        obs = result.obs
    injected, mask = inject_hallucinations(env, obs.view(2, 8, -1), torch.ones(2), generator)
    assert bool(mask.all()) and not bool(is_reachable(env, injected, None).any())
    same, mask = inject_hallucinations(env, obs.view(2, 8, -1), torch.zeros(2), generator)
    assert not bool(mask.any()) and torch.equal(same, obs.view(2, 8, -1))


def test_detector_hand_examples():
    cartpole = torch.tensor([[2.5, 0.0, 0.0, 0.0], [2.45, 1.0, 0.0, 0.0], [0.0, 0.0, 0.3, 0.0]])
    terminal = torch.tensor([False, True, False])
    assert is_reachable("cartpole", cartpole, terminal).tolist() == [False, True, False]
    puddle = torch.tensor([[0.5, 0.5], [1.02, 0.5], [0.3, -0.01]])
    assert is_reachable("puddle-world", puddle).tolist() == [True, False, False]
    g = CatcherGeometry()
    scale = g.scale()
    catcher = (
        torch.tensor(
            [
                [20.0, 1.0, 24.0, 30.0, 3.0],  # real
                [20.0, 1.0, -6.0, 30.0, 3.0],  # fruit off screen (left)
                [20.0, 13.0, 24.0, 30.0, 3.0],  # faster than the terminal speed
                [20.0, 1.0, 24.0, -40.0, 3.0],  # higher than any spawn
            ]
        )
        / scale
    )
    assert is_reachable("catcher", catcher).tolist() == [True, False, False, False]
    assert is_reachable(make_env("catcher"), catcher).tolist() == [True, False, False, False]


def test_perfect_models_invert_the_dynamics():
    generator = torch.Generator().manual_seed(0)
    # CartPole: exact inverse of the Euler step
    state = 0.3 * torch.randn(500, 4, generator=generator, dtype=torch.float64)
    action = torch.randint(2, (500,), generator=generator)
    assert torch.allclose(cartpole_forward(cartpole_inverse(state, action), action)[0], state, atol=1e-10)
    # Every env: the forward step of a (valid) sampled predecessor comes back to the queried state.
    for env_name in ENVS:
        env = make_env(env_name, num_envs=32)
        obs = env.reset(seed=2)
        for _ in range(20):
            obs = env.step(torch.randint(env.action_spec.n, (32,), generator=generator)).obs
        model = SimulatorModel(env)
        query = obs.view(4, 8, -1)
        back = model.backward(query, generator)
        assert bool(back.valid.all())
        forward = model.forward(back.previous_state, back.action, generator)
        if env_name == "puddle-world":  # noise: the step lands within a few noise widths of the query
            assert float((forward.next_state - query).abs().max()) < 0.1
            expected = -1.0 - env.puddle_penalty(query.reshape(-1, 2)).view(4, 8)  # the reward of entering the query
            assert torch.allclose(back.reward, expected)
        elif env_name == "catcher":  # the paddle exactly; the fruit exactly unless it just appeared
            assert torch.allclose(forward.next_state[..., :2], query[..., :2], atol=1e-4)
            falling = back.reward == 0
            assert torch.allclose(forward.next_state[falling][:, 2:], query[falling][:, 2:], atol=1e-4)
        else:
            assert torch.allclose(forward.next_state, query, atol=1e-5)


def test_baseline_members_do_not_plan():
    env = make_env("cartpole", num_envs=4)
    agent = make_dyna_fa_for_env(
        env,
        "cartpole",
        4,
        DynaFAOptions(
            variant="one-step-successor",
            warmup=4,
            planning_steps=2,
            planning_batch=4,
            queue_size=8,
            hidden=8,
            plans=(True, True, False, False),
        ),
    )
    loop(env, agent, 12, seed=0)
    updates = agent.planning_statistics()["planning_updates"]
    assert bool((updates[:2] > 0).all()) and bool((updates[2:] == 0).all())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"variant": "two-step-successor"}, "variant must be one of"),
        ({"dose": 1.5}, r"dose must be in \[0.0, 1.0\]"),
        ({"dose": [0.1, -0.2]}, r"dose must be in \[0.0, 1.0\]"),
        ({"model": "oracle"}, "model must be one of perfect, learned"),
        ({"search_control": "random"}, "search_control must be one of queue, uniform"),
        ({"predecessor_start": "previous"}, "predecessor_start must be one of next-state, state"),
        ({"predecessor_action": "greedy"}, "predecessor_action must be one of uniform, behaviour, replayed"),
        ({"predecessor_action": "replayed"}, 'predecessor_action = "replayed" needs search_control = "uniform"'),
        (
            {"predecessor_action": "replayed", "search_control": "uniform", "predecessor_start": "state"},
            "got search_control='uniform', predecessor_start='state'",
        ),
        ({"successor_action": "greedy"}, "successor_action must be one of replayed, uniform"),
        ({"predecessor_state": "real"}, "predecessor_state must be one of model, replayed"),
        ({"predecessor_state": "replayed"}, 'predecessor_state = "replayed" needs predecessor_action = "replayed"'),
        ({"planning_update": "joint"}, "planning_update must be one of mixed, separate"),
    ],
)
def test_bad_options_one_clear_error(options, message):
    with pytest.raises(ValueError, match=message):
        DynaFAOptions(**options)


def test_a_model_kind_the_env_cannot_give():
    with pytest.raises(ValueError, match="needs vector observations"):
        make_dyna_fa_for_env(make_env("catcher", observation="image"), "catcher", 1, DynaFAOptions())
    with pytest.raises(ValueError, match="needs an env that declares vector dynamics .* env 'mountain-car' does not"):
        make_dyna_fa_for_env(make_env("mountain-car"), "mountain-car", 1, DynaFAOptions())
    # the model-free baseline needs no model
    make_dyna_fa_for_env(make_env("mountain-car"), "mountain-car", 1, DynaFAOptions(planning_steps=0))


def test_an_env_of_ones_own_that_declares_vector_dynamics_gets_models_detector_and_injection():
    """The capability is the env's declaration, not a list of names: a user's env class (here a renamed CartPole,
    registered nowhere) that declares ``has_vector_dynamics`` plans, and the invariant holds on it."""
    from emphatic_rl.envs.classic import CartPole

    class MyCartPole(CartPole):
        name = "my-cartpole"

    class NoDynamics(CartPole):
        name = "no-dynamics"
        has_vector_dynamics = False

    for variant in ("one-step-successor", "multi-step-predecessor"):
        env = MyCartPole(num_envs=2)
        opts = small_options(variant)
        agent = make_dyna_fa_for_env(env, "my-cartpole", 2, opts.__class__(**{**opts.__dict__, "dose": 0.3}))
        loop(env, agent, 30)
        stats = agent.planning_statistics()
        assert bool((stats["planning_updates"] > 0).all())
        assert float(stats["fraction_model_outputs_hallucinated"].min()) > 0.0  # the injection reached the detector
        toward = float(stats["fraction_real_toward_simulated"].max())
        assert (toward == 0.0) if variant == "multi-step-predecessor" else (toward > 0.0)
    with pytest.raises(ValueError, match="env 'no-dynamics' does not"):
        make_dyna_fa_for_env(NoDynamics(num_envs=1), "no-dynamics", 1, DynaFAOptions())


@pytest.mark.parametrize(
    "config, override, message",
    [
        ("cartpole", 'variants=["one-step-successor", "sideways"]', "variants must be a non-empty list of"),
        ("cartpole", "doses=[0.0, 1.5]", "each dose must be a number in [0, 1]"),
        ("puddle_world", 'env="mountain-car"', "cannot give the perfect and learned models"),
        ("catcher", 'env_options={ observation = "image" }', "needs vector observations"),
    ],
)
def test_study_bad_input_exits_2_with_one_line(config, override, message, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli_main(["dyna-fa", f"experiments/dyna_fa_{config}.toml", "--out", str(out), "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not out.exists()


def test_study_runs_end_to_end_and_reports_the_instruments(tmp_path):
    import json

    out = tmp_path / "study"
    args = ["experiments/dyna_fa_catcher.toml", "--out", str(out)]
    for override in (
        "seeds=2",
        "steps=24",
        "eval_every=8",
        "warmup=4",
        "hidden=8",
        "model_hidden=8",
        "planning_batch=4",
        "doses=[0.0, 0.5]",
        'variants=["one-step-successor", "multi-step-predecessor"]',
    ):
        args += ["--set", override]
    assert cli_main(["dyna-fa", *args]) == 0
    for name in ("summary.md", "results.json", "learning_curves.png", "dose_response.png"):
        assert (out / name).exists()
    results = json.loads((out / "results.json").read_text())
    assert results["conditions"] == ["perfect", "dose 0.5", "learned", "model-free"]
    table = results["table"]
    for condition in ("perfect", "dose 0.5", "learned"):
        assert table["multi-step-predecessor"][condition]["count_real_toward_simulated"] == 0
        assert table["multi-step-predecessor"][condition]["planning_updates"] > 0
    assert table["one-step-successor"]["dose 0.5"]["count_real_toward_hallucinated"] > 0
    assert results["baseline"]["runs"] == 4
    assert len(results["per_seed"]["multi-step-predecessor"]["learned"]["auc"]) == 2
    assert len(results["per_seed"]["model-free"]["final"]) == 4
    assert set(results["dose_slope"]) == {"one-step-successor", "multi-step-predecessor"}
    assert set(results["v4_minus_other_auc"]) == {"dose 0.5", "learned"}
    for condition in ("perfect", "dose 0.5", "learned"):
        peak, last = (table["one-step-successor"][condition][k][0] for k in ("max_q_peak", "max_q_last"))
        assert math.isfinite(peak) and peak >= last
    assert "## Value magnitude" in (out / "summary.md").read_text()


def test_dose_slope_is_the_least_squares_slope():
    from emphatic_rl.studies.dyna_fa import slope_ci

    x = torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 2.0])
    y = 2 * x + 1 + torch.tensor([0.1, -0.1, 0.1, -0.1, 0.1, -0.1])
    slope, half = slope_ci(x, y)
    # residuals +-0.1: s^2 = 0.06 / 4, Sxx = 4, se = sqrt(0.015 / 4); t(0.975, 4) = 2.7764
    assert slope == pytest.approx(2.0) and half == pytest.approx(2.7764451 * (0.015 / 4) ** 0.5, rel=1e-5)


def test_population_adam_matches_torch_adam_per_member_clips_per_member_and_skips_inactive_members():
    from emphatic_rl.agents.dyna.function_approx import _PopulationAdam

    torch.manual_seed(0)
    weight = torch.randn(3, 4, 2)
    bias = torch.randn(3, 1, 2)
    rates = torch.tensor([1e-3, 3e-2, 1e-1])
    active = torch.tensor([True, False, True])
    flat = torch.cat((weight.reshape(3, -1), bias.reshape(3, -1)), dim=1)
    start = flat.clone()
    optimiser = _PopulationAdam(flat, rates, max_norm=5.0)
    references = []
    for member in range(3):
        w, b = weight[member].clone().requires_grad_(), bias[member].clone().requires_grad_()
        references.append((w, b, torch.optim.Adam([w, b], lr=float(rates[member]))))
    x = torch.randn(5, 4)
    for _ in range(4):
        w_, b_ = flat[:, :8].view(3, 4, 2).clone().requires_grad_(), flat[:, 8:].view(3, 1, 2).clone().requires_grad_()
        ((x @ w_ + b_).square().sum()).backward()
        assert w_.grad is not None and b_.grad is not None
        optimiser.step(torch.cat((w_.grad.reshape(3, -1), b_.grad.reshape(3, -1)), dim=1), active)
        for w, b, adam in references:
            adam.zero_grad()
            ((x @ w + b).square().sum()).backward()
            torch.nn.utils.clip_grad_norm_([w, b], 5.0)
            adam.step()
    for member, (w, b, _) in enumerate(references):
        if active[member]:
            expected = torch.cat((w.detach().reshape(-1), b.detach().reshape(-1)))
            assert torch.allclose(flat[member], expected, atol=1e-6)
        else:
            assert torch.equal(flat[member], start[member])


def autograd_batch_loss(params: list[torch.Tensor], updates: _Updates) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference for the hand-written gradient: autograd's ``0.5 sum_b w (target - Q(obs, action))^2 /
    max(sum_b w, 1)`` per member (``[P]``) through the 2-layer ReLU network ``params``, and the TD errors ``[P, B]``."""
    x = updates.obs
    for index in range(0, len(params), 2):
        x = torch.baddbmm(params[index + 1], x, params[index])
        x = torch.relu(x) if index + 2 < len(params) else x
    delta = updates.target - x.gather(-1, updates.action.unsqueeze(-1)).squeeze(-1)
    w_f = torch.ones_like(delta) if updates.weight is None else updates.weight.float()
    return (0.5 * w_f * delta.square()).sum(dim=1) / w_f.sum(dim=1).clamp(min=1.0), delta


def test_hand_written_gradient_equals_autograd():
    """The gradient step's hand-written backward gives autograd's gradient of the same weighted loss."""
    torch.manual_seed(1)
    env = make_env("cartpole", num_envs=3)
    agent = make_dyna_fa_for_env(env, "cartpole", 3, DynaFAOptions(hidden=8, planning_steps=0))
    obs, action = torch.randn(3, 5, 4), torch.randint(2, (3, 5))
    target, weight = torch.randn(3, 5), torch.rand(3, 5) > 0.3
    for w in (None, weight):
        params = [p.detach().clone().requires_grad_() for p in agent.q_net.parameters()]
        loss, delta = autograd_batch_loss(params, _Updates(obs, action, target, w))
        loss.sum().backward()
        expected = torch.cat([p.grad.reshape(3, -1) for p in params if p.grad is not None], dim=1)
        captured: list[torch.Tensor] = []
        step = agent.optimizer.step
        agent.optimizer.step = lambda grad, active, sink=captured: sink.append(grad.clone())  # type: ignore[method-assign]
        td = agent._gradient_step(obs, action, target, w, planning=False)
        agent.optimizer.step = step  # type: ignore[method-assign]
        assert torch.allclose(captured[0], expected, atol=1e-6)
        assert torch.allclose(td, delta.detach(), atol=1e-6)


def test_mixed_planning_update_is_one_step_on_the_mean_of_the_batches_losses():
    """``planning_update = "mixed"``: one gradient of every learning member on the direct batch and the planning
    batches together, equal to autograd's gradient of the mean over the member's batches of each batch's loss
    ``0.5 sum_b w (target - Q)^2 / max(sum_b w, 1)``; a member that does not plan takes its direct batch's alone."""
    torch.manual_seed(2)
    env = make_env("cartpole", num_envs=3)
    opts = small_options("one-step-predecessor", plans=(True, False, True), planning_update="mixed")
    agent = make_dyna_fa_for_env(env, "cartpole", 3, opts)
    sizes, planning = (5, 4, 4), torch.tensor([True, False, True])
    batches = [
        _Updates(torch.randn(3, b, 4), torch.randint(2, (3, b)), torch.randn(3, b), None if i == 0 else w)
        for i, (b, w) in enumerate(
            zip(sizes, (None, torch.rand(3, 4) > 0.3, torch.zeros(3, 4, dtype=torch.bool)), strict=True)
        )
    ]
    params = [p.detach().clone().requires_grad_() for p in agent.q_net.parameters()]
    losses = [autograd_batch_loss(params, updates)[0] for updates in batches]
    per_member = torch.where(planning, sum(losses) / 3, losses[0])
    per_member.sum().backward()
    expected = torch.cat([p.grad.reshape(3, -1) for p in params if p.grad is not None], dim=1)
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    agent.optimizer.step = lambda grad, active: captured.append((grad.clone(), active.clone()))  # type: ignore[method-assign]
    deltas = agent._mixed_step(batches)
    assert len(captured) == 1 and bool(captured[0][1].all())
    assert torch.allclose(captured[0][0], expected, atol=1e-6)
    assert [tuple(d.shape) for d in deltas] == [(3, b) for b in sizes]


@pytest.mark.parametrize("planning_update, steps_per_real_step", [("separate", 3), ("mixed", 1)])
def test_optimizer_steps_per_real_step(planning_update, steps_per_real_step):
    """Separate planning updates make one Adam step per planning step after the direct one; mixed, one in all."""
    env = make_env("cartpole", num_envs=2)
    opts = small_options("multi-step-predecessor", planning_update=planning_update)
    agent = make_dyna_fa_for_env(env, "cartpole", 2, opts, seed=4)
    buffer = loop(env, agent, 20)
    before = agent.optimizer.step_count
    agent.update(buffer, 20)
    assert agent.optimizer.step_count - before == steps_per_real_step
    assert bool(agent.parameters_finite().all())


def test_without_planning_mixed_and_separate_updates_are_the_same_agent():
    """``planning_steps = 0`` (the model-free baseline): both ``planning_update`` modes take the same steps."""
    env = make_env("cartpole", num_envs=2)
    agents = []
    for planning_update in ("mixed", "separate"):
        opts = small_options("one-step-successor", planning_steps=0, planning_update=planning_update)
        agents.append(make_dyna_fa_for_env(env, "cartpole", 2, opts, seed=6))
        loop(env, agents[-1], 40)
    assert torch.equal(agents[0].q_flat, agents[1].q_flat)
    assert agents[0].optimizer.step_count == agents[1].optimizer.step_count > 0


def test_replay_draws_from_the_trajectory_buffer_as_the_private_ring_did():
    """Each member's replay batch is a uniform draw over its own last ``replay_size`` transitions: the same indices,
    from the same generator state, as the agent's former private ring (``randint(filled, (P, B))`` into slots
    written at ``step % replay_size``), also after the ring wrapped."""
    population, capacity, batch = 3, 5, 16
    buffer = TrajectoryBuffer(capacity, population, (1,), torch.float32)
    ring = torch.zeros(population, capacity)
    for step in range(1, 8):
        value = (10.0 * step + torch.arange(population)).unsqueeze(1)
        zeros = torch.zeros(population)
        buffer.add(value, torch.zeros(population, dtype=torch.int64), zeros, zeros.bool(), zeros.bool(), value)
        ring[:, (step - 1) % capacity] = value.squeeze(1)
        filled = min(step, capacity)
        drawn = buffer.sample_transitions(batch, torch.Generator().manual_seed(step), num_groups=population)
        index = torch.randint(filled, (population, batch), generator=torch.Generator().manual_seed(step))
        assert torch.equal(drawn.obs.squeeze(-1), ring.gather(1, index))


def test_a_runner_run_resumes_exactly_from_its_state():
    from emphatic_rl.config import TrainConfig
    from emphatic_rl.runner import Runner
    from emphatic_rl.train import build_run

    def build(variant: str):
        options = {"variant": variant, "planning_steps": 2, "planning_batch": 4, "queue_size": 16, "warmup": 8}
        options.update(hidden=8, model_hidden=8, dose=[0.0, 0.3], plans=[True, False], model="learned")
        config = TrainConfig(
            agent="dyna-fa",
            env="catcher",
            population_size=2,
            steps=40,
            seed=3,
            agent_options=options,
            progress=False,
            logger="none",
        )
        return build_run(config)

    for variant in ("one-step-predecessor", "multi-step-successor"):
        straight = build(variant)
        Runner(straight).run(40)
        first = build(variant)
        half = Runner(first)
        half.run(20)
        state = half.state_dict()
        resumed = build(variant)
        runner = Runner(resumed)
        runner.load_state_dict(state)
        runner.run(40)
        a, b = straight.agent, resumed.agent
        assert isinstance(a, DynaFAAgent) and isinstance(b, DynaFAAgent)
        assert torch.equal(a.q_flat, b.q_flat) and torch.equal(a.target_flat, b.target_flat)
        assert torch.equal(a.planning_counts, b.planning_counts)
        assert a.learned_network is not None and b.learned_network is not None
        for x, y in zip(a.learned_network.parameters, b.learned_network.parameters, strict=True):
            assert torch.equal(x, y)


def small_sweep(*overrides: str) -> list[str]:
    """``--set`` arguments of a sweep small enough for a test (2 seeds, 60 steps, tiny networks), then ``overrides``."""
    keys = ("seeds=2", "steps=60", "eval_every=20", "warmup=4", "hidden=8", "planning_batch=4", *overrides)
    return [arg for key in keys for arg in ("--set", key)]


def test_sweep_runs_every_step_size_and_length_and_applies_its_rule(tmp_path):
    import json

    out = tmp_path / "sweep"
    args = ["dyna-fa-cartpole", "--sweep", "--out", str(out)]
    args += small_sweep("learning_rate=[1e-3, 1e-2]", 'variants=["one-step-successor", "multi-step-predecessor"]')
    assert cli_main(["dyna-fa", *args]) == 0
    results = json.loads((out / "results.json").read_text())
    rates = [setting["learning_rate"] for setting in results["settings"]]
    assert rates == [1e-3, 1e-2]
    assert set(results["table"]) == {"one-step-successor", "multi-step-predecessor n=2", "multi-step-predecessor n=5"}
    cells = results["table"]["multi-step-predecessor n=5"]["perfect"]
    assert len(cells) == 2 and all(cell["fraction_real_toward_simulated"][0] == 0 for cell in cells)
    # each method at its best: the baseline by its pooled AUC, each variant by its perfect-model AUC
    baseline = [mean for mean, _ in results["baseline_auc"]]
    chosen = results["chosen"]
    assert chosen["learning_rate"]["model-free"] == rates[baseline.index(max(baseline))]
    one_step = [cell["auc"][0] for cell in results["table"]["one-step-successor"]["perfect"]]
    assert chosen["learning_rate"]["one-step-successor"] == rates[one_step.index(max(one_step))]
    pairs = {
        (r, n): results["table"][f"multi-step-predecessor n={n}"]["perfect"][r]["auc"][0]
        for r in (0, 1)
        for n in (2, 5)
    }
    r, n = max(pairs, key=pairs.get)
    assert chosen["rollout_length"] == {"multi-step-predecessor": n}
    assert chosen["learning_rate"]["multi-step-predecessor"] == rates[r]
    assert "target_tau" not in chosen  # not swept
    assert "| learning_rate | " in (out / "summary.md").read_text()
    # a study takes the chosen tables
    from emphatic_rl.studies.dyna_fa import load_config, population_config

    config = load_config(
        "experiments/dyna_fa_cartpole.toml",
        {
            "seeds": 2,
            "variants": ["one-step-successor", "multi-step-predecessor"],
            "learning_rate": chosen["learning_rate"],
        },
    )
    train = population_config(config, "one-step-successor", 0, ["perfect", "model-free"], 2)
    expected = [chosen["learning_rate"]["one-step-successor"]] * 2 + [chosen["learning_rate"]["model-free"]] * 2
    assert train.agent_options["learning_rate"] == expected


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "learning_rate=[1e-3, -1.0]"], "learning_rate must be a number > 0, a non-empty list of them"),
        (["--set", "learning_rate={ model-free = 1e-3 }"], "learning_rate as a table maps each studied variant"),
        (["--set", "rollout_length={ one-step-successor = 2 }"], "rollout_length as a table maps multi-step"),
        (["--set", "rollout_length=[2, 0]"], "rollout_length must be an integer >= 1"),
    ],
)
def test_sweep_keys_bad_input_exits_2(args, message, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli_main(["dyna-fa", "dyna-fa-puddle-world", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not out.exists()


def test_sweep_flag_needs_a_sweep_table(tmp_path, capsys):
    config = tmp_path / "plain.toml"
    config.write_text('[study]\nenv = "cartpole"\n')
    assert cli_main(["dyna-fa", str(config), "--sweep", "--out", str(tmp_path / "never")]) == 2
    assert "no [sweep] table" in capsys.readouterr().err
    assert cli_main(["dyna-fa", "dyna-fa-cartpole", "--sweep", "gamma", "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no [sweep-gamma] table" in err and "--sweep, --sweep target-tau" in err
    assert not (tmp_path / "never").exists()


def test_target_tau_per_member_changes_only_its_member():
    """A population with target steps (0.02, 0.05) runs member 1 bit for bit as a population with 0.05 for both (the
    draws are made for all members at once), and member 0 differently."""

    def final_parameters(tau):
        env = make_env("cartpole", num_envs=2)
        opts = small_options("one-step-predecessor", planning_batch=4, queue_size=16, warmup=4, target_tau=tau)
        agent = make_dyna_fa_for_env(env, "cartpole", 2, opts, seed=3)
        loop(env, agent, 30)
        return agent.q_flat.clone(), agent.target_flat.clone()

    q_mixed, target_mixed = final_parameters((0.02, 0.05))
    q_same, target_same = final_parameters(0.05)
    q_list, _ = final_parameters([0.05, 0.05])
    assert torch.equal(q_mixed[1], q_same[1]) and torch.equal(target_mixed[1], target_same[1])
    assert not torch.equal(target_mixed[0], target_same[0])
    assert torch.equal(q_list, q_same)
    with pytest.raises(ValueError, match=r"target_tau must be in \(0.0, 1.0\]"):
        DynaFAOptions(target_tau=(0.05, 0.0))


def test_replay_max_q_is_the_mean_bootstrap_value_of_the_replayed_batch():
    env = make_env("cartpole", num_envs=3)
    opts = DynaFAOptions(variant="one-step-successor", planning_steps=1, planning_batch=4, warmup=4, hidden=8)
    agent = make_dyna_fa_for_env(env, "cartpole", 3, opts, seed=0)
    loop(env, agent, 12)
    seen = []
    sample = agent._sample

    def recording(buffer, count):
        batch = sample(buffer, count)
        if not seen:  # the direct update's replay, drawn while the target network is still the step's
            seen.append(agent._q(batch.next_obs.float(), target=True).max(-1).values.mean(dim=1))
        return batch

    agent._sample = recording  # type: ignore[method-assign]
    obs = env.reset(seed=5)
    buffer = TrajectoryBuffer(agent.buffer_capacity, 3, env.observation_spec.shape, env.observation_spec.dtype)
    for _ in range(6):
        action, _ = agent.act(obs.unsqueeze(1), 1)
        result = env.step(action.view(3))
        buffer.add(obs, action.view(3), result.reward, result.terminated, result.truncated, result.final_obs)
        obs = result.obs
    agent.update(buffer, 13)
    assert len(seen) == 1 and torch.equal(agent.replay_max_q, seen[0])


def test_study_gives_each_variant_and_the_baseline_its_target_step():
    from emphatic_rl.studies.dyna_fa import load_config, population_config

    taus = {"one-step-successor": 0.01, "multi-step-predecessor": 0.02, "model-free": 0.05}
    config = load_config(
        "experiments/dyna_fa_cartpole.toml",
        {"seeds": 2, "variants": ["one-step-successor", "multi-step-predecessor"], "target_tau": taus},
    )
    conditions = [c for c in config.conditions if c != "learned"]  # perfect, doses..., model-free
    train = population_config(config, "multi-step-predecessor", 0, conditions, 2)
    member_taus = train.agent_options["target_tau"]
    assert member_taus == [0.02] * 2 * (len(conditions) - 1) + [0.05] * 2
    assert population_config(config, "one-step-successor", 0, ["learned"], 2).agent_options["target_tau"] == [0.01] * 2


@pytest.mark.parametrize(
    "override, message",
    [
        ("target_tau={ one-step-successor = 0.02 }", "target_tau as a table maps each studied variant and"),
        ("target_tau=[0.02, 1.5]", "target_tau must be a number in (0, 1]"),
        ("target_tau=0", "target_tau must be a number in (0, 1]"),
    ],
)
def test_target_tau_bad_input_exits_2(override, message, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli_main(["dyna-fa", "dyna-fa-cartpole", "--out", str(out), "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not out.exists()


def test_target_tau_sweep_applies_its_rule(tmp_path):
    import json

    out = tmp_path / "sweep"
    args = ["dyna-fa-cartpole", "--sweep", "target-tau", "--out", str(out)]
    args += small_sweep('variants=["one-step-predecessor", "multi-step-predecessor"]')
    assert cli_main(["dyna-fa", *args]) == 0
    results = json.loads((out / "results.json").read_text())
    taus = [setting["target_tau"] for setting in results["settings"]]
    assert taus == [0.01, 0.02, 0.05] and results["conditions"] == ["perfect", "model-free"]
    chosen = results["chosen"]["target_tau"]
    baseline = [mean for mean, _ in results["baseline_auc"]]
    assert chosen["model-free"] == taus[baseline.index(max(baseline))]
    for variant in ("one-step-predecessor", "multi-step-predecessor"):
        auc = [cell["auc"][0] for cell in results["table"][variant]["perfect"]]
        assert chosen[variant] == taus[auc.index(max(auc))]
        for cell in results["table"][variant]["perfect"]:  # the value instrument reached the table, finite
            assert math.isfinite(cell["max_q_peak"][0]) and math.isfinite(cell["max_q_last"][0])
    text = (out / "summary.md").read_text()
    assert "| target_tau | " in text and "| tau 0.01 | tau 0.02 | tau 0.05 |" in text


def test_value_magnitude_counts_diverged_runs_apart():
    from emphatic_rl.studies.dyna_fa import _value_magnitude

    peak = torch.tensor([10.0, 20.0, float("nan"), 30.0])
    last = torch.tensor([5.0, 15.0, float("nan"), float("inf")])
    out = _value_magnitude(peak, last)
    assert out["max_q_nonfinite_runs"] == 2
    assert out["max_q_peak"][0] == pytest.approx(15.0) and out["max_q_last"][0] == pytest.approx(10.0)
    none = _value_magnitude(torch.tensor([float("nan")] * 2), torch.tensor([1.0, 2.0]))
    assert none["max_q_nonfinite_runs"] == 2 and math.isnan(none["max_q_peak"][0])


def test_uniform_search_control_plans_back_from_real_states_without_the_queue():
    """The ablation: the predecessor variants plan back from real states drawn from the replay; the queue is never
    popped, and multi-step predecessor still never bootstraps a real state from a simulated one."""
    for variant in ("one-step-predecessor", "multi-step-predecessor"):
        env = make_env("cartpole", num_envs=2)
        opts = small_options(variant, search_control="uniform")
        agent = make_dyna_fa_for_env(env, "cartpole", 2, opts, seed=1)
        popped: list[tuple] = []
        agent.queue.pop = lambda *args, popped=popped: popped.append(args)  # type: ignore[method-assign]
        loop(env, agent, 30)
        stats = agent.planning_statistics()
        assert not popped and bool((stats["planning_updates"] > 0).all())
        if variant == "multi-step-predecessor":
            assert float(stats["fraction_real_toward_simulated"].max()) == 0.0


@pytest.mark.parametrize("start", ["next-state", "state"])
def test_the_queue_takes_the_state_a_real_transition_reached_or_the_one_it_left(start):
    """``predecessor_start``: each real transition pushes ``S_{t+1}`` (the default) or ``S_t`` with its ``|delta|``."""
    env = make_env("cartpole", num_envs=2)
    opts = small_options(
        "multi-step-predecessor", planning_steps=1, planning_batch=4, queue_size=8, warmup=50, predecessor_start=start
    )
    agent = make_dyna_fa_for_env(env, "cartpole", 2, opts, seed=1)
    buffer = loop(env, agent, 1)  # before the warm-up: nothing is popped yet
    step = buffer.latest()
    expected = (step.next_obs if start == "next-state" else step.obs).reshape(2, 1, 4)
    top = agent.queue.priority.argmax(dim=1)
    assert bool((agent.queue.priority.max(dim=1).values > 0).all())
    torch.testing.assert_close(agent.queue.states[torch.arange(2), top].unsqueeze(1), expected, rtol=0, atol=0)


def test_a_terminal_real_state_teaches_its_predecessors_the_terminal_reward():
    """Planning back from a terminal real state (CartPole past its bound, entered by the episode's last step): the
    predecessor's target is the reward alone, no bootstrap; from a non-terminal one it bootstraps."""
    env = make_env("cartpole", num_envs=1)
    for variant in ("one-step-predecessor", "multi-step-predecessor"):
        opts = small_options(variant, planning_steps=1, planning_batch=2, queue_size=4, warmup=1, rollout_length=1)
        agent = make_dyna_fa_for_env(env, "cartpole", 1, opts, seed=3)
        buffer = loop(env, agent, 3)
        terminal = torch.tensor([[2.41, 0.5, 0.05, 0.1]])  # a real terminal state: just past x = 2.4
        inside = torch.tensor([[0.01, 0.02, -0.03, 0.04]])
        states = torch.cat((terminal, inside)).unsqueeze(0)
        assert SimulatorModel(env).backward(states, torch.Generator()).terminal.tolist() == [[True, False]]
        agent.queue.priority.zero_()
        agent.queue.push(states, torch.tensor([[5.0, 4.0]]), *(torch.zeros(1, 2, dtype=torch.bool),) * 2)
        planned, _ = agent._plan(buffer)
        targets = [updates.target for updates in planned]
        bootstrap = 1.0 + agent.gamma * agent._q(inside.unsqueeze(0), target=True).max(-1).values
        assert targets[0][0, 0].item() == 1.0  # the reward of the step into the terminal state, nothing more
        assert targets[0][0, 1].item() == pytest.approx(bootstrap.item())


def test_behaviour_predecessor_actions_follow_the_policy_at_each_predecessor():
    """``predecessor_action = "behaviour"``: the weight of action ``a`` is the epsilon-greedy probability of ``a`` at
    its own candidate predecessor; with epsilon 0 the perfect model picks only actions greedy there."""
    env = make_env("cartpole", num_envs=2)
    opts = DynaFAOptions(variant="one-step-predecessor", epsilon=0.0, hidden=8, predecessor_action="behaviour")
    agent = make_dyna_fa_for_env(env, "cartpole", 2, opts, seed=5)
    state = 0.05 * torch.randn(2, 64, 4, generator=torch.Generator().manual_seed(0))
    previous, _, valid = agent.dynamics.predecessors(state, None)  # [A, P, B, D]
    weights = agent._behaviour_weights(previous)  # [P, B, A]
    for a in range(2):
        greedy_there = agent._q(previous[a]).argmax(-1) == a
        torch.testing.assert_close(weights[..., a], greedy_there.float())
    sample = agent.model.backward(state, torch.Generator().manual_seed(1), agent._behaviour_weights)
    chosen = weights.gather(-1, sample.action.unsqueeze(-1)).squeeze(-1)
    has_greedy_valid = (weights * valid.float().permute(1, 2, 0)).sum(-1) > 0
    assert bool((chosen[has_greedy_valid] == 1).all()) and int(has_greedy_valid.sum()) > 0
    agent.epsilon.fill_(1.0)
    torch.testing.assert_close(agent._behaviour_weights(previous), torch.full_like(weights, 0.5))


def _plan_with_replay(agent: DynaFAAgent, buffer: TrajectoryBuffer):
    """One planning draw, with the replayed batch its search control drew: ``(planned updates, replayed batch)``."""
    drawn: list = []
    sample = agent._sample

    def recording(buffer, count):
        drawn.append(sample(buffer, count))
        return drawn[-1]

    agent._sample = recording  # type: ignore[method-assign]
    planned, _ = agent._plan(buffer)
    return planned, drawn[-1]


def _replayed_target(agent: DynaFAAgent, replayed) -> torch.Tensor:
    """The replayed transitions' own Q-learning targets, ``R + gamma (1 - terminated) max_a Qt(S', a)``."""
    bootstrap = agent._q(replayed.next_obs.float(), target=True).max(-1).values
    return replayed.reward.float() + agent.gamma * (~replayed.terminated).float() * bootstrap


def test_replayed_predecessor_action_plans_back_along_the_real_transition():
    """``predecessor_action = "replayed"`` (uniform search control): the first backward step takes the action of the
    replayed transition that reached the real state. On CartPole (an exact inversion) that predecessor *is* the
    replayed transition's state, so the planning update is that transition's own Q-learning update."""
    env = make_env("cartpole", num_envs=2)
    for variant in ("one-step-predecessor", "multi-step-predecessor"):
        opts = small_options(
            variant, search_control="uniform", predecessor_action="replayed", planning_steps=1, rollout_length=2
        )
        agent = make_dyna_fa_for_env(env, "cartpole", 2, opts, seed=4)
        buffer = loop(env, agent, 30)
        planned, replayed = _plan_with_replay(agent, buffer)
        first = planned[0]
        chain_start = slice(0, opts.planning_batch)  # a step's batch is chain step major: the first backward step
        assert first.weight is not None and bool(first.weight[:, chain_start].all())  # every real predecessor exists
        assert torch.equal(first.action[:, chain_start], replayed.action)
        torch.testing.assert_close(first.obs[:, chain_start], replayed.obs.float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(first.target[:, chain_start], _replayed_target(agent, replayed))


def test_uniform_successor_action_draws_the_planning_action_not_the_replayed_one():
    """``successor_action = "uniform"``: the planning update starts at the replayed real state with an action drawn
    uniformly; by default (``replayed``) it takes the replayed transition's action."""
    env = make_env("puddle-world", num_envs=2)
    for choice in ("replayed", "uniform"):
        opts = small_options(
            "one-step-successor", successor_action=choice, planning_steps=4, planning_batch=64, queue_size=256
        )
        agent = make_dyna_fa_for_env(env, "puddle-world", 2, opts, seed=2)
        agent.epsilon.fill_(0.0)  # the behaviour is greedy: the replay holds few actions per state
        buffer = loop(env, agent, 30)
        planned, replayed = _plan_with_replay(agent, buffer)
        actions = torch.cat([updates.action for updates in planned], dim=1)
        states = torch.cat([updates.obs for updates in planned], dim=1)
        torch.testing.assert_close(states, replayed.obs.float(), rtol=0, atol=0)  # the replayed states either way
        if choice == "replayed":
            assert torch.equal(actions, replayed.action)
        else:
            counts = torch.bincount(actions.flatten(), minlength=4).float() / actions.numel()
            assert float((counts - 0.25).abs().max()) < 0.06, counts  # 512 draws: 0.06 is 3 standard errors
            assert float((actions != replayed.action).float().mean()) > 0.5


def test_replayed_predecessor_state_makes_the_planning_update_the_real_transitions_own():
    """The control ``predecessor_state = "replayed"``: on Puddle World (a noisy inversion) the model's predecessor
    differs from the replayed ``S_t``; with the control it is ``S_t`` exactly, with its action and real target."""
    env = make_env("puddle-world", num_envs=2)
    for state in ("model", "replayed"):
        opts = small_options(
            "one-step-predecessor",
            search_control="uniform",
            predecessor_action="replayed",
            predecessor_state=state,
            planning_steps=1,
            planning_batch=32,
        )
        agent = make_dyna_fa_for_env(env, "puddle-world", 2, opts, seed=4)
        buffer = loop(env, agent, 40)
        planned, replayed = _plan_with_replay(agent, buffer)
        update = planned[0]
        assert torch.equal(update.action, replayed.action)
        torch.testing.assert_close(update.target, _replayed_target(agent, replayed))
        if state == "replayed":  # every replayed transition is an update, whatever the model would have drawn
            assert update.weight is not None and bool(update.weight.all())
            assert torch.equal(update.obs, replayed.obs.float())
        else:  # a fresh draw of the move's noise: near S_t, not S_t
            gap = (update.obs - replayed.obs.float()).abs()
            assert float(gap.max()) > 0 and float(gap.mean()) < 0.05
