"""Measured latency ratio against MACs ratio for pruned ResNet-20s, batch 1 and 64, with and without rounding
channels to multiples of 8, and the per-layer lookup table's prediction error.

    python benchmarks/latency_vs_macs.py [--model resnet20] [--threads 2]

Writes benchmarks/results/latency_vs_macs.{json,md}. Latency does not depend on weights, so the dense model is
freshly initialised. Run it on an otherwise idle machine: all models are timed in interleaved rounds and ratios are
taken within one run.
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

import torch
from _results import environment, md_table, reproduce_command, write_results

from rlprune.cost.latency import compare_latency
from rlprune.cost.lut import build_latency_table
from rlprune.models import build_model
from rlprune.pruning import analyze, prune
from rlprune.pruning.budget import macs_ratio, scale_to_budget, uniform_plan

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "latency_vs_macs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--random-plans", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = build_model(args.model).eval()
    x = torch.zeros(1, 3, 32, 32)
    s = analyze(model, x)
    rng = random.Random(args.seed)
    specs = []
    for target in (0.75, 0.5, 0.35, 0.25):
        for round_to in (None, 8):
            specs.append((f"uniform {target:.2f}", uniform_plan(s, target, round_to=round_to), round_to))
    for i in range(args.random_plans):
        profile = [rng.uniform(0.1, 1.0) for _ in s.units]
        target = rng.choice((0.3, 0.5, 0.7))
        for round_to in (None, 8):
            specs.append((f"random {i} {target:.2f}", scale_to_budget(s, profile, target, round_to=round_to), round_to))
    models = {"dense": model}
    for idx, (_, plan, _) in enumerate(specs):
        models[str(idx)] = prune(model, plan, x)[0].eval()
    tables = {bs: build_latency_table(model, s, bs, threads=args.threads) for bs in (1, 64)}
    lat = compare_latency(models, (3, 32, 32), (1, 64), threads=args.threads, repeats=args.repeats)
    rows, records = [], []
    for idx, (label, plan, round_to) in enumerate(specs):
        m = macs_ratio(s, plan)
        rec = {"plan": label, "round_to": round_to, "macs_ratio": m}
        for bs in (1, 64):
            measured = lat[str(idx)][bs] / lat["dense"][bs]
            predicted = tables[bs].predict(s, plan.channels) / tables[bs].dense_ms
            rec[f"latency_ratio_b{bs}"] = measured
            rec[f"lut_ratio_b{bs}"] = predicted
            rec[f"lut_error_b{bs}"] = predicted / measured - 1
        records.append(rec)
        rows.append(
            [
                label,
                round_to or "-",
                m,
                rec["latency_ratio_b1"],
                rec["lut_ratio_b1"],
                rec["latency_ratio_b64"],
                rec["lut_ratio_b64"],
            ]
        )
    err = {bs: statistics.mean(abs(r[f"lut_error_b{bs}"]) for r in records) for bs in (1, 64)}
    env = environment()
    data = {
        "model": args.model,
        "threads": args.threads,
        "dense_ms": {bs: lat["dense"][bs] for bs in (1, 64)},
        "plans": records,
        "lut_mean_abs_error": err,
        "environment": env,
    }
    md = [
        f"# Latency vs MACs — {args.model}, {args.threads} threads, CPU ({env['cpu']})",
        "",
        f"Dense latency: {lat['dense'][1]:.2f} ms at batch 1, {lat['dense'][64]:.2f} ms at batch 64 "
        f"(median of {args.repeats} interleaved rounds). Ratios are pruned/dense; `lut` is the per-layer lookup "
        f"table's prediction.",
        "",
        md_table(["plan", "round_to", "MACs ratio", "latency b1", "lut b1", "latency b64", "lut b64"], rows),
        "",
        f"Lookup-table mean absolute error: {100 * err[1]:.1f}% (batch 1), {100 * err[64]:.1f}% (batch 64).",
        "",
        f"Reproduce: `{reproduce_command('benchmarks/latency_vs_macs.py', args, ROOT)}` (torch {env['torch']}, "
        f"commit {env['commit']}).",
    ]
    write_results(args.out, data, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
