"""Several models in one environment: each episode draws a model and a target, so one policy learns pruning rather
than one network at one budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from rlprune.envs.layer_pruning import LayerPruningEnv
from rlprune.errors import RLPruneError
from rlprune.pruning.structure import Unit


class MultiModelEnv(gym.Env):
    """Prune one of several models per episode, at a target drawn from each model's range.

    ## Description
    A wrapper around one :class:`~rlprune.envs.layer_pruning.LayerPruningEnv` per model (each with its own scorer,
    budget and reference scores). ``reset`` draws the model uniformly (or by ``weights``) and the target uniformly in
    that environment's target range; ``step`` is the drawn environment's. With a relative reward
    (``gain_over_uniform``, ``retention``) the rewards of different models and budgets are on one scale.

    ## Action Space
    The wrapped environments' ``Box(-1, 1, (1,), float32)``.

    ## Observation Space
    The wrapped environments' (they must observe the same feature set).

    ## Rewards
    The drawn environment's reward.

    ## Episode End
    After the drawn model's last unit; episodes of different models have different lengths. Never truncated.

    ## Arguments
    - ``envs``: one environment per model, each with a distinct ``name``.
    - ``weights``: relative probability of drawing each model (default: equal).
    """

    metadata = {"render_modes": []}  # noqa: RUF012 - gymnasium's convention

    def __init__(self, envs: Sequence[LayerPruningEnv], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not envs:
            raise RLPruneError("multi-model env: give at least one environment")
        versions = {e.feature_version for e in envs}
        if len(versions) > 1:
            raise RLPruneError(f"multi-model env: the environments observe different feature sets ({sorted(versions)})")
        names = [e.name for e in envs]
        if len(set(names)) != len(names) or not all(names):
            raise RLPruneError(f"multi-model env: every environment needs a distinct name, got {names}")
        w = np.ones(len(envs)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(envs),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise RLPruneError(f"multi-model env: weights must be {len(envs)} non-negative numbers, not all 0")
        self.envs = list(envs)
        self.p = w / w.sum()
        self.observation_space = envs[0].observation_space
        self.action_space = envs[0].action_space
        self.feature_version = envs[0].feature_version
        self.current = self.envs[0]

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.envs]

    @property
    def units(self) -> list[Unit]:
        """The longest model's units (an upper bound on an episode's length)."""
        return max((e.units for e in self.envs), key=len)

    @property
    def episode_length(self) -> int:
        """Mean episode length over the models, weighted like the draw (for rollout sizes)."""
        return max(1, round(float(sum(p * len(e.units) for p, e in zip(self.p, self.envs, strict=True)))))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        options = dict(options or {})
        if "model" in options:
            name = options.pop("model")
            if name not in self.names:
                raise RLPruneError(f"multi-model env: no model named {name!r} (expected one of {self.names})")
            self.current = self.envs[self.names.index(name)]
        else:
            self.current = self.envs[int(self.np_random.choice(len(self.envs), p=self.p))]
        if "target" not in options:
            low, high = self.current.target_range
            options["target"] = low if low == high else float(self.np_random.uniform(low, high))
        obs, info = self.current.reset(options=options)
        return obs, {**info, "model": self.current.name}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return self.current.step(action)


__all__ = ["MultiModelEnv"]
