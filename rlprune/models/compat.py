"""Fit a user's model factory to a dataset, and refuse a model that cannot match it, before any work.

A factory written for RGB ImageNet-sized data (``in_channels=3, num_classes=1000`` defaults) used on a grayscale
5-class folder would otherwise die at the first batch with a shape error from deep inside torch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rlprune.errors import RLPruneError

# Keyword names factories commonly use for the two dataset-dependent sizes (torchvision, timm, HF, our zoo).
CLASS_KWARGS = ("num_classes", "n_classes", "classes", "num_labels", "out_features", "num_outputs")
CHANNEL_KWARGS = ("in_channels", "in_chans", "input_channels", "num_channels", "in_ch", "channels")


def _accepted(factory: Callable[..., Any]) -> tuple[set[str], bool]:
    """Keyword names ``factory`` takes, and whether it takes ``**kwargs``."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        return set(), False
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def fill_kwargs(factory: Callable[..., Any], kwargs: dict[str, Any], num_classes: int, in_channels: int) -> dict:
    """``kwargs`` plus the dataset's class and channel counts under the first name the factory accepts (never
    overriding what the user configured; a factory taking only ``**kwargs`` is left alone: we cannot know its
    names)."""
    names, _ = _accepted(factory)
    out = dict(kwargs)
    for candidates, value in ((CLASS_KWARGS, num_classes), (CHANNEL_KWARGS, in_channels)):
        if any(k in out for k in candidates):
            continue
        for key in candidates:
            if key in names:
                out[key] = value
                break
    return out


def check_model_io(model: nn.Module, name: str, in_channels: int, input_size: int, num_classes: int) -> None:
    """One forward pass on a zero batch of the dataset's shape: the model must accept it and return one logit per
    class, shape ``(batch, num_classes)``; otherwise a one-line error naming the ``model.kwargs`` to set."""
    x = torch.zeros(2, in_channels, input_size, input_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RLPruneError(
            f"model '{name}': does not accept the dataset's {in_channels}x{input_size}x{input_size} images ({first}); "
            f"set model.kwargs for its input channels (e.g. in_channels: {in_channels}) or data.channels / "
            "data.input_size"
        ) from None
    finally:
        model.train(was_training)
    logits = getattr(out, "logits", out)  # Hugging Face models return an output object
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, num_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise RLPruneError(
            f"model '{name}': outputs {shape} for a batch of 2, expected (2, {num_classes}): one logit per class of "
            f"the dataset; set model.kwargs for its class count (e.g. num_classes: {num_classes})"
        )
