"""Train several pretraining configs side by side on one GPU inside a fixed wall-clock budget, then pick by val.

A ResNet-20 step is launch-bound on a large GPU (the GPU idles most of each step), so N processes sharing it train N
candidates for little more than the wall time of one. The budget decides the epoch count: a short calibration run of
every config (all at once, so the contention is measured too) gives seconds per epoch, and each config then gets the
most epochs (a multiple of 5) that fit, its SWA phase scaled by the same factor. The chosen model is the one with the
best *validation* accuracy; test accuracy is reported for every candidate, never used to choose.

    python benchmarks/parallel_pretrain.py --budget 420 --out runs/gpu --config experiments/a.yaml \\
        --config experiments/b.yaml

Writes ``<out>/<name>/`` per candidate (the usual run directory, resumable) and ``<results>.{json,md}``; a candidate
is published to the zoo with ``rlprune.jobs.pretrain.publish`` (what ``rlprune pretrain --out`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _results import environment, md_table, reproduce_command, write_results  # noqa: E402

from rlprune.config import PretrainConfig, load_config  # noqa: E402
from rlprune.jobs.pretrain import load_data  # noqa: E402


def _command(config: str, out: Path, name: str, threads: int, sets: list[str], restart: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "rlprune", "pretrain", config, "--quiet", "--set", f"name={name}"]
    if restart:
        cmd.append("--restart")
    for item in [f"output_dir={out}", f"threads={threads}", *sets]:
        cmd += ["--set", item]
    return cmd


def _run_all(jobs: dict[str, list[str]], deadline: float, logs: Path) -> dict[str, int | None]:
    """Start every job at once; wait until all end or the deadline passes (then stop the rest: runs resume)."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name, cmd in jobs.items():
        with open(logs / f"{name}.log", "w") as fh:
            procs[name] = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
        time.sleep(1.0)
    codes: dict[str, int | None] = {}
    for name, p in procs.items():
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
            codes[name] = None
        else:
            codes[name] = p.returncode
    return codes


def _seconds_per_epoch(run_dir: Path) -> float:
    history = json.loads((run_dir / "history.json").read_text())
    times = [h["epoch_seconds"] for h in history[1:]] or [history[0]["epoch_seconds"]]
    return statistics.median(times)


def _calibrate(
    cfgs: dict[str, PretrainConfig], args: argparse.Namespace, out: Path, threads: int, deadline: float
) -> dict[str, dict]:
    """Time a few epochs of every config at once, then give each the most epochs that fit before ``deadline``."""
    calib = {
        f"{c.name}_calib": _command(
            p,
            out / "calib",
            f"{c.name}_calib",
            threads,
            [*args.set, f"train.epochs={args.calib_epochs}", "train.swa.epochs=0", "train.warmup_epochs=0"],
            restart=True,  # a fresh timing, never a finished run resumed
        )
        for p, c in cfgs.items()
    }
    t0 = time.monotonic()
    codes = _run_all(calib, deadline, out / "logs")
    calib_wall = time.monotonic() - t0
    if any(code != 0 for code in codes.values()):
        raise SystemExit(f"calibration failed: {codes} (logs in {out / 'logs'})")
    left = deadline - time.monotonic()
    plan: dict[str, dict] = {}
    for path, cfg in cfgs.items():
        per_epoch = _seconds_per_epoch(out / "calib" / f"{cfg.name}_calib")
        overhead = max(0.0, calib_wall - per_epoch * args.calib_epochs)  # start-up, teacher load, final evaluation
        fit = int((left - overhead - per_epoch) / (per_epoch * args.safety))  # one epoch more: SWA's BN pass
        epochs = min(args.max_epochs, fit - fit % 5)
        if epochs < args.min_epochs:
            raise SystemExit(f"{path}: only {epochs} epochs fit in the budget ({per_epoch:.1f} s/epoch)")
        train = cfg.train
        swa = max(1, round(train.swa.epochs * epochs / train.epochs)) if train.swa.epochs else 0
        plan[cfg.name] = {"config": path, "seconds_per_epoch": round(per_epoch, 2), "epochs": epochs, "swa_epochs": swa}
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", required=True, help="pretraining YAML (repeatable)")
    parser.add_argument("--budget", type=float, required=True, help="wall seconds for calibration + training")
    parser.add_argument("--out", default="runs/parallel", help="output_dir of every run")
    parser.add_argument("--results", default=None, help="results path stem (default: <out>/parallel_pretrain)")
    parser.add_argument("--calib-epochs", type=int, default=3)
    parser.add_argument("--max-epochs", type=int, default=400)
    parser.add_argument("--min-epochs", type=int, default=10)
    parser.add_argument("--safety", type=float, default=1.25, help="factor on the calibrated seconds per epoch")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per run (default: cores / runs)")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE applied to every run")
    parser.add_argument(
        "--resume", action="store_true", help="continue the runs of <results>.json with its epochs (no calibration)"
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    deadline = start + args.budget
    out = Path(args.out).resolve()
    results = Path(args.results) if args.results else out / "parallel_pretrain"
    threads = args.threads or max(1, (os.cpu_count() or 1) // len(args.config))

    cfgs = {path: load_config(path, PretrainConfig, args.set) for path in args.config}
    names = [c.name for c in cfgs.values()]
    if len(set(names)) != len(names):
        raise SystemExit(f"configs: run names must differ, got {names}")
    for cfg in cfgs.values():  # decode + cache the data once, before N processes race for the cache
        load_data(cfg.data)

    if args.resume:  # the same epochs as before, or the saved runs would refuse to resume (another recipe)
        saved_plan = results.with_suffix(".json")
        if not saved_plan.is_file():
            raise SystemExit(f"--resume: {saved_plan} does not exist (run without --resume first)")
        saved = json.loads(saved_plan.read_text())["runs"]
        plan = {r["name"]: {k: r[k] for k in ("config", "seconds_per_epoch", "epochs", "swa_epochs")} for r in saved}
        if sorted(plan) != sorted(names):
            raise SystemExit(f"--resume: {saved_plan} holds runs {sorted(plan)}, not {sorted(names)}")
    else:
        plan = _calibrate(cfgs, args, out, threads, deadline)
        # the plan goes on disk before training, so that a killed sweep can be continued with --resume
        partial = {"runs": [{"name": name, **info} for name, info in plan.items()]}
        write_results(results, partial, "(training: see the JSON file for the plan)")
    jobs = {
        name: _command(
            info["config"],
            out,
            name,
            threads,
            [*args.set, f"train.epochs={info['epochs']}", f"train.swa.epochs={info['swa_epochs']}"],
            restart=not args.resume,
        )
        for name, info in plan.items()
    }
    codes = _run_all(jobs, deadline, out / "logs")

    rows = []
    for name, info in plan.items():
        meta_path = out / name / "model.json"
        sets = [item for flag, item in zip(jobs[name], jobs[name][1:], strict=False) if flag == "--set"]
        row = {"name": name, **info, "exit": codes[name], "overrides": sets}
        if codes[name] == 0 and meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            row.update(
                val_accuracy=meta["val_accuracy"],
                test_accuracy=meta["test_accuracy"],
                train_seconds=meta["train_seconds"],
                device=meta["environment"]["device"],
                torch=meta["environment"]["torch"],
            )
        rows.append(row)
    done = [r for r in rows if "val_accuracy" in r]
    best = max(done, key=lambda r: r["val_accuracy"])["name"] if done else None
    report = {"budget_seconds": args.budget, "threads_per_run": threads, "chosen_by_val": best, "runs": rows}
    table = md_table(
        ["run", "epochs (SWA)", "s/epoch", "val %", "test %", ""],
        [
            [
                r["name"],
                f"{r['epochs']} ({r['swa_epochs']})",
                r["seconds_per_epoch"],
                r.get("val_accuracy", "-"),
                r.get("test_accuracy", "-"),
                "chosen by val" if r["name"] == best else ("" if "val_accuracy" in r else f"exit {r['exit']}"),
            ]
            for r in rows
        ],
    )
    env = environment()
    where = env["cuda"] or env["cpu"]
    shared = "".join(f" --set {item}" for item in args.set)
    each = "\n".join(
        f"- `rlprune pretrain {r['config']}{shared} --set train.epochs={r['epochs']} "
        f"--set train.swa.epochs={r['swa_epochs']}`"
        for r in rows
    )
    markdown = (
        f"# {len(rows)} candidates trained side by side in {args.budget:g} s\n\n{table}\n\n"
        f"Epochs fitted to the budget from a {args.calib_epochs}-epoch calibration run; chosen by validation accuracy "
        f"(the hold-out from train), test reported only. {where}, torch {env['torch']}, {threads} threads per run, "
        f"commit {env['commit']}. Reproduce: `{reproduce_command('benchmarks/parallel_pretrain.py', args, REPO, ())}` "
        f"(its epochs depend on the machine); each run alone, with the epochs it got:\n\n{each}"
    )
    write_results(results, {**report, "environment": env}, markdown)
    print(markdown)
    return 0 if done else 1


if __name__ == "__main__":
    raise SystemExit(main())
