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
from emphatic_rl.envs.minatar.seaquest import MinAtarSeaquest
from emphatic_rl.envs.minatar.space_invaders import MinAtarSpaceInvaders

__all__ = [
    "GAMES",
    "GeneratorRandomSource",
    "MinAtarAsterix",
    "MinAtarBreakout",
    "MinAtarEnv",
    "MinAtarFreeway",
    "MinAtarSeaquest",
    "MinAtarSpaceInvaders",
    "RandomSource",
    "make_minatar_env",
]


def _register_gymnasium_ids() -> None:
    """``emphatic_rl/MinAtar-<Game>-v0`` (all 6 actions) and ``-v1`` (minimal action set), no time limit."""
    from emphatic_rl.envs.registration import register_gymnasium_env
    from emphatic_rl.envs.registry import ENV_REGISTRY

    for game in GAMES:
        title = game.title().replace("_", "")
        env_name = "minatar-" + game.replace("_", "-")
        if env_name not in ENV_REGISTRY:
            continue
        register_gymnasium_env(f"emphatic_rl/MinAtar-{title}-v0", env_name, minimal_action_set=False)
        register_gymnasium_env(f"emphatic_rl/MinAtar-{title}-v1", env_name, minimal_action_set=True)


_register_gymnasium_ids()
