"""emphatic-rl: off-policy policy-gradient research in PyTorch."""

__version__ = "0.1.0"

# Registers the native envs by name (make_env) and with Gymnasium (gymnasium.make("emphatic_rl/CartPole-v1")).
import emphatic_rl.envs  # noqa: E402,F401
