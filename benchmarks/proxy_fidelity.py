"""Does the proxy evaluator rank plans the way fine-tuning does?

About 40 random plans near 50% MACs of the zoo ResNet-20. For each: (a) raw pruned validation accuracy, (b) the
same after adaptive BN recalibration, (c) (b) preceded by a few SGD steps (the search's default proxy), and the
validation accuracy after a short real fine-tune (1 epoch by default, same seed and data order for every plan).
Reports the Spearman rank correlation of (a), (b) and (c) with the fine-tuned accuracy, and seconds per proxy
evaluation.

    python benchmarks/proxy_fidelity.py [--checkpoint zoo/resnet20_cifar10.json] [--plans 40]

Each finished plan is appended to ``<out>.partial.jsonl`` so an interrupted run continues where it stopped.
Writes benchmarks/results/proxy_fidelity.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import environment, md_table, reproduce_command, write_results

from rlprune.config import TrainConfig
from rlprune.cost.budget import macs_ratio, scale_to_budget
from rlprune.data import load_splits
from rlprune.evaluation import evaluate
from rlprune.evaluation.proxy import ProxyEvaluator
from rlprune.io.checkpoint import load_checkpoint
from rlprune.pruning import prune
from rlprune.training.engine import fit

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "proxy_fidelity"


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation with average ranks for ties."""

    def ranks(v: list[float]) -> np.ndarray:
        arr = np.asarray(v, dtype=float)
        order = arr.argsort(kind="stable")
        r = np.empty(len(arr))
        r[order] = np.arange(len(arr))
        for value in np.unique(arr):
            mask = arr == value
            r[mask] = r[mask].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0  # a constant score ranks nothing
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "zoo" / "resnet20_cifar10.json"))
    ap.add_argument("--plans", type=int, default=40)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--finetune-lr", type=float, default=0.02)
    ap.add_argument(
        "--reference-seeds",
        type=int,
        default=2,
        help="fine-tune every plan with this many seeds; the reference is their mean",
    )
    ap.add_argument("--recal-batches", type=int, default=20)
    ap.add_argument("--proxy-steps", type=int, default=10, help="SGD steps before recalibration in proxy (c)")
    ap.add_argument("--val-images", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model, meta = load_checkpoint(args.checkpoint)
    ds = meta["dataset"]
    splits = load_splits(ds["name"], ds.get("root"), val_size=ds["val_size"], seed=ds["split_seed"])
    splits.test = None  # never used for ranking
    raw = ProxyEvaluator(model, splits, recal_batches=0, val_images=args.val_images, seed=args.seed)
    recal = ProxyEvaluator(model, splits, recal_batches=args.recal_batches, val_images=args.val_images, seed=args.seed)
    tuned_proxy = ProxyEvaluator(
        model,
        splits,
        recal_batches=args.recal_batches,
        val_images=args.val_images,
        finetune_steps=args.proxy_steps,
        seed=args.seed,
    )
    s = recal.structure
    rng = random.Random(args.seed)
    partial = Path(args.out + ".partial.jsonl")
    # one line per finished step; the last line for a plan wins (a plan gains fine-tune seeds over time)
    records: dict[int, dict] = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            rec = json.loads(line)
            records[rec["plan"]] = rec
    recipe = TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, warmup_epochs=0, weight_decay=5e-4)
    seeds = [args.seed + k for k in range(args.reference_seeds)]
    for i in range(args.plans):
        profile = [rng.uniform(0.05, 1.0) for _ in s.units]
        plan = scale_to_budget(s, profile, args.target, max_ratio=0.8)
        rec = records.get(i)
        if rec is None:
            a, b, c = raw(plan), recal(plan), tuned_proxy(plan)
            rec = {
                "plan": i,
                "macs_ratio": macs_ratio(s, plan),
                "raw_accuracy": a.accuracy,
                "recal_accuracy": b.accuracy,
                "recal_steps_accuracy": c.accuracy,
                "raw_seconds": a.seconds,
                "recal_seconds": b.seconds,
                "recal_steps_seconds": c.seconds,
                "finetuned_by_seed": {},
                "finetune_seconds": [],
                "ratios": [round(r, 4) for r in plan.ratios.values()],
            }
        for seed in seeds:
            if str(seed) in rec["finetuned_by_seed"]:
                continue
            pruned, _ = prune(model, plan, recal.example)
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                # the same seed (data order) for every plan: differences within one seed come from the plan alone
                fit(pruned, splits, recipe, Path(tmp), meta={"model": meta["model"]}, seed=seed, progress=False)
            rec["finetuned_by_seed"][str(seed)] = evaluate(pruned, splits.val, splits.mean, splits.std)["accuracy"]
            rec["finetune_seconds"].append(round(time.perf_counter() - started, 1))
            records[i] = rec
            with partial.open("a") as f:
                f.write(json.dumps(rec) + "\n")
        rec["finetuned_accuracy"] = statistics.mean(rec["finetuned_by_seed"][str(seed)] for seed in seeds)
        records[i] = rec
        print(
            f"plan {i}: macs {rec['macs_ratio']:.3f} raw {rec['raw_accuracy']:.2f} recal {rec['recal_accuracy']:.2f} "
            f"+{args.proxy_steps} steps {rec['recal_steps_accuracy']:.2f} finetuned {rec['finetuned_accuracy']:.2f} "
            f"({rec['recal_steps_seconds']:.2f}s proxy)",
            flush=True,
        )
    done = [records[i] for i in range(args.plans)]
    tuned = [r["finetuned_accuracy"] for r in done]
    by_seed = [[r["finetuned_by_seed"][str(seed)] for r in done] for seed in seeds]
    # test-retest reliability of the reference itself: how well one fine-tune seed ranks plans like another
    retest = [spearman(by_seed[0], other) for other in by_seed[1:]]
    summary = {
        "spearman_raw": spearman([r["raw_accuracy"] for r in done], tuned),
        "spearman_recal": spearman([r["recal_accuracy"] for r in done], tuned),
        "spearman_recal_steps": spearman([r["recal_steps_accuracy"] for r in done], tuned),
        "seconds_raw": statistics.median(r["raw_seconds"] for r in done),
        "seconds_recal": statistics.median(r["recal_seconds"] for r in done),
        "seconds_recal_steps": statistics.median(r["recal_steps_seconds"] for r in done),
        "plans": len(done),
        "reference_seeds": len(seeds),
        "reference_retest_spearman": statistics.mean(retest) if retest else None,
    }
    env = environment()
    data = {
        "command": "python benchmarks/proxy_fidelity.py",
        "checkpoint": str(args.checkpoint),
        "target_macs": args.target,
        "finetune_epochs": args.finetune_epochs,
        "reference_seeds": seeds,
        "recal_batches": args.recal_batches,
        "proxy_steps": args.proxy_steps,
        "val_images": args.val_images,
        "summary": summary,
        "results": done,
        "environment": env,
    }
    keys = ["plan", "macs_ratio", "raw_accuracy", "recal_accuracy", "recal_steps_accuracy", "finetuned_accuracy"]
    rows = [[r[k] for k in keys] for r in done]
    md = [
        f"# Proxy fidelity — {meta['model']}, {len(done)} random plans at ~{args.target:.0%} MACs",
        "",
        f"Spearman rank correlation with the validation accuracy after {args.finetune_epochs} fine-tune epoch(s), "
        f"averaged over {len(seeds)} fine-tune seeds:",
        "",
        md_table(
            ["proxy", "Spearman", "median seconds / evaluation"],
            [
                ["raw pruned accuracy", summary["spearman_raw"], summary["seconds_raw"]],
                [
                    f"BN-recalibrated ({args.recal_batches} batches)",
                    summary["spearman_recal"],
                    summary["seconds_recal"],
                ],
                [
                    f"{args.proxy_steps} SGD steps + BN-recalibrated (search default)",
                    summary["spearman_recal_steps"],
                    summary["seconds_recal_steps"],
                ],
            ],
        ),
        "",
        (
            f"The reference is noisy itself: two fine-tunes of the same plans with different seeds rank them with a "
            f"Spearman of {summary['reference_retest_spearman']:.2f}, which is why it is averaged over seeds."
            if retest
            else "The reference is one fine-tune per plan; its own seed noise is not measured (--reference-seeds 1)."
        ),
        "",
        "Proxies compute in bf16 autocast + channels-last where the CPU has native bf16 (`amp: auto`); within one "
        "fine-tune seed every plan sees the same data order.",
        "",
        f"Proxy scored on {args.val_images} validation images (held out of train; the test split is not loaded "
        f"into the ranking). {env['threads']} threads, {env['cpu']}, torch {env['torch']}.",
        "",
        md_table(["plan", "MACs ratio", "raw acc", "recal acc", "steps + recal acc", "fine-tuned acc"], rows),
        "",
        f"Reproduce: `{reproduce_command('benchmarks/proxy_fidelity.py', args, ROOT)}`.",
    ]
    write_results(args.out, data, "\n".join(md))
    partial.unlink(missing_ok=True)
    print("\n".join(md[:8]))


if __name__ == "__main__":
    main()
