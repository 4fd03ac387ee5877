"""Choose the agents' defaults on a surrogate of the real search landscape, then confirm them on real data.

A real search evaluates one plan in about 2.3 s, so a hyperparameter sweep over several seeds (tens of 300-episode
searches) would take a day on 2 cores. Instead: fit a quadratic model (all squares and pairwise products of the 12
unit ratios, ridge) to plans that real searches already evaluated (their ``episodes.jsonl``), add a fixed noise term
per plan (the proxy's scatter around any smooth fit, deterministic so that a re-visited plan scores the same), and
run the unchanged environment, agent and baselines against it; one 300-episode search then takes a few seconds.
The surrogate only ranks settings; the chosen defaults are then confirmed by ``search_resnet20_macs50.py`` on real data.

    python benchmarks/agent_sweep_surrogate.py --episodes-file runs/a/episodes.jsonl --episodes-file runs/b/...
    python benchmarks/agent_sweep_surrogate.py --data benchmarks/results/agent_sweep_surrogate.json  # stored plans

Writes benchmarks/results/agent_sweep_surrogate.{json,md}: the fit's cross-validated R^2, and for each setting the best
and late-search mean surrogate accuracy over seeds, next to random search, evolution and the uniform plan.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from _results import environment, md_table, write_results
from stable_baselines3.common.buffers import ReplayBuffer

from rlprune.agents.sb3_agents import make_agent
from rlprune.envs.layer_pruning import LayerPruningEnv
from rlprune.io.checkpoint import load_checkpoint
from rlprune.jobs.apply import example_input
from rlprune.pruning import Plan, analyze
from rlprune.searching.baselines import SEARCHERS, get_searcher

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "agent_sweep_surrogate"
# name -> (agent or baseline searcher, overrides of rlprune.agents.sb3_agents.default_hyperparams, key by key)
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "random search": ("random", {}),
    "evolution search": ("evolution", {}),
    "uniform plan": ("uniform", {}),
    "ppo defaults (lr 3e-3, clip 0.3)": ("ppo", {}),
    "ppo before (lr 1e-3, clip 0.2)": ("ppo", {"learning_rate": 1e-3, "clip_range": 0.2}),
    "ppo lr 1e-3": ("ppo", {"learning_rate": 1e-3}),
    "ppo clip 0.2": ("ppo", {"clip_range": 0.2}),
    "ppo lr 1e-2": ("ppo", {"learning_rate": 1e-2}),
    "ppo 20 epochs / update": ("ppo", {"n_epochs": 20}),
    "ppo 4 episodes / rollout": ("ppo", {"n_steps": 48, "batch_size": 48}),  # ResNet-20 has 12 units
    "ppo log_std_init -1": ("ppo", {"policy_kwargs": {"net_arch": [64, 64], "log_std_init": -1.0}}),
    "ppo no entropy bonus": ("ppo", {"ent_coef": 0.0}),
    "ppo entropy 0.01": ("ppo", {"ent_coef": 0.01}),
    "ddpg defaults (final reward on every transition, gamma 0)": ("ddpg", {}),
    "ddpg before (one-step targets, gamma 1)": ("ddpg", {"gamma": 1.0, "replay_buffer_class": ReplayBuffer}),
    "td3 defaults": ("td3", {}),
    "sac defaults": ("sac", {}),
}


def quadratic_features(ratios: np.ndarray) -> np.ndarray:
    """1, r_i, r_i^2 and r_i * r_j (i < j) for each row of unit ratios."""
    n = ratios.shape[1]
    i, j = np.triu_indices(n, 1)
    pairs = ratios[:, :, None] * ratios[:, None, :]
    return np.hstack([np.ones((len(ratios), 1)), ratios, ratios**2, pairs[:, i, j]])


def ridge(features: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """Ridge regression weights (the intercept is not penalised)."""
    penalty = lam * np.eye(features.shape[1])
    penalty[0, 0] = 0.0
    return np.linalg.solve(features.T @ features + penalty, features.T @ y)


def cross_validated_r2(x: np.ndarray, y: np.ndarray, lam: float, folds: int = 5, seed: int = 0) -> float:
    order = np.random.default_rng(seed).permutation(len(y))
    pred = np.zeros_like(y)
    for part in np.array_split(order, folds):
        train = np.setdiff1d(order, part)
        pred[part] = quadratic_features(x[part]) @ ridge(quadratic_features(x[train]), y[train], lam)
    return float(1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())


class SurrogateScorer:
    """Scores a plan with the fitted quadratic plus a per-plan noise term that is fixed by the plan's key."""

    def __init__(self, structure: Any, weights: np.ndarray, noise: float) -> None:
        self.structure = structure
        self.names = [u.name for u in structure.units]
        self.weights, self.noise = weights, noise

    def __call__(self, plan: Plan) -> SimpleNamespace:
        ratios = np.array([[plan.ratios[n] for n in self.names]])
        digest = int.from_bytes(hashlib.sha256(plan.key().encode()).digest()[:8], "little")
        jitter = np.random.default_rng(digest).normal(0.0, self.noise) if self.noise else 0.0
        accuracy = float(np.clip(quadratic_features(ratios) @ self.weights + jitter, 0.0, 100.0)[0])
        return SimpleNamespace(accuracy=accuracy, seconds=0.0, cached=False)


def search(
    scorer: SurrogateScorer, setting: tuple[str, dict[str, Any]], seed: int, episodes: int, target: float
) -> list:
    """One search with ``(agent or searcher, overrides)``; the accuracy of every plan it evaluated."""
    accuracies: list[float] = []
    env = LayerPruningEnv(scorer, target=target, on_episode=lambda info: accuracies.append(info["accuracy"]))
    name, overrides = setting
    if name in SEARCHERS:
        get_searcher(name, env, seed).run(episodes)
    else:
        make_agent(name, env, seed, overrides).learn(total_timesteps=episodes * len(env.units))
    return accuracies[:episodes]


def load_plans(episodes_files: list[str], data: str | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Unit ratios, proxy accuracy and the (single) target of real evaluated plans."""
    if data:
        stored = json.loads(Path(data).read_text())
        d = stored["data"]
        return np.array(d["ratios"], dtype=np.float64), np.array(d["accuracy"], dtype=np.float64), stored["target"]
    if not episodes_files:
        raise SystemExit("error: give --episodes-file (one or more) or --data")
    records = [json.loads(line) for f in episodes_files for line in Path(f).read_text().splitlines() if line]
    targets = {round(r["target"], 6) for r in records}
    if len(targets) != 1:
        raise SystemExit(f"error: the episodes files mix targets {sorted(targets)}; fit one budget at a time")
    x = np.array([r["ratios"] for r in records], dtype=np.float64)
    return x, np.array([r["accuracy"] for r in records], dtype=np.float64), targets.pop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes-file", action="append", default=[], help="episodes.jsonl of a real search")
    ap.add_argument("--data", help="refit on the plans stored in an earlier results JSON of this script")
    ap.add_argument("--checkpoint", default=str(ROOT / "zoo" / "resnet20_cifar10.json"))
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--noise", type=float, default=None, help="per-plan noise std (default: the fit's CV residual)")
    ap.add_argument("--ridge", type=float, default=0.1)
    ap.add_argument("--only", default="", help="comma-separated setting names")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(1)  # the agent's networks are tiny; one thread is fastest

    x, y, target = load_plans(args.episodes_file, args.data)
    r2 = cross_validated_r2(x, y, args.ridge)
    noise = args.noise if args.noise is not None else float(np.sqrt(1 - r2) * y.std())
    weights = ridge(quadratic_features(x), y, args.ridge)
    model, meta = load_checkpoint(args.checkpoint)
    structure = analyze(model.eval(), example_input(meta))
    if len(structure.units) != x.shape[1]:
        raise SystemExit(f"error: {args.checkpoint} has {len(structure.units)} units, the episodes {x.shape[1]}")
    scorer = SurrogateScorer(structure, weights, noise)

    only = set(filter(None, args.only.split(",")))
    runs: dict[str, dict[str, Any]] = {}
    for name, setting in SETTINGS.items():
        if only and name not in only and setting[0] not in SEARCHERS:
            continue
        started = time.perf_counter()
        best, late = [], []
        for seed in range(args.seeds):
            accs = search(scorer, setting, seed, args.episodes, target)
            best.append(max(accs))
            late.append(statistics.mean(accs[-50:]))
        runs[name] = {
            "algorithm": setting[0],
            "hyperparams": {k: getattr(v, "__name__", v) for k, v in setting[1].items()},
            "best_mean": statistics.mean(best),
            "best_per_seed": best,
            "last50_mean": statistics.mean(late),
            "seconds": time.perf_counter() - started,
        }
        print(f"{name:32s} best {statistics.mean(best):.2f}  last-50 mean {statistics.mean(late):.2f}", flush=True)

    ranked = sorted(runs.items(), key=lambda kv: -kv[1]["best_mean"])
    rows = [
        [name, r["best_mean"], " / ".join(f"{b:.1f}" for b in r["best_per_seed"]), r["last50_mean"]]
        for name, r in ranked
    ]
    env = environment()
    md = "\n".join(
        [
            f"# Agent settings on a surrogate of the ResNet-20 50%-MACs search ({args.episodes} episodes, "
            f"{args.seeds} seeds)",
            "",
            f"Surrogate: quadratic ridge fit to {len(y)} real proxy evaluations, "
            f"cross-validated R^2 {r2:.2f}; per-plan noise std {noise:.2f} points. The surrogate only ranks settings "
            "(its optimum is an extrapolation); real-data results are in search_resnet20_macs50.md.",
            "",
            md_table(["setting", "best surrogate acc (mean)", "per seed", "mean of last 50 plans"], rows),
            "",
            f"{env['threads']} thread, {env['cpu']}, torch {env['torch']}, commit {env['commit']}.",
            "",
            "Reproduce: `python benchmarks/agent_sweep_surrogate.py --data "
            "benchmarks/results/agent_sweep_surrogate.json` (the fitted plans are stored in the JSON), or fit other "
            "searches with `--episodes-file`.",
        ]
    )
    data = {
        "episodes": args.episodes,
        "seeds": args.seeds,
        "target": target,
        "fit": {"plans": len(y), "cv_r2": r2, "noise_std": noise, "ridge": args.ridge},
        "settings": runs,
        "data": {"ratios": x.round(6).tolist(), "accuracy": y.tolist()},
        "environment": env,
    }
    write_results(args.out, data, md)
    print(md)


if __name__ == "__main__":
    main()
