"""Does one policy prune networks it never saw? Zero-shot test of the generalist policy.

A generalist PPO policy is trained on some models (default: ResNet-20, ResNet-32 and VGG-11/2) over a MACs range,
then rolled out zero-shot on models absent from training (default: ResNet-56 — the same family, grown from the zoo
ResNet-20's weights — and two held-out families, MobileNetV2/2 and the small ViT) at several budgets. Per (target,
budget) it is compared with: the single-model ResNet-20 PPO policy (v2 features, trained at 0.5 only; forced at
other budgets), the uniform plan, and fresh 100-plan random and PPO searches on the target. Every plan is scored by
the same validation proxy the policy was trained with; the MACs ratio is counted on the physically pruned model.

Stages (each resumable: finished pieces are cached under ``--runs`` and reused):

    python benchmarks/generalize.py --stage train       # the generalist (and copies its policy into results)
    python benchmarks/generalize.py --stage proxy       # every (target, budget) row on the proxy
    python benchmarks/generalize.py --stage ablation    # which feature groups carry the transfer
    python benchmarks/generalize.py --stage rewards     # the generalist trained with each reward, compared
    python benchmarks/generalize.py --stage priors      # ... and with each env.prior (none from rewards), compared
    python benchmarks/generalize.py --stage finetune    # short distillation fine-tunes, test accuracy, seeds
    python benchmarks/generalize.py --stage families    # the generalist retrained with --extra-train families added
    python benchmarks/generalize.py --stage prepruned   # ... retrained with randomly cut, healed copies of its models
    python benchmarks/generalize.py --stage guard       # the generalist behind `apply --uniform-guard` (2 plans scored)
    python benchmarks/generalize.py --stage report      # (every stage ends with it) tables from what exists

Ablation: the generalist is rolled out with one feature group replaced by its mean over the policy's own
observations on its training models (the information removed, the input still in range); the drop in proxy
accuracy against the full policy says how much the transfer relies on that group.

Writes benchmarks/results/generalize.{json,md}; the policy goes to benchmarks/results/policies/generalist_macs/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _results import environment, md_table, mean_std, measured_on, reproduce_command, request_key, write_results

from rlprune.agents.policy_io import Policy
from rlprune.config import FinetuneConfig, PrePrunedConfig, SearchConfig, model_label, validate
from rlprune.cost.budget import Budget
from rlprune.cost.macs import count_macs
from rlprune.data import splits_from_meta
from rlprune.envs.episode import Episode
from rlprune.envs.features import ENVELOPE_MARGIN, FEATURE_GROUPS, feature_envelope, feature_spec, outside_envelope
from rlprune.envs.priors import policy_prior
from rlprune.errors import RLPruneError
from rlprune.evaluation.proxy import proxy_from_checkpoint
from rlprune.io.checkpoint import read_meta
from rlprune.io.files import atomic_write_text
from rlprune.jobs.apply import apply_policy, check_policy_target, example_input, load_dense, policy_plans
from rlprune.jobs.finetune import finetune_plan
from rlprune.pruning import Plan, Structure, prune
from rlprune.searching.cache import complete_search

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "generalize"
POLICY_DIR = ROOT / "benchmarks" / "results" / "policies" / "generalist_macs"
SINGLE_POLICY = ROOT / "benchmarks" / "results" / "policies" / "resnet20_macs50_ppo_s1"
TRAIN = ["zoo/resnet20_cifar10.json", "zoo/resnet32_cifar10.json", "zoo/vgg11_cifar10.json"]
TARGETS = ["zoo/resnet56_cifar10.json", "zoo/mobilenetv2_cifar10.json", "zoo/vit_cifar10.json"]
EXTRA = ["zoo/mobilenetv1_cifar10.json"]  # families stage: a depthwise family that is not MobileNetV2
# One proxy for training and for every row: BN recalibration on 10 batches, 1000 validation images, no SGD steps
# (a third of the default proxy's cost per plan; the same for every method, so the comparison is fair).
PROXY = {"val_images": 1000, "finetune_steps": 0, "recal_batches": 10, "recal_batch_size": 64, "seed": 0}
METHODS = ("generalist", "single-model policy", "uniform", "random search", "PPO search")


def _cached(path: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("request_key") == request_key(request):
            return data
    return None


def _store(path: Path, request: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**data, "request_key": request_key(request), "request": request}
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return data


def _search_config(args: argparse.Namespace, name: str, **fields: Any) -> SearchConfig:
    raw = {
        "name": name,
        "output_dir": str(Path(args.runs) / "search"),
        "seed": args.seed,
        "threads": args.threads,
        "proxy": dict(PROXY),
        **fields,
    }
    return validate(SearchConfig, raw, "generalize")


# ----------------------------------------------------------------------------------------------------------- train
def train(args: argparse.Namespace) -> dict[str, Any]:
    cfg = _search_config(
        args,
        "generalist",
        checkpoints=args.train,
        env={"target": [args.low, args.high], "reward": args.reward},
        agent={"episodes": args.episodes},
    )
    summary = complete_search(cfg, progress=not args.quiet)
    run_dir = Path(cfg.output_dir) / cfg.name
    args.policy_dir.mkdir(parents=True, exist_ok=True)
    for name in ("policy.json", "policy.safetensors"):
        shutil.copy2(run_dir / name, args.policy_dir / name)
    return summary.to_dict()


# ----------------------------------------------------------------------------------------------------------- proxy
def _measured_ratio(dense: torch.nn.Module, plan: Plan, shape: tuple[int, ...], dense_macs: int) -> float:
    pruned, _ = prune(dense, plan, torch.zeros(1, *shape))
    return count_macs(pruned, shape) / dense_macs


def _policy_key(meta: dict[str, Any]) -> str:
    """A policy's key for cached results: its metadata without the feature range it records (which describes its
    training models and changes no plan), so results stay reused across that addition."""
    return request_key({k: v for k, v in meta.items() if k != "feature_envelope"})


def _cell_request(args: argparse.Namespace, ckpt: str, budget: float) -> dict[str, Any]:
    """What decides a cell's rows (the policies by their metadata, which holds the training run's config)."""
    return {
        "checkpoint": ckpt,
        "weights_sha256": read_meta(ckpt).get("weights_sha256"),  # a path names a file, not its weights
        "budget": budget,
        "proxy": PROXY,
        "episodes": args.search_episodes,
        "policy": _policy_key(json.loads((args.policy_dir / "policy.json").read_text())),
        "seed": args.seed,
    }


def _committed_cell(args: argparse.Namespace, request: dict[str, Any]) -> dict[str, Any] | None:
    """The cell of the committed results file made by the same request (``runs/`` is not kept between machines;
    the results file is), so that a later stage (fine-tunes) does not search again."""
    results = Path(f"{args.out}.json")
    if not results.is_file():
        return None
    for cell in json.loads(results.read_text()).get("cells", []):
        if cell.get("request_key") == request_key(request):
            return cell
    return None


def _cell(args: argparse.Namespace, ckpt: str, budget: float) -> dict[str, Any]:
    label = model_label(ckpt)
    request = _cell_request(args, ckpt, budget)
    path = Path(args.runs) / "cells" / f"{label}_{budget:.2f}.json"
    hit = _cached(path, request)
    if hit is None and (hit := _committed_cell(args, request)) is not None:
        _store(path, request, {k: v for k, v in hit.items() if k not in ("request_key", "request")})
    if hit is not None:
        return hit
    dense, _, structure = load_dense(ckpt)
    shape = tuple(structure.input_shape)
    dense_macs = count_macs(dense, shape)
    scorer = proxy_from_checkpoint(ckpt, None, **PROXY)
    plans: dict[str, Plan] = {}
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    plans["generalist"] = policy_plans(str(args.policy_dir), dense, structure, target=budget)[0]
    seconds["generalist"] = time.perf_counter() - started
    single = Policy.load(SINGLE_POLICY)
    started = time.perf_counter()
    try:
        check_policy_target(single.info, budget, "macs")
        forced = False
    except RLPruneError:
        forced = True
    plans["single-model policy"] = policy_plans(single, dense, structure, target=budget, force=forced)[0]
    seconds["single-model policy"] = time.perf_counter() - started
    plans["uniform"] = Budget(structure, budget).uniform_plan()
    seconds["uniform"] = 0.0
    for method, searcher in (("random search", "random"), ("PPO search", None)):
        cfg = _search_config(
            args,
            f"{label}-{budget:.2f}-{searcher or 'ppo'}",
            checkpoint=ckpt,
            env={"target": budget},
            agent={"episodes": args.search_episodes},
        )
        summary = complete_search(cfg, searcher=searcher, progress=not args.quiet)
        plans[method] = Plan.load(Path(cfg.output_dir) / cfg.name / "best_plan.json")
        seconds[method] = summary.wall_seconds
    rows = {}
    for method, plan in plans.items():
        score = scorer(plan)
        rows[method] = {
            "proxy_val_accuracy": round(float(score.accuracy), 2),
            "macs_ratio_measured": round(_measured_ratio(dense, plan, shape, dense_macs), 4),
            "search_seconds": round(seconds[method], 3),
            "plan": plan.to_dict(),
        }
    everything = Budget(structure, 1.0).plan_from_clamped({u.name: 0.0 for u in structure.units})
    data = {
        "model": label,
        "budget": budget,
        "rows": rows,
        "single_policy_forced": forced,
        "dense_val_proxy": round(float(scorer(everything).accuracy), 2),
    }
    return _store(path, request, data)


def proxy_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    cells = []
    for ckpt in args.targets:
        for budget in args.budgets:
            print(f"[proxy] {model_label(ckpt)} at {budget}", flush=True)
            cells.append(_cell(args, ckpt, budget))
    return cells


# -------------------------------------------------------------------------------------------------------- ablation
def _observations(policy: Policy, checkpoints: list[str], budgets: list[float]) -> np.ndarray:
    """The generalist's own observations on its training models (deterministic rollouts at ``budgets``)."""
    m = policy.info
    version = m.feature_version
    seen = []
    for ckpt in checkpoints:
        dense, _, structure = load_dense(ckpt)
        b = Budget(
            structure,
            (min(budgets), max(budgets)),
            min_ratio=m.min_ratio,
            max_ratio=m.max_ratio,
            round_to=m.round_to,
            min_channels=m.min_channels,
        )
        for target in budgets:
            episode = Episode(b, target, features=version, prior=policy_prior(m, b, target, dense))
            while not episode.done:
                obs = episode.observe()
                seen.append(obs)
                episode.decide(policy.act(obs))
    return np.asarray(seen)


def ablation(args: argparse.Namespace) -> dict[str, Any]:
    policy = Policy.load(args.policy_dir)
    spec = feature_spec(int(policy.meta["feature_version"]))
    request = {
        "policy": _policy_key(policy.meta),
        "train": args.train,
        "targets": args.targets,
        "budgets": args.budgets,
        "proxy": PROXY,
    }
    path = Path(args.runs) / "ablation.json"
    hit = _cached(path, request)
    if hit is not None:
        return hit
    mean = _observations(policy, args.train, args.budgets).mean(axis=0)
    out: dict[str, Any] = {"groups": {g: list(names) for g, names in FEATURE_GROUPS.items()}, "cells": []}
    for ckpt in args.targets:
        dense, _, structure = load_dense(ckpt)
        scorer = proxy_from_checkpoint(ckpt, None, **PROXY)
        for budget in args.budgets:
            row = {"model": model_label(ckpt), "budget": budget}
            row["full"] = float(scorer(policy_plans(policy, dense, structure, target=budget)[0]).accuracy)
            for group, names in FEATURE_GROUPS.items():
                idx = [spec.names.index(n) for n in names if n in spec.names]

                def act(obs: np.ndarray, idx: list[int] = idx) -> np.ndarray:
                    obs = obs.copy()
                    obs[idx] = mean[idx]
                    return policy.act(obs)

                plan = Policy(policy.policy, policy.meta)
                plan.act = act  # type: ignore[method-assign]
                row[group] = float(scorer(policy_plans(plan, dense, structure, target=budget)[0]).accuracy)
            print(f"[ablation] {row}", flush=True)
            out["cells"].append(row)
    return _store(path, request, out)


# --------------------------------------------------------------------------------------------------------- rewards
def _train_variant(
    args: argparse.Namespace,
    name: str,
    checkpoints: list[str] | None = None,
    episodes: int | None = None,
    fields: dict[str, Any] | None = None,
    **env: Any,
) -> Policy:
    """A generalist of ``episodes`` (default ``--reward-episodes``) on ``checkpoints`` (default the training models),
    with ``env`` overrides and more search-config ``fields`` (e.g. ``pre_pruned``); its policy."""
    cfg = _search_config(
        args,
        name,
        checkpoints=checkpoints or args.train,
        env={"target": [args.low, args.high], "reward": args.reward, **env},
        agent={"episodes": episodes or args.reward_episodes},
        **(fields or {}),
    )
    complete_search(cfg, progress=not args.quiet)
    return Policy.load(Path(cfg.output_dir) / cfg.name)


def _zero_shot(
    args: argparse.Namespace,
    policies: dict[str, Policy],
    base: Callable[[str, float, Structure, Any], dict[str, Any]],
    tag: str,
) -> list[dict[str, Any]]:
    """Per (target, budget): ``base``'s columns, then each policy's zero-shot plan scored by the proxy."""
    cells = []
    for ckpt in args.targets:
        dense, _, structure = load_dense(ckpt)
        scorer = proxy_from_checkpoint(ckpt, None, **PROXY)
        for budget in args.budgets:
            row: dict[str, Any] = {"model": model_label(ckpt), "budget": budget}
            row.update(base(model_label(ckpt), budget, structure, scorer))
            for name, policy in policies.items():
                row[name] = float(scorer(policy_plans(policy, dense, structure, target=budget)[0]).accuracy)
            print(f"[{tag}] {row}", flush=True)
            cells.append(row)
    return cells


def rewards(args: argparse.Namespace) -> dict[str, Any]:
    """The same generalist trained with each reward (``--reward-episodes`` each, same seed and models), rolled out
    zero-shot on the targets: which reward transfers best (proxy accuracy minus the uniform plan's)."""
    out: dict[str, Any] = {"episodes": args.reward_episodes, "cells": []}
    policies = {
        reward: _train_variant(args, f"generalist-{reward}-{args.reward_episodes}", reward=reward)
        for reward in args.rewards
    }

    def base(label: str, budget: float, structure: Structure, scorer: Any) -> dict[str, Any]:
        return {"uniform": float(scorer(Budget(structure, budget).uniform_plan()).accuracy)}

    out["cells"] = _zero_shot(args, policies, base, "rewards")
    atomic_write_text(Path(args.runs) / "rewards.json", json.dumps(out, indent=1) + "\n")
    return out


# ---------------------------------------------------------------------------------------------------------- priors
def priors(args: argparse.Namespace) -> dict[str, Any]:
    """The generalist trained with each ``env.prior`` other than ``none`` (``--reward-episodes`` each, the default
    reward), rolled out zero-shot on the targets: does starting every action from the uniform plan transfer better
    to families the policy never saw? The ``none`` column is the rewards stage's run of the same reward and length."""
    out: dict[str, Any] = {"episodes": args.reward_episodes, "reward": args.reward, "cells": []}
    baseline = _stage_data(args, "rewards", "rewards")
    if not baseline or baseline.get("episodes") != args.reward_episodes:
        raise SystemExit("priors: run the rewards stage (same --reward-episodes) first; its run is the 'none' column")
    by_cell = {(c["model"], c["budget"]): c for c in baseline["cells"]}
    policies = {  # columns "prior <name>": a bare "uniform" would be the uniform plan's column
        f"prior {prior}": _train_variant(
            args, f"generalist-{args.reward}-{args.reward_episodes}-prior-{prior}", prior=prior
        )
        for prior in args.priors
        if prior != "none"
    }

    def base(label: str, budget: float, structure: Structure, scorer: Any) -> dict[str, Any]:
        cell = by_cell[(label, budget)]
        return {"uniform": cell["uniform"], "no prior": cell[args.reward]}

    out["cells"] = _zero_shot(args, policies, base, "priors")
    atomic_write_text(Path(args.runs) / "priors.json", json.dumps(out, indent=1) + "\n")
    return out


# -------------------------------------------------------------------------------------------------------- finetune
def _finetune_request(args: argparse.Namespace, cell: dict[str, Any]) -> str:
    """What decides a cell's fine-tune scores: its plans (the cell's own request) and the recipe."""
    return request_key({"cell": cell["request_key"], "steps": args.finetune_steps, "lr": args.finetune_lr})


def finetune(args: argparse.Namespace, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Test accuracy after the short fine-tune, ``model|budget|method`` -> {request_key, seeds: {seed: accuracy}};
    merged into what earlier runs measured (this run's ``--runs`` or the committed results file): a seed already
    measured for the same cell and recipe is not fine-tuned again, so the column fills up over several sessions."""
    results: dict[str, Any] = _stage_data(args, "finetune", "finetune") or {}
    for cell in cells:
        if cell["budget"] not in args.finetune_budgets:
            continue
        ckpt = next(c for c in args.targets if model_label(c) == cell["model"])
        request = _finetune_request(args, cell)
        dense = meta = splits = None
        for method, row in cell["rows"].items():
            if method not in args.finetune_methods:
                continue
            key = f"{cell['model']}|{cell['budget']:.2f}|{method}"
            entry = results.get(key)
            if not isinstance(entry, dict) or entry.get("request_key") != request:  # another plan or recipe
                results[key] = {"request_key": request, "seeds": {}}
            seeds = args.finetune_seeds if cell["budget"] == args.seeds_budget else args.finetune_seeds[:1]
            for seed in seeds:
                if str(seed) in results[key]["seeds"]:
                    continue
                if dense is None:
                    dense, meta, _ = load_dense(ckpt)
                    splits = splits_from_meta(meta, None)
                plan = Plan.from_dict(row["plan"])
                results[key]["seeds"][str(seed)] = _tuned(args, (dense, meta, splits), plan, key, method, seed)
                atomic_write_text(Path(args.runs) / "finetune.json", json.dumps(results, indent=1) + "\n")
    return results


def _tuned(
    args: argparse.Namespace, loaded: tuple[Any, Any, Any], plan: Plan, key: str, method: str, seed: int
) -> float:
    """Test accuracy of ``plan`` after the short distillation fine-tune (the recipe of every fine-tune column)."""
    dense, meta, splits = loaded
    model, budget = key.split("|")[:2]
    out = Path(args.runs) / "finetune" / f"{model}_{budget}" / method.replace(" ", "_").replace("+", "plus")
    report = finetune_plan(
        dense,
        meta,
        plan,
        splits,
        out / f"seed{seed}",
        FinetuneConfig(epochs=1, steps_per_epoch=args.finetune_steps, lr=args.finetune_lr, distill=True),
        seed=seed,
        latency_batches=(),
        progress=False,
        reuse=True,
        source={"benchmark": "generalize", "method": method},
    ).to_dict()
    accuracy = float(report["pruned"]["after_finetune"]["test"])
    print(f"[finetune] {key} seed {seed}: {accuracy:.2f}", flush=True)
    return accuracy


# -------------------------------------------------------------------------------------------------------- families
def families(args: argparse.Namespace, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The generalist trained again with ``--extra-train`` families added to its training models (default: the
    depthwise MobileNet v1): does seeing a layer kind in training (depthwise) fix the transfer to an unseen family
    built from it (MobileNetV2)? Its policy is copied to ``--families-policy-dir``."""
    checkpoints = [*args.train, *args.extra_train]
    column = f"+ {', '.join(model_label(c) for c in args.extra_train)}"
    name = f"generalist-families-{request_key(checkpoints)[:8]}-{args.episodes}"
    return _retrained(args, cells, "families", column, name, checkpoints, args.families_policy_dir, {})


def prepruned(args: argparse.Namespace, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The generalist trained again with ``--pre-pruned-copies`` randomly cut, healed copies of each training model
    (config ``pre_pruned``): does seeing thin, unevenly wide units in training stop it from cutting the thinnest
    units of an unseen family hardest (MobileNetV2's bottlenecks)? Its policy goes to ``--prepruned-policy-dir``."""
    pp = PrePrunedConfig(
        copies=args.pre_pruned_copies, max_ratio=args.pre_pruned_max_ratio, heal_steps=args.pre_pruned_heal_steps
    ).model_dump()  # every setting, defaults included, keys the stored stage
    column = f"+ {pp['copies']} pre-pruned copies each"
    name = f"generalist-prepruned-{request_key([args.train, pp])[:8]}-{args.episodes}"
    fields = {"pre_pruned": pp}
    return _retrained(args, cells, "prepruned", column, name, args.train, args.prepruned_policy_dir, fields)


def _retrained(
    args: argparse.Namespace,
    cells: list[dict[str, Any]],
    stage: str,
    column: str,
    name: str,
    checkpoints: list[str],
    policy_dir: Path,
    fields: dict[str, Any],
) -> dict[str, Any]:
    """A generalist trained again on ``checkpoints`` with more search-config ``fields``, same reward, length and
    seed. Zero-shot proxy per (target, budget) beside the generalist's and the uniform plan's (from the proxy
    cells), and the short fine-tune at ``--seeds-budget`` with the finetune stage's recipe and seeds; stored in
    ``--runs``/<stage>.json and its policy copied to ``policy_dir``."""
    request = {
        "checkpoints": checkpoints,
        "episodes": args.episodes,
        "reward": args.reward,
        "range": [args.low, args.high],
        "seed": args.seed,
        "targets": args.targets,
        "budgets": args.budgets,
        "proxy": PROXY,
        "finetune": {"steps": args.finetune_steps, "lr": args.finetune_lr, "budget": args.seeds_budget},
        **fields,  # none for the families stage: its request (and cache key) is what it always was
    }
    path = Path(args.runs) / f"{stage}.json"
    done = _cached(path, request) or {}
    if not done and (old := _committed(args, stage)) and old.get("request_key") == request_key(request):
        done = old
    if not done.get("cells"):
        policy = _train_variant(args, name, checkpoints=checkpoints, episodes=args.episodes, fields=fields)
        policy_dir.mkdir(parents=True, exist_ok=True)
        for file in ("policy.json", "policy.safetensors"):
            shutil.copy2(Path(args.runs) / "search" / name / file, policy_dir / file)
        by_cell = {(c["model"], c["budget"]): c["rows"] for c in cells}

        def base(label: str, budget: float, structure: Structure, scorer: Any) -> dict[str, Any]:
            rows = by_cell[(label, budget)]
            return {m: rows[m]["proxy_val_accuracy"] for m in ("uniform", "generalist")}

        done = {
            "column": column,
            "extra_train": [c for c in checkpoints if c not in args.train],
            **fields,
            "cells": _zero_shot(args, {column: policy}, base, stage),
        }
        done = _store(path, request, {**done, "finetune": {}})
    policy = Policy.load(policy_dir)
    for ckpt in args.targets:
        label = model_label(ckpt)
        key = f"{label}|{args.seeds_budget:.2f}|{column}"
        seeds = done["finetune"].setdefault(key, {})
        missing = [s for s in args.finetune_seeds if str(s) not in seeds]
        if not missing:
            continue
        dense, meta, structure = load_dense(ckpt)
        plan = policy_plans(policy, dense, structure, target=args.seeds_budget)[0]
        splits = splits_from_meta(meta, None)
        for seed in missing:
            seeds[str(seed)] = _tuned(args, (dense, meta, splits), plan, key, column, seed)
            done = _store(path, request, {k: v for k, v in done.items() if k not in ("request_key", "request")})
    return done


# ----------------------------------------------------------------------------------------------------------- guard
def guard(args: argparse.Namespace, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The generalist as ``rlprune apply --uniform-guard`` serves it: its plan and the uniform plan at the same
    budget are both scored by the proxy on the validation split and the better one is kept, for two scored plans
    (timed here, against the cell's 100-plan PPO search). Which plan was kept is matched to the cell's rows by plan
    key, so the fine-tune column reuses that row's fine-tunes (the same plan fine-tuned with the same recipe)."""
    request = {"cells": [c["request_key"] for c in cells], "proxy": PROXY}
    path = Path(args.runs) / "guard.json"
    done = _cached(path, request)
    if done is None and (old := _committed(args, "guard")) and old.get("request_key") == request_key(request):
        done = old
    if done is not None:
        return done
    policy = Policy.load(args.policy_dir)
    rows = []
    for cell in cells:
        ckpt = next(c for c in args.targets if model_label(c) == cell["model"])
        dense, meta, _ = load_dense(ckpt)
        scorer = proxy_from_checkpoint(ckpt, None, **PROXY)
        started = time.perf_counter()
        plan, record = apply_policy(
            policy, dense, example_input(meta), target=cell["budget"], scorer=scorer, uniform_guard=True
        )
        seconds = time.perf_counter() - started
        same = [m for m, row in cell["rows"].items() if Plan.from_dict(row["plan"]).key() == plan.key()]
        rows.append(
            {
                "model": cell["model"],
                "budget": cell["budget"],
                "chosen": record["chosen"],
                "same_plan_as": same,
                "proxy_val_accuracy": max(c["proxy_val_accuracy"] for c in record["candidates"]),
                "candidates": record["candidates"],
                "seconds": round(seconds, 3),
            }
        )
        print(f"[guard] {cell['model']} at {cell['budget']}: kept {record['chosen']} ({seconds:.1f} s)", flush=True)
    return _store(path, request, {"cells": rows})


def _guard_md(
    args: argparse.Namespace, data: dict[str, Any], ft: dict[str, Any], cells: list[dict[str, Any]]
) -> list[str]:
    by_cell = {(c["model"], c["budget"]): c for c in cells}
    table, ahead, kept_uniform, near, costs = [], 0, 0, 0, []
    for g in data["cells"]:
        cell = by_cell[(g["model"], g["budget"])]
        r = cell["rows"]
        # against the uniform plan's score in this same scoring (0 where it was kept); the cells' scores of the same
        # plans, made at another commit, differ by up to 0.3 points
        gain = g["proxy_val_accuracy"] - g["candidates"][-1]["proxy_val_accuracy"]
        gap = g["proxy_val_accuracy"] - r["PPO search"]["proxy_val_accuracy"]
        cost = g["seconds"] / r["PPO search"]["search_seconds"]
        ahead, kept_uniform, near = ahead + (gain > 0), kept_uniform + (g["chosen"] == "uniform"), near + (gap >= -1)
        costs.append(cost)
        request = _finetune_request(args, cell)
        method = g["same_plan_as"][0] if g["same_plan_as"] else None
        entry = ft.get(f"{g['model']}|{g['budget']:.2f}|{method}") if method else None
        tuned = (
            list(entry["seeds"].values()) if isinstance(entry, dict) and entry.get("request_key") == request else None
        )
        table.append(
            [
                g["model"],
                g["budget"],
                "generalist" if g["chosen"] == "deterministic" else g["chosen"],
                g["proxy_val_accuracy"],
                round(gain, 2),
                round(gap, 2),
                g["seconds"],
                f"{cost:.3f}",
                mean_std(tuned),
            ]
        )
    n = len(data["cells"])
    return [
        "## The generalist behind the uniform guard (`rlprune apply --uniform-guard`)",
        "",
        "Its plan and the uniform plan, both scored on the validation proxy, the better kept: two scored plans. "
        "`− uniform`: against the uniform plan in the same scoring (0 where it was kept); `− PPO search`: against the "
        "search's best plan as its cell scored it (the same plan scored in another run differs by up to 0.3 points).",
        "",
        md_table(
            [
                "target",
                "MACs",
                "kept",
                "val proxy",
                "− uniform",
                "− PPO search",
                "seconds",
                "cost / PPO search",
                "test after FT",
            ],
            table,
        ),
        "",
        f"- Never below uniform on the proxy (by construction); ahead of it in {ahead} of {n} cells, uniform kept in "
        f"{kept_uniform}: where the policy loses, the guard hands back uniform, it does not make the policy better.",
        f"- Within 1 point of the fresh 100-plan PPO search: {near} of {n} cells; cost "
        f"{min(costs):.1%}-{max(costs):.1%} of that search (target: within 1 point at <= 2%)."
        + (" **Target missed.**" if near < n or max(costs) > 0.02 else ""),
        "",
    ]


# ---------------------------------------------------------------------------------------------------------- report
def _load_cells(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every cell measured for these arguments: from ``--runs``, else from the committed results file."""
    found = []
    for ckpt in args.targets:
        for budget in args.budgets:
            path = Path(args.runs) / "cells" / f"{model_label(ckpt)}_{budget:.2f}.json"
            request = _cell_request(args, ckpt, budget)  # a cell of another policy or setting is stale
            hit = _cached(path, request) or _committed_cell(args, request)
            if hit is not None:
                found.append(hit)
    return found


def _stage_data(args: argparse.Namespace, name: str, field: str) -> Any:
    """A stage's stored output (``--runs``/<name>.json), else what the committed results file holds for it."""
    path = Path(args.runs) / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    return _committed(args, field)


def _committed(args: argparse.Namespace, field: str) -> Any:
    """What the committed results file (``--out``.json) holds under ``field`` (None without one)."""
    results = Path(f"{args.out}.json")
    return json.loads(results.read_text()).get(field) if results.is_file() else None


def _versus_uniform(data: dict[str, Any], title: str) -> list[str]:
    """A table of training variants (columns) rolled out zero-shot per target cell, minus the uniform plan."""
    names = [k for k in data["cells"][0] if k not in ("model", "budget", "uniform")]
    rows = [
        [c["model"], c["budget"], round(c["uniform"], 2), *[round(c[n] - c["uniform"], 2) for n in names]]
        for c in data["cells"]
    ]
    means = [round(float(np.mean([c[n] - c["uniform"] for c in data["cells"]])), 2) for n in names]
    return [f"## {title}", "", md_table(["target", "MACs", "uniform", *names], [*rows, ["mean", "", "", *means]]), ""]


def _envelope_md(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """How many of each target's units lie outside the range of static features the training models span (what
    ``rlprune apply`` warns about for policies that record it), and on which features; computed from the models'
    structures, not from any search."""
    meta = Policy.load(args.policy_dir).meta
    version = int(meta.get("feature_version", 2))
    spec = feature_spec(version)
    # the range the policy recorded (what `rlprune apply` compares with), else that of its training models
    envelope = meta.get("feature_envelope") or feature_envelope(
        [spec.static(load_dense(c)[2]) for c in args.train], version
    )
    found = {model_label(ckpt): outside_envelope(spec.static(load_dense(ckpt)[2]), envelope) for ckpt in args.targets}
    rows = [
        [
            label,
            f"{f['units']} of {f['of']}",
            ", ".join(f"{k} ({n})" for k, n in sorted(f["features"].items(), key=lambda kv: -kv[1])) or "-",
        ]
        for label, f in found.items()
    ]
    md = [
        "## Units unlike any in training",
        "",
        f"Units of each target outside the range (± {ENVELOPE_MARGIN}) that the training models' units span on some "
        f"static v{version} feature, and on which features (units outside on each): where the policy extrapolates. "
        "`rlprune apply` warns with this count for policies that record their training range.",
        "",
        md_table(["target", "units outside", "features"], rows),
        "",
    ]
    return md, found


def _losses_md(cells: list[dict[str, Any]], top: int = 4) -> list[str]:
    """Where the generalist loses to uniform: in each such cell, the units on which its plan and the fresh PPO
    search's best plan disagree most (channels kept by the generalist, uniform and the search), read from the
    stored plans — what the policy does on a family it never saw that a search on that family does not."""
    losing = [
        c for c in cells if c["rows"]["generalist"]["proxy_val_accuracy"] < c["rows"]["uniform"]["proxy_val_accuracy"]
    ]
    if not losing or any("plan" not in c["rows"][m] for c in losing for m in ("generalist", "uniform", "PPO search")):
        return []
    rows = []
    for c in losing:
        plans = {m: c["rows"][m]["plan"] for m in ("generalist", "uniform", "PPO search")}
        gap = {
            n: plans["generalist"]["ratios"][n] - plans["PPO search"]["ratios"][n] for n in plans["uniform"]["ratios"]
        }
        for name in sorted(gap, key=lambda n: -abs(gap[n]))[:top]:
            rows.append(
                [
                    c["model"],
                    c["budget"],
                    f"`{name}`",
                    *[plans[m]["channels"][name] for m in plans],
                    *[round(plans[m]["ratios"][name], 2) for m in plans],
                ]
            )
    head = [
        "target",
        "MACs",
        "unit",
        "kept: generalist",
        "uniform",
        "PPO search",
        "ratio: generalist",
        "uniform",
        "PPO search",
    ]
    return [
        "## Where the generalist loses to uniform",
        "",
        f"In each cell where it is behind uniform on the proxy, the {top} units on which its plan and the fresh PPO "
        "search's best plan differ most (pruned ratio; channels kept):",
        "",
        md_table(head, rows),
        "",
    ]


def _retrained_md(
    args: argparse.Namespace,
    data: dict[str, Any],
    ft: dict[str, Any],
    cells: list[dict[str, Any]],
    title: str,
    lead: str,
) -> list[str]:
    """A retrained generalist (families or pre-pruned stage): its zero-shot proxy beside the generalist and uniform;
    then the fine-tuned means at the seeds budget (the finetune stage's entries for the same cells)."""
    column = data["column"]
    proxy = [
        [
            c["model"],
            c["budget"],
            c["uniform"],
            c["generalist"],
            round(c[column], 2),
            round(c[column] - c["generalist"], 2),
        ]
        for c in data["cells"]
    ]
    requests = {f"{c['model']}|{c['budget']:.2f}": _finetune_request(args, c) for c in cells}
    tuned = []
    for key, seeds in data["finetune"].items():
        cell = key.rsplit("|", 1)[0]
        base = {
            m: list(e["seeds"].values())
            for m in ("uniform", "generalist")
            if isinstance(e := ft.get(f"{cell}|{m}"), dict) and e.get("request_key") == requests.get(cell)
        }
        tuned.append(
            [
                *cell.split("|"),
                mean_std(base.get("uniform")),
                mean_std(base.get("generalist")),
                mean_std(list(seeds.values())),
            ]
        )
    return [
        f"## {title}",
        "",
        f"{lead}Same reward, episodes and seed as the generalist; zero-shot proxy accuracy on the same targets.",
        "",
        md_table(["target", "MACs", "uniform", "generalist", column, "change"], proxy),
        "",
        f"Ahead of uniform in {sum(c[column] > c['uniform'] for c in data['cells'])} of {len(data['cells'])} cells "
        f"(the generalist: {sum(c['generalist'] > c['uniform'] for c in data['cells'])}); mean change against the "
        f"generalist {np.mean([c[column] - c['generalist'] for c in data['cells']]):+.2f} points.",
        "",
        *(
            [
                md_table(["target", "MACs", "uniform after FT", "generalist after FT", f"{column} after FT"], tuned),
                "",
            ]
            if tuned
            else []
        ),
    ]


def report(args: argparse.Namespace, training: dict[str, Any] | None) -> None:
    cells = _load_cells(args)
    ft = _stage_data(args, "finetune", "finetune") or {}
    rows, verdicts = [], []
    for cell in cells:
        r = cell["rows"]
        request = _finetune_request(args, cell)
        scores = {  # fine-tune scores of this cell's plans and this recipe only
            m: list(entry.get("seeds", {}).values())
            for m in METHODS
            if isinstance(entry := ft.get(f"{cell['model']}|{cell['budget']:.2f}|{m}"), dict)
            and entry.get("request_key") == request  # an entry of another plan, recipe or format is not shown
        }
        for method in METHODS:
            if method not in r:
                continue
            rows.append(
                [
                    cell["model"],
                    cell["budget"],
                    f"{method} (forced)"
                    if method == "single-model policy" and cell["single_policy_forced"]
                    else method,
                    r[method]["proxy_val_accuracy"],
                    mean_std(scores.get(method)),
                    r[method]["macs_ratio_measured"],
                    r[method]["search_seconds"],
                ]
            )
        g, u, s, p = (
            r[m]["proxy_val_accuracy"] for m in ("generalist", "uniform", "single-model policy", "PPO search")
        )
        verdicts.append(
            {
                "model": cell["model"],
                "budget": cell["budget"],
                "generalist_minus_uniform": round(g - u, 2),
                "generalist_minus_single": round(g - s, 2),
                "generalist_minus_ppo_search": round(g - p, 2),
                "cost_share_of_ppo_search": round(
                    r["generalist"]["search_seconds"] / max(1e-9, r["PPO search"]["search_seconds"]), 5
                ),
                "finetuned_generalist_minus_uniform": round(
                    statistics.mean(scores["generalist"]) - statistics.mean(scores["uniform"]), 2
                )
                if scores.get("generalist") and scores.get("uniform")
                else None,
                "finetune_seeds": min(len(scores.get("generalist", [])), len(scores.get("uniform", []))),
            }
        )
    rewards_data = _stage_data(args, "rewards", "rewards")
    priors_data = _stage_data(args, "priors", "priors")
    ablation_data = _stage_data(args, "ablation", "ablation")
    env = environment()
    reproduce = reproduce_command("benchmarks/generalize.py", args, ROOT, skip=("out", "runs", "stage", "quiet"))
    md = [
        "# Generalist policy: zero-shot on models absent from training",
        "",
        f"Trained on {', '.join(model_label(c) for c in args.train)} over MACs [{args.low}, {args.high}], "
        f"reward `{args.reward}`, {args.episodes} episodes; applied with no search to "
        f"{', '.join(model_label(c) for c in args.targets)} (none of them seen in training).",
        "",
        md_table(["target", "MACs", "plan", "val proxy", "test after FT", "MACs measured", "search s"], rows)
        if rows
        else "(no cell measured yet)",
        "",
        "The fresh searches choose their best plan on the same validation proxy that scores every row, which favours "
        "them; the policies' plans are scored once. Rows marked (forced) apply the single-model policy outside the "
        "one target it was trained at.",
        "",
        "## Targets",
        "",
        md_table(
            ["target", "MACs", "gen − uniform", "gen − single", "gen − PPO search", "gen cost / PPO cost"],
            [
                [
                    v["model"],
                    v["budget"],
                    v["generalist_minus_uniform"],
                    v["generalist_minus_single"],
                    v["generalist_minus_ppo_search"],
                    v["cost_share_of_ppo_search"],
                ]
                for v in verdicts
            ],
        )
        if verdicts
        else "",
        "",
    ]
    if verdicts:
        ahead = sum(v["generalist_minus_uniform"] > 0 for v in verdicts)
        near = sum(v["generalist_minus_ppo_search"] >= -1 for v in verdicts)
        beats = sum(v["generalist_minus_single"] > 0 for v in verdicts)
        tuned = [v for v in verdicts if v["finetuned_generalist_minus_uniform"] is not None]
        tuned_ahead = sum(v["finetuned_generalist_minus_uniform"] > 0 for v in tuned)
        md += [
            f"- Ahead of uniform on the proxy: {ahead} of {len(verdicts)} cells"
            + (" (target met)" if ahead == len(verdicts) else " — **target missed**")
            + ".",
            f"- Within 1 point of the fresh 100-plan PPO search: {near} of {len(verdicts)} cells"
            + (" (target met)" if near == len(verdicts) else " — **target missed**")
            + ".",
            f"- Ahead of the single-model ResNet-20 policy: {beats} of {len(verdicts)} cells"
            + (" (target met)" if beats == len(verdicts) else " — **target missed**")
            + ".",
            f"- Ahead of uniform on the mean test accuracy after fine-tuning: {tuned_ahead} of {len(tuned)} "
            f"fine-tuned cells ("
            + ", ".join(
                f"{v['model']} {v['budget']}: {v['finetuned_generalist_minus_uniform']:+.2f} over "
                f"{v['finetune_seeds']} seed{'s' if v['finetune_seeds'] != 1 else ''}"
                for v in tuned
            )
            + ")"
            + (
                ""
                if not tuned
                else " — **target missed**"
                if tuned_ahead < len(tuned)
                else " (target met where measured)"
                if len(tuned) < len(verdicts)
                else " (target met)"
            )
            + ".",
            "",
        ]
    if ablation_data:
        groups = list(ablation_data["groups"])
        arows = [
            [c["model"], c["budget"], round(c["full"], 2), *[round(c[g] - c["full"], 2) for g in groups]]
            for c in ablation_data["cells"]
        ]
        means = [round(float(np.mean([c[g] - c["full"] for c in ablation_data["cells"]])), 2) for g in groups]
        md += [
            "## Feature ablation (proxy accuracy change when a group is replaced by its training mean)",
            "",
            md_table(["target", "MACs", "full", *groups], [*arows, ["mean", "", "", *means]]),
            "",
        ]
    if rewards_data:
        title = f"Rewards compared ({rewards_data['episodes']} episodes each; zero-shot proxy accuracy minus uniform)"
        md += _versus_uniform(rewards_data, title)
    envelope_md, envelope_data = _envelope_md(args)
    md += _losses_md(cells) + envelope_md
    families_data = _stage_data(args, "families", "families")
    if families_data and families_data.get("cells"):
        title = f"Training families: the generalist retrained with {', '.join(families_data['extra_train'])} added"
        md += _retrained_md(args, families_data, ft, cells, title, "")
    prepruned_data = _stage_data(args, "prepruned", "prepruned")
    if prepruned_data and prepruned_data.get("cells"):
        pp = prepruned_data["pre_pruned"]
        title = "Pre-pruned copies: the generalist retrained with randomly cut copies of its training models"
        healed = f"healed by {pp['heal_steps']} fine-tune steps with distillation" if pp["heal_steps"] else "not healed"
        lead = (
            f"Each training model also enters as {pp['copies']} copies cut by random per-unit ratios in "
            f"[0, {pp['max_ratio']}] and {healed} (config `pre_pruned`), so the policy sees thin, unevenly wide "
            "units. "
        )
        md += _retrained_md(args, prepruned_data, ft, cells, title, lead)
    guard_data = _stage_data(args, "guard", "guard")
    if guard_data and guard_data.get("cells"):
        md += _guard_md(args, guard_data, ft, cells)
    if priors_data:
        title = (
            f"Priors compared (`env.prior`; reward {priors_data['reward']}, {priors_data['episodes']} episodes each; "
            "zero-shot proxy accuracy minus uniform)"
        )
        md += _versus_uniform(priors_data, title)
    md += [
        f"Proxy: {PROXY}. "
        + (
            f"Fine-tune: 1 epoch capped at {args.finetune_steps} steps, lr {args.finetune_lr}, distillation from the "
            f"dense model; seeds {args.finetune_seeds} at MACs {args.seeds_budget}. "
            if ft
            else "Fine-tunes: not run yet (`--stage finetune`; each evaluates the dense and pruned model on the full "
            "validation and test splits). "
        )
        + measured_on(env, reproduce),
    ]
    data = {
        "training": training,
        "cells": cells,
        "finetune": ft,
        "verdicts": verdicts,
        "ablation": ablation_data,
        "rewards": rewards_data,
        "priors": priors_data,
        "families": families_data,
        "prepruned": prepruned_data,
        "guard": guard_data,
        "outside_training": envelope_data,
        "proxy": PROXY,
        "environment": env,
    }
    write_results(args.out, data, "\n".join(md))
    print("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--stage",
        choices=[
            "train",
            "proxy",
            "ablation",
            "rewards",
            "priors",
            "finetune",
            "families",
            "prepruned",
            "guard",
            "report",
            "all",
        ],
        default="all",
    )
    ap.add_argument("--train", action="append", help=f"a training checkpoint (repeat; default {TRAIN})")
    ap.add_argument("--targets", action="append", help=f"a held-out checkpoint (repeat; default {TARGETS})")
    ap.add_argument("--budgets", action="append", type=float, help="a MACs target (repeat; default 0.3 0.5 0.7)")
    ap.add_argument("--low", type=float, default=0.3)
    ap.add_argument("--high", type=float, default=0.8)
    ap.add_argument("--reward", default="gain_over_uniform")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--search-episodes", type=int, default=100)
    ap.add_argument("--rewards", action="append", help="a reward to compare (repeat; default: all three)")
    ap.add_argument("--reward-episodes", type=int, default=300)
    ap.add_argument("--priors", action="append", help="an env.prior to compare (repeat; default: none, uniform)")
    ap.add_argument("--finetune-budgets", action="append", type=float, help="repeat; default 0.5")
    ap.add_argument("--seeds-budget", type=float, default=0.5)
    ap.add_argument("--finetune-seeds", action="append", type=int, help="repeat; default 0 1 2")
    ap.add_argument("--finetune-methods", action="append", choices=METHODS, help="repeat; default: every row")
    ap.add_argument("--finetune-steps", type=int, default=200)
    ap.add_argument("--finetune-lr", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench_generalize"))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--policy-dir", type=Path, default=POLICY_DIR, help="where the trained policy is copied")
    ap.add_argument("--extra-train", action="append", help=f"families stage: a checkpoint added (default {EXTRA})")
    ap.add_argument("--families-policy-dir", type=Path, default=POLICY_DIR.with_name(POLICY_DIR.name + "_families"))
    ap.add_argument("--pre-pruned-copies", type=int, default=2, help="prepruned stage: copies per training model")
    ap.add_argument("--pre-pruned-max-ratio", type=float, default=0.7, help="prepruned stage: per-unit ratios' top")
    ap.add_argument("--pre-pruned-heal-steps", type=int, default=200, help="prepruned stage: distillation steps")
    ap.add_argument("--prepruned-policy-dir", type=Path, default=POLICY_DIR.with_name(POLICY_DIR.name + "_prepruned"))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    defaults = {
        "train": TRAIN,
        "targets": TARGETS,
        "budgets": [0.3, 0.5, 0.7],
        "rewards": ["accuracy", "retention", "gain_over_uniform"],
        "priors": ["none", "uniform"],
        "finetune_budgets": [0.5],
        "finetune_seeds": [0, 1, 2],
        "finetune_methods": list(METHODS),
        "extra_train": EXTRA,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    training = None
    if args.stage in ("train", "all"):
        training = train(args)
    summary_path = Path(args.runs) / "search" / "generalist" / "summary.json"
    if training is None:
        training = json.loads(summary_path.read_text()) if summary_path.is_file() else _committed(args, "training")
    cells = proxy_rows(args) if args.stage in ("proxy", "all", "finetune") else _load_cells(args)
    if args.stage in ("ablation", "all"):
        ablation(args)
    if args.stage in ("rewards", "all"):
        rewards(args)
    if args.stage in ("priors", "all"):
        priors(args)
    if args.stage in ("finetune", "all"):
        ft = finetune(args, cells)
        atomic_write_text(Path(args.runs) / "finetune.json", json.dumps(ft, indent=1) + "\n")
    if args.stage in ("families", "all"):
        families(args, cells)
    if args.stage in ("prepruned", "all"):
        prepruned(args, cells)
    if args.stage in ("guard", "all"):
        guard(args, cells)
    report(args, training)


if __name__ == "__main__":
    main()
