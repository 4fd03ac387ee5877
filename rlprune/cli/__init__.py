"""The command line, a thin client of the Python API: :mod:`~rlprune.cli.parser` reads the arguments,
:mod:`~rlprune.cli.commands` calls the library, :mod:`~rlprune.cli.app` turns its errors into one line each."""

from rlprune.cli.app import main

__all__ = ["main"]
