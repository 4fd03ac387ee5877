"""A generalist policy: one RL agent trained on several dense models and a range of budgets at once.

A policy that has seen one model at one budget learns that model (on a deeper ResNet or an Inception-style net the
single-model ResNet-20 policy falls below the uniform plan). Here every episode draws a model and a target, the
reward is relative (by default the gain over the uniform plan at the same target on the same model, measured by the
same scorer) and the observation is the depth- and width-invariant feature set, so what the agent learns is how to
distribute a cut, not where one network's slack happens to be.

``runs/<name>/`` holds what a one-model search holds (config, ``episodes.jsonl`` with each episode's ``model``,
``policy.safetensors`` + ``policy.json`` recording the models and the target range, TensorBoard logs) and a
``summary.json`` with per-model statistics and reference scores. ``best_plan.json`` is the highest-reward plan of
any model (a plan for one of them): the product of such a run is the policy, applied with ``rlprune apply``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlprune.agents.recorder import SearchRecorder
from rlprune.config import SearchConfig, model_label, write_resolved
from rlprune.envs.features import FEATURE_VERSION
from rlprune.envs.layer_pruning import LayerPruningEnv
from rlprune.envs.multi import MultiModelEnv
from rlprune.errors import RLPruneError
from rlprune.fileio import atomic_write_text
from rlprune.logs import setup_logging
from rlprune.pruning import Plan
from rlprune.safeio import json_safe
from rlprune.seeding import seed_everything

log = logging.getLogger("rlprune.generalist")


def model_envs(cfg: SearchConfig, trust_model_code: bool, features: int = FEATURE_VERSION) -> list[LayerPruningEnv]:
    """One environment per checkpoint of ``cfg.checkpoints``, each with its own proxy scorer (data and model built
    once per model) and budget over ``cfg.env``'s target range; the episode recorder is attached afterwards."""
    from rlprune.searching import build_budget, build_scorer

    assert cfg.checkpoints is not None
    e = cfg.env
    envs = []
    for checkpoint in cfg.checkpoints:
        scorer = build_scorer(cfg, checkpoint, trust_model_code)
        envs.append(
            LayerPruningEnv(
                scorer,
                budget=build_budget(cfg, scorer.structure),
                reward=e.reward,
                reward_weight=e.reward_weight,
                name=model_label(checkpoint),
                features=features,
                prior=e.prior,
            )
        )
    return envs


def search_models(
    cfg: SearchConfig, *, resume: bool = False, progress: bool = True, trust_model_code: bool = False
) -> dict[str, Any]:
    """Train one RL policy over every checkpoint in ``cfg.checkpoints``; returns the summary (also written to
    ``summary.json``). Called by :func:`rlprune.searching.run_search`, which holds the run directory's lock."""
    from rlprune.searching import prepare_run, resumed_features, train_agent

    run_dir = Path(cfg.output_dir) / cfg.name
    prepare_run(cfg, run_dir, resume)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    features = resumed_features(run_dir) if resume else FEATURE_VERSION
    envs = model_envs(cfg, trust_model_code, features)  # every checkpoint loads and analyzes before the run dir exists
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir / "search.log", verbose=progress)
    write_resolved(cfg, run_dir)
    recorder = SearchRecorder(run_dir, None, structure=None, budget=cfg.env.budget)
    for env in envs:
        env.on_episode = recorder
        for rec in recorder.records:  # a resumed search re-evaluates no recorded plan
            if rec.get("model") == env.name and hasattr(env.scorer, "remember"):
                env.scorer.remember(Plan.from_dict(rec["plan"]), rec["accuracy"], metrics=rec.get("metrics"))
    multi = MultiModelEnv(envs)
    log.info(
        "%s over %d models (%s), targets %s, reward %s, %d episodes (%d already recorded)",
        cfg.agent.algorithm,
        len(envs),
        ", ".join(f"{e.name}: {len(e.units)} units" for e in envs),
        cfg.env.target,
        cfg.env.reward,
        cfg.agent.episodes,
        recorder.episodes,
    )
    started = time.perf_counter()
    models = [
        {"name": e.name, "checkpoint": c, "fingerprint": e.structure.fingerprint, "units": len(e.units)}
        for e, c in zip(envs, cfg.checkpoints or [], strict=True)
    ]
    writer = train_agent(cfg, multi, recorder, run_dir, resume, progress, extra_meta={"models": models})
    writer.close()
    if recorder.best is None:
        raise RLPruneError("search evaluated no plan")
    summary = {
        "name": cfg.name,
        "searcher": cfg.agent.algorithm,
        "episodes": recorder.episodes,
        "reward": cfg.env.reward,
        "target": cfg.env.target,
        "models": [
            {**m, **_model_stats(recorder.records, m["name"]), **_refs(e)} for m, e in zip(models, envs, strict=True)
        ],
        "wall_seconds_this_session": round(time.perf_counter() - started, 1),
        "wall_seconds": round(recorder.wall_seconds(), 1),
        "seconds_per_episode": round(recorder.wall_seconds() / recorder.episodes, 3),
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(json_safe(summary), indent=1, allow_nan=False) + "\n")
    log.info("policy over %d models -> %s", len(envs), run_dir / "policy.json")
    return summary


def _model_stats(records: list[dict[str, Any]], name: str, last: int = 50) -> dict[str, Any]:
    """Episodes of one model and the mean reward of its first and last ``last`` (does the policy improve on it?)."""
    rewards = [r["reward"] for r in records if r.get("model") == name]
    if not rewards:
        return {"episodes": 0}
    return {
        "episodes": len(rewards),
        "mean_reward_first": round(float(np.mean(rewards[:last])), 5),
        "mean_reward_last": round(float(np.mean(rewards[-last:])), 5),
    }


def _refs(env: LayerPruningEnv) -> dict[str, Any]:
    return {"references": env.references.measured()}


__all__ = ["model_envs", "search_models"]
