"""One exception type for every user-facing error, so the CLI can print one line and exit non-zero."""

from __future__ import annotations


class RLPruneError(Exception):
    """A bad input the user can fix: the message names the field or file and what was expected.

    :param fix: an optional key naming the remedy (e.g. ``"resume"``); the library never names command-line flags,
        the command line turns this key into the flag that applies (``rlprune.cli.app.FIXES``).
    """

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix
