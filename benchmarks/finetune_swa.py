"""Does weight averaging (SWA) help fine-tuning a pruned model? One plan, one seed, the same epochs, with and without.

    python benchmarks/finetune_swa.py --epochs 6 --swa-epochs 3 \\
        --plan benchmarks/results/search_resnet20_macs50_plans/earlier_checkpoint/ppo-s1.json

Both fine-tunes distil from the dense model (``rlprune finetune`` defaults: lr 0.02 cosine, weight 0.5, T 4); the SWA
run decays to ``--swa-lr`` (default lr/2) by the start of its last ``--swa-epochs`` epochs and averages them. Each is an
``rlprune finetune`` output folder under runs/bench_finetune_swa/ (skipped if already complete). Validation is the
5k hold-out, test the 10k test split. Writes benchmarks/results/finetune_swa.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _results import environment, md_table, measured_on, reproduce_command, write_results

from rlprune.config import FinetuneConfig
from rlprune.data import splits_from_meta
from rlprune.jobs.apply import load_dense
from rlprune.jobs.finetune import finetune_plan
from rlprune.pruning import Plan

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "finetune_swa"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="zoo/resnet20_cifar10.json")
    ap.add_argument("--plan", required=True, help="a saved plan (best_plan.json of a search)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--swa-epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--swa-lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench_finetune_swa"))
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    dense, meta, structure = load_dense(args.checkpoint)
    plan = Plan.load(args.plan, structure)
    splits = splits_from_meta(meta, None)
    reports = {}
    for label, swa_epochs in (("plain", 0), ("swa", args.swa_epochs)):
        reports[label] = finetune_plan(
            dense,
            meta,
            plan,
            splits,
            Path(args.runs) / label,
            FinetuneConfig(epochs=args.epochs, lr=args.lr, swa_epochs=swa_epochs, swa_lr=args.swa_lr),
            seed=args.seed,
            source={"plan": args.plan, "checkpoint": args.checkpoint},
            reuse=True,
        ).to_dict()
    rows = []
    for label, r in reports.items():
        last = r["finetune"]["history"][-1]
        after = r["pruned"]["after_finetune"]
        rows.append([label, r["pruned"]["macs_ratio"], last.get("sgd_val_accuracy", after["val"]), after["val"]])
        rows[-1].append(after["test"])
    env = environment()
    swa = reports["swa"]["finetune"]["swa"]
    md = "\n".join(
        [
            f"# Fine-tuning a pruned model with and without SWA — {args.epochs} epochs, lr {args.lr}",
            "",
            f"Dense: {reports['plain']['dense']['val']:.2f}% val / {reports['plain']['dense']['test']:.2f}% test. "
            f"SWA: the last {swa['epochs']} epochs averaged at lr {swa['lr']:g}.",
            "",
            md_table(["fine-tune", "MACs ratio", "val, last iterate", "val", "test"], rows),
            "",
            measured_on(env, reproduce_command("benchmarks/finetune_swa.py", args, ROOT)),
        ]
    )
    write_results(args.out, {"reports": reports, "environment": env}, md)
    print(md)


if __name__ == "__main__":
    main()
