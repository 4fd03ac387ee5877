"""Reward strategies, by name. The environment computes an :class:`Outcome` at the end of an episode and the
strategy turns it into one number; every strategy is bounded and informative (no flat bonus bands, which made a PPO
pruning agent collapse to one constant action elsewhere)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

from rlprune.errors import RLPruneError


@dataclass(frozen=True)
class Outcome:
    """What one finished episode produced: validation accuracy (percent), pruned/dense cost ratios and every number
    the scorer's metric returned (``Score.metrics``, e.g. ``worst_class_drop``); for relative rewards also the dense
    model's score and the uniform plan's score at the same target, measured by the same scorer."""

    accuracy: float
    macs_ratio: float
    latency_ratio: float
    macs: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    dense_accuracy: float | None = None
    uniform_accuracy: float | None = None


class Reward(ABC):
    name: str = ""
    # which reference scores the environment must measure for this reward ("dense", "uniform")
    references: frozenset[str] = frozenset()
    needs_latency = False  # reads the latency ratio, which only a budget with a latency table predicts

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
    needs_latency = True

    def __call__(self, outcome: Outcome) -> float:
        return outcome.accuracy / 100.0 - self.weight * outcome.latency_ratio


class WorstClassReward(Reward):
    """Accuracy, minus ``weight`` per point that the worst class drops beyond ``max_drop`` points (3 by default)
    against the dense model; a large weight (e.g. 100) amounts to refusing such plans.

    The drop comes from the scorer's metrics (``worst_class_drop``): ``ProxyEvaluator(per_class=True)`` or a
    :class:`~rlprune.evaluation.scorer.MetricScorer` with :func:`rlprune.evaluation.classes.class_metric`.
    """

    name = "accuracy_worst_class"

    def __init__(self, weight: float = 1.0, max_drop: float = 3.0) -> None:
        super().__init__(weight)
        if not (math.isfinite(max_drop) and max_drop >= 0):
            raise RLPruneError(f"reward max_drop: expected a finite number >= 0, got {max_drop}")
        self.max_drop = max_drop

    def __call__(self, outcome: Outcome) -> float:
        drop = outcome.metrics.get("worst_class_drop")
        if drop is None:
            raise RLPruneError(
                "reward 'accuracy_worst_class': the scorer reports no 'worst_class_drop' "
                "(use ProxyEvaluator(per_class=True) or rlprune.evaluation.classes.class_metric)"
            )
        return outcome.accuracy / 100.0 - self.weight * max(0.0, float(drop) - self.max_drop) / 100.0


def _reference(outcome: Outcome, name: str) -> float:
    value = getattr(outcome, f"{name}_accuracy")
    if value is None:
        raise RLPruneError(f"this reward needs the {name} model's score, which the environment did not measure")
    return float(value)


class RetentionReward(Reward):
    """The share of the dense model's score the pruned one keeps (accuracy / dense accuracy, both measured by the
    same scorer): comparable between a 90% ResNet and a 60% ViT, so one policy can learn on both."""

    name = "retention"
    references = frozenset({"dense"})

    def __call__(self, outcome: Outcome) -> float:
        dense = _reference(outcome, "dense")
        if dense <= 0:  # a share of nothing (or of a negative metric such as -loss) is no measure
            raise RLPruneError(
                f"reward 'retention': the dense model scores {dense:g}; a share of it needs a positive score "
                "(use gain_over_uniform for metrics that can be 0 or negative)"
            )
        return outcome.accuracy / dense


class GainOverUniformReward(Reward):
    """Points gained over the uniform plan at the same target on the same model (accuracy - uniform accuracy, as a
    fraction of 100): zero means "as good as cutting every layer equally", whatever the model and budget, so the
    reward measures what the policy adds and not how hard the model or budget is."""

    name = "gain_over_uniform"
    references = frozenset({"uniform"})

    def __call__(self, outcome: Outcome) -> float:
        return (outcome.accuracy - _reference(outcome, "uniform")) / 100.0


REWARDS: dict[str, type[Reward]] = {
    r.name: r
    for r in (
        AccuracyReward,
        AMCLogFlopsReward,
        LatencyReward,
        WorstClassReward,
        RetentionReward,
        GainOverUniformReward,
    )
}


def get_reward(name: str, weight: float = 1.0) -> Reward:
    try:
        return REWARDS[name](weight)
    except KeyError:
        raise RLPruneError(f"reward '{name}': unknown (expected one of {', '.join(sorted(REWARDS))})") from None
