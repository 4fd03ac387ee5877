"""Benchmarks' search cache: a finished search is reused only when the same request (config, searcher,
checkpoint weights, code version) made it; an interrupted one is finished."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from rlprune.config import SearchConfig
from rlprune.io.files import atomic_write_text
from rlprune.io.provenance import is_current, provenance
from rlprune.searching.api import run_search
from rlprune.searching.identity import search_request

log = logging.getLogger("rlprune.searching.cache")


def complete_search(cfg: SearchConfig, *, searcher: str | None = None, progress: bool = True) -> dict[str, Any]:
    """The summary of the run ``cfg`` names, running or resuming it first unless it already has every episode.

    Benchmarks call this so that running them again finishes an interrupted search and reuses a finished one, but
    only one made by the same request (config, searcher, checkpoint weights, code version; ``request.json`` in the
    run): a run made by any other is moved aside to ``<name>.stale-<time>`` with a warning and searched again.
    """
    run_dir = Path(cfg.output_dir) / cfg.name
    request = search_request(cfg, searcher)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    # >=: several workers finish their episodes together, so a run can hold a few more than asked
    if summary is not None and is_current(summary, request) and summary["episodes"] >= cfg.agent.episodes:
        return summary
    recorded = json.loads((run_dir / "request.json").read_text()) if (run_dir / "request.json").is_file() else None
    more_episodes = summary is None or summary["episodes"] < cfg.agent.episodes  # a finished run can be extended
    if run_dir.exists() and not (is_current(recorded, request) and more_episodes):
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = next(
            p for i in range(1, 10_000) if not (p := run_dir.with_name(f"{run_dir.name}.stale-{stamp}-{i}")).exists()
        )
        log.warning("%s: made by another request (config, checkpoint or code); moved to %s", run_dir, aside)
        run_dir.rename(aside)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "request.json", json.dumps({"provenance": provenance(request)}, indent=1) + "\n")
    summary = run_search(cfg, searcher=searcher, resume=(run_dir / "episodes.jsonl").is_file(), progress=progress)
    summary["provenance"] = provenance(request)
    atomic_write_text(summary_path, json.dumps(summary, indent=1) + "\n")
    return summary


__all__ = ["complete_search"]
