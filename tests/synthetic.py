"""A synthetic scoring task whose best plan is known, for testing environments and agents without training."""

from __future__ import annotations

from rlprune.cost.macs import predict_costs
from rlprune.evaluation.scorer import Score
from rlprune.pruning import Plan, Structure


class PreferenceScorer:
    """Accuracy is high when the plan prunes the units in ``protect`` little and the others a lot: the best plan
    under a MACs budget keeps the protected units whole. Deterministic, instant."""

    importance = "l1"

    def __init__(self, structure: Structure, protect: set[int]) -> None:
        self.structure = structure
        self.protect = protect
        self.calls = 0

    def __call__(self, plan: Plan) -> Score:
        self.calls += 1
        penalty = sum(
            (1 - plan.channels[u.name] / u.channels) ** 2 * (1.0 if u.index in self.protect else 0.05)
            for u in self.structure.units
        )
        predict_costs(self.structure, plan.channels)
        return Score(accuracy=100.0 * (1.0 - penalty / len(self.structure.units)))
