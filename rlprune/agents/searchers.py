"""Baseline searchers that drive the same environment as the RL agents (so the same budget clamp applies and the
same episodes are recorded): uniform ratio, random search, and a simple evolutionary search."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from rlprune.envs.layer_pruning import LayerPruningEnv
from rlprune.errors import RLPruneError
from rlprune.pruning import Plan


def run_episode(env: LayerPruningEnv, actions: np.ndarray, seed: int | None = None) -> float:
    """Play one episode with a fixed action per unit; returns the final reward."""
    env.reset(seed=seed)
    reward = 0.0
    for a in actions:
        _, reward, terminated, _, _ = env.step(np.array([a], dtype=np.float32))
        if terminated:
            break
    return float(reward)


class Searcher(ABC):
    name = ""

    def __init__(self, env: LayerPruningEnv, seed: int = 0) -> None:
        self.env = env
        self.rng = np.random.default_rng(seed)
        self.seed = seed

    @abstractmethod
    def run(self, episodes: int) -> None:
        """Play ``episodes`` episodes. Deterministic for a seed, so a resumed run replays the episodes it already
        recorded (answered from the evaluator's cache) and continues exactly where it stopped."""


def uniform_action(env: LayerPruningEnv, target: float) -> float:
    """Bisection on one action shared by every unit: the smallest uniform ratio that meets the budget ``target``."""
    lo, hi = -1.0, 1.0
    for _ in range(12):
        mid = (lo + hi) / 2
        ratio = env.action_to_ratio(mid)
        channels = {u.name: env._channels(ratio, u.index) for u in env.units}
        if env.cost(channels) > target:
            lo = mid
        else:
            hi = mid
    return hi


def uniform_rollout(env: LayerPruningEnv, target: float) -> Plan:
    """The uniform plan at ``target``, through the environment's clamp like the uniform searcher's, not scored."""
    action = np.array([uniform_action(env, target)], dtype=np.float32)
    return env.rollout(lambda _obs: action, target)


class UniformSearcher(Searcher):
    """The same ratio for every unit: the one that meets the budget (solved by the environment's clamp, which
    with a uniform action raises later ratios only as far as needed). One plan; further episodes are cached."""

    name = "uniform"

    def run(self, episodes: int) -> None:
        n = len(self.env.units)
        self.env.reset(seed=self.seed)
        hi = uniform_action(self.env, self.env.target)
        for i in range(episodes):
            run_episode(self.env, np.full(n, hi), seed=self.seed + i)


class RandomSearcher(Searcher):
    """Independent uniform actions in [-1, 1] per unit (after the clamp, random plans on the budget)."""

    name = "random"

    def run(self, episodes: int) -> None:
        n = len(self.env.units)
        for i in range(episodes):
            run_episode(self.env, self.rng.uniform(-1, 1, n), seed=self.seed + i)


class EvolutionSearcher(Searcher):
    """(mu + lambda) evolution over action vectors: Gaussian mutation of the best, truncation selection."""

    name = "evolution"

    def __init__(
        self, env: LayerPruningEnv, seed: int = 0, population: int = 16, parents: int = 4, sigma: float = 0.3
    ) -> None:
        super().__init__(env, seed)
        self.population, self.parents, self.sigma = population, parents, sigma

    def run(self, episodes: int) -> None:
        n = len(self.env.units)
        scored: list[tuple[float, np.ndarray]] = []
        count = 0
        pop = [self.rng.uniform(-1, 1, n) for _ in range(self.population)]
        while count < episodes:
            for genome in pop:
                if count >= episodes:
                    break
                scored.append((run_episode(self.env, genome, seed=self.seed + count), genome))
                count += 1
            scored.sort(key=lambda t: t[0], reverse=True)
            elite = [g for _, g in scored[: self.parents]]
            pop = [
                np.clip(elite[i % len(elite)] + self.rng.normal(0, self.sigma, n), -1, 1)
                for i in range(self.population)
            ]


SEARCHERS: dict[str, type[Searcher]] = {s.name: s for s in (UniformSearcher, RandomSearcher, EvolutionSearcher)}


def get_searcher(name: str, env: LayerPruningEnv, seed: int) -> Searcher:
    try:
        return SEARCHERS[name](env, seed)
    except KeyError:
        raise RLPruneError(f"searcher '{name}': unknown (expected one of {', '.join(sorted(SEARCHERS))})") from None
