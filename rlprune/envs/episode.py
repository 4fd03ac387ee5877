"""One walk over a model's prunable units: the observation at each unit, the clamped decision, the final plan.

The environment plays an :class:`Episode` and scores its plan; applying a trained policy plays one without any
scorer (:func:`rollout`). Both see exactly the same observations and the same budget clamp.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np

from rlprune.cost.budget import Budget
from rlprune.envs.features import FEATURE_VERSION, feature_spec
from rlprune.envs.priors import centered_action, centered_ratio
from rlprune.errors import RLPruneError
from rlprune.pruning.plan import Plan


def action_to_ratio(budget: Budget, action: np.ndarray | float, prior: float | None = None) -> float:
    """Rescale an action in [-1, 1] (clipped) to a ratio in ``[budget.min_ratio, budget.max_ratio]``: linearly, or
    around the unit's ``prior`` ratio (:func:`rlprune.envs.priors.centered_ratio`)."""
    a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
    if prior is not None:
        return centered_ratio(a, prior, budget.min_ratio, budget.max_ratio)
    return budget.min_ratio + (a + 1.0) / 2.0 * (budget.max_ratio - budget.min_ratio)


def ratio_to_action(budget: Budget, ratio: float, prior: float | None = None) -> float:
    """The action :func:`action_to_ratio` maps to ``ratio`` (for the same ``prior``)."""
    if prior is not None:
        return centered_action(ratio, prior)
    span = budget.max_ratio - budget.min_ratio
    return float(np.clip(2.0 * (ratio - budget.min_ratio) / span - 1.0, -1.0, 1.0)) if span > 0 else 0.0


class Episode:
    """Decision state for one episode at one target.

    :param budget: the cost model and clamp.
    :param target: this episode's cost target (within the budget's range).
    :param static: per-unit static features of ``features``' version; computed if omitted.
    :param features: the feature-set version observed (:mod:`rlprune.envs.features`; a policy's own, when applied).
    :param prior: per-unit ratios that action 0 stands for (:mod:`rlprune.envs.priors`); None: the linear mapping.
    """

    def __init__(
        self,
        budget: Budget,
        target: float,
        static: np.ndarray | None = None,
        features: int = FEATURE_VERSION,
        prior: Sequence[float] | None = None,
    ) -> None:
        if not 0.0 < target <= 1.0:
            raise RLPruneError(f"episode: target must lie in (0, 1], got {target}")
        self.budget = budget
        self.units = budget.units
        if prior is not None and len(prior) != len(self.units):
            raise RLPruneError(f"episode: {len(prior)} prior ratios for {len(self.units)} units")
        self.prior = None if prior is None else [float(p) for p in prior]
        self.target = float(target)
        self.spec = feature_spec(features)
        self.static = static if static is not None else self.spec.static(budget.structure)
        self.t = 0
        self.decided: dict[str, int] = {}
        self.ratios: list[float] = []
        self.interval = (budget.min_ratio, budget.max_ratio)

    def fork(self) -> Episode:
        """An independent copy of the decisions so far (to look one step ahead without changing this episode)."""
        other = copy.copy(self)
        other.decided, other.ratios = dict(self.decided), list(self.ratios)
        return other

    @property
    def done(self) -> bool:
        return self.t >= len(self.units)

    def observe(self) -> np.ndarray:
        """The current unit's observation (and the feasible interval it reports, kept for :meth:`decide`)."""
        t, units = self.t, self.units
        total = self.budget.structure.total_macs
        removed = sum(units[j].macs * (1 - self.decided[units[j].name] / units[j].channels) for j in range(t))
        later = sum(u.macs for u in units[t + 1 :])
        self.interval = self.budget.feasible_interval(self.decided, t, self.target)
        dynamic = {
            "macs_removed": removed / total,
            "macs_later": later / total,
            "previous_ratio": self.ratios[-1] if self.ratios else 0.0,
            "target": self.target,
            "min_ratio_needed": self.interval[0],
            "max_ratio_allowed": self.interval[1],
        }
        if "uniform_ratio_rest" in self.spec.dynamic_names:
            dynamic["uniform_ratio_rest"] = self.budget.uniform_rest(self.decided, t, self.target)
        return self.spec.observation(self.static[t], dynamic)

    def decide(self, action: np.ndarray | float) -> tuple[float, float]:
        """Clamp the action's ratio into the feasible interval and commit it; returns ``(ratio, wanted)``."""
        if self.done:
            raise RuntimeError("step() called after the episode ended; call reset()")
        wanted = action_to_ratio(self.budget, action, None if self.prior is None else self.prior[self.t])
        lo, hi = self.interval
        ratio = float(min(max(wanted, lo), hi))
        self.decided[self.units[self.t].name] = self.budget.channels(self.t, ratio)
        self.ratios.append(ratio)
        self.t += 1
        return ratio, wanted

    def final_observation(self, macs_ratio: float) -> np.ndarray:
        r = self.ratios[-1]
        dynamic = dict.fromkeys(("previous_ratio", "min_ratio_needed", "max_ratio_allowed", "uniform_ratio_rest"), r)
        return self.spec.observation(
            self.static[-1], {**dynamic, "macs_removed": 1 - macs_ratio, "macs_later": 0.0, "target": self.target}
        )

    def plan(self, importance: str = "l1") -> Plan:
        """The plan of the ratios chosen so far (units not yet visited keep all channels)."""
        ratios = {u.name: r for u, r in zip(self.units, self.ratios, strict=False)}
        return self.budget.plan_from_clamped(ratios, importance=importance)


def rollout(
    budget: Budget,
    act: Callable[[np.ndarray], np.ndarray],
    target: float | None = None,
    importance: str = "l1",
    features: int = FEATURE_VERSION,
    prior: Sequence[float] | None = None,
) -> Plan:
    """Play one episode with ``act(obs) -> action`` and return its plan, scoring nothing: how a policy is applied.

    :param features: the feature-set version ``act`` expects (a saved policy's ``meta["feature_version"]``).
    :param prior: the per-unit prior ratios of the policy's training, for this target (:mod:`rlprune.envs.priors`).
    """
    episode = Episode(budget, budget.target_range[0] if target is None else target, features=features, prior=prior)
    while not episode.done:
        episode.decide(act(episode.observe()))
    return episode.plan(importance)


__all__ = ["Episode", "action_to_ratio", "ratio_to_action", "rollout"]
