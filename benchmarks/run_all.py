"""Re-measure the headline results with the package code at hand, one benchmark after another.

    python benchmarks/run_all.py --tier main         # the main job (minutes): before every package change lands
    python benchmarks/run_all.py --tier full         # every headline file (many hours on 2 CPU cores)
    python benchmarks/run_all.py --tier full --dry-run   # what would run, and which files are stale

Each headline is re-run with the command its results file records (``Reproduce: ...`` in its Markdown), so a file is
measured again exactly as it was made. Resumable: a file whose ``environment.source_sha256`` equals the package's
source hash now was measured by this very code and is skipped (``--force`` runs it anyway); a benchmark that fails
stops the run with its exit status, and running the same command again continues with the files still stale. Every
results file records its commit, source hash and machine; ``benchmarks/results/run_all.{json,md}`` lists, per
headline, the code that measured it and how long it took.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from _results import environment, md_table, write_results

from rlprune.io.provenance import source_sha256

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# tier -> the headline results files (stems under benchmarks/results/) it re-measures, in order
TIERS: dict[str, tuple[str, ...]] = {
    "main": ("main_job",),
    "full": (
        "main_job",
        "search_resnet20_macs50",
        "finetune_resnet20_macs50",
        "peers_resnet20_macs50",
        "generalize",
        "adapt_curve",
        "compression",
        "model_coverage",
        "scaling",
    ),
}


def recorded_command(stem: str) -> list[str]:
    """The command that made ``benchmarks/results/<stem>``, as its Markdown records it (``Reproduce: `...```)."""
    md = RESULTS / f"{stem}.md"
    if not md.is_file():
        raise SystemExit(f"error: {md}: no such results file; run its benchmark once by hand first")
    found = re.findall(r"Reproduce: `(python benchmarks/[^`]+)`", md.read_text())
    if not found:
        raise SystemExit(f"error: {md}: records no 'Reproduce: `python benchmarks/...`' command")
    argv = shlex.split(found[-1])
    script = ROOT / argv[1]
    if argv[0] != "python" or not script.is_file() or script.parent != ROOT / "benchmarks":
        raise SystemExit(f"error: {md}: the recorded command does not run a script of benchmarks/ ({found[-1][:80]})")
    return [sys.executable, *argv[1:]]


def measured_by(stem: str) -> str | None:
    """The source hash of the code that measured ``<stem>.json`` (None when it records none)."""
    path = RESULTS / f"{stem}.json"
    try:
        env = json.loads(path.read_text()).get("environment") or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return env.get("source_sha256") if isinstance(env, dict) else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tier", choices=sorted(TIERS), default="main")
    ap.add_argument("--force", action="store_true", help="re-run files already measured by this code too")
    ap.add_argument("--dry-run", action="store_true", help="list what would run, run nothing")
    args = ap.parse_args()
    code = source_sha256()
    plan = [(stem, recorded_command(stem)) for stem in TIERS[args.tier]]  # every command checked before any runs
    done: dict[str, dict[str, object]] = {}
    for stem, argv in plan:
        current = measured_by(stem) == code
        shown = shlex.join(["python", *argv[1:]])
        if current and not args.force:
            print(f"[run_all] {stem}: measured by this code already; skipped", flush=True)
            done[stem] = {"status": "current", "command": shown}
            continue
        if args.dry_run:
            print(f"[run_all] {stem}: stale; would run {shown}", flush=True)
            continue
        print(f"[run_all] {stem}: {shown}", flush=True)
        started = time.perf_counter()
        rc = subprocess.call(argv, cwd=ROOT)
        if rc != 0:
            raise SystemExit(f"error: {stem}: {shown} exited with status {rc}; run_all stops (rerun to continue)")
        if measured_by(stem) != code:
            raise SystemExit(f"error: {stem}: the benchmark ran but its results file records other code")
        done[stem] = {"status": "measured", "command": shown, "minutes": round((time.perf_counter() - started) / 60, 1)}
    if args.dry_run:
        return
    rows = [[stem, d["status"], d.get("minutes", ""), f"`{d['command']}`"] for stem, d in done.items()]
    markdown = (
        f"# Headline results, tier `{args.tier}`\n\n"
        + md_table(["results file", "this run", "minutes", "command"], rows)
        + f"\n\nAll measured by the package code with source hash `{code[:16]}`.\n"
    )
    write_results(
        RESULTS / "run_all",
        {"tier": args.tier, "source_sha256": code, "files": done, "environment": environment()},
        markdown,
    )


if __name__ == "__main__":
    main()
