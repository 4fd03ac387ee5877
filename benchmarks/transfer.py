"""Transfer: a policy learned on ResNet-20 applied, with no new search, to other models, against uniform pruning at
the same MACs — BN-recalibrated validation accuracy before fine-tuning and test accuracy after the same short
fine-tune — and, optionally, against a fresh search on that model (quality and cost).

    python benchmarks/transfer.py --policy runs/bench_search/ppo-s1 \
        --target resnet32=zoo/resnet32_cifar10.json [--target resnet56=path/to/resnet56.json] \
        [--finetune-epochs 2] [--fresh-search-episodes 100] [--samples 10]

The policy is the one PPO seed 1 of search_resnet20_macs50.py learned on ResNet-20 (its run directory holds
``policy.safetensors`` + ``policy.json``; a copy is committed in benchmarks/results/policies/resnet20_macs50_ppo_s1/).

"policy + N samples" is ``rlprune apply --samples N``: the deterministic rollout and N plans drawn from the policy,
the one the search's default proxy scores best on the validation split is kept.

Search cost: the policy's rollout (milliseconds), the sampled plans' drawing and scoring, and the fresh search's wall
time over all of its sessions.

Writes benchmarks/results/transfer.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _results import environment, md_table, reproduce_command, write_results

from rlprune.agents.policy_io import Policy
from rlprune.config import FinetuneConfig, SearchConfig, load_config
from rlprune.cost.budget import uniform_plan
from rlprune.data import splits_from_meta
from rlprune.evaluation.proxy import ProxyEvaluator
from rlprune.jobs.apply import apply_policy, default_proxy, example_input, load_dense
from rlprune.jobs.finetune import finetune_plan
from rlprune.pruning import Plan
from rlprune.searching.cache import complete_search

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "transfer"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", required=True)
    ap.add_argument("--target", action="append", required=True, metavar="LABEL=CHECKPOINT")
    ap.add_argument("--macs", type=float, default=0.5)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--fresh-search-episodes", type=int, default=100, help="0 skips the fresh search")
    ap.add_argument("--samples", type=int, default=10, help="rlprune apply --samples N row; 0 skips it")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench_transfer"))
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    rows, results = [], {}
    for item in args.target:
        label, _, ckpt = item.partition("=")
        dense, meta, structure = load_dense(ckpt)
        splits = splits_from_meta(meta, None)
        proxy = ProxyEvaluator(dense, splits, recal_batches=20, finetune_steps=10, val_images=None)
        started = time.perf_counter()
        example = example_input(meta)
        plans: dict[str, Plan] = {"policy": apply_policy(args.policy, dense, example, target=args.macs)[0]}
        costs = {"policy": time.perf_counter() - started, "uniform": 0.0}
        plans["uniform"] = uniform_plan(structure, args.macs)
        if args.samples:
            name = f"policy + {args.samples} samples"
            started = time.perf_counter()
            scorer = default_proxy(dense, splits, Policy.load(args.policy).meta.get("importance", "l1"))
            plans[name], _ = apply_policy(
                args.policy, dense, example, target=args.macs, samples=args.samples, scorer=scorer
            )
            costs[name] = time.perf_counter() - started
        if args.fresh_search_episodes:
            cfg = load_config(
                ROOT / "experiments" / "resnet20_cifar10_macs50.yaml",
                SearchConfig,
                [
                    f"name={label}-fresh",
                    f"output_dir={args.runs}",
                    f"checkpoint={ckpt}",
                    f"agent.episodes={args.fresh_search_episodes}",
                    f"env.target={args.macs}",
                ],
            )
            costs["fresh search"] = complete_search(cfg).wall_seconds
            plans["fresh search"] = Plan.load(Path(args.runs) / f"{label}-fresh" / "best_plan.json")
        results[label] = {}
        for name, plan in plans.items():
            proxy_acc = proxy(plan).accuracy
            out = Path(args.runs) / label / name.replace(" + ", "_").replace(" ", "_")
            r = finetune_plan(
                dense,
                meta,
                plan,
                splits,
                out,
                FinetuneConfig(epochs=args.finetune_epochs, distill=True),
                source={"plan": name, "checkpoint": ckpt},
                reuse=True,
            ).to_dict()
            results[label][name] = {"proxy_val_accuracy": proxy_acc, "report": r, "search_seconds": costs[name]}
            rows.append(
                [
                    label,
                    name,
                    r["pruned"]["macs_ratio"],
                    proxy_acc,
                    r["pruned"]["before_finetune"]["test"],
                    r["pruned"]["after_finetune"]["test"],
                    r["dense"]["test"],
                    round(costs[name], 2),
                ]
            )
    env = environment()
    reproduce = reproduce_command("benchmarks/transfer.py", args, ROOT)
    md = "\n".join(
        [
            f"# Transfer of a ResNet-20 policy — {args.macs:.0%} MACs, {args.finetune_epochs} fine-tune epoch(s)",
            "",
            md_table(
                [
                    "model",
                    "plan",
                    "MACs ratio",
                    "val proxy acc (10 steps + BN-recal)",
                    "test acc before FT (BN-recal)",
                    "test acc after FT",
                    "dense test acc",
                    "search seconds",
                ],
                rows,
            ),
            "",
            f"Policy: {args.policy}. {env['threads']} threads, {env['cpu']}, torch {env['torch']}, commit "
            f"{env['commit']}. Reproduce: `{reproduce}`.",
        ]
    )
    write_results(args.out, {"policy": args.policy, "macs": args.macs, "results": results, "environment": env}, md)
    print(md)


if __name__ == "__main__":
    main()
