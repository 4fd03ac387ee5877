"""Accuracy and loss of a model on a dataset split."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rlprune.data import ArrayDataset, BatchLoader
from rlprune.precision import autocast


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: ArrayDataset,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """Top-1 accuracy (percent) and mean cross-entropy in eval mode (float32 unless ``amp_dtype`` is given).

    :param max_batches: evaluate only the first N batches (a fixed, unshuffled subset).
    :param amp_dtype: run the forward pass under autocast to this dtype (faster where the device has native
        kernels for it).
    :param channels_last: feed channels-last batches (pair it with a channels-last model).
    """
    was_training = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    loader = BatchLoader(dataset, batch_size, mean, std, device=device, channels_last=channels_last)
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        with autocast(device, amp_dtype):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        total += y.numel()
    model.train(was_training)
    if total == 0:
        return {"accuracy": 0.0, "loss": float("nan"), "images": 0}
    return {"accuracy": 100.0 * correct / total, "loss": loss_sum / total, "images": total}
