"""Native batched MinAtar games (``TensorEnv``s), registered as ``minatar-<game>``.

See :mod:`emphatic_rl.envs.minatar.common` for the protocol (action sets, sticky actions, difficulty ramping,
time limit) shared by every game.
"""

from emphatic_rl.envs.minatar.asterix import MinAtarAsterix
from emphatic_rl.envs.minatar.breakout import MinAtarBreakout
from emphatic_rl.envs.minatar.common import (
    GAMES,
    GeneratorRandomSource,
    MinAtarEnv,
    RandomSource,
    make_minatar_env,
)
from emphatic_rl.envs.minatar.freeway import MinAtarFreeway
from emphatic_rl.envs.minatar.space_invaders import MinAtarSpaceInvaders

__all__ = [
    "GAMES",
    "GeneratorRandomSource",
    "MinAtarAsterix",
    "MinAtarBreakout",
    "MinAtarEnv",
    "MinAtarFreeway",
    "MinAtarSpaceInvaders",
    "RandomSource",
    "make_minatar_env",
]
