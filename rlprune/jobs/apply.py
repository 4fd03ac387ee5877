"""``rlprune apply`` and ``rlprune finetune``: turn a policy or a plan into a deployable pruned model.

Pipeline: roll the policy out on the new model's units (deterministic, no search) -> prune for real -> recalibrate
batch norm -> fine-tune (distilling from the dense model by default) -> evaluate on validation and test -> save
safetensors + plan, ONNX (checked against onnxruntime), ``report.json`` / ``report.md`` and a per-layer ratio plot.
Everything is written into a temporary folder that is renamed into place at the end: a failed run leaves nothing
half-written.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune.agents.policy_io import Policy, load_policy
from rlprune.config import ProxyConfig
from rlprune.cost.budget import Budget
from rlprune.cost.budget import macs_ratio as plan_macs_ratio
from rlprune.cost.calibration import calibrate_latency_budget
from rlprune.cost.lut import build_latency_table
from rlprune.data import DataSplits
from rlprune.envs.episode import rollout
from rlprune.envs.features import check_envelope, feature_spec, outside_envelope
from rlprune.envs.priors import policy_prior
from rlprune.errors import RLPruneError
from rlprune.evaluation.proxy import ProxyEvaluator
from rlprune.evaluation.scorer import Scorer
from rlprune.io.checkpoint import load_checkpoint
from rlprune.io.schemas import PolicyLatency, PolicyMeta
from rlprune.jobs.adapt import adapt_policy
from rlprune.models import build_model
from rlprune.pruning import Plan, Structure, analyze
from rlprune.pruning.options import PruneOptions
from rlprune.pruning.weights import kind_and_pattern, structure_for
from rlprune.seeding import on_device, resolve_device

log = logging.getLogger("rlprune.jobs.apply")


def example_input(meta: dict[str, Any]) -> torch.Tensor:
    side = int(meta.get("input_size", 32))
    return torch.zeros(1, int(meta.get("in_channels", 3)), side, side)


def load_dense(
    checkpoint: str,
    model_name: str | None = None,
    *,
    trust_model_code: bool = False,
    options: PruneOptions | None = None,
    granularity: str = "channel",
) -> tuple[nn.Module, dict[str, Any], Structure]:
    """A dense checkpoint, its metadata and its prunable structure (a checkpoint without units is refused).

    :param trust_model_code: import model code the checkpoint names (see :mod:`rlprune.io.trust`).
    :param options: parts to leave unpruned and head counts (:mod:`rlprune.pruning.options`).
    :param granularity: ``channel``, or the label of weight-level plans (``unstructured``, ``2:4``): which units the
        structure holds.
    """
    model, meta = load_checkpoint(checkpoint, model_name, trust_model_code=trust_model_code)
    if meta.get("plan") or meta.get("sparse_plan"):
        raise RLPruneError(f"{checkpoint}: already pruned; apply a policy to a dense checkpoint")
    options = options or PruneOptions()
    structure = structure_for(
        model.eval(), example_input(meta), granularity, ignore=options.ignore, heads=options.heads or None
    )
    return model, meta, structure


def policy_plans(
    policy: Policy | str | Path,
    model: nn.Module,
    structure: Structure,
    *,
    target: float,
    samples: int = 0,
    seed: int = 0,
    budget: str = "macs",
    latency_batch: int | None = None,
    threads: int | None = None,
    importance: str | None = None,
    force: bool = False,
    latency_runtime: str | None = None,
    uniform: bool = False,
) -> list[Plan]:
    """The policy's deterministic rollout on ``model``'s units, followed by ``samples`` rollouts drawn from its
    action distribution (and, with ``uniform``, the uniform plan at the same budget, last); every plan is clamped to
    the budget exactly as in training.

    A policy learned on one network is a prior on another, not an answer: on a deeper model its mean can spend the
    whole budget early (docs/benchmarks.md, transfer). Sampled plans stay close to what it learned and give a
    scorer something to choose from, at a few seconds per plan instead of a search.

    :param importance: channel criterion recorded in the plans (default: the one the policy was trained with).
    :param force: roll the policy out at a target or budget kind it was not trained for (refused otherwise).
    :param latency_batch: the batch size a latency budget is timed at (default: the policy's training's).
    :param latency_runtime: where a latency budget is timed (:data:`rlprune.cost.latency.RUNTIMES`; default: the
        runtime the policy was trained with).
    """
    policy = policy if isinstance(policy, Policy) else load_policy(policy)
    m = policy.info
    if m.granularity != structure.granularity:
        raise RLPruneError(
            f"policy: trained to decide {m.granularity} sparsity per unit, but the model was analyzed for "
            f"{structure.granularity} units"
        )
    importance = importance or m.importance
    check_policy_target(m, target, budget, force=force)
    if (outside := outside_training(m, structure)) and outside["units"]:
        features = ", ".join(f"{k} ({n})" for k, n in sorted(outside["features"].items(), key=lambda kv: -kv[1]))
        log.warning(
            "policy: %d of %d units lie outside what it saw in training (%s); its plan there is an extrapolation "
            "(a uniform guard or a search checks it)",
            outside["units"],
            outside["of"],
            features,
        )
    table = None
    trained = m.config.latency or PolicyLatency()  # how its training timed plans (latency budgets)
    if budget == "latency":  # timed as the policy's training timed it, on the CPU
        model = on_device(model, torch.device("cpu"))
        runtime = latency_runtime or trained.runtime
        table = build_latency_table(
            model, structure, latency_batch or trained.batch_size, threads=threads, runtime=runtime
        )
    solver = Budget(
        structure,
        target,
        kind=budget,
        min_ratio=m.min_ratio,
        max_ratio=m.max_ratio,
        round_to=m.round_to,
        min_channels=m.min_channels,
        latency_table=table,
    )
    # met as measured, on average, refitted on as many timed plans as in training
    solver = calibrate_latency_budget(solver, model, count=trained.calibration_plans, seed=0, threads=threads)
    version = m.feature_version  # observed with the features it was trained on
    prior = policy_prior(m, solver, target, model)  # what action 0 stood for in training
    plans = [rollout(solver, policy.act, target, importance, version, prior)]
    if samples:
        sample = policy.sampler(seed)
        plans += [rollout(solver, sample, target, importance, version, prior) for _ in range(samples)]
    if uniform:
        plans.append(solver.uniform_plan(importance=importance))
    return plans


TARGET_SLACK = 0.02  # how far outside its trained target range a policy is still applied without force


def outside_training(meta: PolicyMeta, structure: Structure) -> dict[str, Any] | None:
    """Which of ``structure``'s units lie outside the range of features the policy saw in training (its
    ``feature_envelope``; None for a policy saved without one): there its actions extrapolate rather than apply what
    it learned — e.g. depthwise layers or 4x thinner bottlenecks for a policy trained on ResNets and VGG.

    :returns: ``{"units": n outside, "of": units, "indices": [...], "features": {feature: units outside on it}}``.
    """
    if meta.feature_envelope is None:
        return None
    envelope = meta.feature_envelope.model_dump()
    spec = feature_spec(meta.feature_version)
    try:
        check_envelope(envelope, spec.version)
    except RLPruneError as exc:
        raise RLPruneError(f"policy: {exc}") from None
    return outside_envelope(spec.static(structure), envelope)


def check_policy_target(meta: PolicyMeta, target: float, budget: str, *, force: bool = False) -> None:
    """Refuse, in one line, a target outside the range the policy was trained on (by more than ``TARGET_SLACK``)
    or another budget kind, unless ``force``: a policy's actions outside what it was trained on are a guess."""
    trained = meta.target
    if trained is None:
        return
    lo, hi = (trained, trained) if isinstance(trained, int | float) else tuple(trained)
    problem = None
    if not lo - TARGET_SLACK <= target <= hi + TARGET_SLACK:
        span = f"{lo:g}" if lo == hi else f"[{lo:g}, {hi:g}]"
        problem = f"target {target:g} is outside what the policy was trained for ({span})"
    elif meta.budget != budget:
        problem = f"the policy was trained with a {meta.budget} budget, not {budget}"
    if problem is None:
        return
    if not force:
        raise RLPruneError(problem, fix="force")
    log.warning("%s; applying it anyway (forced)", problem)


def apply_policy(
    policy: Policy | str | Path,
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    target: float,
    budget: str = "macs",
    samples: int = 0,
    scorer: Scorer | None = None,
    seed: int = 0,
    threads: int | None = None,
    force: bool = False,
    ignore: Sequence[str] | None = None,
    heads: Mapping[str, int | str] | None = None,
    latency_runtime: str | None = None,
    uniform_guard: bool = False,
    adapt: int = 0,
    adapt_dir: str | Path | None = None,
) -> tuple[Plan, dict[str, Any]]:
    """A plan for ``model`` from a learned policy, without a search: the deterministic rollout, or with
    ``samples`` > 0 the best (by ``scorer``, on validation data) of it and ``samples`` plans drawn from the policy.
    With ``adapt`` > 0 the policy's training also continues on ``model`` for that many episodes (few-shot
    adaptation, :func:`rlprune.jobs.adapt.adapt_policy`) and the best plan it finds is one more candidate.

    A policy is a prior learned on other models; on a family unlike its training ones (depthwise MobileNets for a
    policy trained on ResNets and VGG) it can lose to the uniform plan (docs/generalize.md). ``uniform_guard`` adds
    the uniform plan at the same budget to the candidates, so that with a scorer the plan handed back is never worse
    than uniform on the validation data, for one more scored plan.

    :param policy: a :class:`~rlprune.Policy`, or the path of a saved one (run directory or ``policy.json``).
    :param example_inputs: an input batch for tracing ``model``.
    :param target: pruned/dense cost ratio.
    :param budget: ``macs``, ``params`` or ``latency`` (CPU latency from a lookup table built here, at the batch
        size and in the runtime the policy was trained with unless ``latency_runtime`` names another runtime).
    :param scorer: scores the candidates when ``samples`` > 0 or ``uniform_guard`` (e.g. a
        :class:`~rlprune.MetricScorer` for ``model``); its channel criterion is the plans' (the channels scored are
        the ones :func:`rlprune.prune` keeps).
    :param uniform_guard: also score the uniform plan and keep it if it scores best (``chosen: "uniform"``).
    :param adapt: episodes of adaptation on ``model`` with ``scorer`` (0: none; ``chosen: "adapted"`` when its best
        plan scores best). ``record["adapt"]`` says how many episodes and seconds it took.
    :param adapt_dir: the adaptation's run directory (kept, resumable); None: a temporary one.
    :param force: apply the policy at a target or budget kind outside what it was trained for (else refused).
    :param ignore: module or parameter names (or patterns) to leave unpruned (:func:`rlprune.analyze`; a scorer's
        own structure is used when given).
    :param heads: attention module name -> head count or its attribute's name (:func:`rlprune.analyze`).
    :returns: the plan and a record of how it was chosen (every candidate's score when sampling), with
        ``outside_training``: how many of the model's units lie outside the feature range the policy was trained on
        (:func:`outside_training`; a warning is logged when any do).

    Example::

        plan, _ = rp.apply_policy(result.policy, other_model, torch.zeros(1, 3, 32, 32), target=0.5)
        smaller, plan = rp.prune(other_model, plan, torch.zeros(1, 3, 32, 32))
    """
    _check_choice(samples, adapt, uniform_guard, scorer)
    policy = policy if isinstance(policy, Policy) else load_policy(policy)  # read once; policy_plans reuses it
    if adapt and policy.info.budget != budget:  # refused before any rollout (a forced rollout may cross kinds)
        raise RLPruneError(f"adapt: the policy was trained with a {policy.info.budget} budget, not {budget}")
    if scorer is not None:
        structure = scorer.structure
    else:
        structure = structure_for(model, example_inputs, policy.info.granularity, ignore=ignore, heads=heads)
    plans = policy_plans(
        policy,
        model,
        structure,
        target=target,
        samples=samples,
        seed=seed,
        budget=budget,
        threads=threads,
        force=force,
        latency_runtime=latency_runtime,
        uniform=uniform_guard,
        importance=scorer.importance if scorer is not None else None,  # the channels it scores are the ones kept
    )
    outside = outside_training(policy.info, structure)
    labels: list[int | str] = ["deterministic", *range(1, samples + 1), *(["uniform"] if uniform_guard else [])]
    adapted = None
    if adapt:
        assert scorer is not None
        same = {"budget": budget, "seed": seed, "latency_runtime": latency_runtime, "threads": threads}  # as rollouts
        plan, adapted = adapt_policy(policy, scorer, target=target, episodes=adapt, run_dir=adapt_dir, **same)
        plans.insert(len(plans) - int(uniform_guard), plan)  # the uniform plan stays last
        labels.insert(len(labels) - int(uniform_guard), "adapted")
    if len(plans) == 1:
        return plans[0], {"samples": 0, "outside_training": outside}
    assert scorer is not None
    best, scores = _choose(plans, scorer, structure)
    record = {"samples": samples, "uniform_guard": uniform_guard, "candidates": scores, "chosen": labels[best]}
    if adapted is not None:
        record["adapt"] = adapted
    return plans[best], {**record, "outside_training": outside}


def _check_choice(samples: int, adapt: int, uniform_guard: bool, scorer: Scorer | None) -> None:
    """Refuse candidate counts below zero, and candidates with nothing to choose between them."""
    if samples < 0:
        raise RLPruneError(f"samples: expected >= 0, got {samples}")
    if adapt < 0:
        raise RLPruneError(f"adapt: expected >= 0 episodes, got {adapt}")
    if adapt and scorer is None:
        raise RLPruneError("adapt: continuing the policy's training on this model needs a scorer for it")
    if (samples or uniform_guard) and scorer is None:
        what = "samples" if samples else "uniform_guard"
        raise RLPruneError(f"{what}: choosing among candidate plans needs a scorer for the model")


def _choose(plans: list[Plan], scorer: Scorer, structure: Structure) -> tuple[int, list[dict[str, float]]]:
    """The index of the best-scoring plan (the first of equals: the policy's own) and every candidate's score."""
    scores, raw = [], []
    for plan in plans:
        r = scorer(plan)
        if not math.isfinite(r.accuracy):
            raise RLPruneError(f"scorer: returned a non-finite score ({r.accuracy}) for a candidate plan")
        raw.append(r.accuracy)  # compared unrounded: a metric on a 0-1 scale differs in the third decimal
        scores.append(
            {"proxy_val_accuracy": round(r.accuracy, 4), "macs_ratio": round(plan_macs_ratio(structure, plan), 4)}
        )
    return max(range(len(plans)), key=lambda i: raw[i]), scores


def original_structure(meta: dict[str, Any]) -> Structure:
    """The prunable structure of the dense architecture a (possibly pruned) checkpoint's ``meta`` was built from,
    analyzed with the options (parts left alone, head counts) its plan was made with."""
    model = build_model(meta["model"], **meta.get("model_kwargs", {}))  # named by a checkpoint already loaded
    options = Plan.from_dict(meta["plan"], "checkpoint plan").options if meta.get("plan") else PruneOptions()
    return analyze(model.eval(), example_input(meta), ignore=options.ignore, heads=options.heads)


def default_proxy(
    model: nn.Module,
    splits: DataSplits,
    importance: str = "l1",
    device: str = "cpu",
    options: PruneOptions | None = None,
    granularity: str = "channel",
) -> ProxyEvaluator:
    """The search's default proxy (:class:`~rlprune.config.ProxyConfig`) for ``model`` on ``splits`` (val only),
    analyzing the model with ``options`` (parts left unpruned, head counts) for plans of ``granularity`` (a plan's
    or policy's label: ``channel``, ``unstructured``, ``2:4``)."""
    kind, pattern = kind_and_pattern(granularity)
    cfg = ProxyConfig(importance=importance if kind == "channel" else "l1")  # weight-level: magnitude, by itself
    options = options or PruneOptions()
    return ProxyEvaluator(
        model,
        splits,
        **cfg.model_dump(),
        device=resolve_device(device),
        ignore=options.ignore,
        heads=options.heads,
        granularity=kind,
        pattern=pattern,
    )
