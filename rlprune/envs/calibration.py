"""Calibrate an environment's latency lookup table on plans at its own budget, measured for real.

The table's two-point line (dense model, uniform half-width model) misjudges the non-uniform plans a search actually
visits; sampling a few of them with the environment's own budget clamp and timing them fixes the systematic part.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from rlprune.cost.lut import LatencyTable, calibrate
from rlprune.envs.layer_pruning import LayerPruningEnv
from rlprune.pruning.plan import Plan


def sample_plans(env: LayerPruningEnv, count: int, seed: int = 0) -> list[Plan]:
    """``count`` plans from uniformly random actions, clamped to the budget (targets spread over the env's range).

    Uses its own generator, not the environment's, so sampling does not change the episodes that follow.
    """
    rng = np.random.default_rng(seed)
    low, high = env.target_range
    targets = np.linspace(low, high, count) if count > 1 else [low]
    return [env.rollout(lambda _obs: rng.uniform(-1.0, 1.0, 1), float(t)) for t in targets]


def calibrate_latency_budget(
    env: LayerPruningEnv, model: nn.Module, count: int = 8, seed: int = 0, threads: int | None = None
) -> LatencyTable | None:
    """Refit ``env``'s latency table on ``count`` measured plans at its budget; the env steers by the refitted table.

    :param model: the dense model (on the CPU) the table was built for.
    :return: the calibrated table (also set on ``env``), or ``None`` when the env has no table.
    """
    if env.latency_table is None or count <= 0:
        return env.latency_table
    table = calibrate(env.latency_table, model, env.structure, sample_plans(env, count, seed), threads=threads)
    env.latency_table = table
    return table
