"""Few-shot adaptation: a learned policy's training continued on the target model for a few episodes.

A policy learned on other models is a prior on a new one; where the new model is unlike what it saw (a family it never
met, a block it cannot read), its rollout can lose to the uniform plan. A few episodes of its own training on the target
— the same environment, the same scorer and reward as a search, starting from its weights instead of a fresh network —
let it correct itself at a fraction of a search's cost. :func:`adapt_policy` runs them as a search whose agent starts
from the policy (``agent.init_policy``) with the policy's own action scaling, prior and feature set, and returns the
best plan it found.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rlprune.agents.policy_io import Policy, load_policy
from rlprune.errors import RLPruneError
from rlprune.evaluation.scorer import Scorer
from rlprune.io.provenance import tensors_sha256
from rlprune.io.rundir import RunDir
from rlprune.io.schemas import PolicyLatency
from rlprune.logs import kept_logging
from rlprune.pruning import Plan
from rlprune.searching.api import SearchResult, search

log = logging.getLogger("rlprune.jobs.adapt")

START = "init_policy"  # the policy the adaptation started from, kept in its run directory
TARGET = "adapted_model.json"  # the model it adapts to (structure fingerprint, weights hash)


def update_every(episodes: int) -> int:
    """Episodes per agent update in an adaptation of ``episodes``: a few updates even in a short one (2 per update
    for 8 episodes, 5 for 20, the search's 8 from 32 on)."""
    return max(2, min(8, episodes // 4))


def adapt_policy(
    policy: Policy,
    scorer: Scorer,
    *,
    target: float,
    episodes: int,
    budget: str = "macs",
    seed: int = 0,
    run_dir: str | Path | None = None,
    hyperparams: Mapping[str, Any] | None = None,
    latency_runtime: str | None = None,
    threads: int | None = None,
) -> tuple[Plan, dict[str, Any]]:
    """Continue ``policy``'s training on ``scorer``'s model for ``episodes`` episodes; returns the best plan found
    (by reward: the scorer's validation score, whatever reward the policy was trained with; PPO normalises its
    advantages, so a value head trained on another scale only shifts them) and a record (episodes, the seconds its
    episodes took, run directory).

    :param run_dir: where the adaptation runs and stays (``episodes.jsonl``, ``policy.json`` of the adapted policy,
        TensorBoard logs, and ``init_policy.*``, the policy it started from); the same call resumes a finished or
        interrupted adaptation there (another policy, model, target or episode count is refused: give another
        folder). None: a temporary folder, removed afterwards.
    :param hyperparams: the agent's, over the defaults (PPO updates every :func:`update_every` episodes here).
    :param latency_runtime: for a latency budget, where plans are timed (default: where the policy's training timed
        them, at its batch size and with as many calibration plans).
    """
    if episodes < 1:
        raise RLPruneError(f"adapt: expected >= 1 episodes, got {episodes}")
    if run_dir is None:
        with tempfile.TemporaryDirectory(prefix="rlprune-adapt-") as tmp:
            plan, record = adapt_policy(
                policy,
                scorer,
                target=target,
                episodes=episodes,
                budget=budget,
                seed=seed,
                run_dir=Path(tmp) / "run",
                hyperparams=hyperparams,
                latency_runtime=latency_runtime,
                threads=threads,
            )
        return plan, {**record, "run_dir": None}
    run_dir = Path(run_dir)
    m = policy.info
    resume = (run_dir / "episodes.jsonl").is_file()
    _keep_start(policy, scorer, run_dir, resume)
    units = len(scorer.structure.units)
    if m.algorithm == "ppo":
        n_steps = units * update_every(episodes)
        defaults: dict[str, Any] = {"n_steps": n_steps, "batch_size": n_steps // 2 if n_steps >= 32 else n_steps}
    else:
        defaults = {"learning_starts": 0}  # its critic comes with it: nothing to warm up
    latency: dict[str, Any] = {}
    if budget == "latency":  # timed as the rollouts are (rlprune.jobs.apply.policy_plans)
        trained = m.config.latency or PolicyLatency()
        timing = {"batch_size": trained.batch_size, "calibration_plans": trained.calibration_plans}
        timing["runtime"] = latency_runtime or trained.runtime
        latency = {"latency": {**timing, **({"threads": threads} if threads else {})}}
    started = time.perf_counter()
    try:
        result = _search(
            policy,
            scorer,
            run_dir,
            target=target,
            episodes=episodes,
            budget=budget,
            seed=seed,
            resume=resume,
            hyperparams={**defaults, **(hyperparams or {})},
            latency=latency,
        )
    except BaseException:
        if not (run_dir / "episodes.jsonl").is_file():  # refused or failed before its first episode: nothing kept
            for name in (f"{START}.json", f"{START}.safetensors", TARGET):
                (run_dir / name).unlink(missing_ok=True)
        raise
    seconds = result.summary.wall_seconds  # its episodes' time, over every session that ran them
    best = result.best
    log.info(
        "adapted the policy on %d episodes (%.0f s, %.0f s this time): best %.2f at %.4f of the %s (%s)",
        result.summary.episodes,
        seconds,
        time.perf_counter() - started,
        best["accuracy"],
        best.get("budget_cost", best["macs_ratio"]),
        budget,
        run_dir,
    )
    record = {
        "episodes": result.summary.episodes,
        "seconds": round(seconds, 2),
        "run_dir": str(run_dir),
        "best_episode": best["episode"],
    }
    return result.best_plan, record


def _search(
    policy: Policy,
    scorer: Scorer,
    run_dir: Path,
    *,
    target: float,
    episodes: int,
    budget: str,
    seed: int,
    resume: bool,
    hyperparams: dict[str, Any],
    latency: dict[str, Any],
) -> SearchResult:
    """The adaptation itself: a search whose agent starts from the policy saved in ``run_dir``, with its settings."""
    m = policy.info
    with kept_logging():  # the search logs to its run directory, then the caller's log is its own again
        return search(
            scorer,
            target=target,
            agent=m.algorithm,
            episodes=episodes,
            out_dir=run_dir,
            seed=seed,
            budget=budget,
            min_ratio=m.min_ratio,
            max_ratio=m.max_ratio,
            round_to=m.round_to,
            hyperparams=hyperparams,
            resume=resume,
            env={"min_channels": m.min_channels, "prior": m.prior},
            init_policy=run_dir / START,
            **latency,
        )


def _keep_start(policy: Policy, scorer: Scorer, run_dir: Path, resume: bool) -> None:
    """Save the policy the adaptation starts from, and which model it adapts to, in its run directory; a resumed
    adaptation must be of the same policy on the same model (a search with a scorer records no checkpoint)."""
    model = getattr(scorer, "model", None)
    target = {
        "fingerprint": scorer.structure.fingerprint,
        "weights_sha256": tensors_sha256(model) if isinstance(model, torch.nn.Module) else None,
    }
    if resume and (run_dir / f"{START}.json").is_file():
        before = load_policy(run_dir / START).policy.state_dict()
        now = policy.policy.state_dict()
        same = before.keys() == now.keys() and all(torch.equal(before[k], now[k].cpu()) for k in now)
        if not same:
            raise RLPruneError(f"{run_dir}: holds an adaptation of another policy; give another folder")
        RunDir(run_dir, "adaptation").check_same(
            RunDir(run_dir).read_json(TARGET, "adapted model"), target, what="model"
        )
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    policy.save(run_dir / START)
    RunDir(run_dir).write_json(TARGET, target)


__all__ = ["adapt_policy", "update_every"]
