"""emphatic-rl: off-policy policy-gradient research in PyTorch."""

__version__ = "0.1.0"
