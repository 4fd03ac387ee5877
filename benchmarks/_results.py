"""Benchmark results: one JSON file (machine-readable) and one Markdown file (quoted by the README), written
atomically, every row dated by the commit it was measured at, and the command line that reproduces them.

Benchmark scripts import this as ``from _results import ...`` (they run as ``python benchmarks/<name>.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rlprune.io.files import atomic_write_text
from rlprune.io.provenance import UNKNOWN_COMMIT, code_version, environment
from rlprune.reporting.tables import md_table


def measured_at(data: Any, current: Mapping[str, str]) -> dict[str, list[str]]:
    """Commit -> the places in ``data`` measured at it. A result reused from an earlier run carries its own
    ``provenance`` (commit, date); everything else in ``data`` was measured now, at ``current["commit"]``.
    Results reused from before provenance existed count as commit ``unknown``."""
    found: dict[str, list[str]] = {}

    def walk(node: Any, where: str) -> None:
        if isinstance(node, Mapping):
            recorded = node.get("provenance")
            if isinstance(recorded, Mapping):
                found.setdefault(str(recorded.get("commit") or UNKNOWN_COMMIT), []).append(where or "/")
                return
            if "environment" in node and where and isinstance(node["environment"], Mapping):  # a reused report
                found.setdefault(UNKNOWN_COMMIT, []).append(where)
                return
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list | tuple):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk({k: v for k, v in data.items() if k != "environment"}, "")
    found.setdefault(str(current.get("commit") or UNKNOWN_COMMIT), []).insert(0, "(this run)")
    return found


def request_key(request: Any) -> str:
    """The key a benchmark caches a result under: what decides it (``request``: checkpoints by their weights hash,
    settings, seeds) and the package code that measured it (version and source hash), so that a cell measured by
    other code is measured again, never reused."""
    payload = json.dumps({"request": request, "code": code_version()}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def mean_std(values: list[float] | None) -> str:
    """Seeds' results as a table cell: ``mean ± std (n seeds)``, the value for one seed, ``not run`` for none."""
    if not values:
        return "not run"
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({len(values)} seeds)"


def write_results(stem: str | Path, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md``, measured by one version of the package code.

    Every row is dated: results measured by this run carry ``environment`` (commit, date); results it reused
    (fine-tune reports, search summaries) carry their own ``provenance``. ``measured_at`` in the JSON maps each
    commit to the rows measured at it. A file whose rows come from more than one commit is refused (nothing is
    written): a figure must come from the code that ships, so the stale rows are measured again instead.
    """
    stem = Path(stem)
    env = data.get("environment") or environment()
    commits = measured_at(data, env)
    data = {**data, "environment": env, "measured_at": commits}
    if len(commits) > 1:
        listed = "; ".join(f"{c}: {', '.join(w[:3])}{' ...' if len(w) > 3 else ''}" for c, w in commits.items())
        raise SystemExit(
            f"error: {stem}: its rows were measured at {len(commits)} commits ({listed}); one results file holds one "
            "code version: measure the older rows again (their cached runs are keyed on the code) or keep them apart"
        )
    atomic_write_text(stem.with_suffix(".json"), json.dumps(data, indent=1, default=float) + "\n")
    atomic_write_text(stem.with_suffix(".md"), markdown.rstrip() + "\n")
    return stem.with_suffix(".json"), stem.with_suffix(".md")


def measured_on(env: Mapping[str, Any], command: str) -> str:
    """The closing sentence of a results page: where the numbers were measured (threads, CPU, torch, commit) and
    the command that measures them again, so a reader can tell whether their own run should match.

    :param env: :func:`environment` of this run.
    :param command: :func:`reproduce_command` of this run.
    """
    return (
        f"{env['threads']} threads, {env['cpu']}, torch {env['torch']}, commit {env['commit']}. Reproduce: `{command}`."
    )


def reproduce_command(script: str, args: argparse.Namespace, root: Path, skip: Iterable[str] = ("out", "runs")) -> str:
    """The command line that reruns a benchmark with every option spelled out (defaults included, so the line still
    means the same after a default changes); paths under ``root`` are written relative to it.

    :param skip: destinations left out — where results go, not what is measured.
    """
    prefix = str(root.resolve()) + os.sep

    def word(value: object) -> str:
        return shlex.quote(str(value).replace(prefix, ""))  # also inside LABEL=PATH values

    parts = [f"python {script}"]
    for dest, value in vars(args).items():
        flag = "--" + dest.replace("_", "-")
        if dest in skip or value is None or value is False:
            continue
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [f"{flag} {word(v)}" for v in value]
        else:
            parts.append(f"{flag} {word(value)}")
    return " ".join(parts)


__all__ = ["environment", "md_table", "measured_at", "measured_on", "reproduce_command", "write_results"]
