"""Final accuracy at 50% MACs: the plans of uniform pruning, Torch-Pruning's global and isomorphic pruning, random
search, PPO search and the generalist policy's rollout (not zero-shot: ResNet-20 is among its training models),
fine-tuned with one identical recipe (30 epochs, distillation from the dense model) and several fine-tune seeds
(mean ± std), test accuracy against the dense checkpoint, CPU latency.

    python benchmarks/finetune_resnet20_macs50.py [--epochs 30] [--seeds 0 --seeds 1 --seeds 2] \
        --plan ppo=benchmarks/results/search_resnet20_macs50_plans/ppo-s0.json \
        --plan random=benchmarks/results/search_resnet20_macs50_plans/random-s0.json \
        --policy generalist=benchmarks/results/policies/generalist_macs/policy.json \
        --peer tp-global --peer tp-isomorphic

Uniform and the ``--peer`` plans are computed here (a peer's global ratio solved for the target, as the
``--agent tp-global`` searcher does); ``--plan`` plans come from searches (search_resnet20_macs50.py keeps each
search's best plan in benchmarks/results/search_resnet20_macs50_plans/; the command above takes the best of each
searcher's three seeds by validation proxy, on the current zoo model); ``--policy`` plans are a policy's
deterministic rollout at the target, with no search. Each fine-tune is an ``rlprune finetune`` output folder under
runs/bench_finetune/<label>/seed<k>/ (resumed per epoch if killed). The results file is rewritten after every
fine-tune, and a fine-tune whose report is already in the results file, as committed (same plan, dense weights,
epochs, learning rate and seed), is not run again, so the table fills up over several sessions; the Markdown names
every commit its rows were measured at. ``--only LABEL`` fine-tunes just that plan (two machines or cores can fill
different rows, each into its own ``--out``; merge the ``reports`` of the JSON files and rerun with
``--report-only`` to render the table).
Writes benchmarks/results/finetune_resnet20_macs50.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from _results import environment, md_table, mean_std, measured_on, reproduce_command, write_results

from rlprune.config import FinetuneConfig
from rlprune.cost.budget import Budget, uniform_plan
from rlprune.data import splits_from_meta
from rlprune.io.provenance import tensors_sha256
from rlprune.jobs.apply import load_dense, policy_plans
from rlprune.jobs.finetune import finetune_plan
from rlprune.pruning import Plan
from rlprune.pruning.peers import PEERS, PeerAllocation
from rlprune.searching.baselines import solve_allocation

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "finetune_resnet20_macs50"
SKIP = ("out", "runs", "only", "report_only")  # where results go and which part of them one run fills in


def _skip(args: argparse.Namespace) -> tuple[str, ...]:
    """What the Reproduce line leaves out: ``--out`` too when it is the default file, but not for another results
    file (its command must write that file again, not this script's default one)."""
    default = Path(args.out).resolve().with_suffix("") == OUT.resolve()
    return SKIP if default else tuple(s for s in SKIP if s != "out")


def _stored_report(stored: dict[str, Any], label: str, seed: int, request: dict[str, Any]) -> dict[str, Any] | None:
    """The stored report of ``label`` and ``seed`` if it was made by the same ``request`` (a subset of what
    ``finetune_plan`` keys its own reuse on, without the code version: the file records each row's commit)."""
    by_seed = stored.get("reports", {}).get(label)
    report = by_seed.get(str(seed)) if isinstance(by_seed, dict) else None
    if not isinstance(report, dict):
        return None
    recorded = report.get("provenance", {}).get("request", {})
    return report if all(recorded.get(k) == v for k, v in request.items()) else None


def _markdown(args: argparse.Namespace, reports: dict[str, dict[str, dict[str, Any]]], pending: list[str]) -> str:
    rows = []
    dense_test = None
    for label, by_seed in reports.items():
        if not by_seed:
            continue
        first = next(iter(by_seed.values()))
        dense_test = first["dense"]["test"]
        after = [r["pruned"]["after_finetune"]["test"] for r in by_seed.values()]
        lat = [r["latency_ms_cpu"] for r in by_seed.values()]
        rows.append(
            [
                label,
                first["pruned"]["macs_ratio"],
                first["pruned"]["before_finetune"]["test"],
                mean_std(after),
                round(statistics.mean(after) - dense_test, 2),
                round(statistics.median(x["pruned"]["1"] / x["dense"]["1"] for x in lat), 3),
                round(statistics.median(x["pruned"]["64"] / x["dense"]["64"] for x in lat), 3),
            ]
        )
    env = environment()
    lines = [
        f"# Fine-tuned accuracy — ResNet-20, CIFAR-10 (JPEG copy), {args.target:.0%} MACs, {args.epochs} epochs "
        "with distillation",
        "",
        f"Dense test accuracy: {dense_test:.2f}%." if dense_test is not None else "(no fine-tune finished yet)",
        "",
        md_table(
            [
                "plan",
                "MACs ratio",
                "test acc before FT",
                "test acc after FT",
                "mean delta vs dense",
                "CPU latency b1",
                "CPU latency b64",
            ],
            rows,
        ),
        "",
        "Test accuracy after fine-tuning: mean ± std over fine-tune seeds (the plan is the same for every seed); "
        "latency: median ratio to the dense model over the seeds' reports. Plans are chosen on the validation "
        "proxy only.",
    ]
    if pending:
        lines += ["", f"**Not yet measured**: {', '.join(pending)}."]
    lines += [
        "",
        measured_on(env, reproduce_command("benchmarks/finetune_resnet20_macs50.py", args, ROOT, skip=_skip(args))),
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "zoo" / "resnet20_cifar10.json"))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--seeds", action="append", type=int, help="a fine-tune seed (repeat; default 0 1 2)")
    ap.add_argument("--plan", action="append", default=[], metavar="LABEL=PATH", help="a saved plan (repeat)")
    ap.add_argument("--policy", action="append", default=[], metavar="LABEL=PATH", help="a policy to roll out")
    ap.add_argument("--peer", action="append", default=[], choices=sorted(PEERS), help="a Torch-Pruning peer (repeat)")
    ap.add_argument("--only", action="append", metavar="LABEL", help="fine-tune only these plans (repeat)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the results from stored reports only")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench_finetune"))
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    args.seeds = args.seeds or [0, 1, 2]
    dense, meta, structure = load_dense(args.checkpoint)
    splits = splits_from_meta(meta, None)
    plans, plan_files = {}, {}
    for item in args.plan:
        label, _, path = item.partition("=")
        plans[label], plan_files[label] = Plan.load(path), path
    for item in args.policy:
        label, _, path = item.partition("=")
        plans[label] = policy_plans(path, dense, structure, target=args.target)[0]
        plan_files[label] = f"rollout of {path} at {args.target}"
    plans["uniform"] = uniform_plan(structure, args.target)
    plan_files["uniform"] = "uniform_plan (solved here for the target)"
    budget = Budget(structure, args.target)  # the search's defaults: max_ratio 0.8, 1% tolerance
    example = torch.zeros(1, *structure.input_shape)
    for peer in args.peer:
        allocation = PeerAllocation(dense, example, structure, peer, max_ratio=budget.max_ratio)
        plans[peer] = budget.plan(solve_allocation(allocation, budget, args.target))
        plan_files[peer] = f"{peer} allocation solved here for the target"
    unknown = sorted(set(args.only or ()) - set(plans))
    if unknown:
        raise SystemExit(f"--only: no plan labelled {unknown[0]} (labels: {', '.join(plans)})")
    dense_sha = meta.get("weights_sha256") or tensors_sha256(dense)
    # seed-major order: every plan gets its first seed before any plan gets a second one
    todo = [(label, seed) for seed in args.seeds for label in plans]

    def request(label: str, seed: int) -> dict[str, Any]:
        return {"plan": plans[label].key(), "dense": dense_sha, "epochs": args.epochs, "lr": args.lr, "seed": seed}

    results = Path(args.out).with_suffix(".json")
    stored = json.loads(results.read_text()) if results.is_file() else {}
    reports: dict[str, dict[str, dict[str, Any]]] = {label: {} for label in plans}
    for label in plans:  # seeds measured earlier for the same plan and recipe stay, even if not asked for now
        earlier = [int(s) for s in stored.get("reports", {}).get(label) or {} if s.isdigit()]
        for seed in sorted(set(earlier)):
            if found := _stored_report(stored, label, seed, request(label, seed)):
                reports[label][str(seed)] = found

    def save() -> None:
        pending = [f"{lb} seed {s}" for lb, s in todo if str(s) not in reports[lb]]
        data = {
            "epochs": args.epochs,
            "lr": args.lr,
            "target": args.target,
            "seeds": args.seeds,
            "plans": plan_files,
            "reports": reports,
            "pending": pending,
        }
        write_results(args.out, data, _markdown(args, reports, pending))

    for label, seed in todo:
        if str(seed) in reports[label] or args.report_only or (args.only and label not in args.only):
            continue
        reports[label][str(seed)] = finetune_plan(
            dense,
            meta,
            plans[label],
            splits,
            Path(args.runs) / label / f"seed{seed}",
            FinetuneConfig(epochs=args.epochs, lr=args.lr, distill=True),
            seed=seed,
            source={"plan": label, "checkpoint": args.checkpoint},
            reuse=True,
        ).to_dict()
        save()
    save()
    print(Path(args.out).with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
