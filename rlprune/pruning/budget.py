"""Plans that meet a MACs budget: a uniform ratio solved for the budget, or any per-unit profile scaled to it."""

from __future__ import annotations

from collections.abc import Sequence

from rlprune.cost.macs import predict_costs
from rlprune.pruning.plan import Plan
from rlprune.pruning.structure import Structure


def macs_ratio(structure: Structure, plan: Plan) -> float:
    """Predicted MACs of the pruned model over the dense MACs."""
    return predict_costs(structure, plan.channels)[0] / structure.total_macs


def scale_to_budget(
    structure: Structure,
    profile: Sequence[float],
    target: float,
    *,
    max_ratio: float = 0.9,
    round_to: int | None = None,
    importance: str = "l1",
    iterations: int = 40,
) -> Plan:
    """Ratios ``min(max_ratio, s·profile[i])`` with ``s`` found by bisection so the MACs ratio is closest to
    ``target`` from below (or as close as reachable).

    :param profile: non-negative per-unit weights in forward order (their shape decides the plan).
    :param target: wanted pruned/dense MACs ratio in (0, 1].
    """
    if len(profile) != len(structure.units):
        raise ValueError(f"profile has {len(profile)} entries for {len(structure.units)} units")

    def plan_for(s: float) -> Plan:
        ratios = [min(max_ratio, max(0.0, s * p)) for p in profile]
        return Plan.from_ratios(structure, ratios, round_to=round_to, importance=importance)

    lo, hi = 0.0, 1.0 / max(min(p for p in profile if p > 0) if any(p > 0 for p in profile) else 1.0, 1e-6)
    best = plan_for(lo)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        plan = plan_for(mid)
        if macs_ratio(structure, plan) > target:
            lo = mid
        else:
            hi = mid
            best = plan
    if macs_ratio(structure, best) > target:  # the target is below what max_ratio allows
        best = plan_for(hi)
    return best


def uniform_plan(structure: Structure, target: float, **kwargs: object) -> Plan:
    """The same ratio for every unit, solved for the MACs target."""
    return scale_to_budget(structure, [1.0] * len(structure.units), target, **kwargs)
