"""The skeleton every search follows, so a one-model search and a search over several models take the same steps
in the same order (SB3's template method: subclasses implement only what differs).

A search refuses a resume that would mix runs, seeds itself, builds its scorers and budgets (everything that can be
refused happens before the run directory exists), opens the run directory (log, resolved config, identity), replays
what a resumed run already recorded, searches, and writes ``summary.json``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from rlprune.agents.policy_io import Policy
from rlprune.config import SearchConfig, write_resolved
from rlprune.envs.features import FEATURE_VERSION
from rlprune.errors import RLPruneError
from rlprune.io.reports import MultiSearchSummary, SearchSummary
from rlprune.logs import setup_logging
from rlprune.pruning import Plan
from rlprune.searching.agent import starting_policy
from rlprune.searching.identity import prepare_run, record_identity, resumed_features
from rlprune.searching.recorder import SearchRecorder
from rlprune.seeding import seed_everything


class SearchRun(ABC):
    """One search in one run directory (``cfg.output_dir / cfg.name``), whose lock the caller holds.

    :param cfg: the validated search config.
    :param searcher: a baseline searcher's name; None trains the config's RL agent.
    :param resume: continue a run whose settings match (refused otherwise).
    :param progress: log progress to the console.
    """

    def __init__(self, cfg: SearchConfig, *, searcher: str | None = None, resume: bool = False, progress: bool = True):
        self.cfg, self.searcher, self.resume, self.progress = cfg, searcher, resume, progress
        self.run_dir = Path(cfg.output_dir) / cfg.name
        self.features = FEATURE_VERSION
        self.start: Policy | None = None  # the policy the agent starts from (agent.init_policy)

    def run(self) -> SearchSummary | MultiSearchSummary:
        """Take every step of the search; returns its summary (also written to ``summary.json``)."""
        identity = prepare_run(self.cfg, self.run_dir, self.resume, self.searcher)
        self.start = starting_policy(self.cfg, self.searcher)
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        seed_everything(self.cfg.seed)
        fresh = self.start.info.feature_version if self.start is not None else FEATURE_VERSION
        self.features = resumed_features(self.run_dir, fresh) if self.resume else fresh
        self.build()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        setup_logging(self.run_dir / "search.log", verbose=self.progress)
        self.opened()
        write_resolved(self.cfg, self.run_dir)
        record_identity(self.run_dir, identity)
        recorder = self.recorder()
        started = time.perf_counter()
        writer = self.search(recorder)
        if recorder.best is None:
            raise RLPruneError("search evaluated no plan")
        summary = self.summarize(recorder, writer, started)
        writer.close()
        summary.save(self.run_dir / "summary.json")
        return summary

    @abstractmethod
    def build(self) -> None:
        """Build scorers, budgets and environments; refuse what cannot be searched (the run directory does not
        exist yet, so a refused search leaves nothing behind)."""

    def opened(self) -> None:  # noqa: B027 (a hook; most searches have nothing to add)
        """The run directory exists and logs: record what the run is made of beside its config."""

    @abstractmethod
    def recorder(self) -> SearchRecorder:
        """The episode recorder, attached to the environments, with every recorded plan remembered by its scorer
        (a resumed search re-evaluates none)."""

    @abstractmethod
    def search(self, recorder: SearchRecorder) -> SummaryWriter:
        """Play the searcher's or train the agent's episodes; returns the TensorBoard writer for the last figures."""

    @abstractmethod
    def summarize(
        self, recorder: SearchRecorder, writer: SummaryWriter, started: float
    ) -> SearchSummary | MultiSearchSummary:
        """The run's summary (``summary.json``) once every episode is recorded; ``started``: when this session's
        search began (``time.perf_counter()``)."""


def remember_records(scorer: Any, records: list[dict[str, Any]]) -> None:
    """Hand a scorer that caches (``remember``) the recorded scores of its plans, with their metrics when several
    were recorded (a reward may read them)."""
    if not hasattr(scorer, "remember"):
        return
    for rec in records:
        extra = {"metrics": rec["metrics"]} if rec.get("metrics") else {}
        scorer.remember(Plan.from_dict(rec["plan"]), rec["accuracy"], **extra)


def run_stats(recorder: SearchRecorder, started: float) -> dict[str, float]:
    """The timing every summary reports: this session's wall time since ``started`` (``time.perf_counter()``), the
    run's, and per episode."""
    return {
        "wall_seconds_this_session": round(time.perf_counter() - started, 1),
        "wall_seconds": round(recorder.wall_seconds(), 1),
        "seconds_per_episode": round(recorder.wall_seconds() / recorder.episodes, 3),
    }


__all__ = ["SearchRun", "remember_records", "run_stats"]
