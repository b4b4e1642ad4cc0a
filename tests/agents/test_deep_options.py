"""The deep replay agents' shared options are declared and validated once (``emphatic_rl.agents.deep.options``):
each agent's options derive from ``ReplayOptions`` (and the emphatic ones from ``EmphaticReplayOptions``), so a bad
shared value gives the same one-line error whichever agent it is given to."""

import dataclasses
import math

import pytest

from emphatic_rl.agents.deep.ace import DeepACEOptions, DeepOffPACOptions
from emphatic_rl.agents.deep.ddpg import DDPGOptions
from emphatic_rl.agents.deep.dqn import DQNOptions
from emphatic_rl.agents.deep.gaussian import GaussianACEOptions, GaussianOffPACOptions
from emphatic_rl.agents.deep.options import EmphaticReplayOptions, ReplayOptions

REPLAY = [DQNOptions, DeepACEOptions, DeepOffPACOptions, GaussianACEOptions, GaussianOffPACOptions, DDPGOptions]
EMPHATIC = REPLAY[1:]


def test_the_shared_fields_are_declared_once():
    shared = {f.name for f in dataclasses.fields(ReplayOptions)}
    emphatic = {f.name for f in dataclasses.fields(EmphaticReplayOptions)}
    for options in REPLAY:
        assert issubclass(options, ReplayOptions)
        assert shared <= {f.name for f in dataclasses.fields(options)}
    for options in EMPHATIC:
        assert issubclass(options, EmphaticReplayOptions)
        assert emphatic <= {f.name for f in dataclasses.fields(options)}
    assert not issubclass(DQNOptions, EmphaticReplayOptions)


@pytest.mark.parametrize("options", REPLAY)
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"batch_size": 12.5}, "batch_size must be an integer >= 1, got 12.5"),
        ({"buffer_size": 0}, "buffer_size must be an integer >= 1, got 0"),
        ({"learning_starts": -1}, "learning_starts must be an integer >= 0, got -1"),
        ({"train_every": True}, "train_every must be an integer >= 1, got True"),
        ({"gamma": 1.5}, r"gamma must be in \[0, 1\], got 1.5"),
        ({"gamma": "abc"}, "gamma must be a number, got 'abc'"),
        ({"hidden": (64, 0)}, "each hidden width must be an integer >= 1, got 0"),
        ({"max_grad_norm": math.nan}, "max_grad_norm must be > 0, got nan"),
    ],
)
def test_a_bad_shared_replay_option_is_one_error_for_every_agent(options, values, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        options(**values)


@pytest.mark.parametrize("options", EMPHATIC)
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"eta": 2.0}, r"eta must be in \[0, 1\], got 2.0"),
        ({"emphasis": "trace"}, "unknown emphasis 'trace'; allowed: learned, none"),
        ({"fit_start_state": 1}, "fit_start_state must be true or false, got 1"),
        ({"rho_clip": 0.0}, "rho_clip must be > 0, got 0.0"),
        ({"emphasis_learning_rate": -1e-3}, "emphasis_learning_rate must be > 0, got -0.001"),
    ],
)
def test_a_bad_shared_emphatic_option_is_one_error_for_every_agent(options, values, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        options(**values)


def test_each_agent_keeps_its_own_defaults():
    assert (DQNOptions().batch_size, DeepACEOptions().batch_size, GaussianACEOptions().batch_size) == (128, 64, 256)
    assert DQNOptions().hidden == DeepACEOptions().hidden == (128, 128) and DDPGOptions().hidden == (64, 64)
    assert (DDPGOptions().emphasis, DDPGOptions().fit_start_state, DDPGOptions().rho_clip) == ("none", False, 5.0)
    assert (DeepOffPACOptions().eta, DeepOffPACOptions().emphasis) == (0.0, "none")
    assert GaussianACEOptions().normalize_emphasis and not DeepACEOptions().normalize_emphasis
    assert DeepACEOptions(hidden=[32]).hidden == (32,)  # TOML lists become tuples
