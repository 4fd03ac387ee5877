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
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from rlprune.config import TrainConfig
from rlprune.data import BatchLoader, DataSplits
from rlprune.errors import RLPruneError
from rlprune.evaluation import evaluate
from rlprune.evaluation.bn import recalibrate_bn
from rlprune.io.checkpoint import load_state, save_checkpoint, save_state
from rlprune.io.files import atomic_write_text
from rlprune.io.rundir import RunDir
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
    on_start: Callable[[], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``splits.train``, validating on ``splits.val`` after every ``recipe.eval_every`` epochs.

    After each epoch the weights go to ``run_dir/last.safetensors`` (+ JSON) and the optimizer/scheduler state to
    ``run_dir/state.pt``. With ``resume`` and a state present, training continues after the last saved epoch; every
    epoch draws its batch order and augmentation from ``seed + epoch``, so a resumed run repeats no epoch and skips
    none.

    :param meta: checkpoint metadata (model name, kwargs, classes, ...); training adds the recipe and metrics.
    :param cutout: Cutout square side in pixels on top of crop + flip (0 = off).
    :param teacher: a model (left unchanged) whose logits are distilled when ``recipe.distill.weight > 0``.
    :param on_start: called once a resume is known to fit (before the first epoch): a refused resume writes nothing.
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
    step = _Step(model, recipe, steps_per_epoch, device, dtype, teacher)
    key: dict[str, Any] = {"recipe": recipe.model_dump(mode="json"), "batch_size": batch_size, "seed": seed}
    key["cutout"] = cutout
    # the model and the data it trains on: a resume with another architecture would not load, and one with another
    # split would train on images an earlier epoch validated on (where the data lies on disk may change)
    key["model"] = {k: meta[k] for k in ("model", "model_kwargs", "init_from") if k in meta}
    # not where the data lies nor its files' dates (a copy keeps the split, which split_sha256 and the counts identify)
    dataset = {k: v for k, v in (meta.get("dataset") or {}).items() if k not in ("root", "source_sha256")}
    key["data"] = {**dataset, "train_images": len(splits.train), "val_images": len(splits.val), "augment": augment}
    run_key = json.dumps(key)
    state_path, last_path = run_dir / "state.pt", run_dir / "last"
    result = FitResult()
    if resume and state_path.is_file():
        result.history = step.restore(load_state(state_path), run_key, state_path)
        result.resumed_from_epoch = len(result.history)
    start_epoch = result.resumed_from_epoch
    if on_start is not None:
        on_start()

    def validate() -> dict[str, float]:
        return evaluate(model, splits.val, splits.mean, splits.std, batch_size=eval_batch_size, device=device)

    writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_epoch + 1 if start_epoch else None)
    started = time.perf_counter()
    try:
        for epoch in range(start_epoch, recipe.epochs):
            epoch_start = time.perf_counter()
            loader.set_epoch(epoch)
            record = {"epoch": epoch + 1, **step.epoch(loader, epoch, progress)}
            if not math.isfinite(record["train_loss"]):
                # a diverged run must not become a resume point: stop before this epoch is saved
                raise RLPruneError(
                    f"epoch {epoch + 1}: the training loss became {record['train_loss']} at lr {record['lr']:.4g} "
                    f"(peak lr {recipe.lr:g}); lower the learning rate"
                )
            if epoch >= step.swa_start:
                step.average.update(model)
                record["swa_models"] = step.average.count
            if recipe.swa.epochs and epoch + 1 == recipe.epochs:
                # the last iterate's score, kept so that the average's gain over it is on record
                val = validate()
                record.update(sgd_val_accuracy=val["accuracy"], sgd_val_loss=val["loss"])
                step.average.copy_to(model)
                with autocast(device, dtype):
                    recalibrate_bn(model, (x for x, _ in loader))
            record["epoch_seconds"] = time.perf_counter() - epoch_start  # the averaging is part of the epoch
            if (epoch + 1) % recipe.eval_every == 0 or epoch + 1 == recipe.epochs:
                val = validate()
                record.update(val_accuracy=val["accuracy"], val_loss=val["loss"])
            result.history.append(record)
            for name, value in record.items():
                if name != "epoch":
                    writer.add_scalar(f"train/{name}", value, epoch + 1)
            writer.flush()
            epoch_meta = {
                **meta,
                "recipe": recipe.model_dump(mode="json"),
                "epochs_done": epoch + 1,
                "val_accuracy": record.get("val_accuracy"),
            }
            save_checkpoint(last_path, model, epoch_meta)
            save_state(state_path, step.state(epoch + 1, result.history, run_key))
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
    result.val = validate()
    result.checkpoint = last_path.with_suffix(".json")
    return result


class _Step:
    """The optimisation state of one run — SGD with the schedule, loss scaling, the SWA average — and one epoch of
    it; saved and restored as a whole so that a resumed run continues exactly."""

    def __init__(
        self,
        model: nn.Module,
        recipe: TrainConfig,
        steps_per_epoch: int,
        device: torch.device,
        dtype: torch.dtype | None,
        teacher: nn.Module | None,
    ) -> None:
        self.model, self.recipe, self.device, self.dtype = model, recipe, device, dtype
        self.teacher = teacher if teacher is not None and recipe.distill.weight > 0 else None
        self.steps_per_epoch = steps_per_epoch
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        self.optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov and recipe.momentum > 0,
        )
        self.swa_start = recipe.epochs - recipe.swa.epochs  # epochs from this index on are averaged
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lr_multiplier(
                recipe.schedule,
                self.swa_start * steps_per_epoch,
                round(recipe.warmup_epochs * steps_per_epoch),
                floor=recipe.swa.lr / recipe.lr if recipe.swa.epochs else 0.0,
            ),
        )
        self.average = WeightAverage()
        self.scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    def state(self, epochs_done: int, history: list[dict[str, float]], run_key: str) -> dict[str, Any]:
        return {
            "epoch": epochs_done,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": json.dumps(history),
            "run": run_key,
            **({"swa": self.average.state_dict()} if self.average.count else {}),
        }

    def restore(self, state: dict[str, Any], run_key: str, where: Path) -> list[dict[str, float]]:
        """Load a saved state of the same run; returns its history (one record per finished epoch)."""
        missing = [key for key in ("run", "model", "optimizer", "scheduler", "history", "epoch") if key not in state]
        if missing:
            raise RLPruneError(f"{where}: not a complete resume state (no '{missing[0]}')", fix="restart")
        saved, now = json.loads(state["run"]), json.loads(run_key)
        RunDir(where.parent).check_same(saved, now, what="recipe, model or data", fix="restart_or_rename")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if "swa" in state:
            self.average.load_state_dict(state["swa"])
        history = json.loads(state["history"])
        if len(history) != int(state["epoch"]):
            raise RLPruneError(
                f"{where}: resume state is inconsistent ({len(history)} records, epoch {state['epoch']})"
            )
        return history

    def epoch(self, loader: BatchLoader, epoch: int, progress: bool) -> dict[str, float]:
        """One pass over ``loader``; returns the epoch's training loss, accuracy and final learning rate."""
        model, recipe, distill = self.model, self.recipe, self.recipe.distill
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        bar = tqdm(
            itertools.islice(loader, self.steps_per_epoch),  # the whole split unless recipe.steps_per_epoch caps it
            total=self.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{recipe.epochs}",
            leave=False,
            disable=not progress,
            unit="batch",
            dynamic_ncols=True,
        )
        for i, (x, y) in enumerate(bar):
            with autocast(self.device, self.dtype):
                logits = model(x)
                teacher_logits = None
                if self.teacher is not None:
                    with torch.no_grad():
                        teacher_logits = self.teacher(x)
            loss = distillation_loss(
                logits,
                y,
                teacher_logits,
                label_smoothing=recipe.label_smoothing,
                temperature=distill.temperature,
                weight=distill.weight,
            )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            loss_sum += loss.detach() * y.numel()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.numel()
            if progress and (i % 20 == 0 or i == self.steps_per_epoch - 1):
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{100 * correct.item() / seen:.1f}")
        bar.close()
        return {
            "train_loss": loss_sum.item() / seen,
            "train_accuracy": 100.0 * correct.item() / seen,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
