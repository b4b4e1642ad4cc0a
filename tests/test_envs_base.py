import pytest

from emphatic_rl.envs import make_env


def test_unknown_env_names_allowed_values():
    with pytest.raises(ValueError, match="unknown env 'nope'; allowed:"):
        make_env("nope")
