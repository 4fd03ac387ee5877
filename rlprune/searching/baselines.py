"""Baseline searchers that drive the same environment as the RL agents (so the same budget clamp applies and the
same episodes are recorded): uniform ratio, random search, a simple evolutionary search, and Torch-Pruning's global
and isomorphic pruning solved for the budget (:mod:`rlprune.pruning.peers`)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from rlprune.cost.budget import Budget
from rlprune.envs.episode import ratio_to_action
from rlprune.envs.layer_pruning import LayerPruningEnv
from rlprune.errors import RLPruneError
from rlprune.pruning.peers import PEERS, PeerAllocation

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


class PeerSearcher(Searcher):
    """Torch-Pruning's global pruning (``tp-global``: group L2; ``tp-global-l1``: L1 magnitude) or isomorphic
    pruning (``tp-isomorphic``), as one line of the engine would run it, with its global pruning ratio solved by
    bisection so that the plan meets the episode's target on the budget's own cost (MACs, latency table or
    parameters). One plan per target, played through the environment's clamp like every other plan; which
    channels go is the run's importance criterion, so only the allocation differs from the other searchers."""

    name = ""

    def run(self, episodes: int) -> None:
        env = self.env
        model = getattr(env.scorer, "model", None)
        if model is None:
            raise RLPruneError(f"searcher '{self.name}': needs a scorer that holds the dense model")
        example = getattr(env.scorer, "example", None)
        if example is None:
            param = next(model.parameters())
            example = torch.zeros(1, *env.structure.input_shape, device=param.device)
        allocation = PeerAllocation(model, example, env.structure, self.name, max_ratio=env.budget.max_ratio)
        solved: dict[float, list[float]] = {}
        for i in range(episodes):
            env.reset(seed=self.seed + i)  # the episode's target (drawn from a range) and prior
            target = env.target
            if target not in solved:
                solved[target] = solve_allocation(allocation, env.budget, target)
            prior = env.episode.prior or [None] * len(env.units)
            actions = np.array([ratio_to_action(env.budget, r, p) for r, p in zip(solved[target], prior, strict=True)])
            run_episode(env, actions, seed=self.seed + i)


def solve_allocation(allocation: PeerAllocation, budget: Budget, target: float, steps: int = 14) -> list[float]:
    """The peer's per-unit ratios at the smallest global pruning ratio whose plan costs at most ``target``
    (bisection; a peer's ranking prunes more of every unit as the ratio grows). The global ratio stays within the
    budget's ``max_ratio``, as a user sets it for ``max_pruning_ratio`` (past it the engine skips whole groups it
    would empty and prunes less, not more); when even that ratio leaves the plan over the target, its ratios, and the
    clamp does the rest."""
    cost = budget.cost_of_ratios
    lo, hi = 0.0, budget.max_ratio
    best = allocation.ratios(hi)
    if cost(best) > target:
        return best
    for _ in range(steps):
        mid = (lo + hi) / 2
        ratios = allocation.ratios(mid)
        if cost(ratios) <= target:
            hi, best = mid, ratios
        else:
            lo = mid
    return best


def _peer(name: str) -> type[PeerSearcher]:
    return type(f"PeerSearcher_{name}", (PeerSearcher,), {"name": name})


SEARCHERS: dict[str, type[Searcher]] = {
    s.name: s for s in (UniformSearcher, RandomSearcher, EvolutionSearcher, *(_peer(n) for n in PEERS))
}


def get_searcher(name: str, env: LayerPruningEnv, seed: int) -> Searcher:
    try:
        return SEARCHERS[name](env, seed)
    except KeyError:
        raise RLPruneError(f"searcher '{name}': unknown (expected one of {', '.join(sorted(SEARCHERS))})") from None
