"""Baseline searchers that drive the same environment as the RL agents (so the same budget clamp applies and the
same episodes are recorded): uniform ratio, random search, and a simple evolutionary search."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from rlprune.envs.episode import ratio_to_action
from rlprune.envs.layer_pruning import LayerPruningEnv
from rlprune.errors import RLPruneError

BATCH = 16  # random-search candidates queued together on a worker pool (at least 2 per worker)


def prefetch(env: LayerPruningEnv, episodes: list[tuple[np.ndarray, int]]) -> None:
    """Have a parallel scorer (``search.workers > 1``) score these (actions, seed) episodes at once before they are
    played; in-process this does nothing and each episode is scored when it ends."""
    if hasattr(env.scorer, "prefetch"):
        from rlprune.searching.pool import prefetch_episodes

        prefetch_episodes(env, episodes)


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


class UniformSearcher(Searcher):
    """The same ratio for every unit: the one that meets the budget (:meth:`Budget.uniform_ratio`), played through
    the environment's clamp, which raises later ratios only as far as rounding needs. One plan; further episodes
    are cached."""

    name = "uniform"

    def run(self, episodes: int) -> None:
        budget = self.env.budget
        ratio = budget.uniform_ratio()
        self.env.reset(seed=self.seed)  # the episode's prior (if any) says which action gives that ratio per unit
        prior = self.env.episode.prior or [None] * len(self.env.units)
        actions = np.array([ratio_to_action(budget, ratio, p) for p in prior])
        for i in range(episodes):
            run_episode(self.env, actions, seed=self.seed + i)


class RandomSearcher(Searcher):
    """Independent uniform actions in [-1, 1] per unit (after the clamp, random plans on the budget)."""

    name = "random"

    def run(self, episodes: int) -> None:
        n = len(self.env.units)
        # The same draws in the same order as one episode at a time: batching changes nothing but the timing. With a
        # worker pool the next batch is queued before this one is played, so the actors never wait for the driver.
        size = max(BATCH, 2 * getattr(self.env.scorer, "workers", 1))
        draws = [(self.rng.uniform(-1, 1, n), self.seed + i) for i in range(episodes)]
        batches = [draws[i : i + size] for i in range(0, episodes, size)]
        for k, batch in enumerate(batches):
            if k == 0:
                prefetch(self.env, batch)
            if k + 1 < len(batches):
                prefetch(self.env, batches[k + 1])
            for actions, seed in batch:
                run_episode(self.env, actions, seed=seed)


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
            prefetch(self.env, [(g, self.seed + count + j) for j, g in enumerate(pop[: episodes - count])])
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
