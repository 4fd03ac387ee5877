"""A search on one model: ``rlprune train`` (an RL agent) and ``rlprune search`` (a baseline searcher).

``runs/<name>/`` holds the resolved config, TensorBoard logs (``tb/``), ``episodes.jsonl`` (every evaluated plan),
``best_plan.json``, ``agent_state.pt`` checkpoints, the final ``policy.safetensors`` + ``policy.json``, and
``summary.json``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from rlprune.config import SearchConfig
from rlprune.cost.lut import measured_latency_ratio
from rlprune.envs.layer_pruning import LayerPruningEnv
from rlprune.evaluation.scorer import Scorer
from rlprune.io.reports import SearchBest, SearchSummary, UniformReference
from rlprune.pruning import Plan
from rlprune.reporting import outputs
from rlprune.searching.agent import train_agent
from rlprune.searching.baselines import get_searcher
from rlprune.searching.recorder import SearchRecorder
from rlprune.searching.run import SearchRun, remember_records, run_stats
from rlprune.searching.setup import build_scorer, calibrated_budget, search_budget

log = logging.getLogger("rlprune.searching.single")


class SingleModelSearch(SearchRun):
    """A search on one model: an RL agent (trained by :func:`~rlprune.searching.agent.train_agent`) or a baseline
    searcher, steered by the config's budget (latency budgets by the run's calibrated latency table).

    :param scorer: scores plans (the built-in proxy of ``cfg.checkpoint`` when None; a worker pool's stand-in).
    :param trust_model_code: import model code the checkpoint names (see :mod:`rlprune.io.trust`).
    """

    def __init__(
        self,
        cfg: SearchConfig,
        *,
        searcher: str | None,
        resume: bool,
        progress: bool,
        scorer: Scorer | None,
        trust_model_code: bool,
    ) -> None:
        super().__init__(cfg, searcher=searcher, resume=resume, progress=progress)
        self.scorer, self.trust_model_code = scorer, trust_model_code

    def build(self) -> None:
        if self.scorer is None:
            self.scorer = build_scorer(self.cfg, self.cfg.checkpoint, self.trust_model_code)
        # refuses an unreachable target: before the run dir exists
        self.budget, self.dense_cpu = search_budget(self.cfg, self.scorer, self.run_dir)

    def recorder(self) -> SearchRecorder:
        assert self.scorer is not None
        self.writer = SummaryWriter(str(self.run_dir / "tb" / self.searcher)) if self.searcher else None
        if self.writer is not None:
            outputs.add_search_layout(self.writer)
        recorder = SearchRecorder(
            self.run_dir, self.writer, structure=self.scorer.structure, budget=self.cfg.env.budget
        )
        remember_records(self.scorer, recorder.records)
        if self.budget.latency_table is not None:
            self.budget = calibrated_budget(self.cfg, self.budget, self.dense_cpu, self.run_dir)
        e = self.cfg.env
        self.env = LayerPruningEnv(
            self.scorer,
            budget=self.budget,
            reward=e.reward,
            reward_weight=e.reward_weight,
            prior=e.prior,
            on_episode=recorder,
            features=self.features,
        )
        return recorder

    def search(self, recorder: SearchRecorder) -> SummaryWriter:
        cfg, searcher = self.cfg, self.searcher
        log.info(
            "%s on %s: %d units, target %s, %d episodes (%d already recorded)",
            searcher or cfg.agent.algorithm,
            cfg.checkpoint,
            len(self.env.units),
            cfg.env.target,
            cfg.agent.episodes,
            recorder.episodes,
        )
        if searcher:
            assert self.writer is not None
            _run_baseline(cfg, searcher, self.env, recorder, self.writer, self.progress)
            return self.writer
        return train_agent(cfg, self.env, recorder, self.run_dir, self.resume, self.progress, start=self.start)

    def summarize(self, recorder: SearchRecorder, writer: SummaryWriter, started: float) -> SearchSummary:
        cfg, e, env = self.cfg, self.cfg.env, self.env
        uniform = uniform_reference(env)
        outputs.write_search_figures(
            self.run_dir,
            recorder.records,
            env.structure,
            target=e.target,
            budget=e.budget,
            uniform=uniform.model_dump(),
            writer=writer,
        )
        summary = _summary(cfg, self.searcher, recorder, uniform, started)
        best = recorder.best
        assert best is not None
        if self.budget.latency_table is not None:
            # the search steered by the lookup table's predictions; the best plan's latency is also measured for real
            ratio = measured_latency_ratio(
                self.dense_cpu,
                env.structure,
                Plan.from_dict(best["plan"]),
                cfg.latency.batch_size,
                threads=cfg.latency.threads,
                runtime=cfg.latency.runtime,
            )
            summary.best.measured_latency_ratio = round(ratio, 4)
        log.info(
            "best: accuracy %.2f%% at %s ratio %.3f (episode %d) -> %s",
            best["accuracy"],
            e.budget if e.budget != "macs" else "MACs",
            best.get("budget_cost", best["macs_ratio"]),
            best["episode"],
            self.run_dir / "best_plan.json",
        )
        return summary


def single_search(cfg: SearchConfig, **options: Any) -> SearchSummary:
    """Run a :class:`SingleModelSearch` with these keyword ``options`` (the caller holds the run directory's lock);
    returns its summary. A worker pool calls it with its own scorer."""
    summary = SingleModelSearch(cfg, **options).run()
    assert isinstance(summary, SearchSummary)
    return summary


def _run_baseline(
    cfg: SearchConfig, searcher: str, env: LayerPruningEnv, recorder: SearchRecorder, writer: Any, progress: bool
) -> None:
    """Play a baseline searcher's episodes (a resumed one re-plays what is recorded, answered from the cache)."""
    recorder.follow(cfg.agent.episodes, searcher, progress, replay=recorder.episodes)
    try:
        get_searcher(searcher, env, cfg.seed).run(cfg.agent.episodes)
    finally:
        recorder.close()
    if recorder.best is not None:
        writer.add_hparams(
            {"searcher": searcher, "episodes": recorder.episodes, "seed": cfg.seed, "target": str(cfg.env.target)},
            {"hparams/best_accuracy": recorder.best["accuracy"], "hparams/best_reward": recorder.best["reward"]},
            run_name="hparams",
        )


def _summary(
    cfg: SearchConfig, searcher: str | None, recorder: SearchRecorder, uniform: UniformReference, started: float
) -> SearchSummary:
    best = recorder.best
    assert best is not None
    return SearchSummary(
        name=cfg.name,
        searcher=searcher or cfg.agent.algorithm,
        episodes=recorder.episodes,
        best=SearchBest(
            **{
                k: best[k]
                for k in ("episode", "reward", "accuracy", "macs_ratio", "latency_ratio", "target", "budget_cost")
                if k in best
            }
        ),
        budget=cfg.env.budget,
        **run_stats(recorder, started),
        mean_eval_seconds=round(sum(r["eval_seconds"] for r in recorder.records) / recorder.episodes, 3),
        uniform=uniform,
    )


def uniform_reference(env: LayerPruningEnv) -> UniformReference:
    """The uniform plan at the search's target (its mid-point for a range), scored like every searched plan but not
    recorded as an episode: the baseline the search scatter and the summary compare against."""
    low, high = env.target_range
    plan = env.budget.uniform_plan((low + high) / 2, importance=env.scorer.importance)
    result = env.scorer(plan)
    latency = env.budget.latency_ratio(plan.channels)
    return UniformReference(
        accuracy=round(float(result.accuracy), 4),
        budget_cost=round(env.budget.cost(plan.channels), 5),
        macs_ratio=round(env.budget.macs_ratio(plan.channels), 5),
        latency_ratio=None if math.isnan(latency) else round(latency, 5),
    )


__all__ = ["SingleModelSearch", "single_search", "uniform_reference"]
