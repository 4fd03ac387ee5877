"""Where a result came from: the code version, the request that produced it, the machine it was measured on.

A stored result (a fine-tune report, a search summary) records ``provenance(request)`` and is reused only when
``is_current`` says the same request, on the same code, produced it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from rlprune.version import __version__

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # rlprune/, not this module's io/
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


# what a checkout may differ from its commit in and stay clean: results and prose a benchmark writes
NOT_CODE = (":(top,exclude)benchmarks/results", ":(top,exclude)*.md", ":(top,exclude)**/*.md")


def git_commit() -> str:
    """Short commit of the checkout rlprune is imported from, ``+dirty`` when its tracked code has uncommitted
    changes (results and prose a benchmark writes, ``benchmarks/results/`` and Markdown, do not count: a benchmark
    writing its own figures must not mark itself); ``unknown`` for an installed copy without git (the source hash in
    :func:`code_version` still holds)."""
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        return UNKNOWN_COMMIT
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", *NOT_CODE)
    return commit + ("+dirty" if changed else "")


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
    return {"version": __version__, "source_sha256": source_sha256()}


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


def environment() -> dict[str, Any]:
    """Where a number was measured: versions, threads, CPU, the package's source hash, git commit."""
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
        "rlprune": __version__,
        "source_sha256": source_sha256(),  # the package code that measured it (the commit may hold other edits)
        "commit": commit,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


__all__ = [
    "code_version",
    "environment",
    "git_commit",
    "is_current",
    "provenance",
    "request_sha256",
    "source_sha256",
    "tensors_sha256",
]
