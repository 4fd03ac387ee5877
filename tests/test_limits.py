"""Graph work that runs away stops with one line: the limit holds in the main thread (timer) and in other threads
(trace hook), an enclosing timer survives a nested limit, and analysis reports the limit it hit."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import torch

from rlprune.errors import RLPruneError
from rlprune.models import build_model
from rlprune.pruning import analyze
from rlprune.pruning.limits import ENV_VAR, limit_seconds, time_limit


def _spin(seconds: float) -> None:
    """Python-level busy work (calls, as a graph search makes them) for ``seconds``."""
    end = time.monotonic() + seconds

    def step() -> int:
        return 1

    while time.monotonic() < end:
        step()


def test_the_limit_stops_python_work_in_the_main_thread() -> None:
    started = time.monotonic()
    expected = rf"grouping did not finish within 0.2 s; raise the limit with {ENV_VAR}"
    with pytest.raises(RLPruneError, match=expected), time_limit("grouping", 0.2, hint="ignore the attention"):
        _spin(5)
    assert time.monotonic() - started < 2
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # nothing left armed
    with time_limit("fast work", 5):
        _spin(0.05)  # finishes: no error


def test_the_limit_stops_work_in_another_thread() -> None:
    caught: list[BaseException] = []

    def worker() -> None:
        try:
            with time_limit("grouping in a worker", 0.2):
                _spin(5)
        except RLPruneError as exc:
            caught.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - started < 3
    assert len(caught) == 1 and "grouping in a worker did not finish within 0.2 s" in str(caught[0])


def test_an_enclosing_timer_is_rearmed_after_a_nested_limit() -> None:
    with pytest.raises(RLPruneError, match="outer did not finish within 0.6 s"), time_limit("outer", 0.6):
        with time_limit("inner", 5):
            _spin(0.1)
        _spin(5)


def test_the_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert limit_seconds() == 300.0 and limit_seconds(2) == 2.0
    monkeypatch.setenv(ENV_VAR, "0")
    assert limit_seconds() == 0.0
    with time_limit("anything"):  # 0: no limit
        _spin(0.01)
    monkeypatch.setenv(ENV_VAR, "soon")
    with pytest.raises(RLPruneError, match=f"{ENV_VAR}: expected a number of seconds, got 'soon'"):
        limit_seconds()
    with pytest.raises(RLPruneError, match="expected a finite number of seconds >= 0"):
        limit_seconds(float("nan"))


def test_analysis_past_its_limit_names_the_limit_and_the_way_out() -> None:
    model = build_model("resnet20").eval()
    with pytest.raises(RLPruneError) as err:
        analyze(model, torch.zeros(1, 3, 32, 32), time_limit=0.01)
    message = str(err.value)
    assert "dependency analysis (torch-pruning) did not finish within 0.01 s" in message
    assert "prune.ignore" in message and "\n" not in message
    assert analyze(model, torch.zeros(1, 3, 32, 32), time_limit=60).units  # the same model within a sane limit
