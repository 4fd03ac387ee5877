"""Model factories importable by path (``tests.netlib:flat_linear``) for tests of users' own models."""

from torch import nn


def flat_linear() -> nn.Module:
    """A model with nothing to prune: flatten + one linear classifier."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3))
