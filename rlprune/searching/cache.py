"""Benchmarks' search cache: a finished search is reused only when the same request (config, searcher,
checkpoint weights, code version) made it; an interrupted one is finished."""

from __future__ import annotations

import logging
from pathlib import Path

from rlprune.config import SearchConfig
from rlprune.errors import RLPruneError
from rlprune.io.provenance import is_current, provenance
from rlprune.io.reports import MultiSearchSummary, SearchSummary, load_summary
from rlprune.io.rundir import RunDir
from rlprune.searching.api import run_search
from rlprune.searching.identity import search_request

log = logging.getLogger("rlprune.searching.cache")


def complete_search(
    cfg: SearchConfig, *, searcher: str | None = None, progress: bool = True
) -> SearchSummary | MultiSearchSummary:
    """The summary of the run ``cfg`` names, running or resuming it first unless it already has every episode.

    Benchmarks call this so that running them again finishes an interrupted search and reuses a finished one, but
    only one made by the same request (config, searcher, checkpoint weights, code version; ``request.json`` in the
    run): a run made by any other is moved aside to ``<name>.stale-<time>`` with a warning and searched again.
    """
    run = RunDir(Path(cfg.output_dir) / cfg.name, "search run directory")
    request = search_request(cfg, searcher)
    summary = _stored(run)
    # >=: several workers finish their episodes together, so a run can hold a few more than asked
    current = summary is not None and is_current({"provenance": summary.provenance}, request)
    if summary is not None and current and summary.episodes >= cfg.agent.episodes:
        return summary
    recorded = run.read_json("request.json", "search request")
    more_episodes = summary is None or summary.episodes < cfg.agent.episodes  # a finished run can be extended
    if run.path.exists() and not (is_current(recorded, request) and more_episodes):
        run.set_aside("made by another request (config, checkpoint or code)")
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_json("request.json", {"provenance": provenance(request)})
    resume = (run / "episodes.jsonl").is_file()
    found = run_search(cfg, searcher=searcher, resume=resume, progress=progress)
    found.provenance = provenance(request)
    found.save(run / "summary.json")
    return found


def _stored(run: RunDir) -> SearchSummary | MultiSearchSummary | None:
    """The run's summary, or None when there is none or it is not a valid summary (searched again)."""
    if not (run / "summary.json").is_file():
        return None
    try:
        return load_summary(run / "summary.json")
    except RLPruneError as exc:
        log.warning("%s", exc)
        return None


__all__ = ["complete_search"]
