"""Measured latency ratio against MACs ratio for pruned ResNet-20s at batch 1 and 64, in each deployment runtime
(PyTorch eager, ONNX Runtime fp32 and static int8), with channel counts left as the plan has them or rounded to
multiples of 8 and 16, and the per-layer lookup table's prediction error.

    python benchmarks/latency_vs_macs.py [--runtime onnxruntime] [--round-to 8 --round-to 16] [--plan NAME=PLAN.json]

Writes benchmarks/results/latency_vs_macs.{json,md}. Plans: uniform at several MACs targets, random profiles, and
the profiles of searched plans (``--plan``), each rescaled to its MACs target for every rounding. Latency does not
depend on weights, so the dense model is freshly initialised. Run it on an otherwise idle machine: the models of one
runtime are timed in interleaved rounds and ratios are taken within one run.
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

import torch
from _results import environment, md_table, reproduce_command, write_results

from rlprune.cost.budget import macs_ratio, scale_to_budget, uniform_plan
from rlprune.cost.latency import compare_runtime_latency, simd_channels
from rlprune.cost.lut import build_latency_table
from rlprune.models import build_model
from rlprune.pruning import Plan, analyze, prune

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "latency_vs_macs"
PLANS = ROOT / "benchmarks" / "results" / "search_resnet20_macs50_plans"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runtime", action="append", default=None, help="torch, onnxruntime, onnxruntime-int8")
    ap.add_argument("--round-to", type=int, action="append", default=None, help="channel multiples (besides none)")
    ap.add_argument("--plan", action="append", default=None, help="NAME=PLAN.json: a searched plan's profile")
    ap.add_argument("--random-plans", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    args.runtime = args.runtime or ["torch", "onnxruntime", "onnxruntime-int8"]
    args.round_to = args.round_to or [8, 16]
    rounds: list[int | None] = [None, *args.round_to]
    args.plan = args.plan or [f"{n}={(PLANS / f'{n}-s0.json').relative_to(ROOT)}" for n in ("ppo", "ort64")]
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = build_model(args.model).eval()
    x = torch.zeros(1, 3, 32, 32)
    s = analyze(model, x)
    rng = random.Random(args.seed)
    profiles: list[tuple[str, list[float] | None, float]] = [(f"uniform {t:.2f}", None, t) for t in (0.75, 0.5, 0.3)]
    for spec in args.plan:
        name, _, path = spec.partition("=")
        plan = Plan.load(ROOT / path, s)  # absolute paths stay as they are
        target = round(macs_ratio(s, plan), 2)
        profiles.append((f"{name} {target:.2f}", [max(plan.ratios[u.name], 1e-3) for u in s.units], target))
    for i in range(args.random_plans):
        profiles.append((f"random {i}", [rng.uniform(0.1, 1.0) for _ in s.units], rng.choice((0.3, 0.5, 0.7))))
    specs = []
    for label, profile, target in profiles:
        for r in rounds:
            plan = (
                uniform_plan(s, target, round_to=r)
                if profile is None
                else scale_to_budget(s, profile, target, round_to=r)
            )
            specs.append((label, plan, r))
    models = {"dense": model} | {str(i): prune(model, plan, x)[0].eval() for i, (_, plan, _) in enumerate(specs)}
    records = [
        {
            "plan": label,
            "round_to": r,
            "macs_ratio": macs_ratio(s, plan),
            "channels": [plan.channels[u.name] for u in s.units],
        }
        for label, plan, r in specs
    ]
    summary: dict[str, dict[str, float]] = {}
    dense_ms: dict[str, dict[int, float]] = {}
    for runtime in args.runtime:
        tables = {bs: build_latency_table(model, s, bs, threads=args.threads, runtime=runtime) for bs in (1, 64)}
        lat = compare_runtime_latency(
            models, (3, 32, 32), (1, 64), runtime=runtime, threads=args.threads, repeats=args.repeats
        )
        dense_ms[runtime] = lat["dense"]
        for idx, (rec, (_, plan, _)) in enumerate(zip(records, specs, strict=True)):
            for bs in (1, 64):
                measured = lat[str(idx)][bs] / lat["dense"][bs]
                predicted = tables[bs].predict(s, plan.channels) / tables[bs].dense_ms
                rec[f"{runtime}_b{bs}"] = measured
                rec[f"{runtime}_lut_b{bs}"] = predicted
        for r in rounds:
            mine = [rec for rec in records if rec["round_to"] == r]
            for bs in (1, 64):
                summary.setdefault(f"{runtime} b{bs}", {})[str(r)] = {
                    "mean_latency_ratio": statistics.mean(rec[f"{runtime}_b{bs}"] for rec in mine),
                    "lut_mean_abs_error": statistics.mean(
                        abs(rec[f"{runtime}_lut_b{bs}"] / rec[f"{runtime}_b{bs}"] - 1) for rec in mine
                    ),
                }
        print(runtime, "done", flush=True)
    head = ["plan", "round_to", "MACs ratio"] + [f"{rt} b{bs}" for rt in args.runtime for bs in (1, 64)]
    rows = [
        [rec["plan"], rec["round_to"] or "-", rec["macs_ratio"]]
        + [rec[f"{rt}_b{bs}"] for rt in args.runtime for bs in (1, 64)]
        for rec in records
    ]
    srows = [
        [
            key,
            *[f"{v[str(r)]['mean_latency_ratio']:.3f} ({100 * v[str(r)]['lut_mean_abs_error']:.0f}%)" for r in rounds],
        ]
        for key, v in summary.items()
    ]
    # rounding moves a plan's MACs below its target (by up to 0.1): the latencies above are at these mean MACs
    macs = {str(r): statistics.mean(rec["macs_ratio"] for rec in records if rec["round_to"] == r) for r in rounds}
    srows.insert(0, ["MACs ratio (mean)", *[f"{macs[str(r)]:.3f}" for r in rounds]])
    env = environment()
    data = {
        "model": args.model,
        "threads": args.threads,
        "simd_channels": simd_channels(),
        "dense_ms": dense_ms,
        "plans": records,
        "summary": summary,
        "mean_macs_ratio": macs,
        "environment": env,
    }
    dense = "; ".join(f"{rt} {ms[1]:.2f} / {ms[64]:.1f}" for rt, ms in dense_ms.items())
    md = [
        f"# Latency vs MACs — {args.model}, {args.threads} thread(s), CPU ({env['cpu']})",
        "",
        f"Dense latency (ms, batch 1 / 64): {dense}. Ratios are pruned/dense in the same runtime (int8 rows: against "
        f"dense int8), medians of {args.repeats} interleaved rounds. This CPU's fp32 vector holds "
        f"{simd_channels()} channels (`round_to: auto`).",
        "",
        "Mean latency ratio over the plans, per rounding, and in brackets the lookup table's mean absolute error:",
        "",
        md_table(["runtime", *[f"round_to {r or '-'}" for r in rounds]], srows),
        "",
        md_table(head, rows),
        "",
        f"Reproduce: `{reproduce_command('benchmarks/latency_vs_macs.py', args, ROOT)}` (torch {env['torch']}, "
        f"commit {env['commit']}).",
    ]
    write_results(args.out, data, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
