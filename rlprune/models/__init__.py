"""Model zoo: built-in CIFAR networks by name, and users' own models by import path ``package.module:factory``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from rlprune.errors import RLPruneError
from rlprune.models.mobilenetv1_cifar import mobilenetv1
from rlprune.models.mobilenetv2_cifar import mobilenetv2
from rlprune.models.resnet_cifar import resnet20, resnet32, resnet56, resnet110
from rlprune.models.vgg_cifar import vgg11_bn, vgg16_bn
from rlprune.models.vit import vit_cifar

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "vgg11_bn": vgg11_bn,
    "vgg16_bn": vgg16_bn,
    "mobilenetv1": mobilenetv1,
    "mobilenetv2": mobilenetv2,
    "vit_cifar": vit_cifar,
}


def resolve_factory(name: str) -> Callable[..., nn.Module]:
    """Find a model factory: a zoo name, or ``package.module:callable`` for a user's own model."""
    if name in MODELS:
        return MODELS[name]
    if ":" not in name:
        raise RLPruneError(
            f"model '{name}': not in the zoo ({', '.join(sorted(MODELS))}) "
            "and not an import path 'package.module:factory'"
        )
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RLPruneError(f"model '{name}': cannot import module '{module_name}' ({exc})") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise RLPruneError(f"model '{name}': module '{module_name}' has no callable '{attr}'")
    return factory


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate a model by zoo name or import path, passing ``kwargs`` (e.g. ``num_classes``) to its factory."""
    factory = resolve_factory(name)
    try:
        model = factory(**kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError, ArithmeticError) as exc:
        # e.g. num_classes: -1 or width: 0 from a sidecar; the message is cut so that a hostile value is not echoed
        why = " ".join(str(exc).split())[:80]
        raise RLPruneError(f"model '{name}': bad keyword arguments {sorted(kwargs)[:8]} ({why})") from exc
    if not isinstance(model, nn.Module):
        raise RLPruneError(f"model '{name}': factory returned {type(model).__name__}, expected a torch.nn.Module")
    return model


__all__ = ["MODELS", "build_model", "resolve_factory"]
