"""Search quality at the same number of evaluated plans: uniform, random, evolution, PPO and DDPG on ResNet-20,
CIFAR-10 (JPEG copy), 50% MACs. PPO, random search and evolution run with 3 seeds, the others with one.

    python benchmarks/search_resnet20_macs50.py [--episodes 300] [--only ppo,random] [--seeds 0]
    python benchmarks/search_resnet20_macs50.py --redraw    # the figure again from the committed JSON, no search

Every search is an ordinary ``rlprune`` run under ``runs/bench_search/`` and resumes if interrupted (re-run the same
command). Writes benchmarks/results/search_resnet20_macs50.{json,md}: best validation proxy accuracy per searcher
(mean and per seed), MACs ratio, wall time per search and per episode; and each search's best plan as
benchmarks/results/search_resnet20_macs50_plans/<searcher>-s<seed>.json (what the fine-tune benchmark starts from);
and search_resnet20_macs50.png, every searcher's plans on one accuracy-vs-MACs scatter (each run's evaluated plans,
kept in the JSON as ``trace``, and its best plan; results from before traces were kept draw the best plans only).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _results import environment, md_table, reproduce_command, write_results

from rlprune.config import SearchConfig, load_config
from rlprune.io.checkpoint import read_meta
from rlprune.io.files import atomic_write_text
from rlprune.reporting import figures
from rlprune.searching.cache import complete_search

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "resnet20_cifar10_macs50.yaml"
OUT = ROOT / "benchmarks" / "results" / "search_resnet20_macs50"
PLANS = ROOT / "benchmarks" / "results" / "search_resnet20_macs50_plans"
HEADERS = ["searcher", "seeds", "best val proxy acc (mean)", "per seed", "MACs ratio", "s / episode", "min / search"]
# Cheapest and most important first: an interrupted run has the RL-vs-baselines comparison before the extras.
PLAN = [
    ("uniform", None, (0,)),
    ("ppo", "ppo", (0, 1, 2)),
    ("random", None, (0, 1, 2)),
    ("evolution", None, (0, 1, 2)),
    ("ddpg", "ddpg", (0,)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--only", default="", help="comma-separated subset of uniform,random,evolution,ppo,ddpg")
    ap.add_argument("--seeds", default="", help="comma-separated subset of seeds (0: each searcher once)")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench_search"))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--redraw", action="store_true", help="only redraw the figure from the results JSON")
    args = ap.parse_args()
    if args.redraw:
        redraw(Path(args.out))
        return
    only = set(filter(None, args.only.split(",")))
    wanted = {int(s) for s in args.seeds.split(",") if s.strip()}
    results: dict[str, list[dict]] = {}
    base = load_config(CONFIG, SearchConfig)
    dense = read_meta(ROOT / base.checkpoint)
    for label, algorithm, seeds in PLAN:
        if only and label not in only:
            continue
        for seed in seeds:
            if wanted and seed not in wanted:
                continue
            name = f"{label}-s{seed}"
            overrides = [f"name={name}", f"seed={seed}", f"output_dir={args.runs}", f"agent.episodes={args.episodes}"]
            if algorithm:
                overrides.append(f"agent.algorithm={algorithm}")
            cfg = load_config(CONFIG, SearchConfig, overrides)
            cfg = cfg.model_copy(update={"checkpoint": str(ROOT / cfg.checkpoint)})
            summary = complete_search(cfg, searcher=None if algorithm else label).to_dict()
            keep_plan(Path(args.runs) / name / "best_plan.json", Path(args.out).parent / PLANS.name / f"{name}.json")
            trace = episode_trace(Path(args.runs) / name / "episodes.jsonl")
            results.setdefault(label, []).append({"seed": seed, **summary, "trace": trace})
    rows, table = [], {}
    for label, runs in results.items():
        accs = [r["best"]["accuracy"] for r in runs]
        table[label] = {
            "best_accuracy_mean": statistics.mean(accs),
            "best_accuracy_per_seed": accs,
            "macs_ratio": [r["best"]["macs_ratio"] for r in runs],
            "seconds_per_episode": statistics.mean(r["seconds_per_episode"] for r in runs),
            "wall_seconds_per_search": statistics.mean(r.get("wall_seconds", 0.0) for r in runs),
            "runs": runs,
        }
        rows.append(
            [
                label,
                len(runs),
                statistics.mean(accs),
                " / ".join(f"{a:.2f}" for a in accs),
                statistics.mean(r["best"]["macs_ratio"] for r in runs),
                statistics.mean(r["seconds_per_episode"] for r in runs),
                statistics.mean(r.get("wall_seconds", 0.0) for r in runs) / 60,
            ]
        )
    env = environment()
    md = "\n".join(
        [
            f"# Search quality — ResNet-20, CIFAR-10 (JPEG copy), 50% MACs, {args.episodes} evaluated plans per search",
            "",
            md_table(
                HEADERS,
                rows,
            ),
            "",
            verdict(table),
            "",
            f"![every searcher's plans, accuracy against MACs ratio]({Path(args.out).name}.png)",
            "",
            f"Dense model: `{base.checkpoint}` ({dense['test_accuracy']:.2f}% test, {dense['val_accuracy']:.2f}% val, "
            f"weights sha256 {str(dense.get('weights_sha256'))[:12]}). Proxy: validation accuracy after "
            f"{base.proxy.finetune_steps} SGD steps and BN recalibration ({base.proxy.recal_batches} batches of "
            f"{base.proxy.recal_batch_size}), the same {base.proxy.val_images:,} validation images for every search "
            f"({base.proxy.importance} channel importance; see {CONFIG.relative_to(ROOT)}). "
            f"{env['threads']} threads, {env['cpu']}, torch {env['torch']}, commit {env['commit']}.",
            "",
            f"Reproduce: `{reproduce_command('benchmarks/search_resnet20_macs50.py', args, ROOT)}`.",
        ]
    )
    draw(table, base.env.target, args.episodes, Path(args.out).with_suffix(".png"))
    write_results(
        args.out,
        {
            "episodes": args.episodes,
            "config": str(CONFIG.relative_to(ROOT)),
            "dense": {k: dense.get(k) for k in ("test_accuracy", "val_accuracy", "weights_sha256", "epochs_done")},
            "searchers": table,
            "environment": env,
        },
        md,
    )
    print(md)


def episode_trace(path: Path) -> dict[str, list[float]]:
    """Each evaluated plan's accuracy and MACs ratio, in episode order (what the scatter draws)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return {
        "accuracy": [round(r["accuracy"], 3) for r in records],
        "macs_ratio": [round(r["macs_ratio"], 5) for r in records],
    }


def draw(table: dict[str, dict], target: float, episodes: int, path: Path) -> Path:
    """The scatter of all searchers' plans: per searcher, every traced plan and each run's best."""
    groups = {}
    for label, entry in table.items():
        runs = entry["runs"]
        plans = [
            {"accuracy": a, "macs_ratio": m}
            for r in runs
            for a, m in zip(
                r.get("trace", {}).get("accuracy", []), r.get("trace", {}).get("macs_ratio", []), strict=True
            )
        ]
        groups[label] = {"best": [r["best"] for r in runs], "plans": plans}
    traced = any(g["plans"] for g in groups.values())
    title = f"ResNet-20, 50% MACs: {episodes} evaluated plans per search " + (
        "(small dots: every plan; circles: each run's best)" if traced else "(each run's best plan)"
    )
    return figures.save(
        figures.comparison_figure(groups, target=target, title=title, ylabel="validation proxy accuracy (%)"), path
    )


def redraw(stem: Path) -> None:
    """Draw the figure from ``<stem>.json`` and make ``<stem>.md`` embed it (no search runs)."""
    data = json.loads(stem.with_suffix(".json").read_text())
    target = load_config(ROOT / data["config"], SearchConfig).env.target
    png = draw(data["searchers"], target, data["episodes"], stem.with_suffix(".png"))
    md_path = stem.with_suffix(".md")
    md = md_path.read_text()
    image = f"![every searcher's plans, accuracy against MACs ratio]({png.name})"
    if image not in md:
        head, sep, rest = md.partition("\n\nDense model:")
        md = f"{head}\n\n{image}{sep}{rest}" if sep else f"{md.rstrip()}\n\n{image}\n"
        atomic_write_text(md_path, md)
    print(f"wrote {png} and {md_path}")


def keep_plan(src: Path, dst: Path) -> None:
    """Copy a search's best plan beside the results: run directories are scratch, the plans are the result."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dst, src.read_text())


def verdict(table: dict[str, dict]) -> str:
    """One sentence: does the RL agent beat uniform and random search on mean best proxy accuracy?"""
    if "ppo" not in table:
        return ""
    ppo = table["ppo"]["best_accuracy_mean"]
    parts = []
    for other in ("uniform", "random", "evolution", "ddpg"):
        if other in table:
            delta = ppo - table[other]["best_accuracy_mean"]
            parts.append(f"{'beats' if delta > 0 else 'does not beat'} {other} ({delta:+.2f} points)")
    return "PPO " + ", ".join(parts) + "." if parts else ""


if __name__ == "__main__":
    main()
