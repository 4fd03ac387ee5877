"""Distillation teachers: one checkpoint, or several whose logits are averaged.

An ensemble of independently trained models is more accurate than any member, and distilling it is the usual way to
move a small network past what its own training reaches (Hinton et al., 2015).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rlprune.errors import RLPruneError
from rlprune.io.checkpoint import load_checkpoint


class LogitEnsemble(nn.Module):
    """The mean of its members' logits (members share classes and input normalization)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def load_teacher(
    paths: str | Sequence[str],
    classes: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    trust_model_code: bool = False,
) -> nn.Module:
    """Load one teacher checkpoint, or a :class:`LogitEnsemble` of several.

    Each must predict the student's classes, in the same order, from inputs normalized the same way (to 0.02: a subset
    of the same training data shifts the statistics by less, another dataset's by more); otherwise its logits would
    teach the wrong labels, so it is refused with a one-line error naming the file.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    models = []
    for path in paths:
        model, meta = load_checkpoint(path, trust_model_code=trust_model_code)
        if list(meta.get("classes", [])) != list(classes):
            raise RLPruneError(f"distill.teacher: {path} predicts classes {meta.get('classes')}, not {list(classes)}")
        for key, want in (("mean", mean), ("std", std)):
            have = meta.get(key)
            if have is not None and not torch.allclose(torch.tensor(have), torch.tensor(list(want)), atol=0.02):
                raise RLPruneError(f"distill.teacher: {path} expects input {key} {have}, the data has {list(want)}")
        models.append(model)
    return models[0] if len(models) == 1 else LogitEnsemble(models)
