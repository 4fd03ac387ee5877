"""Final accuracy at 50% MACs: the plans of uniform pruning, random search and PPO fine-tuned with one identical
recipe (30 epochs, distillation from the dense model), test accuracy against the dense checkpoint, CPU latency.

    python benchmarks/finetune_resnet20_macs50.py [--epochs 30] \
        --plan ppo=benchmarks/results/search_resnet20_macs50_plans/ppo-s0.json \
        --plan random=benchmarks/results/search_resnet20_macs50_plans/random-s0.json

Uniform is computed here; the other plans come from searches (search_resnet20_macs50.py keeps each search's best
plan in benchmarks/results/search_resnet20_macs50_plans/; the command above takes the best of each searcher's three
seeds by validation proxy, on the current zoo model; the plans of the earlier 87.75% checkpoint, which the committed
results were measured with, are in that folder's earlier_checkpoint/). Each fine-tune is an
``rlprune finetune`` output folder under runs/bench_finetune/<label>/ (skipped if already complete).
Writes benchmarks/results/finetune_resnet20_macs50.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _results import environment, md_table, reproduce_command, write_results

from rlprune.apply import finetune_plan, load_dense
from rlprune.data import splits_from_meta
from rlprune.pruning import Plan
from rlprune.pruning.budget import uniform_plan

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "finetune_resnet20_macs50"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "zoo" / "resnet20_cifar10.json"))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--plan", action="append", default=[], metavar="LABEL=PATH")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench_finetune"))
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    dense, meta, structure = load_dense(args.checkpoint)
    splits = splits_from_meta(meta, None)
    plans, plan_files = {}, {}
    for item in args.plan:  # searched plans first: an interrupted run has them before the baseline
        label, _, path = item.partition("=")
        plans[label] = Plan.load(path)
        plan_files[label] = path
    plans["uniform"] = uniform_plan(structure, args.target)
    plan_files["uniform"] = "uniform_plan (solved here for the target)"
    rows, reports = [], {}
    for label, plan in plans.items():
        out = Path(args.runs) / label
        r = finetune_plan(
            dense,
            meta,
            plan,
            splits,
            out,
            epochs=args.epochs,
            distill=True,
            source={"plan": label, "checkpoint": args.checkpoint},
            reuse=True,
        )
        reports[label] = r
        lat = r["latency_ms_cpu"]
        rows.append(
            [
                label,
                r["pruned"]["macs_ratio"],
                r["pruned"]["before_finetune"]["test"],
                r["pruned"]["after_finetune"]["test"],
                r["pruned"]["after_finetune"]["test"] - r["dense"]["test"],
                lat["pruned"]["1"] / lat["dense"]["1"],
                lat["pruned"]["64"] / lat["dense"]["64"],
            ]
        )
    dense_test = next(iter(reports.values()))["dense"]["test"]
    env = environment()
    reproduce = reproduce_command("benchmarks/finetune_resnet20_macs50.py", args, ROOT)
    md = "\n".join(
        [
            f"# Fine-tuned accuracy — ResNet-20, CIFAR-10 (JPEG copy), {args.target:.0%} MACs, {args.epochs} epochs "
            "with distillation",
            "",
            f"Dense test accuracy: {dense_test:.2f}%.",
            "",
            md_table(
                [
                    "plan",
                    "MACs ratio",
                    "test acc before FT",
                    "test acc after FT",
                    "delta vs dense",
                    "CPU latency b1",
                    "CPU latency b64",
                ],
                rows,
            ),
            "",
            f"{env['threads']} threads, {env['cpu']}, torch {env['torch']}, commit {env['commit']}. "
            f"Reproduce: `{reproduce}`.",
        ]
    )
    write_results(
        args.out,
        {
            "epochs": args.epochs,
            "target": args.target,
            "dense_test_accuracy": dense_test,
            "plans": plan_files,
            "reports": reports,
            "environment": env,
        },
        md,
    )
    print(md)


if __name__ == "__main__":
    main()
