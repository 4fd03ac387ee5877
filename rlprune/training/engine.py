"""The one training loop used for pretraining and fine-tuning.

SGD (Nesterov) with a per-step warm-up + cosine or one-cycle schedule, label smoothing, weight decay, optional
distillation from a teacher, stochastic weight averaging over the last epochs, bf16 autocast and channels-last where
the hardware gains from them, a progress bar, per-epoch TensorBoard scalars, and a checkpoint after every epoch from
which a killed run resumes with no lost epoch.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from rlprune.checkpoint import load_state, load_weights, read_meta, save_checkpoint, save_state
from rlprune.config import TrainConfig, atomic_write_text
from rlprune.data import BatchLoader, DataSplits
from rlprune.errors import RLPruneError
from rlprune.evaluation import evaluate
from rlprune.evaluation.bn import recalibrate_bn
from rlprune.precision import autocast, autocast_dtype, use_channels_last
from rlprune.training.losses import distillation_loss
from rlprune.training.schedule import lr_multiplier
from rlprune.training.swa import WeightAverage

log = logging.getLogger("rlprune.train")


@dataclass
class FitResult:
    """What a training run produced: per-epoch history, final validation metrics and the checkpoint's path."""

    history: list[dict[str, float]] = field(default_factory=list)
    val: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    resumed_from_epoch: int = 0
    seconds: float = 0.0


def fit(
    model: nn.Module,
    splits: DataSplits,
    recipe: TrainConfig,
    run_dir: Path,
    *,
    meta: dict[str, Any],
    batch_size: int = 128,
    eval_batch_size: int = 500,
    augment: bool = True,
    cutout: int = 0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    teacher: nn.Module | None = None,
    resume: bool = True,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``splits.train``, validating on ``splits.val`` after every ``recipe.eval_every`` epochs.

    After each epoch the weights go to ``run_dir/last.safetensors`` (+ JSON) and the optimizer/scheduler state to
    ``run_dir/state.pt``. With ``resume`` and a state present, training continues after the last saved epoch; every
    epoch draws its batch order and augmentation from ``seed + epoch``, so a resumed run repeats no epoch and skips
    none.

    :param meta: checkpoint metadata (model name, kwargs, classes, ...); training adds the recipe and metrics.
    :param cutout: Cutout square side in pixels on top of crop + flip (0 = off).
    :param teacher: a model (left unchanged) whose logits are distilled when ``recipe.distill.weight > 0``.
    """
    device = torch.device(device)
    cudnn_benchmark = torch.backends.cudnn.benchmark
    if device.type == "cuda":  # fixed input shapes: let cuDNN pick the fastest kernels once (restored at the end)
        torch.backends.cudnn.benchmark = True
    run_dir.mkdir(parents=True, exist_ok=True)
    dtype = autocast_dtype(recipe.amp, device)
    channels_last = use_channels_last(recipe.channels_last, dtype)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if teacher is not None:
        # Its forward runs under no_grad; its requires_grad flags stay as they are, because the caller's model may be
        # traced for pruning afterwards (torch-pruning follows autograd, and frozen weights leave nothing to follow).
        teacher.to(device).eval()

    loader = BatchLoader(
        splits.train,
        batch_size,
        splits.mean,
        splits.std,
        shuffle=True,
        augment=augment,
        cutout=cutout,
        drop_last=True,
        seed=seed,
        device=device,
        channels_last=channels_last,
    )
    steps_per_epoch = min(len(loader), recipe.steps_per_epoch or len(loader))
    if steps_per_epoch == 0:
        raise RLPruneError(f"batch size {batch_size}: the training split has only {len(splits.train)} images")
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov and recipe.momentum > 0,
    )
    swa_start = recipe.epochs - recipe.swa.epochs  # epochs from this index on are averaged
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lr_multiplier(
            recipe.schedule,
            swa_start * steps_per_epoch,
            round(recipe.warmup_epochs * steps_per_epoch),
            floor=recipe.swa.lr / recipe.lr if recipe.swa.epochs else 0.0,
        ),
    )
    average = WeightAverage()
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    result = FitResult()
    start_epoch = 0
    state_path, last_path = run_dir / "state.pt", run_dir / "last"
    # swa and steps_per_epoch enter the key only when on, so runs saved before the options existed still resume
    unset = {name for name, on in (("swa", recipe.swa.epochs), ("steps_per_epoch", recipe.steps_per_epoch)) if not on}
    dumped = recipe.model_dump(mode="json", exclude=unset or None)
    key: dict[str, Any] = {"recipe": dumped, "batch_size": batch_size, "seed": seed}
    if cutout:  # only when on, so runs saved before the option existed still resume
        key["cutout"] = cutout
    run_key = json.dumps(key)
    if resume and state_path.is_file():
        state = load_state(state_path)
        if state.get("run", run_key) != run_key:
            saved = json.loads(state["run"])
            now = json.loads(run_key)
            diff = _first_difference(saved, now)
            raise RLPruneError(
                f"{run_dir}: holds a saved run with another recipe ({diff}); resume it with the same settings, "
                "or use another name / --restart"
            )
        if "model" in state:  # the weights this state was saved with: no gap between two files to fall into
            model.load_state_dict(state["model"])
        else:  # runs saved before the state held the weights: ``last`` must belong to the same epoch
            last_meta = read_meta(last_path)
            if last_meta.get("epochs_done") != state["epoch"]:
                raise RLPruneError(
                    f"{run_dir}: last.json is from epoch {last_meta.get('epochs_done')} but state.pt from epoch "
                    f"{state['epoch']} (killed between the two saves); rerun with --restart"
                )
            load_weights(model, last_path, last_meta.get("weights_sha256"))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        if "swa" in state:
            average.load_state_dict(state["swa"])
        start_epoch = int(state["epoch"])
        result.history = json.loads(state["history"])
        result.resumed_from_epoch = start_epoch
    distill = recipe.distill
    use_teacher = teacher is not None and distill.weight > 0
    writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_epoch + 1 if start_epoch else None)
    started = time.perf_counter()
    try:
        for epoch in range(start_epoch, recipe.epochs):
            model.train()
            loader.set_epoch(epoch)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            bar = tqdm(
                itertools.islice(loader, steps_per_epoch),  # the whole split unless recipe.steps_per_epoch caps it
                total=steps_per_epoch,
                desc=f"epoch {epoch + 1}/{recipe.epochs}",
                leave=False,
                disable=not progress,
                unit="batch",
                dynamic_ncols=True,
            )
            epoch_start = time.perf_counter()
            for step, (x, y) in enumerate(bar):
                with autocast(device, dtype):
                    logits = model(x)
                    teacher_logits = None
                    if use_teacher:
                        with torch.no_grad():
                            teacher_logits = teacher(x)
                loss = distillation_loss(
                    logits,
                    y,
                    teacher_logits,
                    label_smoothing=recipe.label_smoothing,
                    temperature=distill.temperature,
                    weight=distill.weight,
                )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                loss_sum += loss.detach() * y.numel()
                correct += (logits.detach().argmax(1) == y).sum()
                seen += y.numel()
                if progress and (step % 20 == 0 or step == steps_per_epoch - 1):
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{100 * correct.item() / seen:.1f}")
            bar.close()
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum.item() / seen,
                "train_accuracy": 100.0 * correct.item() / seen,
                "lr": optimizer.param_groups[0]["lr"],
                "epoch_seconds": time.perf_counter() - epoch_start,
            }
            if epoch >= swa_start:
                average.update(model)
                record["swa_models"] = average.count
            if recipe.swa.epochs and epoch + 1 == recipe.epochs:
                # the last iterate's score, kept so that the average's gain over it is on record
                val = evaluate(model, splits.val, splits.mean, splits.std, batch_size=eval_batch_size, device=device)
                record.update(sgd_val_accuracy=val["accuracy"], sgd_val_loss=val["loss"])
                average.copy_to(model)
                with autocast(device, dtype):
                    recalibrate_bn(model, (x for x, _ in loader))
                record["epoch_seconds"] = time.perf_counter() - epoch_start  # the averaging is part of the epoch
            if (epoch + 1) % recipe.eval_every == 0 or epoch + 1 == recipe.epochs:
                val = evaluate(model, splits.val, splits.mean, splits.std, batch_size=eval_batch_size, device=device)
                record.update(val_accuracy=val["accuracy"], val_loss=val["loss"])
            result.history.append(record)
            for key, value in record.items():
                if key != "epoch":
                    writer.add_scalar(f"train/{key}", value, epoch + 1)
            writer.flush()
            epoch_meta = {
                **meta,
                "recipe": recipe.model_dump(mode="json"),
                "epochs_done": epoch + 1,
                "val_accuracy": record.get("val_accuracy"),
            }
            save_checkpoint(last_path, model, epoch_meta)
            save_state(
                state_path,
                {
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "history": json.dumps(result.history),
                    "run": run_key,
                    **({"swa": average.state_dict()} if average.count else {}),
                },
            )
            atomic_write_text(run_dir / "history.json", json.dumps(result.history, indent=1) + "\n")
            summary = " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch")
            log.info("epoch %d/%d %s", epoch + 1, recipe.epochs, summary)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, record)
    finally:
        writer.close()
        torch.backends.cudnn.benchmark = cudnn_benchmark
    model.to(memory_format=torch.contiguous_format)
    result.seconds = time.perf_counter() - started
    result.val = evaluate(model, splits.val, splits.mean, splits.std, batch_size=eval_batch_size, device=device)
    result.checkpoint = last_path.with_suffix(".json")
    return result


def _first_difference(saved: Any, now: Any, path: str = "") -> str:
    """The first setting that differs between two nested dicts, as ``key: saved -> now``."""
    if isinstance(saved, dict) and isinstance(now, dict):
        for key in sorted(set(saved) | set(now)):
            sub = f"{path}.{key}" if path else key
            if saved.get(key) != now.get(key):
                return _first_difference(saved.get(key), now.get(key), sub)
    return f"{path}: {saved!r} -> {now!r}"
