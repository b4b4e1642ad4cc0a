"""The numba backend of the linear actor-critic against its torch backend (and its own bookkeeping).

Random behaviour data on several streams with episode ends and time-outs; a population mixing critic lambdas
(0: the sparse path, > 0: dense traces) and step sizes. Every critic and emphasis the kernel covers, both interests,
the normalised emphasis, ``timeout_as_terminal`` both ways: float64 state equal to 1e-12, float32 to 1e-5 relative.
Also: freezing, checkpoint round trips mid-run (bit-identical continuation), the backend choice and bad input.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from emphatic_rl.agents.linear.actor_critic import ActorCritic
from emphatic_rl.features import DenseFeatures, OneHotFeatures, TileCoder

TILES = TileCoder((-1.2, -0.07), (0.6, 0.07), (4, 4), 8)
STREAMS = 3
MEMBERS = 6  # two settings per stream; lambdas 0 and 0.6 mixed


def stream_data(steps: int, seed: int = 0, num_actions: int = 3):
    generator = torch.Generator().manual_seed(seed)
    obs = torch.rand(steps + 1, STREAMS, 2, generator=generator) * torch.tensor([1.8, 0.14]) + torch.tensor(
        [-1.2, -0.07]
    )
    features = TILES(obs)
    actions = torch.randint(0, num_actions, (steps, STREAMS), generator=generator)
    rewards = torch.randn(steps, STREAMS, generator=generator, dtype=torch.float64)
    ends = torch.rand(steps, STREAMS, generator=generator)
    terminated = ends < 0.03
    truncated = (ends >= 0.03) & (ends < 0.05)
    behaviour = torch.log(torch.rand(steps, STREAMS, generator=generator, dtype=torch.float64) * 0.5 + 0.2)
    return features, actions, rewards, terminated, truncated, behaviour


def make(backend: str, dtype: torch.dtype, **settings) -> ActorCritic:
    defaults = dict(
        stream_of=[0, 1, 2, 0, 1, 2],
        num_streams=STREAMS,
        alpha_actor=[0.1, 0.05, 0.2, 0.1, 0.3, 0.02],
        alpha_critic=[0.2, 0.1, 0.05, 0.3, 0.1, 0.2],
        alpha_emphasis=[0.05, 0.1, 0.02, 0.1, 0.05, 0.2],
        critic_lambda=[0.0, 0.0, 0.0, 0.6, 0.9, 0.3],
        eta=[1.0, 0.5, 0.0, 1.0, 0.25, 1.0],
        gamma=0.9,
    )
    defaults.update(settings)
    return ActorCritic(TILES, 3, MEMBERS, dtype=dtype, backend=backend, **defaults)


def feed(agent: ActorCritic, data, start: int, stop: int) -> list[dict[str, torch.Tensor]]:
    features, actions, rewards, terminated, truncated, behaviour = data
    metrics = []
    for t in range(start, stop):
        metrics.append(
            agent.update_step(
                features[t], actions[t], rewards[t], terminated[t], truncated[t], features[t + 1], behaviour[t]
            )
        )
    return metrics


def flat_state(agent: ActorCritic, backend_private: bool = False) -> dict[str, torch.Tensor]:
    """Every float tensor of ``state_dict`` by path; the numba backend's exact-resume extras only on request."""
    out = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        elif isinstance(value, torch.Tensor) and value.is_floating_point():
            out[prefix] = value.double()

    state = agent.state_dict()
    if not backend_private:
        state.pop("numba_correction", None)
    walk("", state)
    return out


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tolerance: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        scale = max(1.0, float(b[key].abs().max())) if b[key].numel() else 1.0
        error = float((a[key] - b[key]).abs().max()) / scale if a[key].numel() else 0.0
        assert error <= tolerance, f"{key}: {error:.3g} > {tolerance:g}"


SETTINGS = [
    dict(critic=critic, emphasis=emphasis, interest=interest)
    for critic, emphasis, interest in itertools.product(
        ("td", "tdc", "tdrc", "etd"), ("none", "followon", "learned"), ("uniform", "episodic")
    )
] + [
    dict(critic="tdrc", emphasis="learned", normalize_emphasis=True, timeout_as_terminal=False),
    dict(critic="etd", emphasis="followon", normalize_emphasis=True, timeout_as_terminal=False),
    dict(critic="etd", emphasis="learned", fit_stream_start=False, interest="episodic"),
    dict(critic="tdrc", emphasis="followon", tdrc_beta=0.0),
    dict(critic="gtd", emphasis="followon", alpha_h=[0.01, 0.02, 0.03, 0.04, 0.05, 0.06]),
    dict(critic="gq", actor_update="all_actions", emphasis="followon"),
    dict(critic="gq", actor_update="all_actions", emphasis="learned", interest="episodic"),
    dict(critic="gq", actor_update="all_actions", emphasis="none", alpha_h=0.05),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_numba_equals_torch_in_float64(settings) -> None:
    data = stream_data(300)
    ours, theirs = make("numba", torch.float64, **settings), make("torch", torch.float64, **settings)
    metrics_numba = feed(ours, data, 0, 300)
    metrics_torch = feed(theirs, data, 0, 300)
    assert_close(flat_state(ours), flat_state(theirs), 1e-12)
    for m_n, m_t in zip(metrics_numba[-5:], metrics_torch[-5:], strict=True):
        for key in ("td_error", "followon", "emphatic_weighting", "importance_ratio"):
            torch.testing.assert_close(m_n[key], m_t[key], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("settings", SETTINGS[::5], ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_numba_close_to_torch_in_float32(settings) -> None:
    data = stream_data(200, seed=1)
    ours, theirs = make("numba", torch.float32, **settings), make("torch", torch.float32, **settings)
    feed(ours, data, 0, 200)
    feed(theirs, data, 0, 200)
    assert ours.policy.theta.dtype == torch.float32
    assert_close(flat_state(ours), flat_state(theirs), 1e-4)


@pytest.mark.parametrize("critic", ["tdrc", "etd"])
def test_checkpoint_round_trip_continues_bit_identically(critic: str) -> None:
    data = stream_data(200, seed=2)
    straight = make("numba", torch.float64, critic=critic, emphasis="learned")
    feed(straight, data, 0, 200)
    first = make("numba", torch.float64, critic=critic, emphasis="learned")
    feed(first, data, 0, 120)
    saved = first.state_dict()
    second = make("numba", torch.float64, critic=critic, emphasis="learned")
    second.load_state_dict(saved)
    feed(second, data, 120, 200)
    resumed = flat_state(second, backend_private=True)
    for key, value in flat_state(straight, backend_private=True).items():
        assert torch.equal(value, resumed[key]), key


def test_a_torch_checkpoint_loads_into_the_numba_backend() -> None:
    data = stream_data(150, seed=3)
    reference = make("torch", torch.float64, critic="tdrc", emphasis="followon")
    feed(reference, data, 0, 150)
    mixed = make("torch", torch.float64, critic="tdrc", emphasis="followon")
    feed(mixed, data, 0, 70)
    resumed = make("numba", torch.float64, critic="tdrc", emphasis="followon")
    resumed.load_state_dict(mixed.state_dict())
    feed(resumed, data, 70, 150)
    assert_close(flat_state(resumed), flat_state(reference), 1e-12)


def test_frozen_members_stay_and_the_others_go_on() -> None:
    data = stream_data(120, seed=4)
    agent = make("numba", torch.float64, critic="tdrc", emphasis="learned")
    free = make("numba", torch.float64, critic="tdrc", emphasis="learned")
    feed(agent, data, 0, 60)
    feed(free, data, 0, 60)
    members = torch.tensor([False, True, False, False, True, False])
    agent.freeze(members)
    before = {key: value.clone() for key, value in flat_state(agent).items()}
    metrics = feed(agent, data, 60, 120)
    feed(free, data, 60, 120)
    after, unfrozen = flat_state(agent), flat_state(free)
    for key, value in after.items():
        if value.dim() == 0 or value.shape[0] != MEMBERS:
            continue
        assert torch.equal(value[members], before[key][members]), key
        assert torch.equal(value[~members], unfrozen[key][~members]), key
    assert torch.isnan(metrics[-1]["td_error"][members]).all()


def test_sparse_lambda_zero_traces_are_written_out_when_read() -> None:
    data = stream_data(40, seed=5)
    agent = make("numba", torch.float64, critic="tdrc", emphasis="followon")
    torch_agent = make("torch", torch.float64, critic="tdrc", emphasis="followon")
    feed(agent, data, 0, 40)
    feed(torch_agent, data, 0, 40)
    agent.sync_state()
    torch.testing.assert_close(agent.critic.trace, torch_agent.critic.trace, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(agent.critic.correction, torch_agent.critic.correction, rtol=1e-12, atol=1e-12)


def test_tdrc_scale_renormalises_over_long_runs() -> None:
    """alpha_h beta close to 1 drives h's lazy scale below its floor within a few steps: results must not change."""
    data = stream_data(100, seed=6)
    settings = dict(critic="tdrc", emphasis="followon", critic_lambda=0.0, alpha_critic=8.0)  # / 9 active: 0.89
    ours, theirs = make("numba", torch.float64, **settings), make("torch", torch.float64, **settings)
    feed(ours, data, 0, 100)
    feed(theirs, data, 0, 100)
    assert_close(flat_state(ours), flat_state(theirs), 1e-9)


def test_auto_picks_numba_on_cpu_and_torch_where_the_kernel_does_not_reach() -> None:
    assert make("auto", torch.float64).backend == "numba"
    assert make("auto", torch.float64, emphasis="ideal").backend == "torch"
    assert make("auto", torch.float64, critic="gq", actor_update="all_actions").backend == "numba"
    assert ActorCritic(OneHotFeatures(4), 2, 1, backend="auto").backend == "numba"  # one-hot: binary
    assert ActorCritic(DenseFeatures(2), 2, 1, backend="auto").backend == "torch"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(backend="fast"), "unknown backend 'fast'; allowed: auto, torch, numba"),
        (dict(dtype="float16"), "unknown dtype 'float16'; allowed: float32, float64"),
        (dict(dtype=torch.int32), "unknown dtype"),
        (dict(backend="numba", device="meta"), "the numba backend runs on CPU only"),
        (dict(backend="numba", emphasis="ideal"), "the numba backend covers emphasis"),
        (dict(backend="numba", critic="oracle", oracle_values=lambda theta: theta), "the numba backend covers critics"),
    ],
)
def test_bad_backend_or_dtype_is_one_clear_error(kwargs, message: str) -> None:
    if kwargs.get("critic") == "oracle":  # the oracle needs one-hot state features
        with pytest.raises(ValueError, match=message):
            ActorCritic(OneHotFeatures(4), 2, 2, **kwargs)
        return
    settings = dict(dtype=torch.float64, backend="auto")
    settings.update(kwargs)
    backend, dtype = settings.pop("backend"), settings.pop("dtype")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ActorCritic(TILES, 3, 2, dtype=dtype, backend=backend, **settings)


def test_a_population_too_large_for_memory_is_refused_before_anything_is_allocated() -> None:
    with pytest.raises(ValueError, match=r"needs about .* GiB of state but this machine has"):
        ActorCritic(TILES, 3, 10**9)
