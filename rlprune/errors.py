"""One exception type for every user-facing error, so the CLI can print one line and exit non-zero."""


class RLPruneError(Exception):
    """A bad input the user can fix: the message names the field or file and what was expected."""
