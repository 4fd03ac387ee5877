"""The main job's cost: wall time and peak memory of ``rlprune run CONFIG`` from scratch, and what it produced.

    python benchmarks/main_job.py [--config experiments/quickstart.yaml]

Runs the command in a subprocess with a fresh output directory (so nothing is reused from an earlier run), reads the
peak resident memory of that process tree from ``getrusage(RUSAGE_CHILDREN)`` and the numbers from the run's
``report.json``. The README's "at most 10 minutes on 2 cores" claim for the main job is checked against this file.

Writes benchmarks/results/main_job.{json,md} and the run's figures beside them (copied out of the run directory
before it is removed): main_job_plan.png (the fine-tuned plan's profile), main_job_search.png (the search scatter)
and main_job_finetune.png (the fine-tune curves); the Markdown embeds them. ``--redraw`` draws the fine-tune curves
again from main_job.json (the report in it holds their history) without running the job.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import environment, md_table, reproduce_command, write_results

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "main_job"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="experiments/quickstart.yaml")
    ap.add_argument("--limit-minutes", type=float, default=10.0, help="the budget the README promises")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--redraw", action="store_true", help="only redraw the fine-tune curves from the results JSON")
    args = ap.parse_args()
    if args.redraw:
        print(redraw_finetune(Path(args.out)))
        return
    with tempfile.TemporaryDirectory(prefix="rlprune-main-job-") as tmp:
        command = ["rlprune", "run", args.config, "--set", f"output_dir={tmp}", "--quiet"]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [""])[-1]
            sys.exit(f"{' '.join(command)} failed ({done.returncode}): {last}")
        # stdout: the summary JSON line, then the report's markdown
        summary = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
        report = json.loads(Path(summary["report"]).with_suffix(".json").read_text())
        images = keep_figures(Path(summary["report"]).parent, Path(args.out))
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux reports KiB
    pruned, dense = report["pruned"], report["dense"]
    row = [
        args.config,
        round(wall / 60, 2),
        round(peak_mb),
        summary["best_val_proxy_accuracy"],
        round(pruned["macs_ratio"], 4),
        round(pruned["after_finetune"]["test"], 2),
        round(dense["test"], 2),
    ]
    env = environment()
    reproduce = reproduce_command("benchmarks/main_job.py", args, ROOT)
    verdict = "within" if wall / 60 <= args.limit_minutes else "OVER"
    md = "\n".join(
        [
            "# The main job, end to end (`rlprune run`)",
            "",
            md_table(
                [
                    "config",
                    "wall minutes",
                    "peak RSS MB",
                    "best val proxy acc",
                    "MACs ratio",
                    "test acc after FT",
                    "dense test acc",
                ],
                [row],
            ),
            "",
            f"{verdict} the {args.limit_minutes:g}-minute budget. Search, fine-tune, ONNX export and report, from an "
            f"empty output directory (the decoded-data cache warm). {env['threads']} threads, {env['cpu']}, torch "
            f"{env['torch']}, commit {env['commit']}. Reproduce: `{reproduce}`.",
            "",
            *[line for caption, name in images.items() for line in (f"![{caption}]({name})", "")],
        ]
    )
    data = {"config": args.config, "wall_seconds": wall, "peak_rss_mb": peak_mb, "summary": summary, "report": report}
    write_results(args.out, {**data, "environment": env}, md)
    print(md)
    print("\nREADME lines:\n" + "\n".join(readme_lines({**data, "environment": env})))


def readme_lines(data: dict) -> list[str]:
    """The README's main-job lines, rendered from ``main_job.json`` (the README quotes them as they are; a test
    fails when they differ): the dense/pruned table and the line with the wall time."""
    r = data["report"]
    d, p = r["dense"], r["pruned"]
    lat = r["latency_ms_cpu"]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x"

    return [
        "| ResNet-20 on CIFAR-10 at 50% of the MACs: `rlprune run experiments/quickstart.yaml` | dense | pruned |",
        "|---|---|---|",
        f"| MACs / parameters | {d['macs'] / 1e6:.1f} M / {d['params'] / 1e3:.0f} k | {p['macs'] / 1e6:.1f} M "
        f"({ratio(p['macs'], d['macs'])}) / {p['params'] / 1e3:.0f} k ({ratio(p['params'], d['params'])}) |",
        f"| CPU latency, batch 1 / batch 64 ({data['environment']['threads']} threads) | {lat['dense']['1']:.1f} ms / "
        f"{lat['dense']['64']:.1f} ms | {lat['pruned']['1']:.1f} ms ({ratio(lat['pruned']['1'], lat['dense']['1'])}) / "
        f"{lat['pruned']['64']:.1f} ms ({ratio(lat['pruned']['64'], lat['dense']['64'])}) |",
        f"| test accuracy after one fine-tune epoch | {d['test']:.2f}% | {p['after_finetune']['test']:.2f}% |",
        "",
        f"{data['wall_seconds'] / 60:.1f} min and {data['peak_rss_mb'] / 1024:.1f} GB peak memory on "
        f"{data['environment']['threads']} threads of an {data['environment']['cpu']}, "
        f"{'within' if data['wall_seconds'] <= 600 else 'over'} the 10-minute target "
        "([main_job](benchmarks/results/main_job.md), `python benchmarks/run_all.py --tier main`).",
    ]


FIGURES = {  # caption -> (file in the run, suffix of the copy beside the results)
    "the plan the search found, fine-tuned: channels kept per unit": ("pruned/plan_profile.png", "plan"),
    "the search: every evaluated plan": ("search.png", "search"),
    "the fine-tune": ("pruned/finetune.png", "finetune"),
}


def keep_figures(pruned_dir: Path, out: Path) -> dict[str, str]:
    """Copy the run's figures next to the results (the run directory is temporary); returns caption -> file name."""
    run_dir = pruned_dir.parent
    kept = {}
    for caption, (name, suffix) in FIGURES.items():
        src = run_dir / name
        if src.is_file():
            dst = out.with_name(f"{out.name}_{suffix}.png")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            kept[caption] = dst.name
    return kept


def redraw_finetune(out: Path) -> Path:
    """``<out>_finetune.png`` from the report kept in ``<out>.json`` (the same figure the run's report drew)."""
    from rlprune.reporting import figures

    report = json.loads(out.with_suffix(".json").read_text())["report"]
    fig = figures.finetune_figure(
        report["finetune"]["history"],
        dense_accuracy=report["dense"]["val"],
        before_accuracy=report["pruned"]["before_finetune"]["val"],
        title=f"{report['model']}: fine-tune of the pruned model",
    )
    return figures.save(fig, out.with_name(f"{out.name}_finetune.png"))


if __name__ == "__main__":
    main()
