"""Channel-importance criteria as strategy objects in a name -> class registry.

Each criterion scores every channel of a dependency group (higher = keep). They wrap torch-pruning's group
importances, which aggregate over all coupled layers of the group, so residual-coupled channels are ranked jointly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

import torch
import torch_pruning as tp

from rlprune.errors import RLPruneError


class Criterion(ABC):
    """Scores the channels of one group; ``needs_gradients`` asks for a backward pass on calibration data first."""

    name: str = ""
    needs_gradients: bool = False

    @abstractmethod
    def __call__(self, group: object) -> torch.Tensor: ...


def _checked(name: str, group: object, scores: torch.Tensor | None) -> torch.Tensor:
    """One finite score per channel of the group, or an error: torch-pruning returns None when no layer of the group
    carries the criterion (e.g. bn_scale on a group without batch norm, taylor without gradients), and ranking
    channels by anything else (their order) would prune arbitrary channels under the criterion's name."""
    channels = len(group[0].idxs)  # type: ignore[index]
    if scores is None:
        raise RLPruneError(
            f"importance '{name}': torch-pruning gave no scores for a group of {channels} channels (none of its "
            "layers carries this criterion); choose another importance"
        )
    scores = scores.detach().float().cpu().reshape(-1)
    if scores.numel() != channels or not torch.isfinite(scores).all():
        raise RLPruneError(
            f"importance '{name}': expected {channels} finite channel scores from torch-pruning, got "
            f"{scores.numel()} ({int((~torch.isfinite(scores)).sum())} not finite)"
        )
    return scores


class _TorchPruningCriterion(Criterion):
    def __init__(self, impl: tp.importance.Importance) -> None:
        self.impl = impl

    @torch.no_grad()
    def __call__(self, group: object) -> torch.Tensor:
        return _checked(self.name, group, self.impl(group))


class L1(_TorchPruningCriterion):
    """Mean L1 norm of each channel's weights over the coupled layers (Li et al., 2017)."""

    name = "l1"

    def __init__(self) -> None:
        super().__init__(tp.importance.GroupMagnitudeImportance(p=1))


class L2(_TorchPruningCriterion):
    """Mean L2 norm of each channel's weights over the coupled layers."""

    name = "l2"

    def __init__(self) -> None:
        super().__init__(tp.importance.GroupMagnitudeImportance(p=2))


class BNScale(_TorchPruningCriterion):
    """|gamma| of the batch-norm layers in the group (network slimming, Liu et al., 2017)."""

    name = "bn_scale"

    def __init__(self) -> None:
        super().__init__(tp.importance.BNScaleImportance())


class Taylor(Criterion):
    """First-order Taylor estimate |w · dL/dw| (Molchanov et al., 2019); needs gradients from calibration batches."""

    name = "taylor"
    needs_gradients = True

    def __init__(self) -> None:
        self.impl = tp.importance.GroupTaylorImportance()

    def __call__(self, group: object) -> torch.Tensor:
        return _checked(self.name, group, self.impl(group))


CRITERIA: dict[str, type[Criterion]] = {c.name: c for c in (L1, L2, BNScale, Taylor)}


def get_criterion(name: str) -> Criterion:
    """Instantiate a criterion by registry name."""
    try:
        return CRITERIA[name]()
    except KeyError:
        raise RLPruneError(f"importance '{name}': unknown (expected one of {', '.join(sorted(CRITERIA))})") from None


def calibration_batches(
    importance: str, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], count: int = 4
) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The first ``count`` labelled batches when ``importance`` ranks channels by gradients (taylor), else ``None``.

    Fixed up front so that every plan is ranked on the same data (the proxy calls ``prune`` once per plan).
    """
    if not get_criterion(importance).needs_gradients:
        return None
    return [b for _, b in zip(range(count), batches, strict=False)]
