"""Reference scores that make a reward comparable across models and budgets.

A raw accuracy says as much about the model and the budget as about the plan: 70% is poor for a 90% ResNet at 0.7 of
its MACs and good for a 75% ViT at 0.3. Relative rewards compare a plan with the dense model (retention) or with the
uniform plan at the same target (gain over uniform), both scored by the *same* scorer, so that one policy can learn
from several models and budgets at once.
"""

from __future__ import annotations

import math

from rlprune.cost.budget import Budget
from rlprune.errors import RLPruneError
from rlprune.evaluation.scorer import Scorer


class References:
    """Dense and uniform-plan scores of one model under one scorer, measured on first use and cached.

    The uniform plan's score at a target is interpolated linearly between grid points (``grid`` apart), so a search
    over a range of targets scores at most ``1 / grid + 1`` uniform plans per model instead of one per episode.

    :param scorer: the scorer the searched plans are scored with.
    :param budget: the model's budget (cost model, ratio limits, rounding) for the uniform plans.
    :param grid: spacing of the targets at which uniform plans are scored.
    """

    def __init__(self, scorer: Scorer, budget: Budget, grid: float = 0.05) -> None:
        if not 0 < grid <= 0.5:
            raise RLPruneError(f"references: grid must lie in (0, 0.5], got {grid}")
        self.scorer = scorer
        self.budget = budget
        self.grid = grid
        self._dense: float | None = None
        self._uniform: dict[float, float] = {}

    def dense(self) -> float:
        """The dense model's score (every channel kept, passed through the scorer like any plan)."""
        if self._dense is None:
            plan = self.budget.plan_from_clamped(
                {u.name: 0.0 for u in self.budget.units}, importance=self.scorer.importance
            )
            self._dense = float(self.scorer(plan).accuracy)
        return self._dense

    def _uniform_at(self, point: float) -> float:
        point = round(point, 6)
        if point not in self._uniform:
            plan = self.budget.uniform_plan(point, importance=self.scorer.importance)
            self._uniform[point] = float(self.scorer(plan).accuracy)
        return self._uniform[point]

    def uniform(self, target: float) -> float:
        """The uniform plan's score at ``target`` (linear between the two grid points around it)."""
        if not 0 < target <= 1:
            raise RLPruneError(f"references: target must lie in (0, 1], got {target}")
        low = math.floor(target / self.grid + 1e-9) * self.grid
        high = min(1.0, low + self.grid)
        low = max(self.grid, low)  # a target below the first grid point gets the first grid point's score
        if high <= low:
            return self._uniform_at(low)
        a, b = self._uniform_at(low), self._uniform_at(high)
        return a + (b - a) * (target - low) / (high - low)

    def measured(self) -> dict[str, object]:
        """What has been measured so far (for summaries): the dense score and the uniform scores by target."""
        return {"dense": self._dense, "uniform": {f"{k:.3f}": v for k, v in sorted(self._uniform.items())}}


__all__ = ["References"]
