"""Few-shot adaptation of the shipped generalist policy on models it never trained on: the validation proxy of the
plan handed back after 0 / 5 / 20 / 60 episodes of adaptation (``rlprune apply --adapt N``: the policy's training
continued on the model, its best plan kept if it beats the rollout), against a fresh PPO search and a random search
of as many episodes (the best of their first N plans) and the uniform plan, with the seconds each took.

    python benchmarks/adapt_curve.py [--models zoo/mobilenetv2_cifar10.json --models zoo/vit_cifar10.json] \
        [--targets 0.5] [--episodes 5 --episodes 20 --episodes 60] [--seed 0]

Every plan is scored by the proxy of benchmarks/generalize.py (BN recalibration on 10 batches, 1000 validation images,
no SGD steps), the one the generalist was trained with; every search shares the policy's ratio range. Runs are kept
under runs/bench_adapt/ and resumed there. Writes benchmarks/results/adapt_curve.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from _results import environment, md_table, measured_on, reproduce_command, write_results
from generalize import POLICY_DIR, PROXY

import rlprune as rp
from rlprune.agents.policy_io import load_policy
from rlprune.config import model_label
from rlprune.cost.budget import Budget
from rlprune.evaluation.proxy import proxy_from_checkpoint
from rlprune.jobs.apply import example_input, load_dense

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "adapt_curve"


def _best_of_first(run_dir: Path, counts: list[int]) -> dict[int, dict[str, float]]:
    """Best proxy accuracy among the first N recorded plans, and the wall seconds those N took, for each N."""
    records = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]
    out = {}
    for n in counts:
        first = records[:n]
        out[n] = {
            "proxy_val_accuracy": round(max(r["accuracy"] for r in first), 2),
            "seconds": round(sum(r.get("wall_seconds", 0.0) for r in first), 1),
        }
    return out


def _search(scorer: Any, target: float, agent: str, episodes: int, out: Path, seed: int, m: Any) -> Path:
    rp.search(
        scorer,
        target=target,
        agent=agent,
        episodes=episodes,
        out_dir=out,
        seed=seed,
        min_ratio=m.min_ratio,
        max_ratio=m.max_ratio,
        round_to=m.round_to,
        resume=(out / "episodes.jsonl").is_file(),
    )
    return out


def cell(ckpt: str, target: float, args: argparse.Namespace) -> dict[str, Any]:
    """One (model, target): every method's best validation proxy and seconds."""
    label = model_label(ckpt)
    runs = Path(args.runs) / f"{label}-{target:.2f}"
    policy = load_policy(POLICY_DIR)
    m = policy.info
    dense, meta, structure = load_dense(str(ROOT / ckpt))
    scorer = proxy_from_checkpoint(str(ROOT / ckpt), None, **PROXY)
    example = example_input(meta)
    rows: dict[str, dict[str, Any]] = {}
    uniform = Budget(structure, target, min_ratio=m.min_ratio, max_ratio=m.max_ratio).uniform_plan()
    rows["uniform"] = {"episodes": 0, "proxy_val_accuracy": round(scorer(uniform).accuracy, 2), "seconds": 0.0}
    started = time.perf_counter()
    rollout, _ = rp.apply_policy(policy, dense, example, target=target)
    rows["generalist rollout"] = {
        "episodes": 0,
        "proxy_val_accuracy": round(scorer(rollout).accuracy, 2),
        "seconds": round(time.perf_counter() - started, 1),
    }
    for n in args.episodes:
        _, record = rp.apply_policy(
            policy, dense, example, target=target, scorer=scorer, adapt=n, adapt_dir=runs / f"adapt{n}", seed=args.seed
        )
        rows[f"generalist + adapt {n}"] = {
            "episodes": n,
            "proxy_val_accuracy": round(max(c["proxy_val_accuracy"] for c in record["candidates"]), 2),
            "chosen": record["chosen"],
            "seconds": round(record["adapt"]["seconds"], 1),  # its episodes' time, as for the searches
        }
    longest = max(args.episodes)
    for name, agent in (("PPO search", "ppo"), ("random search", "random")):
        run = _search(scorer, target, agent, longest, runs / agent, args.seed, m)
        for n, row in _best_of_first(run, args.episodes).items():
            rows[f"{name} {n}"] = {"episodes": n, **row}
        print(f"[adapt_curve] {label} {target}: {name} done", flush=True)
    return {"model": label, "target": target, "rows": rows}


def _markdown(cells: list[dict[str, Any]], args: argparse.Namespace, env: dict[str, Any]) -> str:
    counts = [0, *args.episodes]
    methods = ("generalist", "PPO search", "random search")
    out = [
        "# Few-shot adaptation of the generalist on held-out models (validation proxy)",
        "",
        "Best validation proxy (%) of the plan each method hands back after N evaluated plans, and the seconds they "
        "took. `generalist` at N = 0 is its deterministic rollout; at N > 0, `rlprune apply --adapt N` (the policy's "
        "training continued on the model, the better of its best plan and the rollout kept). Searches: the best of "
        "their first N plans. Not fine-tuned.",
        "",
    ]
    for c in cells:
        rows = c["rows"]
        table = []
        for method in methods:
            cells_ = []
            for n in counts:
                key = "generalist rollout" if (method == "generalist" and n == 0) else f"{method} {n}"
                key = f"generalist + adapt {n}" if method == "generalist" and n else key
                row = rows.get(key)
                cells_.append("" if row is None else f"{row['proxy_val_accuracy']:.2f} ({row['seconds']:.0f} s)")
            table.append([method, *cells_])
        out += [
            f"## {c['model']} at {c['target']:g} of the MACs (uniform {rows['uniform']['proxy_val_accuracy']:.2f})",
            "",
            md_table(["method", *(f"N = {n}" for n in counts)], table),
            "",
        ]
    out.append(measured_on(env, reproduce_command("benchmarks/adapt_curve.py", args, ROOT)))
    return "\n".join(out)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected >= 1, got {value}")
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", action="append", help="held-out checkpoints (repeat)")
    ap.add_argument("--targets", action="append", type=float, help="MACs ratios (repeat; default 0.5)")
    ap.add_argument("--episodes", action="append", type=_positive, help="adaptation / search lengths (repeat)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench_adapt"))
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    args.models = args.models or ["zoo/mobilenetv2_cifar10.json", "zoo/vit_cifar10.json"]
    args.targets = args.targets or [0.5]
    args.episodes = sorted(args.episodes or [5, 20, 60])
    torch.set_num_threads(args.threads)
    env = environment()
    cells = [cell(ckpt, t, args) for ckpt in args.models for t in args.targets]
    data = {"policy": str(POLICY_DIR.relative_to(ROOT)), "proxy": PROXY, "seed": args.seed, "cells": cells}
    write_results(args.out, {**data, "environment": env}, _markdown(cells, args, env))


if __name__ == "__main__":
    main()
