"""Calibrate a latency budget's lookup table on plans at the budget itself, measured for real.

The table's two-point line (dense model, uniform half-width model) misjudges the non-uniform plans a search actually
visits; sampling a few of them with the budget's own clamp and timing them fixes the systematic part.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from rlprune.cost.budget import Budget
from rlprune.cost.lut import calibrate
from rlprune.envs.episode import action_to_ratio
from rlprune.pruning.plan import Plan


def sample_plans(budget: Budget, count: int, seed: int = 0) -> list[Plan]:
    """``count`` plans from uniformly random actions in [-1, 1] (rescaled to the budget's ratio range), clamped to
    the budget, with targets spread over its range. Uses its own generator, so sampling changes nothing else."""
    rng = np.random.default_rng(seed)
    low, high = budget.target_range
    targets = np.linspace(low, high, count) if count > 1 else [low]
    plans = []
    for t in targets:
        ratios = [action_to_ratio(budget, rng.uniform(-1.0, 1.0, 1)) for _ in budget.units]
        plans.append(budget.plan(ratios, float(t)))
    return plans


def calibrate_latency_budget(
    budget: Budget, model: nn.Module, count: int = 8, seed: int = 0, threads: int | None = None
) -> Budget:
    """A copy of ``budget`` whose latency table is refitted on ``count`` measured plans at the budget.

    :param model: the dense model (on the CPU) the table was built for.
    :return: the calibrated budget; ``budget`` itself when it has no table or ``count`` is 0.
    """
    if budget.latency_table is None or count <= 0:
        return budget
    table = calibrate(budget.latency_table, model, budget.structure, sample_plans(budget, count, seed), threads=threads)
    return budget.with_latency_table(table)


__all__ = ["calibrate_latency_budget", "sample_plans"]
