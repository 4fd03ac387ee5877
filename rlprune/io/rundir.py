"""One run directory: the folder a job owns, and the four things every job needs to own it safely.

- **One job at a time**: :meth:`RunDir.lock` holds an OS lock beside the folder (two jobs would interleave records).
- **One request**: what decides the folder's results (config, weights hashes, recipe, code version) is recorded in
  it; a resume with another request is refused, naming the first difference (:meth:`RunDir.check_same`), or, where
  results may be measured again, the folder is set aside (:meth:`RunDir.set_aside`).
- **Partial, then published**: a job that must never leave half an output works in a hidden ``.<name>.partial``
  folder beside it (:meth:`RunDir.stage`) and renames it into place when complete (:meth:`RunDir.publish`).
- **Safe reads**: every JSON file is read back through the size- and schema-checked reader and written atomically.

Searches (``runs/<name>/``), fine-tunes (``pruned/``), rounds and the benchmarks' cached searches all use it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlprune.errors import RLPruneError
from rlprune.io.files import atomic_write_text, read_json
from rlprune.io.safe import RunLock, json_safe

log = logging.getLogger("rlprune.io.rundir")


def first_difference(saved: Any, now: Any, path: str = "") -> str:
    """The first setting that differs between two nested dicts, as ``key: saved -> now`` (keys in sorted order)."""
    if isinstance(saved, Mapping) and isinstance(now, Mapping):
        for key in sorted(set(saved) | set(now), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if saved.get(key) != now.get(key):
                return first_difference(saved.get(key), now.get(key), sub)
    return f"{path}: {saved!r} -> {now!r}"


class RunDir:
    """The folder ``path`` that one job writes.

    :param path: the run directory (it need not exist yet: a refused job creates nothing).
    :param what: what the folder is, for messages (``"search run directory"``, ``"fine-tune output"``).
    """

    def __init__(self, path: str | Path, what: str = "run directory") -> None:
        self.path = Path(path)
        self.what = what

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def lock(self) -> RunLock:
        """The folder's exclusive lock (``with run_dir.lock(): ...``); a second job is refused with the holder's pid."""
        return RunLock(self.path, self.what)

    def read_json(self, name: str, what: str) -> Any | None:
        """A JSON file of the folder read through the safe reader, or None when it does not exist."""
        path = self.path / name
        return read_json(path, what) if path.is_file() else None

    def write_json(self, name: str, data: Any) -> Path:
        """Write ``data`` as ``name`` atomically (finite numbers only: NaN is not JSON)."""
        path = self.path / name
        atomic_write_text(path, json.dumps(json_safe(data), indent=1, allow_nan=False) + "\n")
        return path

    def check_same(self, saved: Any, now: Any, *, what: str, fix: str = "rename") -> None:
        """Refuse to go on with a request other than the one the folder's results were made by (a resume would mix
        two runs), naming the first difference.

        :param what: what the requests are, for the message (``"recipe, model or data"``, ``"rounds schedule"``).
        :param fix: the remedy the error names (:attr:`rlprune.errors.RLPruneError.fix`).
        """
        if saved != now:
            raise RLPruneError(
                f"{self.path}: holds a run made with another {what} ({first_difference(saved, now)}); resume it with "
                "the same settings",
                fix=fix,
            )

    def set_aside(self, why: str) -> Path:
        """Rename the folder to ``<name>.stale-<time>-<n>`` (it was made by another request) and say so; returns
        where it went."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        names = (self.path.with_name(f"{self.path.name}.stale-{stamp}-{i}") for i in range(1, 10_000))
        aside = next(p for p in names if not p.exists())
        log.warning("%s: %s; moved to %s", self.path, why, aside)
        self.path.rename(aside)
        return aside

    @property
    def partial(self) -> Path:
        """The hidden folder beside this one that a staged job works in."""
        return self.path.parent / f".{self.path.name}.partial"

    def stage(self, request: str, *, resumable: str, job: str = "job") -> Path:
        """The partial folder a job works in: kept when it holds a resumable run (its file ``resumable`` exists)
        of the same ``request`` (text, recorded as ``request.json``), cleared otherwise.

        :param job: what works there, for the log (``"fine-tune"``)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        work = self.partial
        keep = (work / resumable).is_file()
        recorded = (work / "request.json").read_text().strip() if (work / "request.json").is_file() else None
        if keep and recorded != request:
            log.warning("%s: left by a %s with other settings; starting over", work, job)
            keep = False
        if work.exists() and not keep:
            shutil.rmtree(work)  # nothing worth resuming
        if keep:
            log.info("resuming the %s in %s", job, work)
        work.mkdir(exist_ok=True)
        atomic_write_text(work / "request.json", request + "\n")
        return work

    def publish(self, work: Path, *, drop: tuple[str, ...] = (), replace: bool = False) -> None:
        """Rename the staged folder ``work`` into place, dropping what only served resuming (``drop`` and its
        ``request.json``); an existing folder is replaced only when ``replace`` (else it must be empty)."""
        for name in (*drop, "request.json"):
            (work / name).unlink(missing_ok=True)
        if self.path.exists():
            shutil.rmtree(self.path) if replace else self.path.rmdir()
        work.rename(self.path)


__all__ = ["RunDir", "first_difference"]
