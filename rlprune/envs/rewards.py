"""Reward strategies, by name. The environment computes an :class:`Outcome` at the end of an episode and the
strategy turns it into one number; every strategy is bounded and informative (no flat bonus bands, which made a PPO
pruning agent collapse to one constant action elsewhere)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

from rlprune.errors import RLPruneError


@dataclass(frozen=True)
class Outcome:
    """What one finished episode produced: validation accuracy (percent) and pruned/dense cost ratios."""

    accuracy: float
    macs_ratio: float
    latency_ratio: float
    macs: int


class Reward(ABC):
    name: str = ""

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    @abstractmethod
    def __call__(self, outcome: Outcome) -> float: ...


class AccuracyReward(Reward):
    """Validation accuracy in [0, 1]; the environment's budget clamp makes the budget a hard constraint."""

    name = "accuracy"

    def __call__(self, outcome: Outcome) -> float:
        return outcome.accuracy / 100.0


class AMCLogFlopsReward(Reward):
    """AMC's ``-error · log(FLOPs)`` (He et al., 2018), with MACs; trades accuracy against size."""

    name = "amc_log_flops"

    def __call__(self, outcome: Outcome) -> float:
        return -(1.0 - outcome.accuracy / 100.0) * math.log(max(outcome.macs, 2))


class LatencyReward(Reward):
    """Accuracy minus ``weight`` times the latency ratio: rewards plans that are faster, not only smaller."""

    name = "accuracy_latency"

    def __call__(self, outcome: Outcome) -> float:
        return outcome.accuracy / 100.0 - self.weight * outcome.latency_ratio


REWARDS: dict[str, type[Reward]] = {r.name: r for r in (AccuracyReward, AMCLogFlopsReward, LatencyReward)}


def get_reward(name: str, weight: float = 1.0) -> Reward:
    try:
        return REWARDS[name](weight)
    except KeyError:
        raise RLPruneError(f"reward '{name}': unknown (expected one of {', '.join(sorted(REWARDS))})") from None
