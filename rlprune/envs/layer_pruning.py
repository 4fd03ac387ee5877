"""The layer-by-layer pruning environment."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rlprune.cost.budget import Budget
from rlprune.cost.lut import LatencyTable
from rlprune.cost.macs import predict_costs
from rlprune.envs.episode import Episode, action_to_ratio, rollout
from rlprune.envs.features import FEATURE_VERSION, feature_spec
from rlprune.envs.priors import prior_ratios
from rlprune.envs.references import References
from rlprune.envs.rewards import Outcome, get_reward
from rlprune.errors import RLPruneError
from rlprune.evaluation.scorer import Scorer
from rlprune.pruning.plan import Plan
from rlprune.pruning.structure import Structure

log = logging.getLogger("rlprune.envs")


class LayerPruningEnv(gym.Env):
    """Choose a pruning ratio for each prunable unit of a network, one unit per step, in forward order.

    ## Description
    An episode walks the dependency groups ("units") of a trained network from input to output. At each step the
    agent picks the fraction of the current unit's channels to remove. After the last unit the plan is applied
    (physically pruned), batch-norm statistics are recalibrated and the candidate is scored on validation images.
    Following AMC (He et al., 2018), every action is clamped so that the cost budget is always met at the end of
    the episode, whatever the agent does; here the clamp works from both sides, so the final cost lands within
    ``tolerance`` of the target.

    ## Action Space
    ``Box(-1, 1, (1,), float32)``: rescaled linearly to a pruning ratio in ``[min_ratio, max_ratio]``, then clamped
    to the interval that keeps the budget reachable.

    ## Observation Space
    ``Box(0, 1, (24,), float32)`` with the default feature set (``rlprune.envs.features``, v3): the current unit's
    position (overall, by stage, in its stage, MACs before it), layer type, width and MACs relative to the mean unit,
    kernel, stride, feature-map size, coupled modules, the spread of its channels' weight norms, then the budget
    state: MACs removed so far and still to come, the previous ratio, the target, the feasible ratio interval and the
    uniform ratio the rest of the network would need. ``features=2`` gives the older 18-feature set.

    ## Rewards
    0 on every step but the last; at the last step the configured reward strategy (``rlprune.envs.rewards``:
    ``accuracy``, ``amc_log_flops``, ``accuracy_latency``, ``accuracy_worst_class``, or the relative ``retention``
    and ``gain_over_uniform``, whose reference scores the environment measures once and caches).

    ## Episode End
    Terminates after the last unit (episode length = number of units). Never truncated.

    ## Arguments
    - ``scorer``: scores a plan (:class:`~rlprune.evaluation.scorer.Scorer`: the built-in proxy
      ``ProxyEvaluator``, a ``MetricScorer`` around your own metric, or your own); it carries the model structure.
    - ``target``: budget ratio in (0, 1], or a ``(low, high)`` range sampled uniformly per episode.
    - ``budget``: ``macs`` or ``latency`` (latency needs ``latency_table``), or a ready
      :class:`~rlprune.cost.budget.Budget` (then ``target``, the ratio limits, rounding, ``tolerance`` and
      ``latency_table`` come from it and the arguments of the same names are ignored).
    - ``reward`` / ``reward_weight``: reward strategy by name and its weight.
    - ``min_ratio`` / ``max_ratio``: the range actions are rescaled to.
    - ``round_to`` / ``min_channels``: channel rounding and the minimum channels a unit keeps.
    - ``tolerance``: how far below the target the final cost may land.
    - ``checkpoint`` / ``proxy``: build the scorer from a checkpoint path and proxy settings instead (for
      ``gymnasium.make``, whose keyword arguments must be plain data).
    - ``features``: the feature-set version observed (default: the current one).
    - ``prior``: what action 0 stands for (:mod:`rlprune.envs.priors`): ``none`` (the middle of the ratio range),
      ``uniform`` or ``magnitude`` (global magnitude sparsity, for unstructured units), recomputed per target.
    - ``name``: a label for the model, recorded with every episode (several models in one search).
    """

    metadata = {"render_modes": []}  # noqa: RUF012 - gymnasium's convention

    def __init__(
        self,
        scorer: Scorer | None = None,
        *,
        target: float | tuple[float, float] = 0.5,
        budget: str | Budget = "macs",
        reward: str = "accuracy",
        reward_weight: float = 1.0,
        min_ratio: float = 0.0,
        max_ratio: float = 0.8,
        round_to: int | None = None,
        min_channels: int = 1,
        tolerance: float = 0.01,
        latency_table: LatencyTable | None = None,
        checkpoint: str | None = None,
        proxy: dict[str, Any] | None = None,
        on_episode: Callable[[dict[str, Any]], None] | None = None,
        features: int = FEATURE_VERSION,
        name: str = "",
        prior: str = "none",
    ) -> None:
        super().__init__()
        if scorer is None:
            if checkpoint is None:
                raise RLPruneError("env: give a scorer or a checkpoint path")
            from rlprune.evaluation.proxy import proxy_from_checkpoint

            scorer = proxy_from_checkpoint(checkpoint, **(proxy or {}))
        self.scorer = scorer
        self.structure: Structure = scorer.structure
        self.units = self.structure.units
        self.budget = (
            budget
            if isinstance(budget, Budget)
            else Budget(
                self.structure,
                target,
                kind=budget,
                min_ratio=min_ratio,
                max_ratio=max_ratio,
                round_to=round_to,
                min_channels=min_channels,
                tolerance=tolerance,
                latency_table=latency_table,
            )
        )
        self.target_range = self.budget.target_range
        self.reward_fn = get_reward(reward, reward_weight)
        if self.reward_fn.needs_latency and self.budget.latency_table is None:
            raise RLPruneError(
                f"reward '{reward}': weighs CPU latency, which needs a latency table; a search of one model builds "
                "it (env.budget latency or this reward from a config), several models take MACs or parameter rewards"
            )
        self.min_ratio, self.max_ratio = self.budget.min_ratio, self.budget.max_ratio
        self.on_episode = on_episode
        self.name = name
        spec = feature_spec(features)
        self.static = spec.static(self.structure)
        self.feature_version = spec.version
        self.references = References(scorer, self.budget)
        self.prior = prior
        self._priors: dict[float, list[float] | None] = {}  # per target: computed once (a bad prior: refused below)
        self._warned_off_budget = False
        self.action_space = spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, (spec.size,), dtype=np.float32)
        self._reset_state(self.target_range[0])

    @property
    def latency_table(self) -> LatencyTable | None:
        return self.budget.latency_table

    def cost(self, channels: dict[str, int]) -> float:
        """Pruned/dense cost of the budget's kind for the given kept channels (latency: lookup-table prediction)."""
        return self.budget.cost(channels)

    def feasible_interval(self, t: int) -> tuple[float, float]:
        """Ratios for unit ``t`` that keep the final cost within [target - tolerance, target] reachable."""
        return self.budget.feasible_interval(self.episode.decided, t, self.target)

    def clone(self) -> LayerPruningEnv:
        """Another environment over the same scorer, budget and recorder, with its own episode state and an unseeded
        random generator (one per vectorized worker)."""
        other = copy.copy(self)
        other._np_random = None
        other._np_random_seed = None
        other._reset_state(self.target_range[0])
        return other

    # ---------------------------------------------------------------------------------------------- gym API
    def _reset_state(self, target: float) -> None:
        if target not in self._priors:
            if len(self._priors) > 256:  # a range of targets: every episode its own
                self._priors.clear()
            model = getattr(self.scorer, "model", None)
            self._priors[target] = prior_ratios(self.prior, self.budget, target, model)
        self.episode = Episode(self.budget, target, self.static, self.feature_version, prior=self._priors[target])

    @property
    def target(self) -> float:
        return self.episode.target

    @property
    def t(self) -> int:
        return self.episode.t

    @property
    def ratios(self) -> list[float]:
        return self.episode.ratios

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        options = options or {}
        low, high = self.target_range
        target = float(options.get("target", low if low == high else self.np_random.uniform(low, high)))
        if not 0.0 < target <= 1.0:
            raise RLPruneError(f"env.reset: target must lie in (0, 1], got {target}")
        self._reset_state(target)
        return self.episode.observe(), {"target": self.target, "unit": self.units[0].name}

    def action_to_ratio(self, action: np.ndarray | float) -> float:
        """Rescale an action in [-1, 1] to a ratio in [min_ratio, max_ratio]."""
        return action_to_ratio(self.budget, action)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        ratio, wanted = self.episode.decide(action)
        if not self.episode.done:
            return self.episode.observe(), 0.0, False, False, {"ratio": ratio, "wanted": wanted}
        return self._finish(ratio, wanted)

    def make_plan(self) -> Plan:
        """The plan of the ratios chosen so far (units not yet visited keep all channels)."""
        return self.episode.plan(self.scorer.importance)

    def rollout(self, act: Callable[[np.ndarray], np.ndarray], target: float | None = None) -> Plan:
        """Play one episode with ``act(obs) -> action`` without scoring it (:func:`rlprune.envs.episode.rollout`)."""
        t = self.target_range[0] if target is None else float(target)
        prior = prior_ratios(self.prior, self.budget, t, getattr(self.scorer, "model", None))  # as in its episodes
        return rollout(self.budget, act, t, self.scorer.importance, self.feature_version, prior)

    def _measured_ratio(self, result: Any, predicted: float) -> float:
        """MACs ratio counted on the physically pruned candidate (the scorer's ``macs_measured``; the prediction when
        the scorer builds no model); a prediction off by more than the tolerance is logged, tests make it an error."""
        measured = int(getattr(result, "macs_measured", 0) or 0)
        if measured <= 0:
            return predicted
        ratio = measured / self.structure.total_macs
        if abs(ratio - predicted) > self.budget.tolerance:
            log.warning("cost model predicted MACs ratio %.4f, the pruned model measures %.4f", predicted, ratio)
        return ratio

    def _finish(self, ratio: float, wanted: float) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        plan = self.make_plan()
        result = self.scorer(plan)
        macs = predict_costs(self.structure, plan.channels)[0]
        macs_ratio = macs / self.structure.total_macs
        latency_ratio = self.budget.latency_ratio(plan.channels)
        needs = self.reward_fn.references
        outcome = Outcome(
            accuracy=float(result.accuracy),
            macs_ratio=macs_ratio,
            latency_ratio=latency_ratio,
            macs=macs,
            metrics=dict(result.metrics),
            dense_accuracy=self.references.dense() if "dense" in needs else None,
            uniform_accuracy=self.references.uniform(self.target) if "uniform" in needs else None,
        )
        reward = float(self.reward_fn(outcome))
        if not math.isfinite(reward):  # one NaN reward would poison the agent's weights and every later action
            raise RLPruneError(f"reward '{self.reward_fn.name}': not a finite number ({reward}) for {outcome}")
        info = {
            "ratio": ratio,
            "wanted": wanted,
            "accuracy": outcome.accuracy,
            "macs_ratio": macs_ratio,
            "latency_ratio": latency_ratio,
            "target": self.target,
            "reward": reward,
            "budget_cost": self.cost(plan.channels),
            "macs_ratio_measured": self._measured_ratio(result, macs_ratio),
            "plan": plan.to_dict(),
            "ratios": list(self.ratios),
            "eval_seconds": float(result.seconds),
            "cached": bool(result.cached),
            "metrics": dict(result.metrics),
        }
        cost, tol = info["budget_cost"], self.budget.tolerance
        if not self.target - tol - 1e-9 <= cost <= self.target + 1e-9 and not self._warned_off_budget:
            self._warned_off_budget = True  # once per env: the clamp's steps are coarser than the tolerance here
            log.warning(
                "plan landed at %s ratio %.4f for target %.4f (tolerance %.3f): a late unit's channel steps (round_to "
                "%s, heads or groups) are coarser than the tolerance allows",
                self.budget.kind,
                cost,
                self.target,
                tol,
                self.budget.round_to,
            )
        if self.name:
            info["model"] = self.name
        for key in ("dense_accuracy", "uniform_accuracy"):
            if getattr(outcome, key) is not None:
                info[key] = getattr(outcome, key)
        if self.on_episode is not None:
            self.on_episode(info)
        return self.episode.final_observation(macs_ratio), reward, True, False, info
