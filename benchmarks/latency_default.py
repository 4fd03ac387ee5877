"""Should ``rlprune run`` steer its search by latency by default? The same short PPO search at 50% MACs on the zoo
ResNet-20 with the plain accuracy reward and with ``accuracy_latency`` (accuracy minus ``weight`` x the lookup
table's predicted latency ratio, the MACs budget unchanged), at a lookup-table batch of 1 and of 64, each also with
channel counts rounded to multiples of 8 (``env.round_to: 8``) or of this CPU's vector width (``round_to: auto``).

    python benchmarks/latency_default.py [--episodes 40] [--weight 0.3] [--repeats 3] [--only VARIANT]
    python benchmarks/latency_default.py --runtime onnxruntime --only accuracy --only latency_b64 ...

``--runtime`` times the lookup table, its calibration and the measured ratios in that runtime (results in
``latency_default_<runtime>.{json,md}`` for ONNX Runtime).

For each search's best plan: the proxy validation accuracy the search saw and the pruned/dense CPU latency measured
for real at batch 1 and 64 (``measured_latency_ratio``: interleaved rounds, medians), beside the uniform plan at the
same MACs. Searches are ordinary ``rlprune`` runs under ``runs/bench_latency_default/`` (reused when finished,
resumed when interrupted; ``--only`` runs one of them, so each fits a short session). Writes
benchmarks/results/latency_default.{json,md} from the finished ones.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _results import environment, md_table, reproduce_command, write_results

from rlprune.config import SearchConfig, validate
from rlprune.cost.budget import uniform_plan
from rlprune.cost.latency import RUNTIMES
from rlprune.cost.lut import measured_latency_ratio
from rlprune.jobs.apply import load_dense
from rlprune.pruning import Plan
from rlprune.searching.cache import complete_search

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "zoo" / "resnet20_cifar10.json"
OUT = ROOT / "benchmarks" / "results" / "latency_default"
BATCHES = (1, 64)


def variants(weight: float) -> dict[str, dict[str, Any]]:
    """Search label -> the config sections that differ (reward, lookup-table batch)."""
    return {
        "accuracy": {"env": {"reward": "accuracy"}},
        "latency_b1": {"env": {"reward": "accuracy_latency", "reward_weight": weight}, "latency": {"batch_size": 1}},
        "latency_b64": {"env": {"reward": "accuracy_latency", "reward_weight": weight}, "latency": {"batch_size": 64}},
        # channel counts in multiples of 8 (the CPU's vector width for fp32 AVX2), plain and latency-aware
        "accuracy_round8": {"env": {"reward": "accuracy", "round_to": 8}},
        "latency_b1_round8": {
            "env": {"reward": "accuracy_latency", "reward_weight": weight, "round_to": 8},
            "latency": {"batch_size": 1},
        },
        "latency_b64_round8": {
            "env": {"reward": "accuracy_latency", "reward_weight": weight, "round_to": 8},
            "latency": {"batch_size": 64},
        },
        # channel counts in multiples of this CPU's fp32 vector width (16 with AVX-512)
        "accuracy_roundauto": {"env": {"reward": "accuracy", "round_to": "auto"}},
        "latency_b64_roundauto": {
            "env": {"reward": "accuracy_latency", "reward_weight": weight, "round_to": "auto"},
            "latency": {"batch_size": 64},
        },
    }


def config(label: str, sections: dict[str, Any], args: argparse.Namespace) -> SearchConfig:
    raw = {
        "name": label,
        "seed": args.seed,
        "output_dir": args.runs,
        "checkpoint": str(CHECKPOINT),
        "env": {"target": 0.5, "max_ratio": 0.8, **sections.get("env", {})},
        "proxy": {"recal_batches": 10, "val_images": args.val_images, "finetune_steps": 0},
        "latency": {
            "calibration_plans": 8,
            "runtime": args.runtime,
            "threads": args.threads,
            **sections.get("latency", {}),
        },
        "agent": {"episodes": args.episodes, "hyperparams": {"n_steps": 48, "batch_size": 24}},
    }
    return validate(SearchConfig, raw, f"latency_default {label}")


def timed(dense: Any, structure: Any, plan: Plan, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """Median, and every value, of ``repeats`` measured pruned/dense ratios (each itself a median of interleaved
    rounds): on a machine whose other core is busy one plan's ratio scatters by 0.1-0.3 between measurements."""
    ratios = sorted(
        round(measured_latency_ratio(dense, structure, plan, batch, runtime=args.runtime, threads=args.threads), 4)
        for _ in range(args.repeats)
    )
    return {"median": ratios[len(ratios) // 2], "all": ratios}


def spread(m: dict[str, Any]) -> str:
    return f"{m['median']:.3f} ({m['all'][0]:.2f}-{m['all'][-1]:.2f})"


def measure(
    label: str, summary: dict[str, Any], run_dir: Path, dense: Any, structure: Any, args: argparse.Namespace
) -> dict[str, Any]:
    """The best plan's measured latency ratios, kept in the run directory beside the search that chose it."""
    path = run_dir / "measured.json"
    recorded = json.loads(path.read_text()) if path.is_file() else None
    if recorded and recorded.get("provenance") == summary.get("provenance") and recorded.get("repeats") == args.repeats:
        return recorded
    plan = Plan.load(run_dir / "best_plan.json")
    out = {
        "label": label,
        "proxy_val_accuracy": summary["best"]["accuracy"],
        "macs_ratio": summary["best"]["macs_ratio"],
        "predicted_latency_ratio": summary["best"]["latency_ratio"],
        "channels": [plan.channels[u.name] for u in structure.units],
        "measured_latency_ratio": {str(bs): timed(dense, structure, plan, bs, args) for bs in BATCHES},
        "uniform_proxy_val_accuracy": summary["uniform"]["accuracy"],
        "search_seconds": summary["wall_seconds"],
        "repeats": args.repeats,
        "provenance": summary.get("provenance"),
    }
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--weight", type=float, default=0.3)
    ap.add_argument("--val-images", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5, help="latency measurements per plan and batch (median)")
    ap.add_argument("--threads", type=int, default=1, help="threads for every timing (search and measurement)")
    ap.add_argument("--runtime", default="torch", choices=RUNTIMES, help="where latency is timed")
    ap.add_argument(
        "--only",
        action="append",
        choices=sorted(variants(0.0)),
        help="run these searches only (and report what is done)",
    )
    ap.add_argument("--runs", default=None, help="default runs/bench_latency_default[_<runtime>]")
    ap.add_argument("--out", default=None, help="default benchmarks/results/latency_default[_<runtime>]")
    args = ap.parse_args()
    suffix = "" if args.runtime == "torch" else "_" + args.runtime.replace("-", "_")
    args.runs = args.runs or str(ROOT / "runs" / f"bench_latency_default{suffix}")
    args.out = args.out or str(OUT) + suffix
    dense, _, structure = load_dense(str(CHECKPOINT))
    dense = dense.cpu().eval()
    rows, results = [], {}
    for label, sections in variants(args.weight).items():
        cfg = config(label, sections, args)
        run_dir = Path(args.runs) / label
        if args.only and label not in args.only:
            if not (run_dir / "measured.json").is_file():
                continue
            results[label] = json.loads((run_dir / "measured.json").read_text())
        else:
            summary = complete_search(cfg, progress=False).to_dict()
            results[label] = measure(label, summary, run_dir, dense, structure, args)
    # the uniform plan at the same MACs, for reference (no search)
    same_ratio = uniform_plan(structure, 0.5)
    uniform = {str(bs): timed(dense, structure, same_ratio, bs, args) for bs in BATCHES}
    for label, r in results.items():
        lat = r["measured_latency_ratio"]
        rows.append(
            [
                label,
                f"{r['proxy_val_accuracy']:.2f}",
                f"{r['macs_ratio']:.4f}",
                "" if r["predicted_latency_ratio"] is None else f"{r['predicted_latency_ratio']:.3f}",
                spread(lat["1"]),
                spread(lat["64"]),
                f"{r['search_seconds']:.0f}",
            ]
        )
    plain = results.get("accuracy")  # the uniform plan's proxy accuracy as that search scored it (no round_to)
    if plain is not None:
        rows.append(
            [
                "uniform plan (no search)",
                f"{plain['uniform_proxy_val_accuracy']:.2f}",
                "0.5",
                "",
                spread(uniform["1"]),
                spread(uniform["64"]),
                "",
            ]
        )
    env = environment()
    command = reproduce_command("benchmarks/latency_default.py", args, ROOT, skip=("out", "runs", "only"))
    md = "\n".join(
        [
            f"# Latency-aware default for `rlprune run` — ResNet-20 at 50% MACs, {args.episodes}-episode PPO searches",
            "",
            md_table(
                [
                    "search (reward)",
                    "best plan: val proxy acc",
                    "MACs ratio",
                    "predicted latency ratio",
                    "measured latency b1",
                    "measured latency b64",
                    "search s",
                ],
                rows,
            ),
            "",
            f"`latency_b<N>`: reward `accuracy_latency` with weight {args.weight} on the lookup table built (and "
            f"calibrated on 8 timed plans) at batch N; the MACs budget (0.5) is the same for every row. Proxy: no SGD "
            f"steps, 10 recalibration batches, {args.val_images} validation images. Latency: pruned/dense, "
            f"{'PyTorch eager' if args.runtime == 'torch' else args.runtime}, {args.threads} thread(s): "
            f"median (min-max) of {args.repeats} measurements, each the median "
            "of 15 interleaved rounds.",
            "",
            f"{env['cpu']}, torch {env['torch']}, commit {env['commit']}. Reproduce: `{command}`.",
        ]
    )
    write_results(
        args.out,
        {"episodes": args.episodes, "weight": args.weight, "runtime": args.runtime}
        | {"runs": results, "uniform_latency": uniform}
        | {"environment": env},
        md,
    )
    print(md)


if __name__ == "__main__":
    main()
