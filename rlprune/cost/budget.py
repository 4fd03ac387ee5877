"""The budget: what a plan costs, and how per-unit ratios are clamped so that a plan lands on the target.

:class:`Budget` is the one cost model and budget solver of the project. The environment asks it, unit by unit, for
the interval of ratios that keeps the target reachable (AMC's clamp, here from both sides); the baseline searchers,
``apply`` and users call it directly to turn any ratios into a plan on budget, or to solve the uniform plan.

Example::

    structure = rp.analyze(model, torch.zeros(1, 3, 32, 32))
    budget = rp.Budget(structure, target=0.5)            # 50% of the dense MACs
    plan = budget.plan([0.3] * len(structure.units))      # clamped so that the MACs land in [0.49, 0.50]
    uniform = budget.uniform_plan()
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from rlprune.cost.macs import predict_costs
from rlprune.errors import RLPruneError
from rlprune.pruning.plan import Plan, kept_channels, nm_level, snap_to_level
from rlprune.pruning.structure import Structure

if TYPE_CHECKING:
    from rlprune.cost.lut import LatencyTable

KINDS = ("macs", "latency", "params")


def macs_ratio(structure: Structure, plan: Plan) -> float:
    """Predicted MACs of the pruned model over the dense MACs."""
    return predict_costs(structure, plan.channels)[0] / structure.total_macs


def _target_range(target: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(target, int | float):
        low = high = float(target)
    else:
        if len(target) != 2:
            raise RLPruneError(f"budget: target must be a ratio or a (low, high) pair, got {list(target)}")
        low, high = float(target[0]), float(target[1])
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 < low <= high <= 1.0):
        raise RLPruneError(f"budget: target must lie in (0, 1], got {target}")
    return low, high


class Budget:
    """A cost budget over one model's prunable units, and the clamp that meets it.

    :param structure: the model's prunable units (:func:`rlprune.analyze`).
    :param target: wanted pruned/dense cost ratio in (0, 1], or a ``(low, high)`` range (an environment draws one
        target per episode from it; the solver methods take the range's low end unless given a target).
    :param kind: ``macs`` (exact count), ``params`` (parameters left; non-zero ones for a weight-level structure) or
        ``latency`` (the lookup table's prediction; needs ``latency_table``).
    :param min_ratio: smallest pruning ratio any unit gets.
    :param max_ratio: largest pruning ratio any unit gets (keeps every layer alive).
    :param round_to: kept channels are rounded to a multiple of this (hardware-friendly widths).
    :param min_channels: fewest channels any unit keeps.
    :param tolerance: how far below the target a clamped plan may land.
    :param latency_table: per-layer latency table for ``kind="latency"``.
    """

    def __init__(
        self,
        structure: Structure,
        target: float | Sequence[float] = 0.5,
        *,
        kind: str = "macs",
        min_ratio: float = 0.0,
        max_ratio: float = 0.8,
        round_to: int | None = None,
        min_channels: int = 1,
        tolerance: float = 0.01,
        latency_table: LatencyTable | None = None,
    ) -> None:
        if not (math.isfinite(min_ratio) and math.isfinite(max_ratio) and 0.0 <= min_ratio < max_ratio < 1.0):
            raise RLPruneError(f"budget: expected 0 <= min_ratio < max_ratio < 1, got {min_ratio} and {max_ratio}")
        if kind not in KINDS:
            raise RLPruneError(f"budget: kind must be one of {', '.join(KINDS)}, got '{kind}'")
        if kind == "latency" and latency_table is None:
            raise RLPruneError("budget: a latency budget needs a latency table")
        if not (math.isfinite(tolerance) and 0.0 < tolerance < 0.5):
            raise RLPruneError(f"budget: tolerance must lie in (0, 0.5), got {tolerance}")
        if min_channels < 1:
            raise RLPruneError(f"budget: min_channels must be >= 1, got {min_channels}")
        self.structure = structure
        self.units = structure.units
        self.target_range = _target_range(target)
        self.kind = kind
        self.min_ratio, self.max_ratio = float(min_ratio), float(max_ratio)
        self.round_to, self.min_channels, self.tolerance = round_to, int(min_channels), float(tolerance)
        self.latency_table = latency_table
        # N:M weight-level units are all-or-nothing: a layer follows the pattern (this ratio) or stays dense
        self._nm_level = nm_level(structure.granularity)
        self._nm_cache: tuple[int, list[int], list[int]] | None = None  # N:M subset sums (_nm_sets)
        self._levels: dict[int, list[int]] | None = None  # coarse units' channel counts (feasible_interval)
        self._check_reachable()

    def _check_reachable(self, why: str = "") -> None:
        """Refuse a target range the clamp cannot meet: below what every unit at ``max_ratio`` leaves, or (its top)
        above what every unit at ``min_ratio`` keeps; the clamp would otherwise land every plan off target."""
        kind, (low, high) = self.kind, self.target_range
        floor = self.cost({u.name: self.channels(i, self.max_ratio) for i, u in enumerate(self.units)})
        if floor > low + 1e-9:
            raise RLPruneError(
                f"budget: target {kind} ratio {low} is unreachable{why}: pruning every unit by max_ratio "
                f"{self.max_ratio} still leaves {floor:.3f} of the dense {kind}"
            )
        ceiling = self.cost({u.name: self.channels(i, self.min_ratio) for i, u in enumerate(self.units)})
        if ceiling < high - self.tolerance - 1e-9:
            raise RLPruneError(
                f"budget: target {kind} ratio {high} is unreachable{why}: pruning every unit by min_ratio "
                f"{self.min_ratio} already leaves only {ceiling:.3f} of the dense {kind}"
            )

    def with_latency_table(self, table: LatencyTable) -> Budget:
        """The same budget steered by another latency table (e.g. one refitted on measured plans); refused when the
        target range is out of reach under the new table's predictions."""
        other = copy.copy(self)
        other.latency_table = table
        if other.kind == "latency":
            other._check_reachable(" under the latency table refitted on measured plans")
        return other

    # ------------------------------------------------------------------------------------------------ cost model
    def channels(self, index: int, ratio: float) -> int:
        """Channels unit ``index`` keeps at ``ratio`` (rounding and minimum applied; for an N:M structure, the weights
        the layer keeps at the nearer of its two levels)."""
        unit = self.units[index]
        ratio = self.level(ratio)
        return kept_channels(unit.channels, ratio, self.round_to, self.min_channels, unit.groups)

    def level(self, ratio: float) -> float:
        """The ratio a unit really gets: ``ratio`` itself, or under N:M the nearer of dense (0) and ``1 - n/m``."""
        return snap_to_level(ratio, self._nm_level)

    def cost(self, channels: Mapping[str, int]) -> float:
        """Pruned/dense cost of this budget's kind for the kept channels (unit name -> channels; missing = dense)."""
        if self.kind == "latency":
            assert self.latency_table is not None
            return self.latency_table.predict(self.structure, channels) / self.latency_table.dense_ms
        if self.kind == "params":
            return predict_costs(self.structure, channels)[1] / self.structure.total_params
        return predict_costs(self.structure, channels)[0] / self.structure.total_macs

    def cost_of_ratios(self, ratios: Sequence[float]) -> float:
        """Pruned/dense cost when unit ``i`` gets ``ratios[i]`` (clipped to ``[min_ratio, max_ratio]``, rounded as
        :meth:`channels` rounds); no clamp to the target."""
        if len(ratios) != len(self.units):
            raise RLPruneError(f"budget: {len(ratios)} ratios for {len(self.units)} units")
        return self.cost(
            {
                u.name: self.channels(i, min(max(float(r), self.min_ratio), self.max_ratio))
                for i, (u, r) in enumerate(zip(self.units, ratios, strict=True))
            }
        )

    def macs_ratio(self, channels: Mapping[str, int]) -> float:
        """Predicted pruned/dense MACs, whatever the budget's kind."""
        return predict_costs(self.structure, channels)[0] / self.structure.total_macs

    def latency_ratio(self, channels: Mapping[str, int]) -> float:
        """The lookup table's predicted latency ratio (NaN without a table)."""
        if self.latency_table is None:
            return float("nan")
        return self.latency_table.predict(self.structure, channels) / self.latency_table.dense_ms

    def _cost_with(
        self, decided: Mapping[str, int], t: int, ratio: float, rest: float, fixed: Mapping[int, int] | None = None
    ) -> float:
        channels = dict(decided)
        channels[self.units[t].name] = self.channels(t, ratio)
        for j in range(t + 1, len(self.units)):
            channels[self.units[j].name] = self.channels(j, rest)
        for j, keep in (fixed or {}).items():  # later units held at a given channel count
            channels[self.units[j].name] = keep
        return self.cost(channels)

    def _coarse_levels(self, t: int) -> tuple[int, list[int]] | None:
        """The last unit after ``t`` whose channels move in coarse steps (whole attention heads, grouped or
        ``nn.MultiheadAttention`` channels) and the channel counts it can keep, or ``None``."""
        if self._levels is None:
            levels: dict[int, list[int]] = {}
            for j, u in enumerate(self.units):
                if u.kind == "heads" or u.groups > 1:
                    grid = (self.min_ratio + (self.max_ratio - self.min_ratio) * i / 64 for i in range(65))
                    counts = sorted({self.channels(j, r) for r in grid})
                    if 1 < len(counts) <= 32:
                        levels[j] = counts
            self._levels = levels
        later = [j for j in self._levels if j > t]
        return (max(later), self._levels[max(later)]) if later else None

    # ---------------------------------------------------------------------------------------------------- clamp
    def uniform_rest(self, decided: Mapping[str, int], t: int, target: float, steps: int = 12) -> float:
        """The one ratio for unit ``t`` and every later unit that meets ``target`` given the channels ``decided``
        for units ``0..t-1`` (clipped to ``[min_ratio, max_ratio]``): how hard the rest of the network must be cut."""
        lo, hi = self.min_ratio, self.max_ratio
        if self._cost_with(decided, t, lo, lo) <= target:
            return lo
        if self._cost_with(decided, t, hi, hi) > target:
            return hi
        for _ in range(steps):
            mid = (lo + hi) / 2
            if self._cost_with(decided, t, mid, mid) <= target:
                hi = mid
            else:
                lo = mid
        return hi

    def feasible_interval(self, decided: Mapping[str, int], t: int, target: float) -> tuple[float, float]:
        """Ratios for unit ``t`` that keep a final cost in ``[target - tolerance, target]`` reachable, given the
        channels ``decided`` for units ``0..t-1``.

        Later units are assumed able to land anywhere between their extremes, which fails when a late unit moves in
        steps larger than what the units after it can make up (whole heads: a 4-head attention moves in quarters).
        So when a coarse unit follows, the interval is the widest run of ratios for which one of its channel counts
        still leaves the target reachable: the finer units before it compensate its rounding. Models without
        coarse units (CNNs without grouped convolutions) get the plain interval, unchanged.
        """
        if self._nm_level is not None:
            exact = self._nm_interval(decided, t, target)
            if exact is not None:
                return exact
        need, allow, _ = self._interval(decided, t, target)
        if self._nm_level is not None:
            return need, max(need, allow)
        coarse = self._coarse_levels(t)
        if coarse is None:
            return need, max(need, allow)
        c, counts = coarse
        pieces = []
        for keep in counts:
            n_k, a_k, ok = self._interval(decided, t, target, {c: keep})
            lo, hi = max(n_k, need), min(a_k, allow)
            if ok and lo <= hi:
                pieces.append((lo, hi))
        if not pieces:
            return need, max(need, allow)
        merged: list[tuple[float, float]] = []
        for lo, hi in sorted(pieces):
            if merged and lo <= merged[-1][1] + 1e-9:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        return max(merged, key=lambda p: p[1] - p[0])

    def _nm_interval(self, decided: Mapping[str, int], t: int, target: float) -> tuple[float, float] | None:
        """Under N:M every unit is dense or sparse, so "later units can land anywhere" does not hold: the ratios for
        unit ``t`` whose level leaves an exact choice of later levels that lands the parameters in
        ``[target - tolerance, target]`` (a subset sum over the later units' savings); ``None`` when neither does."""
        q, _, suffix = self._nm_sets()
        total = self.structure.total_params
        removed = sum(u.channels - decided[u.name] for u in self.units[:t])
        sparse = self._nm_level
        assert sparse is not None
        fits = []
        for save in (0, self.units[t].channels - self.channels(t, sparse)):
            left = total - removed - save  # parameters if no later unit were sparse
            lo = max(0, math.ceil((left - target * total) / q))
            hi = math.floor((left - (target - self.tolerance) * total) / q)
            fits.append(hi >= lo and (suffix[t + 1] >> lo) & ((1 << (hi - lo + 1)) - 1) != 0)
        dense_ok = fits[0] and self.min_ratio < sparse / 2
        sparse_ok = fits[1] and self.max_ratio >= sparse / 2
        if dense_ok and sparse_ok:
            return self.min_ratio, self.max_ratio
        if dense_ok:
            return self.min_ratio, min(self.max_ratio, sparse / 2 - 1e-9)
        if sparse_ok:
            return max(self.min_ratio, sparse / 2), self.max_ratio
        return None

    def _nm_sets(self) -> tuple[int, list[int], list[int]]:
        """Savings quantum, and for each unit the set of savings (in quanta) its later units can make, as bitsets."""
        if self._nm_cache is None:
            sparse = self._nm_level
            assert sparse is not None
            saves = [u.channels - self.channels(i, sparse) for i, u in enumerate(self.units)]
            q = max(1, sum(saves) >> 20)  # at most ~a million bits per set
            suffix = [1] * (len(saves) + 1)
            for j in range(len(saves) - 1, -1, -1):
                suffix[j] = suffix[j + 1] | (suffix[j + 1] << round(saves[j] / q))
            self._nm_cache = (q, saves, suffix)
        return self._nm_cache

    def _interval(
        self, decided: Mapping[str, int], t: int, target: float, fixed: Mapping[int, int] | None = None
    ) -> tuple[float, float, bool]:
        """AMC's clamp from both sides, later units at their extremes (except those ``fixed``): the smallest and
        the largest ratio for unit ``t``, and whether both bounds meet their side of the target."""
        lo_r, hi_r = self.min_ratio, self.max_ratio
        ok = True
        # Smallest ratio with which, even if all later units are pruned to the maximum, the target is met.
        if self._cost_with(decided, t, lo_r, self.max_ratio, fixed) <= target:
            need = lo_r
        elif self._cost_with(decided, t, hi_r, self.max_ratio, fixed) > target:
            need, ok = hi_r, False
        else:
            a, b = lo_r, hi_r
            for _ in range(20):
                mid = (a + b) / 2
                if self._cost_with(decided, t, mid, self.max_ratio, fixed) <= target:
                    b = mid
                else:
                    a = mid
            need = b
        # Largest ratio with which, even if all later units are pruned as little as allowed, the target is reached.
        floor = target - self.tolerance
        if self._cost_with(decided, t, hi_r, self.min_ratio, fixed) >= floor:
            allow = hi_r
        elif self._cost_with(decided, t, lo_r, self.min_ratio, fixed) < floor:
            allow, ok = lo_r, False
        else:
            a, b = lo_r, hi_r
            for _ in range(20):
                mid = (a + b) / 2
                if self._cost_with(decided, t, mid, self.min_ratio, fixed) >= floor:
                    a = mid
                else:
                    b = mid
            allow = a
        return need, allow, ok and need <= allow

    def _target(self, target: float | None) -> float:
        if target is None:
            return self.target_range[0]
        low, _ = _target_range(target)
        return low

    def clamp(self, ratios: Sequence[float], target: float | None = None) -> list[float]:
        """Clamp per-unit ratios (forward order) one unit at a time, exactly as the environment does, so that the
        plan's cost lands in ``[target - tolerance, target]``."""
        if len(ratios) != len(self.units):
            raise RLPruneError(f"budget: {len(ratios)} ratios given for {len(self.units)} prunable units")
        goal = self._target(target)
        decided: dict[str, int] = {}
        out = []
        for t, wanted in enumerate(ratios):
            lo, hi = self.feasible_interval(decided, t, goal)
            r = float(min(max(float(wanted), lo), hi))
            decided[self.units[t].name] = self.channels(t, r)
            out.append(r)
        return out

    def plan(
        self, ratios: Sequence[float], target: float | None = None, *, importance: str = "l1", model: str = ""
    ) -> Plan:
        """A plan on budget from any per-unit ratios (clamped with :meth:`clamp`)."""
        return self.plan_from_clamped(self.clamp(ratios, target), importance=importance, model=model)

    def plan_from_clamped(
        self, ratios: Sequence[float] | Mapping[str, float], *, importance: str = "l1", model: str = ""
    ) -> Plan:
        """A plan from ratios that are already clamped (e.g. an environment's episode)."""
        return Plan.from_ratios(  # N:M ratios snap to their level there
            self.structure,
            list(ratios) if not isinstance(ratios, Mapping) else dict(ratios),
            model=model,
            importance=importance,
            round_to=self.round_to,
            min_channels=self.min_channels,
        )

    def uniform_ratio(self, target: float | None = None, iterations: int = 30) -> float:
        """The smallest ratio that, given to every unit, meets the target (bisection)."""
        goal = self._target(target)
        lo, hi = self.min_ratio, self.max_ratio
        for _ in range(iterations):
            mid = (lo + hi) / 2
            if self.cost_of_ratios([mid] * len(self.units)) > goal:
                lo = mid
            else:
                hi = mid
        return hi

    def uniform_plan(self, target: float | None = None, *, importance: str = "l1") -> Plan:
        """The uniform plan at the target: one shared ratio, then the clamp (which raises later units' ratios only
        as far as rounding needs)."""
        r = self.uniform_ratio(target)
        return self.plan([r] * len(self.units), target, importance=importance)


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
    ``target`` from below (or as close as reachable). Keeps the profile's shape, unlike :meth:`Budget.clamp`.

    :param profile: non-negative per-unit weights in forward order (their shape decides the plan).
    :param target: wanted pruned/dense MACs ratio in (0, 1].
    """
    if len(profile) != len(structure.units):
        raise RLPruneError(f"profile has {len(profile)} entries for {len(structure.units)} units")

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


def uniform_plan(
    structure: Structure,
    target: float,
    *,
    max_ratio: float = 0.9,
    round_to: int | None = None,
    importance: str = "l1",
) -> Plan:
    """The same ratio for every unit, solved for the MACs target (:meth:`Budget.uniform_plan` on a MACs budget)."""
    return Budget(structure, target, max_ratio=max_ratio, round_to=round_to).uniform_plan(importance=importance)


__all__ = ["KINDS", "Budget", "macs_ratio", "scale_to_budget", "uniform_plan"]
