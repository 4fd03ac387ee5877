"""The public search API: :func:`search` over your own scorer(s), :class:`SearchResult`, :func:`load_result`,
and :func:`run_search`, which dispatches a config to a one-model or several-model search."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from rlprune.agents.policy_io import Policy
from rlprune.config import MULTI_MODEL_REWARD, SearchConfig, validate
from rlprune.errors import RLPruneError
from rlprune.evaluation.scorer import Scorer
from rlprune.io.reports import MultiSearchSummary, SearchSummary, load_summary
from rlprune.io.safe import locked
from rlprune.pruning import Plan
from rlprune.pruning.weights import kind_and_pattern
from rlprune.searching.recorder import SearchRecorder
from rlprune.searching.single import single_search


# One search per run directory at a time: two would interleave episodes.jsonl and overwrite each other's files.
@locked(lambda a: Path(a["cfg"].output_dir) / a["cfg"].name, "search run directory")
def run_search(
    cfg: SearchConfig,
    *,
    searcher: str | None = None,
    resume: bool = False,
    progress: bool = True,
    scorer: Scorer | Mapping[str, Scorer] | None = None,
    workers: int | None = None,
    trust_model_code: bool = False,
) -> SearchSummary | MultiSearchSummary:
    """Run an RL agent (``searcher=None``) or a baseline searcher; returns the summary.

    :param scorer: use this scorer instead of building a proxy evaluator from ``cfg.checkpoint``; a dict of named
        scorers trains one policy over all of their models, like ``cfg.checkpoints``.
    :param workers: score plans on this many Ray actors (default ``cfg.workers``; 1 = in this process).
    :param trust_model_code: import model code the checkpoint names (see :mod:`rlprune.io.trust`).
    """
    workers = cfg.workers if workers is None else workers
    if cfg.policy is not None:
        raise RLPruneError("policy: a search learns a policy; applying one is rlprune run (or rlprune apply)")
    several = isinstance(scorer, Mapping)
    if cfg.checkpoints is not None or several:
        from rlprune.searching.multi import search_models

        if searcher is not None or workers > 1 or (scorer is not None and not several):
            raise RLPruneError(
                "a search over several models trains one RL policy in this process: no baseline searcher, "
                "workers or single scorer",
                fix="several_checkpoints",
            )
        if several and (cfg.checkpoints is not None or cfg.checkpoint is not None or cfg.pre_pruned is not None):
            raise RLPruneError("search: give named scorers or checkpoints (and pre_pruned copies of them), not both")
        scorers = cast("Mapping[str, Scorer]", scorer) if several else None
        return search_models(cfg, resume=resume, progress=progress, trust_model_code=trust_model_code, scorers=scorers)
    if workers > 1 and not hasattr(scorer, "prefetch"):
        from rlprune.searching.pool import run_pooled

        return run_pooled(
            single_search,
            cfg,
            workers,
            scorer,
            searcher=searcher,
            resume=resume,
            progress=progress,
            trust_model_code=trust_model_code,
        )
    return single_search(
        cfg, searcher=searcher, resume=resume, progress=progress, scorer=scorer, trust_model_code=trust_model_code
    )


@dataclass
class SearchResult:
    """What a search produced.

    :param run_dir: where everything was written (``episodes.jsonl``, ``best_plan.json``, ``summary.json``, TensorBoard
        logs, and for RL agents ``policy.safetensors`` + ``policy.json``).
    :param best_plan: the best plan found (highest reward), with the kept channels per unit.
    :param policy: the learned policy (RL agents only), ready for :func:`rlprune.apply_policy` on other models.
    :param records: every evaluated plan, in order (one dict per episode, as in ``episodes.jsonl``).
    :param summary: the run's summary (best score, episodes, seconds; per model for a search over several).
    """

    run_dir: Path
    best_plan: Plan
    policy: Policy | None
    records: list[dict[str, Any]]
    summary: SearchSummary | MultiSearchSummary

    @property
    def best(self) -> dict[str, Any]:
        """The best episode's record (score, MACs ratio, reward, ...)."""
        return max(self.records, key=lambda r: r["reward"])


AGENTS = ("ppo", "ddpg", "sac", "td3")


def search(
    scorer: Scorer | Mapping[str, Scorer],
    *,
    target: float | tuple[float, float] = 0.5,
    agent: str = "ppo",
    episodes: int = 300,
    out_dir: str | Path = "runs/search",
    seed: int = 0,
    budget: str = "macs",
    reward: str | None = None,
    min_ratio: float = 0.0,
    max_ratio: float = 0.8,
    round_to: int | Literal["auto"] | None = None,
    hyperparams: dict[str, Any] | None = None,
    init_policy: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    **options: Any,
) -> SearchResult:
    """Search per-layer pruning ratios for the model ``scorer`` scores, with an RL agent or a baseline.

    :param scorer: scores a plan (:class:`~rlprune.MetricScorer` around your own metric, or the built-in proxy). A
        dict of named scorers (several models, e.g. ``{"small": s1, "wide": s2}``) trains one RL policy over all of
        them, each episode drawing a model and a target in ``target``'s range: a policy to apply to models it never
        saw (docs/generalize.md).
    :param target: pruned/dense cost ratio to meet (or a ``(low, high)`` range: one target per episode).
    :param agent: ``ppo`` (default), ``ddpg``, ``sac``, ``td3``, or a baseline: ``random``, ``evolution``,
        ``uniform``, or Torch-Pruning's own allocation solved for the budget: ``tp-global`` (global group-L2
        pruning), ``tp-global-l1`` (global magnitude), ``tp-isomorphic`` (isomorphic pruning).
    :param episodes: plans to evaluate.
    :param reward: ``accuracy`` for one model; with several, ``gain_over_uniform`` (the default: raw accuracies of
        different models are not on one scale) or ``retention``.
    :param budget: ``macs``, ``latency`` or ``params``; a weight-level scorer (``MetricScorer(...,
        granularity="unstructured")``) searches per-layer sparsity on a ``params`` budget.
    :param round_to: keep channel counts a multiple of this (8 suits ONNX Runtime on x86, fp32 and int8);
        ``"auto"``: this CPU's fp32 vector width (16 with AVX-512: faster still in fp32, but coarser steps that cost
        accuracy; docs/compression.md).
    :param out_dir: the run directory (created; an existing search there is refused unless ``resume``).
    :param init_policy: start the RL agent from this saved policy's weights (a run directory or ``policy.json``)
        instead of a fresh network; ``min_ratio``, ``max_ratio``, ``round_to`` and the budget kind must be the ones it
        was trained with (:func:`rlprune.apply_policy` with ``adapt`` sets them for you).
    :param options: further :class:`~rlprune.config.SearchConfig` sections, e.g. ``latency={"batch_size": 8}`` or
        ``env={"tolerance": 0.02}`` (merged over the arguments above).
    :returns: a :class:`SearchResult`.

    Example::

        result = rp.search(scorer, target=0.5, agent="ppo", episodes=60, out_dir="runs/mine")
        pruned, plan = rp.prune(model, result.best_plan, example_inputs)
    """
    from rlprune.searching.baselines import SEARCHERS

    if agent not in AGENTS and agent not in SEARCHERS:
        raise RLPruneError(f"agent '{agent}': expected one of {', '.join(AGENTS + tuple(sorted(SEARCHERS)))}")
    out = Path(out_dir)
    several = isinstance(scorer, Mapping)
    scorers = list(scorer.values()) if isinstance(scorer, Mapping) else [scorer]
    if not scorers:
        raise RLPruneError("search: give at least one named scorer")
    first = scorers[0]
    _check_scorers(scorers, several, budget, agent)
    reward = reward or (MULTI_MODEL_REWARD if several else "accuracy")
    kind, pattern = kind_and_pattern(first.structure.granularity)
    if kind != "channel" and budget == "macs":
        budget = "params"  # a weight-level scorer's plans save parameters (the only budget they can meet)
    env = {
        "granularity": kind,
        "pattern": pattern,
        "target": list(target) if isinstance(target, tuple | list) else target,
        "budget": budget,
        "reward": reward,
        "min_ratio": min_ratio,
        "max_ratio": max_ratio,
        "round_to": round_to,
        **options.pop("env", {}),
    }
    raw: dict[str, Any] = {
        "name": out.name,
        "output_dir": str(out.parent),
        "seed": seed,
        "env": env,
        # a weight-level scorer's importance is its own (magnitude); the config keeps the channel default
        "proxy": {**({"importance": first.importance} if kind == "channel" else {}), **options.pop("proxy", {})},
        "agent": {
            "algorithm": agent if agent in AGENTS else "ppo",
            "episodes": episodes,
            "hyperparams": hyperparams or {},
            "init_policy": None if init_policy is None else str(init_policy),
        },
        **options,
    }
    cfg = validate(SearchConfig, raw, "search")
    summary = run_search(
        cfg, searcher=None if agent in AGENTS else agent, resume=resume, progress=progress, scorer=scorer
    )
    return load_result(out, summary)


def _check_scorers(scorers: list[Scorer], several: bool, budget: str, agent: str) -> None:
    """Refuse scorers one search cannot take together."""
    if len({s.structure.granularity for s in scorers}) > 1 or len({s.importance for s in scorers}) > 1:
        raise RLPruneError("search: the scorers of several models must share one granularity and importance")
    if several and budget == "latency":
        raise RLPruneError("search: several models take MACs or parameter budgets, not latency")
    if several and agent not in AGENTS:
        raise RLPruneError(f"search: several models train one RL policy ({', '.join(AGENTS)}), not '{agent}'")


def load_result(run_dir: str | Path, summary: SearchSummary | MultiSearchSummary | None = None) -> SearchResult:
    """The :class:`SearchResult` of a finished run directory."""
    run_dir = Path(run_dir)
    if summary is None:
        summary = load_summary(run_dir / "summary.json")
    records = SearchRecorder(run_dir).records
    policy = Policy.load(run_dir) if (run_dir / "policy.json").is_file() else None
    return SearchResult(run_dir, Plan.load(run_dir / "best_plan.json"), policy, records, summary)


__all__ = ["AGENTS", "SearchResult", "load_result", "run_search", "search"]
