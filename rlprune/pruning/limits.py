"""A time limit for graph work that can run away on a user's model.

Torch-pruning's dependency analysis is a graph search in Python; on some graphs (decoder LMs with grouped-query
attention, for one) it runs for minutes without progress. Analysis, pruning and the peers' pruner therefore run under
:func:`time_limit`, which stops the work and raises a one-line :class:`~rlprune.errors.RLPruneError` that says how to
raise the limit or leave the offending part out.

The limit is ``RLPRUNE_ANALYSIS_TIME_LIMIT`` seconds (default :data:`DEFAULT_SECONDS`; ``0`` turns it off), or what
the caller passes. In the main thread of a POSIX process it is a real-time timer (``SIGALRM``); elsewhere (worker
threads, Windows) a trace hook checks the clock at each Python call, which slows the guarded work but still stops it.
Under a debugger or coverage tool (a trace function already set) outside the main thread, no limit is applied.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from rlprune.errors import RLPruneError

DEFAULT_SECONDS = 300.0
ENV_VAR = "RLPRUNE_ANALYSIS_TIME_LIMIT"


class _Expired(BaseException):  # BaseException: no `except Exception` in the guarded code eats it
    """Raised inside the guarded work when its time is up (turned into an RLPruneError at the boundary)."""


def limit_seconds(seconds: float | None = None) -> float:
    """The limit to apply: ``seconds`` if given, else ``$RLPRUNE_ANALYSIS_TIME_LIMIT``, else the default (0: none)."""
    if seconds is None:
        raw = os.environ.get(ENV_VAR, "").strip()
        if not raw:
            return DEFAULT_SECONDS
        try:
            seconds = float(raw)
        except ValueError:
            raise RLPruneError(f"{ENV_VAR}: expected a number of seconds, got '{raw[:40]}'") from None
    if not (math.isfinite(seconds) and seconds >= 0):
        raise RLPruneError(f"analysis time limit: expected a finite number of seconds >= 0, got {seconds}")
    return float(seconds)


@contextmanager
def time_limit(what: str, seconds: float | None = None, hint: str = "") -> Iterator[None]:
    """Run the block for at most ``seconds`` (see :func:`limit_seconds`); past it, raise an RLPruneError naming
    ``what`` was running, the limit, how to raise it, and ``hint`` (e.g. which part to ignore)."""
    limit = limit_seconds(seconds)
    if limit == 0:
        yield
        return
    message = f"{what} did not finish within {limit:g} s; raise the limit with {ENV_VAR}=<seconds> (0: no limit)" + (
        f", or {hint}" if hint else ""
    )
    guard = _Alarm(limit) if _can_alarm() else _Trace(limit)
    try:
        with guard:
            yield
    except _Expired:
        raise RLPruneError(message) from None
    finally:
        guard.close()  # idempotent: also when the stop arrived while the block was being left


def _can_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


class _Guard:
    """Stops the block at its deadline, and again every :data:`REPEAT` seconds while it keeps running: code that
    swallows every exception (torch-pruning has a bare ``except:``) cannot outlast the limit."""

    REPEAT = 0.5

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.deadline = time.monotonic() + limit
        self.armed = False

    def due(self) -> bool:
        """Whether to stop the block now (at most once per REPEAT seconds, so leaving it is never interrupted)."""
        now = time.monotonic()
        if not self.armed or now < self.deadline:
            return False
        self.deadline = now + self.REPEAT
        return True

    def __enter__(self) -> None:
        self.armed = True
        self.open()

    def __exit__(self, *exc: object) -> None:
        self.armed = False  # first: a stop that arrives from here on is ignored
        self.close()

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _Alarm(_Guard):
    """A real-time timer (main thread, POSIX); an enclosing limit's timer is re-armed with what it had left."""

    def open(self) -> None:
        self.started = time.monotonic()
        self.previous = signal.signal(signal.SIGALRM, self._expire)
        self.outer, _ = signal.setitimer(signal.ITIMER_REAL, self.limit, self.REPEAT)
        if self.outer and self.outer < self.limit:  # an enclosing limit ends first: it stops this block too
            self.deadline = time.monotonic() + self.outer
            signal.setitimer(signal.ITIMER_REAL, self.outer, self.REPEAT)
        self.open_ = True

    def _expire(self, _signum: int, _frame: FrameType | None) -> None:
        if self.due():
            raise _Expired

    def close(self) -> None:
        self.armed = False
        if not getattr(self, "open_", False):
            return
        self.open_ = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)
        if self.outer:
            signal.setitimer(signal.ITIMER_REAL, max(self.outer - (time.monotonic() - self.started), 1e-3))


class _Trace(_Guard):
    """A clock check at every Python call of this thread (only when no other trace function is set)."""

    def open(self) -> None:
        self.tracing = sys.gettrace() is None
        if self.tracing:
            sys.settrace(self._check)

    def _check(self, _frame: FrameType, event: str, _arg: Any) -> None:
        if event == "call" and self.due():
            raise _Expired
        return None

    def close(self) -> None:
        self.armed = False
        if getattr(self, "tracing", False):
            self.tracing = False
            sys.settrace(None)


__all__ = ["DEFAULT_SECONDS", "ENV_VAR", "limit_seconds", "time_limit"]
