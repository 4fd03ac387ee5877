"""``rlprune apply`` and ``rlprune finetune``: turn a policy or a plan into a deployable pruned model.

Pipeline: roll the policy out on the new model's units (deterministic, no search) -> prune for real -> recalibrate
batch norm -> fine-tune (distilling from the dense model by default) -> evaluate on validation and test -> save
safetensors + plan, ONNX (checked against onnxruntime), ``report.json`` / ``report.md`` and a per-layer ratio plot.
Everything is written into a temporary folder that is renamed into place at the end: a failed run leaves nothing
half-written.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune.agents.policy_io import Policy, load_policy
from rlprune.config import ProxyConfig, TrainConfig, validate
from rlprune.cost.budget import Budget
from rlprune.cost.budget import macs_ratio as plan_macs_ratio
from rlprune.cost.calibration import calibrate_latency_budget
from rlprune.cost.latency import compare_latency
from rlprune.cost.lut import build_latency_table
from rlprune.cost.macs import count_macs, count_params
from rlprune.data import BatchLoader, DataSplits
from rlprune.deploy.int8 import int8_report
from rlprune.deploy.onnx import export_onnx
from rlprune.envs.episode import rollout
from rlprune.envs.features import check_envelope, feature_spec, outside_envelope
from rlprune.envs.priors import policy_prior
from rlprune.errors import RLPruneError
from rlprune.evaluation import evaluate
from rlprune.evaluation.bn import recalibrate_bn
from rlprune.evaluation.classes import classes_section
from rlprune.evaluation.proxy import ProxyEvaluator
from rlprune.evaluation.scorer import Scorer
from rlprune.io.checkpoint import load_checkpoint, save_checkpoint
from rlprune.io.files import atomic_write_text, read_json
from rlprune.io.provenance import environment, is_current, provenance, tensors_sha256
from rlprune.io.safe import json_safe, locked
from rlprune.models import build_model
from rlprune.pruning import Plan, Structure, analyze, prune
from rlprune.pruning.importance import calibration_batches
from rlprune.pruning.options import PruneOptions
from rlprune.pruning.rounds import compose_plans
from rlprune.pruning.weights import kind_and_pattern, sparsify_plan, structure_for
from rlprune.report import figures
from rlprune.report.sparse import sparse_markdown, sparse_section
from rlprune.report.tables import md_table
from rlprune.seeding import on_device, resolve_device
from rlprune.training.engine import fit

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
    m = policy.meta
    if policy_granularity(m) != structure.granularity:
        raise RLPruneError(
            f"policy: trained to decide {policy_granularity(m)} sparsity per unit, but the model was analyzed for "
            f"{structure.granularity} units"
        )
    importance = importance or m.get("importance", "l1")
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
    trained = (m.get("config") or {}).get("latency") or {}  # how its training timed plans (latency budgets)
    if budget == "latency":  # timed as the policy's training timed it, on the CPU
        model = on_device(model, torch.device("cpu"))
        runtime = latency_runtime or trained.get("runtime", "torch")
        batch = latency_batch or int(trained.get("batch_size", 1))
        table = build_latency_table(model, structure, batch, threads=threads, runtime=runtime)
    solver = Budget(
        structure,
        target,
        kind=budget,
        min_ratio=m.get("min_ratio", 0.0),
        max_ratio=m.get("max_ratio", 0.8),
        round_to=m.get("round_to"),
        min_channels=m.get("min_channels", 1),
        latency_table=table,
    )
    # met as measured, on average, refitted on as many timed plans as in training
    count = int(trained.get("calibration_plans", 8))
    solver = calibrate_latency_budget(solver, model, count=count, seed=0, threads=threads)
    version = int(m.get("feature_version", 2))  # observed with the features it was trained on
    prior = policy_prior(m, solver, target, model)  # what action 0 stood for in training
    plans = [rollout(solver, policy.act, target, importance, version, prior)]
    if samples:
        sample = policy.sampler(seed)
        plans += [rollout(solver, sample, target, importance, version, prior) for _ in range(samples)]
    if uniform:
        plans.append(solver.uniform_plan(importance=importance))
    return plans


def policy_granularity(meta: dict[str, Any]) -> str:
    """What a policy decides per unit: ``channel`` (any policy saved before weight-level plans), ``unstructured``
    or an N:M pattern such as ``2:4``."""
    return str(meta.get("granularity", "channel"))


TARGET_SLACK = 0.02  # how far outside its trained target range a policy is still applied without force


def outside_training(meta: dict[str, Any], structure: Structure) -> dict[str, Any] | None:
    """Which of ``structure``'s units lie outside the range of features the policy saw in training (its
    ``feature_envelope``; None for a policy saved without one): there its actions extrapolate rather than apply what
    it learned — e.g. depthwise layers or 4x thinner bottlenecks for a policy trained on ResNets and VGG.

    :returns: ``{"units": n outside, "of": units, "indices": [...], "features": {feature: units outside on it}}``.
    """
    envelope = meta.get("feature_envelope")
    if not envelope:
        return None
    spec = feature_spec(int(meta.get("feature_version", 2)))
    try:
        check_envelope(envelope, spec.version)
    except RLPruneError as exc:
        raise RLPruneError(f"policy: {exc}") from None
    return outside_envelope(spec.static(structure), envelope)


def check_policy_target(meta: dict[str, Any], target: float, budget: str, *, force: bool = False) -> None:
    """Refuse, in one line, a target outside the range the policy was trained on (by more than ``TARGET_SLACK``)
    or another budget kind, unless ``force``: a policy's actions outside what it was trained on are a guess."""
    trained = meta.get("target")
    if trained is None:
        return
    lo, hi = (trained, trained) if isinstance(trained, int | float) else tuple(trained)
    problem = None
    if not lo - TARGET_SLACK <= target <= hi + TARGET_SLACK:
        span = f"{lo:g}" if lo == hi else f"[{lo:g}, {hi:g}]"
        problem = f"target {target:g} is outside what the policy was trained for ({span})"
    elif meta.get("budget", "macs") != budget:
        problem = f"the policy was trained with a {meta.get('budget')} budget, not {budget}"
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
) -> tuple[Plan, dict[str, Any]]:
    """A plan for ``model`` from a learned policy, without a search: the deterministic rollout, or with
    ``samples`` > 0 the best (by ``scorer``, on validation data) of it and ``samples`` plans drawn from the policy.

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
    if samples < 0:
        raise RLPruneError(f"samples: expected >= 0, got {samples}")
    if (samples or uniform_guard) and scorer is None:
        what = "samples" if samples else "uniform_guard"
        raise RLPruneError(f"{what}: choosing among candidate plans needs a scorer for the model")
    policy = policy if isinstance(policy, Policy) else load_policy(policy)  # read once; policy_plans reuses it
    if scorer is not None:
        structure = scorer.structure
    else:
        structure = structure_for(model, example_inputs, policy_granularity(policy.meta), ignore=ignore, heads=heads)
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
    outside = outside_training(policy.meta, structure)
    if len(plans) == 1:
        return plans[0], {"samples": 0, "outside_training": outside}
    assert scorer is not None
    scores, raw = [], []
    for plan in plans:
        r = scorer(plan)
        if not math.isfinite(r.accuracy):
            raise RLPruneError(f"scorer: returned a non-finite score ({r.accuracy}) for a candidate plan")
        raw.append(r.accuracy)  # compared unrounded: a metric on a 0-1 scale differs in the third decimal
        scores.append(
            {"proxy_val_accuracy": round(r.accuracy, 4), "macs_ratio": round(plan_macs_ratio(structure, plan), 4)}
        )
    best = max(range(len(plans)), key=lambda i: raw[i])  # the first of equals: the policy's
    chosen: int | str = "deterministic" if best == 0 else best
    if uniform_guard and best == len(plans) - 1:
        chosen = "uniform"
    record = {"samples": samples, "uniform_guard": uniform_guard, "candidates": scores, "chosen": chosen}
    return plans[best], {**record, "outside_training": outside}


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


# One fine-tune per output at a time: a second one would delete the first's live ``.partial`` folder.
@locked(lambda a: Path(a["out_dir"]), "fine-tune output")
def finetune_plan(
    dense: nn.Module,
    meta: dict[str, Any],
    plan: Plan,
    splits: DataSplits,
    out_dir: Path,
    *,
    epochs: int = 1,
    lr: float = 0.02,
    distill: bool = True,
    batch_size: int = 128,
    recal_batches: int = 50,
    seed: int = 0,
    latency_batches: tuple[int, ...] = (1, 64),
    progress: bool = True,
    source: dict[str, Any] | None = None,
    reuse: bool = False,
    device: str = "cpu",
    swa_epochs: int = 0,
    swa_lr: float | None = None,
    quantize: str | None = None,
    steps_per_epoch: int | None = None,
    reference: nn.Module | None = None,
) -> dict[str, Any]:
    """Prune ``dense`` with ``plan``, fine-tune, evaluate, export and report into ``out_dir``; returns the report.

    Work happens in ``.<out_dir name>.partial`` beside ``out_dir`` and is renamed into place when complete, so
    ``out_dir`` is never half-written. A fine-tune that was killed resumes from its last finished epoch when the same
    command is run again (the partial folder keeps its per-epoch state; a failure before any epoch removes it).

    :param reuse: if ``out_dir`` already holds a report made by this very request (plan, dense weights, recipe,
        seed, code version: its ``provenance`` hash), return it instead of fine-tuning again; a report made by any
        other request is measured again and replaced.
    :param steps_per_epoch: at most this many fine-tune steps per epoch (a fraction of an epoch); None = all.
    :param swa_epochs: average the weights of the last N epochs (SWA; the lr decays to ``swa_lr`` by their start and
        holds there; default ``swa_lr``: half of ``lr``); 0 = off.
    :param device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when present) for the fine-tune and evaluation;
        CPU latency is always measured on CPU.
    :param reference: the model the report compares against and the fine-tune distills from (default: ``dense``).
        Iterative rounds prune an already pruned ``dense`` (its ``meta`` holds its plan; the saved checkpoint then
        records the plan composed onto the original architecture) and pass the original dense model here, so that
        every round is reported against it and learns from it.
    """
    swa = {"epochs": swa_epochs, "lr": swa_lr if swa_lr is not None else lr / 2} if swa_epochs else None
    recipe = validate(  # TrainConfig's own checks (SWA inside the epochs, its lr at most lr) before any work
        TrainConfig,
        {
            "epochs": epochs,
            "lr": lr,
            "warmup_epochs": 0,
            "weight_decay": 5e-4,
            "distill": {"weight": 0.5 if distill else 0.0, "temperature": 4.0},
            "swa": swa or {},
            "steps_per_epoch": steps_per_epoch,
        },
        "fine-tune",
    )
    # what decides the report, code version included: a report is reused only if it was made by exactly this
    produced_by = {
        "plan": plan.key(),
        "dense": meta.get("weights_sha256") or tensors_sha256(dense),
        **recipe.model_dump(mode="json"),
        **{"distill": distill, "batch_size": batch_size, "recal_batches": recal_batches, "seed": seed},
        **{"latency_batches": list(latency_batches), "device": str(device)},
        **({"quantize": quantize} if quantize else {}),
        **({"reference": tensors_sha256(reference)} if reference is not None else {}),
    }
    stale = False
    if reuse and (out_dir / "report.json").is_file():
        report = read_json(out_dir / "report.json", "fine-tune report")
        if is_current(report, produced_by):
            return report
        log.warning("%s: made by another plan, checkpoint, recipe or code version; measuring it again", out_dir)
        stale = True  # replaced only once the new report is complete
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not stale:
        raise RLPruneError(f"{out_dir}: output exists and is not an empty directory")
    example = example_input(meta)
    structure = structure_for(
        dense.eval(), example, plan.granularity, ignore=plan.options.ignore, heads=plan.options.heads or None
    )
    plan.check(structure, "plan")
    work = _partial_dir(out_dir, json.dumps(produced_by, sort_keys=True))
    try:
        report = _run(
            dense,
            meta,
            plan,
            structure,
            splits,
            work,
            recipe=recipe,
            distill=distill,
            batch_size=batch_size,
            recal_batches=recal_batches,
            seed=seed,
            latency_batches=latency_batches,
            progress=progress,
            source=source or {},
            device=resolve_device(device),
            swa=swa,
            quantize=quantize,
            reference=reference,
        )
        report["provenance"] = provenance(produced_by)
        _publish(work, out_dir, report, replace=stale)
        if report["onnx"].get("error"):
            raise RLPruneError(f"{out_dir}: fine-tuned model, plan and report written, but {report['onnx']['error']}")
    except BaseException as exc:
        if not (work / "finetune" / "state.pt").is_file():
            shutil.rmtree(work, ignore_errors=True)
        else:
            why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed ({type(exc).__name__})"
            log.warning("fine-tune %s; the same command resumes from the last finished epoch in %s", why, work)
        raise
    return report


def _partial_dir(out_dir: Path, request: str) -> Path:
    """The hidden ``.<out>.partial`` folder a fine-tune works in: kept when it holds a resumable run of the same
    ``request``, cleared otherwise."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.parent / f".{out_dir.name}.partial"
    resumable = (work / "finetune" / "state.pt").is_file()
    if resumable and _read_text(work / "request.json") != request:
        log.warning("%s: left by a fine-tune with other settings; starting over", work)
        resumable = False
    if work.exists() and not resumable:
        shutil.rmtree(work)  # nothing worth resuming
    if resumable:
        log.info("resuming the fine-tune in %s", work)
    work.mkdir(exist_ok=True)
    atomic_write_text(work / "request.json", request + "\n")
    return work


def _publish(work: Path, out_dir: Path, report: dict[str, Any], *, replace: bool) -> None:
    """Write the final report, drop what only served resuming (the TensorBoard logs stay) and rename the partial
    folder into place (replacing a stale ``out_dir`` only now that the new one is complete)."""
    text = json.dumps(json_safe(report), indent=1, default=float, allow_nan=False)
    atomic_write_text(work / "report.json", text + "\n")
    for name in ("finetune/last.safetensors", "finetune/last.json", "finetune/state.pt", "request.json"):
        (work / name).unlink(missing_ok=True)
    if out_dir.exists():
        shutil.rmtree(out_dir) if replace else out_dir.rmdir()
    work.rename(out_dir)


def _read_text(path: Path) -> str | None:
    return path.read_text().strip() if path.is_file() else None


def _run(
    dense: nn.Module,
    meta: dict[str, Any],
    plan: Plan,
    structure: Structure,
    splits: DataSplits,
    work: Path,
    *,
    recipe: TrainConfig,
    distill: bool,
    batch_size: int,
    recal_batches: int,
    seed: int,
    latency_batches: tuple[int, ...],
    progress: bool,
    source: dict[str, Any],
    device: torch.device,
    swa: dict[str, float] | None = None,
    quantize: str | None = None,
    reference: nn.Module | None = None,
) -> dict[str, Any]:
    mean, std = meta.get("mean", splits.mean), meta.get("std", splits.std)
    shape = tuple(example_input(meta).shape[1:])
    loader = BatchLoader(splits.train, batch_size, mean, std, shuffle=True, seed=seed + 1)
    masks = None
    if plan.granularity != "channel":  # weights zeroed, shapes kept; the masks keep them zero while fine-tuning
        pruned = copy.deepcopy(dense)
        masks = sparsify_plan(pruned, plan)
    else:
        calibration = calibration_batches(plan.importance, loader)  # e.g. taylor: scores from a few labelled batches
        pruned, plan = prune(dense, plan, example_input(meta), calibration=calibration)
    # ``dense`` was pruned before: the checkpoint records the plan for the original architecture
    if meta.get("plan") and masks is None:
        structure = original_structure(meta)
        plan = compose_plans(Plan.from_dict(meta["plan"], "checkpoint plan"), plan, structure)
    dense = reference if reference is not None else dense  # from here on: what the report compares against
    recalibrate_bn(pruned, (x for _, (x, _) in zip(range(recal_batches), loader, strict=False)))

    def scores(model: nn.Module) -> dict[str, float]:
        model.to(device)
        return {
            "val": evaluate(model, splits.val, mean, std, device=device)["accuracy"],
            "test": evaluate(model, splits.test, mean, std, device=device)["accuracy"],
        }

    dense_acc = scores(dense)
    before = scores(pruned)
    if masks is not None:
        masks.attach(pruned)
    history = fit(
        pruned,
        splits,
        recipe,
        work / "finetune",
        meta={"model": meta["model"]},
        batch_size=batch_size,
        seed=seed,
        teacher=dense if distill else None,
        progress=progress,
        resume=True,
        device=device,
    ).history
    if masks is not None:
        masks.detach()
        masks.apply(pruned)
    after = scores(pruned.eval())
    pruned, dense = pruned.cpu(), dense.cpu()

    plan.metrics = {"val_accuracy": after["val"], "test_accuracy": after["test"]}
    ckpt_meta = {k: v for k, v in meta.items() if k not in ("weights_file", "weights_sha256", "format")}
    # a sparse model keeps its dense shapes: its plan is recorded apart, so loading it reshapes nothing
    ckpt_meta.update(
        **({"sparse_plan": plan.to_dict()} if masks is not None else {"plan": plan.to_dict()}),
        val_accuracy=round(after["val"], 2),
        test_accuracy=round(after["test"], 2),
        recipe=recipe.model_dump(mode="json"),
        dense_checkpoint=source.get("checkpoint"),
    )
    save_checkpoint(work / "model", pruned, ckpt_meta)
    plan.save(work / "plan.json")
    rebuilt, _ = load_checkpoint(work / "model.json", meta["model"])  # the model already loaded, trusted then
    x = torch.randn(4, *shape)
    with torch.no_grad():
        identical = torch.equal(rebuilt.eval()(x), pruned(x))
    if not identical:
        raise RLPruneError("rebuilt model differs from the pruned model; refusing to write an unfaithful checkpoint")
    try:
        onnx: dict[str, Any] = export_onnx(pruned, shape, work / "model.onnx")
    except RLPruneError as exc:  # the fine-tuned model must survive a model no exporter handles
        log.warning("%s", exc)
        onnx = {"error": str(exc)}
    lat = _str_keys(compare_latency({"dense": dense.eval(), "pruned": pruned}, shape, latency_batches, repeats=15))
    gpu = None
    if torch.cuda.is_available():
        gpu = compare_latency({"dense": dense.cuda(), "pruned": pruned.cuda()}, shape, latency_batches, repeats=30)
        gpu = _str_keys(gpu)
        dense.cpu()
        pruned.cpu()
    report = {
        "model": meta["model"],
        "source": source,
        "plan_units": len(plan.ratios),
        "dense": {"params": count_params(dense), "macs": count_macs(dense.cpu(), shape), **dense_acc},
        "pruned": {
            "params": count_params(pruned),
            "macs": count_macs(pruned, shape),
            "before_finetune": before,
            "after_finetune": after,
        },
        "latency_ms_cpu": lat,
        "latency_ms_gpu": gpu,
        "onnx": onnx,
        "finetune": {"epochs": recipe.epochs, "lr": recipe.lr, "distill": distill, "swa": swa, "history": history},
        "environment": environment(),
    }
    report["pruned"]["macs_ratio"] = report["pruned"]["macs"] / report["dense"]["macs"]
    if masks is not None:
        report["sparse"] = sparse_section(pruned, masks, plan, structure, work, work / "model.safetensors")
    # per-class numbers on the test split (reported, never used to choose): does any class pay for the cut?
    report["classes"], classes_md = classes_section(
        {"dense": dense, "pruned": pruned}, splits.test, mean, std, chart=work / "classes.png"
    )
    if quantize == "int8" and "error" not in onnx:
        report["int8"] = int8_report(pruned, splits, work, mean=mean, std=std, seed=seed)
    report["figures"] = figures.write_report_figures(work, report, plan, structure, work / "finetune" / "tb")
    text = json.dumps(json_safe(report), indent=1, default=float, allow_nan=False)  # no bare NaN in JSON
    atomic_write_text(work / "report.json", text + "\n")
    extra = classes_md + _int8_markdown(report.get("int8")) + sparse_markdown(report.get("sparse"))
    atomic_write_text(work / "report.md", _markdown(report) + "\n" + extra)
    return report


def _int8_markdown(block: dict[str, Any] | None) -> str:
    """The int8 section of report.md: the pruned model in ONNX Runtime, fp32 against static int8."""
    if not block:
        return ""
    fp, q = block["fp32"], block["int8"]
    rows = [["file size (bytes)", f"{block['bytes']['fp32']:,}", f"{block['bytes']['int8']:,}"]]
    for split in ("val", "test"):
        if split in fp and split in q:
            rows.append([f"{split} accuracy (%)", f"{fp[split]['accuracy']:.2f}", f"{q[split]['accuracy']:.2f}"])
            rows.append([f"{split} macro-F1", f"{fp[split]['macro_f1']:.4f}", f"{q[split]['macro_f1']:.4f}"])
    for bs, ms in fp["latency_ms_ort"].items():
        rows.append([f"ONNX Runtime latency, batch {bs} (ms)", f"{ms:.2f}", f"{q['latency_ms_ort'][bs]:.2f}"])
    table = md_table(["", "fp32", "int8"], rows)
    return f"\n## int8 (ONNX Runtime static quantization, pruned model)\n\n{table}\n"


def _str_keys(latency: dict[str, dict[int, float]]) -> dict[str, dict[str, float]]:
    """Batch sizes as strings: the report reads the same whether it was just computed or loaded from JSON."""
    return {name: {str(bs): ms for bs, ms in by_batch.items()} for name, by_batch in latency.items()}


def _markdown(r: dict[str, Any]) -> str:
    d, p = r["dense"], r["pruned"]
    lat = r["latency_ms_cpu"]
    rows = [
        ["parameters", f"{d['params']:,}", f"{p['params']:,}", f"{p['params'] / d['params']:.3f}"],
        ["MACs", f"{d['macs']:,}", f"{p['macs']:,}", f"{p['macs_ratio']:.3f}"],
    ]
    for bs in sorted(lat["dense"], key=int):
        rows.append(
            [
                f"CPU latency, batch {bs} (ms)",
                f"{lat['dense'][bs]:.2f}",
                f"{lat['pruned'][bs]:.2f}",
                f"{lat['pruned'][bs] / lat['dense'][bs]:.3f}",
            ]
        )
    if r["latency_ms_gpu"]:
        g = r["latency_ms_gpu"]
        for bs in sorted(g["dense"], key=int):
            rows.append(
                [
                    f"GPU latency, batch {bs} (ms)",
                    f"{g['dense'][bs]:.3f}",
                    f"{g['pruned'][bs]:.3f}",
                    f"{g['pruned'][bs] / g['dense'][bs]:.3f}",
                ]
            )
    rows += [
        [
            "validation accuracy (%)",
            f"{d['val']:.2f}",
            f"{p['after_finetune']['val']:.2f}",
            f"{p['after_finetune']['val'] - d['val']:+.2f}",
        ],
        [
            "test accuracy (%)",
            f"{d['test']:.2f}",
            f"{p['after_finetune']['test']:.2f}",
            f"{p['after_finetune']['test'] - d['test']:+.2f}",
        ],
        ["validation accuracy before fine-tune (%)", "", f"{p['before_finetune']['val']:.2f}", ""],
        ["test accuracy before fine-tune (%)", "", f"{p['before_finetune']['test']:.2f}", ""],
    ]
    ft = r["finetune"]
    return "\n".join(
        [
            f"# Pruning report — {r['model']}",
            "",
            md_table(["", "dense", "pruned", "pruned / dense (or delta)"], rows),
            "",
            f"Fine-tune: {ft['epochs']} epoch(s), lr {ft['lr']}, distillation {'on' if ft['distill'] else 'off'}"
            + (f", the last {ft['swa']['epochs']} averaged (SWA, lr {ft['swa']['lr']:g})" if ft.get("swa") else "")
            + ". "
            + (
                f"ONNX export ({r['onnx'].get('exporter', 'legacy')}) checked against onnxruntime "
                f"(max |diff| {r['onnx']['max_abs_diff']:.1e}). "
                if "error" not in r["onnx"]
                else f"**Warning**: no ONNX model ({r['onnx']['error']}). "
            )
            + f"Source: {json.dumps(r['source'])}.",
            "",
            *_figure_lines(r.get("figures") or {}),
        ]
    )


FIGURE_CAPTIONS = {
    "plan_profile": "Channels kept per unit against the dense model, and each unit's share of the MACs",
    "finetune": "Fine-tune: accuracy and loss per epoch",
}


def _figure_lines(files: dict[str, str]) -> list[str]:
    """Markdown image lines for the report's figures (files beside report.md)."""
    return [line for name, file in files.items() for line in (f"![{FIGURE_CAPTIONS.get(name, name)}]({file})", "")]
