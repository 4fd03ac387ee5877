"""The layer-by-layer pruning environment."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rlprune.cost.lut import LatencyTable
from rlprune.cost.macs import predict_costs
from rlprune.envs.features import FEATURE_VERSION, N_FEATURES, observation, static_features
from rlprune.envs.rewards import Outcome, get_reward
from rlprune.errors import RLPruneError
from rlprune.pruning.plan import Plan, kept_channels
from rlprune.pruning.structure import Structure

log = logging.getLogger("rlprune.envs")


class Scorer(Protocol):
    """Anything that scores a plan on validation data (the proxy evaluator, or a synthetic task in tests)."""

    structure: Structure

    def __call__(self, plan: Plan) -> Any: ...


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
    ``Box(0, 1, (18,), float32)``: the current unit's features (see ``rlprune.envs.features.FEATURES``; version
    ``FEATURE_VERSION``): relative depth, layer type, log-channels, kernel, stride, feature-map size, MACs and
    parameter shares, coupled modules, MACs removed so far, MACs still to come, previous ratio, the target, and the
    feasible ratio interval for this unit.

    ## Rewards
    0 on every step but the last; at the last step the configured reward strategy (``accuracy``,
    ``amc_log_flops`` or ``accuracy_latency``) applied to the validation accuracy and cost ratios.

    ## Episode End
    Terminates after the last unit (episode length = number of units). Never truncated.

    ## Arguments
    - ``scorer``: scores a plan (``rlprune.evaluation.proxy.ProxyEvaluator``); it carries the model structure.
    - ``target``: budget ratio in (0, 1], or a ``(low, high)`` range sampled uniformly per episode.
    - ``budget``: ``macs`` or ``latency`` (latency needs ``latency_table``).
    - ``reward`` / ``reward_weight``: reward strategy by name and its weight.
    - ``min_ratio`` / ``max_ratio``: the range actions are rescaled to.
    - ``round_to`` / ``min_channels``: channel rounding and the minimum channels a unit keeps.
    - ``tolerance``: how far below the target the final cost may land.
    - ``checkpoint`` / ``proxy``: build the scorer from a checkpoint path and proxy settings instead (for
      ``gymnasium.make``, whose keyword arguments must be plain data).
    """

    metadata = {"render_modes": []}  # noqa: RUF012 - gymnasium's convention

    def __init__(
        self,
        scorer: Scorer | None = None,
        *,
        target: float | tuple[float, float] = 0.5,
        budget: str = "macs",
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
    ) -> None:
        super().__init__()
        if scorer is None:
            if checkpoint is None:
                raise RLPruneError("env: give a scorer or a checkpoint path")
            from rlprune.evaluation.proxy import proxy_from_checkpoint

            scorer = proxy_from_checkpoint(checkpoint, **(proxy or {}))
        if not 0.0 <= min_ratio < max_ratio < 1.0:
            raise RLPruneError(f"env: expected 0 <= min_ratio < max_ratio < 1, got {min_ratio} and {max_ratio}")
        low, high = (target, target) if isinstance(target, int | float) else (float(target[0]), float(target[1]))
        if not (0.0 < low <= high <= 1.0):
            raise RLPruneError(f"env: target must lie in (0, 1], got {target}")
        if budget not in ("macs", "latency"):
            raise RLPruneError(f"env: budget must be 'macs' or 'latency', got '{budget}'")
        if budget == "latency" and latency_table is None:
            raise RLPruneError("env: a latency budget needs a latency table")
        self.scorer = scorer
        self.structure: Structure = scorer.structure
        self.units = self.structure.units
        self.target_range = (low, high)
        self.budget = budget
        self.reward_fn = get_reward(reward, reward_weight)
        self.min_ratio, self.max_ratio = float(min_ratio), float(max_ratio)
        self.round_to, self.min_channels, self.tolerance = round_to, int(min_channels), float(tolerance)
        self.latency_table = latency_table
        self.on_episode = on_episode
        self.static = static_features(self.structure)
        self.feature_version = FEATURE_VERSION
        self.action_space = spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, (N_FEATURES,), dtype=np.float32)
        self._dense_channels = {u.name: u.channels for u in self.units}
        floor_cost = self.cost({u.name: self._channels(self.max_ratio, i) for i, u in enumerate(self.units)})
        if floor_cost > low + 1e-9:
            raise RLPruneError(
                f"env: target {budget} ratio {low} is unreachable: pruning every unit by max_ratio {self.max_ratio} "
                f"still leaves {floor_cost:.3f} of the dense {budget}; raise env.max_ratio or the target"
            )
        self._reset_state(low)

    # ----------------------------------------------------------------------------------------------- cost model
    def _channels(self, ratio: float, unit_index: int) -> int:
        unit = self.units[unit_index]
        return kept_channels(unit.channels, ratio, self.round_to, self.min_channels, unit.groups)

    def cost(self, channels: dict[str, int]) -> float:
        """Pruned/dense cost of the budget's kind for the given kept channels (latency: lookup-table prediction)."""
        if self.budget == "latency":
            assert self.latency_table is not None
            return self.latency_table.predict(self.structure, channels) / self.latency_table.dense_ms
        return predict_costs(self.structure, channels)[0] / self.structure.total_macs

    def _cost_with(self, t: int, ratio: float, rest: float) -> float:
        channels = dict(self._decided)
        channels[self.units[t].name] = self._channels(ratio, t)
        for j in range(t + 1, len(self.units)):
            channels[self.units[j].name] = self._channels(rest, j)
        return self.cost(channels)

    def feasible_interval(self, t: int) -> tuple[float, float]:
        """Ratios for unit ``t`` that keep the final cost within [target - tolerance, target] reachable."""
        lo_r, hi_r = self.min_ratio, self.max_ratio
        # Smallest ratio with which, even if all later units are pruned to the maximum, the target is met.
        if self._cost_with(t, lo_r, self.max_ratio) <= self.target:
            need = lo_r
        elif self._cost_with(t, hi_r, self.max_ratio) > self.target:
            need = hi_r
        else:
            a, b = lo_r, hi_r
            for _ in range(20):
                mid = (a + b) / 2
                if self._cost_with(t, mid, self.max_ratio) <= self.target:
                    b = mid
                else:
                    a = mid
            need = b
        # Largest ratio with which, even if all later units are pruned as little as allowed, the target is reached.
        floor = self.target - self.tolerance
        if self._cost_with(t, hi_r, self.min_ratio) >= floor:
            allow = hi_r
        elif self._cost_with(t, lo_r, self.min_ratio) < floor:
            allow = lo_r
        else:
            a, b = lo_r, hi_r
            for _ in range(20):
                mid = (a + b) / 2
                if self._cost_with(t, mid, self.min_ratio) >= floor:
                    a = mid
                else:
                    b = mid
            allow = a
        return need, max(need, allow)

    # ---------------------------------------------------------------------------------------------- gym API
    def _reset_state(self, target: float) -> None:
        self.target = target
        self.t = 0
        self._decided: dict[str, int] = {}
        self.ratios: list[float] = []
        self._interval = (self.min_ratio, self.max_ratio)

    def _obs(self) -> np.ndarray:
        t = self.t
        total = self.structure.total_macs
        removed = sum(
            self.units[j].macs * (1 - self._decided[self.units[j].name] / self.units[j].channels) for j in range(t)
        )
        later = sum(u.macs for u in self.units[t + 1 :])
        prev = self.ratios[-1] if self.ratios else 0.0
        self._interval = self.feasible_interval(t)
        dynamic = [removed / total, later / total, prev, self.target, *self._interval]
        return observation(self.static[t], dynamic)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        options = options or {}
        low, high = self.target_range
        target = float(options.get("target", low if low == high else self.np_random.uniform(low, high)))
        if not 0.0 < target <= 1.0:
            raise RLPruneError(f"env.reset: target must lie in (0, 1], got {target}")
        self._reset_state(target)
        return self._obs(), {"target": self.target, "unit": self.units[0].name}

    def action_to_ratio(self, action: np.ndarray | float) -> float:
        """Rescale an action in [-1, 1] to a ratio in [min_ratio, max_ratio]."""
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        return self.min_ratio + (a + 1.0) / 2.0 * (self.max_ratio - self.min_ratio)

    def _decide(self, action: np.ndarray | float) -> tuple[float, float]:
        """Clamp the action's ratio into the feasible interval and commit it for the current unit."""
        if self.t >= len(self.units):
            raise RuntimeError("step() called after the episode ended; call reset()")
        wanted = self.action_to_ratio(action)
        lo, hi = self._interval
        ratio = float(min(max(wanted, lo), hi))
        self._decided[self.units[self.t].name] = self._channels(ratio, self.t)
        self.ratios.append(ratio)
        self.t += 1
        return ratio, wanted

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        ratio, wanted = self._decide(action)
        if self.t < len(self.units):
            return self._obs(), 0.0, False, False, {"ratio": ratio, "wanted": wanted}
        return self._finish(ratio, wanted)

    def make_plan(self) -> Plan:
        """The plan of the ratios chosen so far (units not yet visited keep all channels)."""
        ratios = {u.name: r for u, r in zip(self.units, self.ratios, strict=False)}
        return Plan.from_ratios(
            self.structure,
            ratios,
            importance=getattr(self.scorer, "importance", "l1"),
            round_to=self.round_to,
            min_channels=self.min_channels,
        )

    def rollout(self, act: Callable[[np.ndarray], np.ndarray], target: float | None = None) -> Plan:
        """Play one episode with ``act(obs) -> action`` without scoring it: how a trained policy is applied."""
        obs, _ = self.reset(options=None if target is None else {"target": target})
        while True:
            self._decide(act(obs))
            if self.t >= len(self.units):
                return self.make_plan()
            obs = self._obs()

    def _measured_ratio(self, result: Any, predicted: float) -> float:
        """MACs ratio counted on the physically pruned candidate (the scorer's ``macs_measured``; the prediction when
        the scorer builds no model); a prediction off by more than the tolerance is logged, tests make it an error."""
        measured = int(getattr(result, "macs_measured", 0) or 0)
        if measured <= 0:
            return predicted
        ratio = measured / self.structure.total_macs
        if abs(ratio - predicted) > self.tolerance:
            log.warning("cost model predicted MACs ratio %.4f, the pruned model measures %.4f", predicted, ratio)
        return ratio

    def _finish(self, ratio: float, wanted: float) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        plan = self.make_plan()
        result = self.scorer(plan)
        macs = predict_costs(self.structure, plan.channels)[0]
        macs_ratio = macs / self.structure.total_macs
        if self.latency_table is not None:
            latency_ratio = self.latency_table.predict(self.structure, plan.channels) / self.latency_table.dense_ms
        else:
            latency_ratio = float("nan")
        outcome = Outcome(
            accuracy=float(result.accuracy), macs_ratio=macs_ratio, latency_ratio=latency_ratio, macs=macs
        )
        reward = float(self.reward_fn(outcome))
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
            "eval_seconds": float(getattr(result, "seconds", 0.0)),
            "cached": bool(getattr(result, "cached", False)),
        }
        if self.on_episode is not None:
            self.on_episode(info)
        obs = observation(self.static[-1], [1 - macs_ratio, 0.0, ratio, self.target, ratio, ratio])
        return obs, reward, True, False, info
