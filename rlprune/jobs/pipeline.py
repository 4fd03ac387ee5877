"""The main job in one call: search a plan for a checkpoint, prune and fine-tune the best one, export and report.

``rlprune run <config>`` is this function; everything it writes lives under ``runs/<name>/`` (the search) and
``runs/<name>/pruned/`` (the pruned model, ONNX, report). With ``rounds:`` in the config it runs in iterative rounds
instead (:mod:`rlprune.jobs.rounds`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from rlprune.config import EnvConfig, SearchConfig, validate
from rlprune.cost.lut import timeable
from rlprune.data import splits_from_meta
from rlprune.errors import RLPruneError
from rlprune.io.reports import JobResult, SearchSummary
from rlprune.io.safe import RunLock, read_yaml_file
from rlprune.jobs.apply import load_dense
from rlprune.jobs.finetune import finetune_plan
from rlprune.pruning import Plan, Structure
from rlprune.pruning.options import PruneOptions
from rlprune.pruning.weights import granularity_label
from rlprune.searching.api import run_search

log = logging.getLogger("rlprune.jobs.pipeline")

# The main job's reward when its config names none: accuracy minus LATENCY_WEIGHT x the latency ratio the lookup table
# predicts at batch LATENCY_BATCH, under the same MACs budget, so that among plans of equal MACs the search prefers the
# faster ones (what it buys at batch 64 and batch 1: benchmarks/results/latency_default.md).
LATENCY_WEIGHT = 0.3
LATENCY_BATCH = 64
# Channel multiple of the main job when it deploys through ONNX Runtime (latency.runtime onnxruntime[-int8]): its
# kernels run channel counts off the vector width far slower; 8 costs little proxy accuracy, 16 is faster in fp32,
# slower in int8 and coarser (benchmarks/results/latency_vs_macs.md, latency_default_onnxruntime.md, compression.md):
# round_to auto/16 is the user's call.
ORT_ROUND_TO = 8


def with_default_reward(
    cfg: SearchConfig,
    model: nn.Module | None = None,
    structure: Structure | None = None,
    *,
    began: Mapping[str, Any] | None = None,
) -> SearchConfig:
    """``cfg`` with the main job's latency-aware reward when ``env.reward`` was not set: ``accuracy_latency``, weight
    :data:`LATENCY_WEIGHT` (unless ``env.reward_weight`` is given), lookup table at batch :data:`LATENCY_BATCH`
    (unless ``latency.batch_size`` is given). A reward the config names, or a latency budget, is kept as it is, and so
    is the plain accuracy reward for a model the lookup table cannot time (given ``model`` and its ``structure``).
    Whatever the reward, latency is timed in ONNX Runtime int8 when the job ships an int8 model
    (``finetune.quantize: int8``, unless ``latency.runtime`` is given): the latency that counts is the deployed one.
    A job whose latency runtime is ONNX Runtime (the runtime it deploys with) also rounds kept channels to multiples
    of :data:`ORT_ROUND_TO` unless ``env.round_to`` is given, whatever the reward (a ``policy:`` rollout keeps the
    rounding its policy was trained with).

    ``rlprune search`` / ``train`` keep plain ``accuracy`` as their default: they find plans, ``run`` ships one.

    :param began: the ``env`` section of the run being resumed (its saved config): a run goes on with the reward and
        the channel rounding it began with where the config does not name them, whatever default was made since
        (a run begun with the plain ``accuracy`` reward keeps it; one begun without rounding keeps that).
    """
    began = began or {}
    resolved = cfg if began.get("reward") == "accuracy" else _defaults(cfg, model, structure)
    if "round_to" in began and "round_to" not in cfg.env.model_fields_set:
        env = validate(EnvConfig, {**resolved.env.model_dump(), "round_to": began["round_to"]}, "the run's config.yaml")
        resolved = resolved.model_copy(update={"env": env})
    return resolved


def _defaults(cfg: SearchConfig, model: nn.Module | None, structure: Structure | None) -> SearchConfig:
    if "runtime" not in cfg.latency.model_fields_set and cfg.finetune.quantize == "int8":
        # also for a latency budget: what the job ships is the int8 model, so that is the latency that counts
        cfg = cfg.model_copy(update={"latency": cfg.latency.model_copy(update={"runtime": "onnxruntime-int8"})})
    env = cfg.env
    if cfg.latency.runtime != "torch" and "round_to" not in env.model_fields_set and env.granularity == "channel":
        env = env.model_copy(update={"round_to": ORT_ROUND_TO})
        cfg = cfg.model_copy(update={"env": env})
    if "reward" in env.model_fields_set or env.budget != "macs":
        return cfg
    if model is not None and structure is not None and not timeable(model, structure):
        log.info("the latency table cannot time this model's layers; searching by accuracy alone")
        return cfg
    weight = env.reward_weight if "reward_weight" in env.model_fields_set else LATENCY_WEIGHT
    batch = cfg.latency.batch_size if "batch_size" in cfg.latency.model_fields_set else LATENCY_BATCH
    return cfg.model_copy(
        update={
            "env": env.model_copy(update={"reward": "accuracy_latency", "reward_weight": weight}),
            "latency": cfg.latency.model_copy(update={"batch_size": batch}),
        }
    )


def run_job(
    cfg: SearchConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    trust_model_code: bool = False,
    force: bool = False,
) -> JobResult:
    """Search -> prune the best plan -> fine-tune (distilling from the dense model) -> ONNX -> report.

    :param resume: continue an interrupted run (the search from its records, the fine-tune from its last epoch).
    :param trust_model_code: import model code the checkpoint names (see :mod:`rlprune.io.trust`).
    :param force: apply a configured ``policy`` at a target outside what it was trained for (else refused).
    :returns: where the outputs are and the headline numbers; ``report_md`` holds the Markdown report.
    """
    if cfg.checkpoint is None:
        raise RLPruneError("checkpoint: the main job needs the dense model's checkpoint")
    options = PruneOptions.of(cfg.prune.ignore, cfg.prune.heads)
    granularity = granularity_label(cfg.env.granularity, cfg.env.pattern)
    dense, meta, structure = load_dense(
        cfg.checkpoint, trust_model_code=trust_model_code, options=options, granularity=granularity
    )
    run_dir = Path(cfg.output_dir) / cfg.name
    saved = run_dir / "config.yaml"
    began = ((read_yaml_file(saved) or {}).get("env") or {}) if resume and saved.is_file() else {}
    cfg = with_default_reward(cfg, dense, structure, began=began)
    if cfg.rounds is not None:  # search, prune and fine-tune per round (rlprune.jobs.rounds)
        from rlprune.jobs.rounds import run_rounds

        return run_rounds(cfg, resume=resume, progress=progress, trust_model_code=trust_model_code, force=force)
    out = run_dir / "pruned"
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not resume:
        raise RLPruneError(f"{out}: already exists", fix="resume_or_rename")
    outside: dict[str, Any] | None = None
    if cfg.policy is not None:  # a learned policy, rolled out with no search
        best = _zero_shot(cfg, dense, meta, structure, run_dir, force)
        outside = best.outside_training
        accuracy, ratio = None, best.macs_ratio
    else:
        summary = run_search(cfg, resume=resume, progress=progress, trust_model_code=trust_model_code)
        if not isinstance(summary, SearchSummary):
            raise RLPruneError("rlprune run: prunes one model; a search over several is rlprune train")
        accuracy, ratio = summary.best.accuracy, summary.best.macs_ratio
    plan = Plan.load(run_dir / "best_plan.json")
    finetune_plan(
        dense,
        meta,
        plan,
        splits_from_meta(meta, cfg.data_root),
        out,
        cfg.finetune,
        seed=cfg.seed,
        progress=progress,
        source={"search": str(run_dir), "checkpoint": cfg.checkpoint, "policy": cfg.policy},
        reuse=True,
        device=cfg.device,
    )
    return JobResult(
        best_val_proxy_accuracy=None if accuracy is None else round(accuracy, 2),
        macs_ratio=round(ratio, 4),
        outside_training=outside,
        report=str(out / "report.md"),
        pruned_model=str(out / "model.json"),
        tensorboard=f"tensorboard --logdir {run_dir}",
        report_md=(out / "report.md").read_text(),
    )


class _Rollout(NamedTuple):
    """A policy's plan in place of a search's best: its MACs ratio and where the model lies outside its training."""

    macs_ratio: float
    outside_training: dict[str, Any] | None


def _zero_shot(
    cfg: SearchConfig, dense: Any, meta: dict[str, Any], structure: Any, run_dir: Path, force: bool
) -> _Rollout:
    """Roll ``cfg.policy`` out on the checkpoint at ``cfg.env.target`` (no search, no scoring) and save the plan as
    the run's ``best_plan.json``; the same plan for the same policy, model and target, every time."""
    from rlprune.agents.policy_io import load_policy
    from rlprune.cost.budget import macs_ratio
    from rlprune.jobs.apply import apply_policy, example_input

    target = float(cfg.env.target)  # type: ignore[arg-type]  # a range is refused by the config
    wanted = granularity_label(cfg.env.granularity, cfg.env.pattern)
    policy = load_policy(cfg.policy)  # read once: its granularity checked here, then rolled out
    trained = policy.info.granularity
    if trained != wanted:
        raise RLPruneError(f"policy: decides {trained} units; the config's env.granularity asks for {wanted}")
    plan, record = apply_policy(
        policy,
        dense,
        example_input(meta),
        target=target,
        budget=cfg.env.budget,
        ignore=cfg.prune.ignore,
        heads=cfg.prune.heads,
        force=force,
    )
    ratio = macs_ratio(structure, plan)
    with RunLock(run_dir, "run directory"):
        if (run_dir / "episodes.jsonl").is_file():  # a search's best plan is its record: never replaced by a rollout
            raise RLPruneError(f"{run_dir}: a search ran here; a policy's plan needs a run of its own", fix="rename")
        run_dir.mkdir(parents=True, exist_ok=True)
        plan.save(run_dir / "best_plan.json")
    log.info("policy %s on %s at %.2f: MACs ratio %.4f (no search)", cfg.policy, cfg.checkpoint, target, ratio)
    return _Rollout(ratio, record["outside_training"])


__all__ = ["run_job"]
