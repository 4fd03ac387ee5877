"""Benchmark results: one JSON file (machine-readable) and one markdown file (quoted by the README), written
atomically, with the environment they were measured in."""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from rlprune.config import atomic_write_text

PACKAGE_DIR = Path(__file__).resolve().parent
UNKNOWN_COMMIT = "unknown"


def _git(*args: str) -> str:
    """``git <args>`` in the package's own checkout (not the working directory); "" outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def git_commit() -> str:
    """Short commit of the checkout rlprune is imported from, ``+dirty`` when its tracked files have uncommitted
    changes; ``unknown`` for an installed copy without git (the source hash in :func:`code_version` still holds)."""
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        return UNKNOWN_COMMIT
    return commit + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


@functools.cache
def source_sha256() -> str:
    """sha256 over the path and bytes of every ``.py`` file of the installed rlprune package.

    A result depends on the code that measured it; this changes with any edit to the package and with nothing else
    (docs, benchmarks' Markdown), so reuse keyed on it is neither stale nor needlessly re-measured.
    """
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def code_version() -> dict[str, str]:
    """The package version and the hash of its source tree: what a reusable result's request is keyed on."""
    try:
        version = importlib.metadata.version("rlprune")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"version": version, "source_sha256": source_sha256()}


def request_sha256(request: Mapping[str, Any]) -> str:
    """Hash of everything that decides a result: the caller's ``request`` (config, plan key, checkpoint weights hash,
    epochs, seed, ...) plus :func:`code_version`. Two results with the same hash are interchangeable."""
    payload = json.dumps({"request": request, "code": code_version()}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def provenance(request: Mapping[str, Any]) -> dict[str, Any]:
    """What a reusable result records about how it was produced: the request hash it is reused on, the request
    itself (to see what changed), the code version, and the commit and date it was measured at."""
    return {
        "request_sha256": request_sha256(request),
        "request": json.loads(json.dumps(request, sort_keys=True, default=str)),
        "code": code_version(),
        "commit": git_commit(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def is_current(result: Mapping[str, Any] | None, request: Mapping[str, Any]) -> bool:
    """Whether a stored ``result`` was produced by exactly ``request`` with this code (its provenance hash matches);
    a result from before provenance was recorded never is."""
    if not isinstance(result, Mapping):
        return False
    recorded = result.get("provenance")
    return isinstance(recorded, Mapping) and recorded.get("request_sha256") == request_sha256(request)


def tensors_sha256(model: torch.nn.Module) -> str:
    """sha256 of a model's state (names, dtypes, shapes, bytes): identifies weights that have no checkpoint file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


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


def environment() -> dict[str, Any]:
    """Where a number was measured: versions, threads, CPU, git commit."""
    commit = git_commit()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "commit": commit,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def write_results(stem: str | Path, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md``.

    Every row is dated: results measured by this run carry ``environment`` (commit, date); results it reused
    (fine-tune reports, search summaries) carry their own ``provenance``. ``measured_at`` in the JSON maps each
    commit to the rows measured at it, and a file whose rows come from more than one commit says so in its Markdown.
    """
    stem = Path(stem)
    env = data.get("environment") or environment()
    commits = measured_at(data, env)
    data = {**data, "environment": env, "measured_at": commits}
    if len(commits) > 1:
        listed = "; ".join(f"{c}: {', '.join(w)}" for c, w in commits.items())
        markdown = (
            markdown.rstrip()
            + f"\n\n**Mixed commits**: the rows of this file were measured at {len(commits)} commits ({listed}).\n"
        )
    atomic_write_text(stem.with_suffix(".json"), json.dumps(data, indent=1, default=float) + "\n")
    atomic_write_text(stem.with_suffix(".md"), markdown.rstrip() + "\n")
    return stem.with_suffix(".json"), stem.with_suffix(".md")


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


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
