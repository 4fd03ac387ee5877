"""Per-layer unstructured sparsity searched by PPO, against uniform sparsity and global magnitude pruning, on the zoo
ResNet-20 at a non-zero-parameter budget (validation proxy, no fine-tune).

    python benchmarks/sparse_search.py [--targets 0.2] [--episodes 60]

Three plans per budget, each scored by the same proxy (the search's: a few masked SGD steps, BN recalibration,
validation images): *uniform* (every layer at one sparsity, solved for the budget), *global magnitude* (one weight
threshold across all layers, the classical baseline: layers with many small weights give up more) and the best plan
of a PPO search with ``env.granularity: unstructured`` (reward: gain over the uniform plan). Every search is an
ordinary run under ``runs/bench_sparse/`` and resumes if interrupted. Writes
benchmarks/results/sparse_search.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _results import md_table, reproduce_command, write_results

from rlprune.config import SearchConfig, load_config
from rlprune.pruning import Plan
from rlprune.pruning.sparsity import budget_sparsity
from rlprune.searching import build_budget, build_scorer, complete_search

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "resnet20_cifar10_sparse30.yaml"
OUT = ROOT / "benchmarks" / "results" / "sparse_search"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", action="append", type=float, help="non-zero parameter ratio (repeat; default 0.2)")
    ap.add_argument("--episodes", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench_sparse"))
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    args.targets = args.targets or [0.2]
    rows, data = [], {"config": str(CONFIG.relative_to(ROOT)), "episodes": args.episodes, "targets": {}}
    for target in args.targets:
        cfg = load_config(
            CONFIG,
            SearchConfig,
            [
                f"name=sparse{round(target * 100)}-s{args.seed}",
                f"seed={args.seed}",
                f"output_dir={args.runs}",
                f"agent.episodes={args.episodes}",
                f"env.target={target}",
            ],
        )
        cfg = cfg.model_copy(update={"checkpoint": str(ROOT / cfg.checkpoint)})
        summary = complete_search(cfg)
        scorer = build_scorer(cfg, cfg.checkpoint)
        budget = build_budget(cfg, scorer.structure)
        uniform = budget.uniform_plan(importance=scorer.importance)
        nonzero = round(target * scorer.structure.total_params)
        per_layer = budget_sparsity(scorer.model, nonzero, [u.name for u in scorer.structure.units])
        global_plan = Plan.from_ratios(scorer.structure, per_layer, importance=scorer.importance)
        best = Plan.load(Path(cfg.output_dir) / cfg.name / "best_plan.json")
        entry = {}
        for label, plan in (("uniform", uniform), ("global magnitude", global_plan), ("PPO search", best)):
            score = scorer(plan)
            entry[label] = {
                "proxy_val_accuracy": round(float(score.accuracy), 2),
                "nonzero_params_ratio": round(budget.cost(plan.channels), 4),
                "layer_sparsity": {name: round(r, 3) for name, r in plan.ratios.items()},
            }
            rows.append(
                [target, label, entry[label]["proxy_val_accuracy"], entry[label]["nonzero_params_ratio"]]
                + ([f"{summary['wall_seconds'] / 60:.1f}"] if label == "PPO search" else [""])
            )
        entry["search"] = {k: summary[k] for k in ("episodes", "wall_seconds", "seconds_per_episode", "provenance")}
        data["targets"][str(target)] = entry
    headers = ["non-zero target", "plan", "val proxy acc", "non-zero params", "search min"]
    md = [
        "# Searched per-layer sparsity — ResNet-20 (zoo), unstructured, validation proxy",
        "",
        md_table(headers, rows),
        "",
        f"PPO: {args.episodes} plans per search ({CONFIG.relative_to(ROOT)}: reward gain over uniform, max sparsity "
        "0.95 per layer). Proxy: magnitude masks, 10 masked SGD steps, BN recalibration (20 batches), 2,000 "
        "validation images; no fine-tune, so these numbers rank plans, they are not deployable accuracies. One seed.",
        "",
        f"Reproduce: `{reproduce_command('benchmarks/sparse_search.py', args, ROOT)}`",
    ]
    write_results(args.out, data, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
