"""``rlprune finetune`` (and the second half of ``rlprune apply``): a plan turned into a deployable pruned model.

Prune for real -> recalibrate batch norm -> fine-tune (distilling from the dense model by default) -> evaluate on
validation and test -> save safetensors + plan, ONNX (checked against onnxruntime), ``report.json`` / ``report.md``
and figures. Everything is written into a hidden ``.partial`` folder renamed into place at the end: a failed run
leaves nothing half-written, and a killed fine-tune resumes from its last finished epoch."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune.config import TrainConfig
from rlprune.config.experiment import FinetuneConfig
from rlprune.cost.latency import compare_latency
from rlprune.cost.macs import count_macs, count_params
from rlprune.data import BatchLoader, DataSplits
from rlprune.deploy.int8 import int8_report
from rlprune.deploy.onnx import export_onnx
from rlprune.errors import RLPruneError
from rlprune.evaluation import evaluate
from rlprune.evaluation.bn import recalibrate_bn
from rlprune.evaluation.classes import classes_section
from rlprune.io.checkpoint import load_checkpoint, save_checkpoint
from rlprune.io.files import atomic_write_text
from rlprune.io.provenance import environment, is_current, provenance, tensors_sha256
from rlprune.io.reports import Accuracies, DenseSide, FinetuneRecipe, FinetuneReport, PrunedSide
from rlprune.io.rundir import RunDir
from rlprune.io.safe import locked
from rlprune.jobs.apply import example_input, original_structure
from rlprune.pruning import Plan, Structure, prune
from rlprune.pruning.importance import calibration_batches
from rlprune.pruning.rounds import compose_plans
from rlprune.pruning.weights import sparsify_plan, structure_for
from rlprune.reporting import outputs
from rlprune.reporting.finetune_md import finetune_markdown, int8_markdown
from rlprune.reporting.sparse import sparse_markdown, sparse_section
from rlprune.seeding import resolve_device
from rlprune.training.engine import fit

log = logging.getLogger("rlprune.jobs.finetune")


# What a partial fine-tune's saved state holds (rlprune.training.engine): a partial run saved in another format is
# started over, never resumed (2: the state's key always holds the SWA, steps-per-epoch and cutout settings).
RESUME_FORMAT = 2


# One fine-tune per output at a time: a second one would delete the first's live ``.partial`` folder.
@locked(lambda a: Path(a["out_dir"]), "fine-tune output")
def finetune_plan(
    dense: nn.Module,
    meta: dict[str, Any],
    plan: Plan,
    splits: DataSplits,
    out_dir: Path,
    recipe: FinetuneConfig | None = None,
    *,
    recal_batches: int = 50,
    seed: int = 0,
    latency_batches: tuple[int, ...] = (1, 64),
    progress: bool = True,
    source: dict[str, Any] | None = None,
    reuse: bool = False,
    device: str = "cpu",
    reference: nn.Module | None = None,
) -> FinetuneReport:
    """Prune ``dense`` with ``plan``, fine-tune, evaluate, export and report into ``out_dir``; returns the report.

    Work happens in ``.<out_dir name>.partial`` beside ``out_dir`` and is renamed into place when complete, so
    ``out_dir`` is never half-written. A fine-tune that was killed resumes from its last finished epoch when the same
    command is run again (the partial folder keeps its per-epoch state; a failure before any epoch removes it).

    :param recipe: epochs, lr, distillation, batch size, SWA, steps per epoch and int8 quantization (a validated
        :class:`~rlprune.config.FinetuneConfig`; default: its defaults).
    :param reuse: if ``out_dir`` already holds a report made by this very request (plan, dense weights, recipe,
        seed, code version: its ``provenance`` hash), return it instead of fine-tuning again; a report made by any
        other request is measured again and replaced.
    :param device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when present) for the fine-tune and evaluation;
        CPU latency is always measured on CPU.
    :param reference: the model the report compares against and the fine-tune distills from (default: ``dense``).
        Iterative rounds prune an already pruned ``dense`` (its ``meta`` holds its plan; the saved checkpoint then
        records the plan composed onto the original architecture) and pass the original dense model here, so that
        every round is reported against it and learns from it.
    """
    recipe = recipe or FinetuneConfig()
    train = recipe.train_config()
    distill, batch_size, quantize = recipe.distill, recipe.batch_size, recipe.quantize
    # what decides the report, code version included: a report is reused only if it was made by exactly this
    produced_by = {
        "plan": plan.key(),
        "dense": meta.get("weights_sha256") or tensors_sha256(dense),
        **train.model_dump(mode="json"),
        **{"distill": distill, "batch_size": batch_size, "recal_batches": recal_batches, "seed": seed},
        **{"latency_batches": list(latency_batches), "device": str(device)},
        **({"quantize": quantize} if quantize else {}),
        **({"reference": tensors_sha256(reference)} if reference is not None else {}),
    }
    stale = False
    if reuse and (out_dir / "report.json").is_file():
        try:
            stored: FinetuneReport | None = FinetuneReport.load(out_dir / "report.json", "fine-tune report")
        except RLPruneError as exc:  # another format, or edited: measured again
            log.warning("%s", exc)
            stored = None
        if stored is not None and is_current({"provenance": stored.provenance}, produced_by):
            return stored
        log.warning("%s: made by another plan, checkpoint, recipe or code version; measuring it again", out_dir)
        stale = True  # replaced only once the new report is complete
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not stale:
        raise RLPruneError(f"{out_dir}: output exists and is not an empty directory")
    example = example_input(meta)
    structure = structure_for(
        dense.eval(), example, plan.granularity, ignore=plan.options.ignore, heads=plan.options.heads or None
    )
    plan.check(structure, "plan")
    run = RunDir(out_dir, "fine-tune output")
    staged = {**produced_by, "resume_format": RESUME_FORMAT}  # a partial run of another format is started over
    work = run.stage(json.dumps(staged, sort_keys=True), resumable="finetune/state.pt", job="fine-tune")
    try:
        report = _run(
            dense,
            meta,
            plan,
            structure,
            splits,
            work,
            recipe=train,
            distill=distill,
            batch_size=batch_size,
            recal_batches=recal_batches,
            seed=seed,
            latency_batches=latency_batches,
            progress=progress,
            source=source or {},
            device=resolve_device(device),
            swa=recipe.swa,
            quantize=quantize,
            reference=reference,
        )
        report.provenance = provenance(produced_by)
        # the report (written once, complete), then the folder into place without what only served resuming
        # (TensorBoard logs stay)
        report.save(work / "report.json")
        run.publish(work, drop=("finetune/last.safetensors", "finetune/last.json", "finetune/state.pt"), replace=stale)
        if report.onnx.get("error"):
            raise RLPruneError(f"{out_dir}: fine-tuned model, plan and report written, but {report.onnx['error']}")
    except BaseException as exc:
        if not (work / "finetune" / "state.pt").is_file():
            shutil.rmtree(work, ignore_errors=True)
        else:
            why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed ({type(exc).__name__})"
            log.warning("fine-tune %s; the same command resumes from the last finished epoch in %s", why, work)
        raise
    return report


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
) -> FinetuneReport:
    """Prune, fine-tune, check, export and report into ``work``; returns the report."""
    mean, std = meta.get("mean", splits.mean), meta.get("std", splits.std)
    shape = tuple(example_input(meta).shape[1:])
    loader = BatchLoader(splits.train, batch_size, mean, std, shuffle=True, seed=seed + 1)
    pruned, plan, structure, masks = _pruned(dense, meta, plan, structure, loader)
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
    teacher = dense if distill else None
    train_meta = {"model": meta["model"]}
    kw = {"batch_size": batch_size, "seed": seed, "progress": progress, "device": device}
    history = fit(
        pruned, splits, recipe, work / "finetune", meta=train_meta, teacher=teacher, resume=True, **kw
    ).history
    if masks is not None:
        masks.detach()
        masks.apply(pruned)
    after = scores(pruned.eval())
    pruned, dense = pruned.cpu(), dense.cpu()
    plan.metrics = {"val_accuracy": after["val"], "test_accuracy": after["test"]}
    _save_checked(pruned, meta, plan, masks is not None, after, recipe, source, work, shape)
    try:
        onnx: dict[str, Any] = export_onnx(pruned, shape, work / "model.onnx")
    except RLPruneError as exc:  # the fine-tuned model must survive a model no exporter handles
        log.warning("%s", exc)
        onnx = {"error": str(exc)}
    dense_macs, pruned_macs = count_macs(dense.cpu(), shape), count_macs(pruned, shape)
    report = FinetuneReport(
        model=meta["model"],
        source=source,
        plan_units=len(plan.ratios),
        dense=DenseSide(params=count_params(dense), macs=dense_macs, **dense_acc),
        pruned=PrunedSide(
            params=count_params(pruned),
            macs=pruned_macs,
            macs_ratio=pruned_macs / dense_macs,
            before_finetune=Accuracies(**before),
            after_finetune=Accuracies(**after),
        ),
        **_latencies(dense, pruned, shape, latency_batches),
        onnx=onnx,
        finetune=FinetuneRecipe(epochs=recipe.epochs, lr=recipe.lr, distill=distill, swa=swa, history=history),
        environment=environment(),
    )
    if masks is not None:
        report.sparse = sparse_section(pruned, masks, plan, structure, work, work / "model.safetensors")
    # per-class numbers on the test split (reported, never used to choose): does any class pay for the cut?
    report.classes, classes_md = classes_section(
        {"dense": dense, "pruned": pruned}, splits.test, mean, std, chart=work / "classes.png"
    )
    if quantize == "int8" and "error" not in onnx:
        report.int8 = int8_report(pruned, splits, work, mean=mean, std=std, seed=seed)
    report.figures = outputs.write_report_figures(work, report, plan, structure, work / "finetune" / "tb")
    extra = classes_md + int8_markdown(report.int8) + sparse_markdown(report.sparse)
    atomic_write_text(work / "report.md", finetune_markdown(report) + "\n" + extra)
    return report


def _pruned(
    dense: nn.Module, meta: dict[str, Any], plan: Plan, structure: Structure, loader: BatchLoader
) -> tuple[nn.Module, Plan, Structure, Any]:
    """The pruned model (channels removed, or weights zeroed with the masks that keep them zero while fine-tuning),
    its plan with the kept channels, and the structure and plan of the original architecture when ``dense`` was
    itself pruned before (the checkpoint records the composed plan)."""
    masks = None
    if plan.granularity != "channel":  # weights zeroed, shapes kept
        pruned = copy.deepcopy(dense)
        masks = sparsify_plan(pruned, plan)
    else:
        calibration = calibration_batches(plan.importance, loader)  # e.g. taylor: scores from a few labelled batches
        pruned, plan = prune(dense, plan, example_input(meta), calibration=calibration)
    if meta.get("plan") and masks is None:
        structure = original_structure(meta)
        plan = compose_plans(Plan.from_dict(meta["plan"], "checkpoint plan"), plan, structure)
    return pruned, plan, structure, masks


def _save_checked(
    pruned: nn.Module,
    meta: dict[str, Any],
    plan: Plan,
    sparse: bool,
    after: dict[str, float],
    recipe: TrainConfig,
    source: dict[str, Any],
    work: Path,
    shape: tuple[int, ...],
) -> None:
    """Save the fine-tuned model and its plan, and refuse a checkpoint that does not rebuild into the same model."""
    ckpt_meta = {k: v for k, v in meta.items() if k not in ("weights_file", "weights_sha256", "format")}
    # a sparse model keeps its dense shapes: its plan is recorded apart, so loading it reshapes nothing
    ckpt_meta.update(
        **({"sparse_plan": plan.to_dict()} if sparse else {"plan": plan.to_dict()}),
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


def _latencies(dense: nn.Module, pruned: nn.Module, shape: tuple[int, ...], batches: tuple[int, ...]) -> dict[str, Any]:
    """Dense and pruned latency per batch size on the CPU, and on the GPU when there is one (both left on the CPU)."""
    lat = _str_keys(compare_latency({"dense": dense.eval(), "pruned": pruned}, shape, batches, repeats=15))
    gpu = None
    if torch.cuda.is_available():
        gpu = _str_keys(compare_latency({"dense": dense.cuda(), "pruned": pruned.cuda()}, shape, batches, repeats=30))
        dense.cpu()
        pruned.cpu()
    return {"latency_ms_cpu": lat, "latency_ms_gpu": gpu}


def _str_keys(latency: dict[str, dict[int, float]]) -> dict[str, dict[str, float]]:
    """Batch sizes as strings: the report reads the same whether it was just computed or loaded from JSON."""
    return {name: {str(bs): ms for bs, ms in by_batch.items()} for name, by_batch in latency.items()}
