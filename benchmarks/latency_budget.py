"""Does a latency-budget search land on its budget? The per-layer lookup table as built (a line through the dense and
a uniform half-width model) against the same table refitted on plans at the budget that are timed for real.

    python benchmarks/latency_budget.py [--episodes 24] [--calibration-plans 8]

Two short PPO searches on experiments/resnet20_cifar10_latency50.yaml (50% of measured batch-1 CPU latency), one
without and one with calibration, same seed; for each, the latency ratio the table predicted for the best plan and the
one measured for real. Every search is an ordinary ``rlprune`` run under ``runs/bench_latency/`` (resumes if
interrupted). Writes benchmarks/results/latency_budget.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _results import environment, md_table, reproduce_command, write_results

from rlprune.config import SearchConfig, load_config
from rlprune.searching.cache import complete_search

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "resnet20_cifar10_latency50.yaml"
OUT = ROOT / "benchmarks" / "results" / "latency_budget"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=24)
    ap.add_argument("--calibration-plans", type=int, default=8)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench_latency"))
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    runs, rows = {}, []
    for label, plans in (
        ("table as built", 0),
        (f"refitted on {args.calibration_plans} timed plans", args.calibration_plans),
    ):
        name = f"calibration-{plans}"
        overrides = [
            f"name={name}",
            f"output_dir={args.runs}",
            f"agent.episodes={args.episodes}",
            f"latency.calibration_plans={plans}",
        ]
        cfg = load_config(CONFIG, SearchConfig, overrides)
        cfg = cfg.model_copy(update={"checkpoint": str(ROOT / cfg.checkpoint)})
        summary = complete_search(cfg).to_dict()
        table = json.loads((Path(args.runs) / name / "latency_table.json").read_text())
        runs[name] = {"calibration_plans": plans, "summary": summary, "calibration": table.get("calibration")}
        best = summary["best"]
        rows.append(
            [
                label,
                best["latency_ratio"],
                best["measured_latency_ratio"],
                best["measured_latency_ratio"] - cfg.env.target,
                best["macs_ratio"],
                best["accuracy"],
            ]
        )
    env = environment()
    calibrated = runs[f"calibration-{args.calibration_plans}"]["calibration"] or {}
    md = "\n".join(
        [
            f"# Latency budget — ResNet-20, {CONFIG.stem}, {args.episodes}-episode PPO searches",
            "",
            md_table(
                [
                    "latency table",
                    "predicted latency ratio (best plan)",
                    "measured latency ratio",
                    "measured - target",
                    "MACs ratio",
                    "val proxy acc",
                ],
                rows,
            ),
            "",
            (
                f"Calibration plans: measured ratio {calibrated['measured_ratio_mean']:.3f}, predicted "
                f"{calibrated['predicted_ratio_mean_before']:.3f} before the refit and "
                f"{calibrated['predicted_ratio_mean_after']:.3f} after (mean absolute error "
                f"{calibrated['abs_error_before']:.3f} -> {calibrated['abs_error_after']:.3f})."
                if calibrated
                else ""
            ),
            "",
            f"Batch 1, {env['threads']} threads, {env['cpu']}, torch {env['torch']}, commit {env['commit']}. "
            f"Reproduce: `{reproduce_command('benchmarks/latency_budget.py', args, ROOT)}`.",
        ]
    )
    write_results(
        args.out,
        {"config": str(CONFIG.relative_to(ROOT)), "episodes": args.episodes, "runs": runs, "environment": env},
        md,
    )
    print(md)


if __name__ == "__main__":
    main()
