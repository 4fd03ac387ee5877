"""Fine-tuning on plain PyTorch data: any iterable of ``(inputs, labels)`` batches, e.g. a ``DataLoader``.

The engine in :mod:`rlprune.training.engine` trains on rlprune's own in-memory splits (resumable, per-epoch
checkpoints, SWA, GPU-side augmentation). This loop is the one for users' own loaders: SGD with Nesterov momentum,
a per-step cosine schedule and, when a teacher is given, distillation from it — the recipe that recovers a pruned
model's accuracy in a few epochs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from rlprune.errors import RLPruneError
from rlprune.training.losses import distillation_loss
from rlprune.training.schedule import lr_multiplier


def _sized(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def finetune(
    model: nn.Module,
    train_loader: Iterable[Any],
    *,
    epochs: int = 1,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    teacher: nn.Module | None = None,
    distill_weight: float = 0.5,
    temperature: float = 4.0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    evaluate: Callable[[nn.Module], float | Mapping[str, float]] | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> list[dict[str, float]]:
    """Train ``model`` in place for ``epochs`` passes over ``train_loader``; returns one record per epoch.

    :param train_loader: batches ``(inputs, labels)``; a sized loader gets a cosine schedule over all steps, an
        unsized one a constant ``lr``.
    :param teacher: distil from this model's logits (typically the dense model); left unchanged.
    :param distill_weight: weight ``w`` of the distillation term in ``(1-w)·CE + w·T²·KL``.
    :param loss_fn: your own ``loss_fn(logits, labels)`` instead of (distilled) cross-entropy.
    :param evaluate: called after every epoch (e.g. your validation metric); its result is recorded.
    :param seed: seeds torch for dropout and any randomness in the model.
    """
    if epochs < 1:
        raise RLPruneError(f"finetune: epochs must be >= 1, got {epochs}")
    for name, value in (("lr", lr), ("weight_decay", weight_decay), ("temperature", temperature)):
        if not math.isfinite(value) or value < 0 or (name != "weight_decay" and value == 0):
            raise RLPruneError(f"finetune: {name} must be a finite number > 0, got {value}")
    if not 0.0 <= distill_weight <= 1.0:
        raise RLPruneError(f"finetune: distill_weight must lie in [0, 1], got {distill_weight}")
    torch.manual_seed(seed)
    device = torch.device(device)
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps = _sized(train_loader)
    schedule = lr_multiplier("cosine", steps * epochs, 0) if steps else (lambda _step: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        for batch in train_loader:
            if not (isinstance(batch, list | tuple) and len(batch) >= 2):
                raise RLPruneError("finetune: train_loader must yield (inputs, labels) batches")
            x, y = batch[0].to(device), batch[1].to(device)
            logits = model(x)
            if loss_fn is not None:
                loss = loss_fn(logits, y)
            else:
                with torch.no_grad():
                    t_logits = teacher(x) if teacher is not None else None
                loss = distillation_loss(logits, y, t_logits, temperature=temperature, weight=distill_weight)
            if not torch.isfinite(loss):
                raise RLPruneError(f"finetune: the loss became {loss.item()} in epoch {epoch + 1} at lr {lr}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            count += len(y)
        if count == 0:
            raise RLPruneError("finetune: train_loader yielded no batch")
        record: dict[str, float] = {"epoch": epoch + 1, "train_loss": total / count}
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                result = evaluate(model)
            if isinstance(result, Mapping):
                record.update({str(k): float(v) for k, v in result.items()})
            else:
                record["score"] = float(result)
        history.append(record)
    return history


__all__ = ["finetune"]
