"""Where an action of 0 points: a per-unit *prior* ratio the agent's action moves away from.

By default (``env.prior: none``) an action in [-1, 1] maps linearly onto ``[min_ratio, max_ratio]``, so an agent
that has learned nothing prunes every unit by the middle of that range and must discover on its own what a
classical heuristic already knows. With a prior, action 0 gives the prior's ratio and ±1 moves it by
:data:`LOGIT_RANGE` in log-odds (a factor of about 7 in ``ratio / (1 - ratio)``), so the search starts from the
heuristic and spends its plans on improving it:

- ``uniform``: every unit at the one ratio that meets the episode's target (the uniform plan);
- ``magnitude`` (``granularity: unstructured``): each layer at the sparsity that global magnitude pruning gives it
  for the episode's target (one weight threshold across all layers), the strong classical baseline for
  unstructured sparsity.

The prior is recomputed for every episode's target (a range of targets, a generalist's several models), applied
the same way when a saved policy is rolled out (the policy records its prior), and the budget clamp still applies
after it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from torch import nn

from rlprune.cost.budget import Budget
from rlprune.errors import RLPruneError
from rlprune.io.schemas import PolicyMeta
from rlprune.pruning.sparsity import budget_sparsity

PRIORS = ("none", "uniform", "magnitude")
LOGIT_RANGE = 2.0  # how far a full action (±1) moves the ratio from its prior, in log-odds
_EDGE = 1e-4  # priors of exactly 0 or 1 have no log-odds: nudged inside


def prior_ratios(kind: str, budget: Budget, target: float, model: nn.Module | None = None) -> list[float] | None:
    """Per-unit prior ratios for an episode at ``target`` (None for ``none``).

    :param model: the dense model the budget's structure was analyzed from (``magnitude`` reads its weights).
    """
    if kind == "none":
        return None
    if kind == "uniform":
        return [budget.uniform_rest({}, 0, target)] * len(budget.units)
    if kind == "magnitude":
        if budget.structure.granularity != "unstructured":
            raise RLPruneError(
                f"prior 'magnitude': global magnitude sparsity is a prior for unstructured units, not "
                f"{budget.structure.granularity} ones (use uniform or none)"
            )
        if model is None:
            raise RLPruneError("prior 'magnitude': needs the dense model's weights (a scorer with a .model)")
        nonzero = round(target * budget.structure.total_params)
        fixed = budget.structure.total_params - sum(u.channels for u in budget.units)
        nonzero = max(nonzero, fixed + len(budget.units))  # at least one weight per layer
        per_layer = budget_sparsity(model, nonzero, [u.name for u in budget.units])
        return [per_layer[u.name] for u in budget.units]
    raise RLPruneError(f"prior: expected one of {', '.join(PRIORS)}, got '{kind}'")


def centered_ratio(action: float, prior: float, low: float, high: float) -> float:
    """The ratio of ``action`` (clipped to [-1, 1]) around ``prior``: ``prior`` at 0, moved by up to
    :data:`LOGIT_RANGE` in log-odds, then kept inside ``[low, high]``."""
    a = float(np.clip(action, -1.0, 1.0))
    ratio = 1.0 / (1.0 + math.exp(-(_logit(prior) + LOGIT_RANGE * a)))
    return min(max(ratio, low), high)


def centered_action(ratio: float, prior: float) -> float:
    """The action :func:`centered_ratio` maps to ``ratio`` around ``prior`` (clipped to [-1, 1])."""
    return float(np.clip((_logit(ratio) - _logit(prior)) / LOGIT_RANGE, -1.0, 1.0))


def _logit(ratio: float) -> float:
    r = min(max(float(ratio), _EDGE), 1.0 - _EDGE)
    return math.log(r / (1.0 - r))


def policy_prior(meta: PolicyMeta, budget: Budget, target: float, model: nn.Module | None) -> Sequence[float] | None:
    """The prior a saved policy was trained with (``meta.prior``), for ``target``."""
    return prior_ratios(meta.prior, budget, target, model)


__all__ = ["LOGIT_RANGE", "PRIORS", "centered_action", "centered_ratio", "policy_prior", "prior_ratios"]
