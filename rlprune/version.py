"""The package's version: the only place it is written (``pyproject.toml`` and ``rlprune.__version__`` read it;
CHANGELOG.md says what changed between versions)."""

__version__ = "0.3.0"
