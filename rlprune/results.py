"""Benchmark results: one JSON file (machine-readable) and one markdown file (quoted by the README), written
atomically, with the environment they were measured in."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from rlprune.config import atomic_write_text


def environment() -> dict[str, Any]:
    """Where a number was measured: versions, threads, CPU, git commit."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
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
    """Write ``<stem>.json`` and ``<stem>.md``."""
    stem = Path(stem)
    data = {**data, "environment": data.get("environment") or environment()}
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
