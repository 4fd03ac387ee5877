"""The parts a search is built from, shared by one-model and several-model searches: the scorer of a
checkpoint, the budget over a model's units, and for latency budgets the run's latency table (built, cached and
calibrated in the run directory)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from torch import nn

from rlprune.config import SearchConfig
from rlprune.cost.budget import Budget
from rlprune.cost.calibration import calibrate_latency_budget
from rlprune.cost.lut import LatencyTable, build_latency_table
from rlprune.errors import RLPruneError
from rlprune.evaluation.proxy import proxy_from_checkpoint, scorer_settings
from rlprune.evaluation.scorer import Scorer
from rlprune.pruning import Structure

log = logging.getLogger("rlprune.searching.setup")


def _latency_table(cfg: SearchConfig, structure: Structure, dense_cpu: nn.Module, run_dir: Path) -> LatencyTable:
    """The run's latency table: the saved one when it fits the model and batch size, else built and saved."""
    path = run_dir / "latency_table.json"
    if path.is_file():
        table = LatencyTable.load(path)
        same = (table.fingerprint, table.batch_size, table.runtime)
        if same == (structure.fingerprint, cfg.latency.batch_size, cfg.latency.runtime):
            return table
    log.info("building the per-layer latency table (batch %d, %s)", cfg.latency.batch_size, cfg.latency.runtime)
    # saved by the caller once the run directory exists (a refused run leaves none behind)
    return build_latency_table(
        dense_cpu, structure, cfg.latency.batch_size, threads=cfg.latency.threads, runtime=cfg.latency.runtime
    )


def build_scorer(cfg: SearchConfig, checkpoint: str | None, trust_model_code: bool = False) -> Scorer:
    """The built-in proxy scorer for one dense checkpoint with the config's proxy, prune and granularity settings
    (one per model in a search over several)."""
    if checkpoint is None:
        raise RLPruneError("search: give a checkpoint (the dense model) or a scorer")
    return proxy_from_checkpoint(
        checkpoint,
        cfg.data_root,
        device=cfg.device,
        trust_model_code=trust_model_code,
        **scorer_settings(cfg),
    )


def build_budget(cfg: SearchConfig, structure: Structure, latency_table: LatencyTable | None = None) -> Budget:
    """The config's budget (``env`` section) over one model's units; refuses an unreachable target."""
    e = cfg.env
    return Budget(
        structure,
        e.target if isinstance(e.target, float) else tuple(e.target),
        kind=e.budget,
        min_ratio=e.min_ratio,
        max_ratio=e.max_ratio,
        round_to=e.round_to,
        min_channels=e.min_channels,
        tolerance=e.tolerance,
        latency_table=latency_table,
    )


def search_budget(cfg: SearchConfig, scorer: Scorer, run_dir: Path) -> tuple[Budget, nn.Module | None]:
    """The search's budget and, for a latency budget or reward, the dense model on the CPU its table was built for."""
    table, dense_cpu = None, None
    if cfg.env.budget == "latency" or cfg.env.reward == "accuracy_latency":
        model = getattr(scorer, "model", None)
        if model is None:
            raise RLPruneError("search: a latency budget or reward needs a scorer that holds the dense model")
        dense_cpu = copy.deepcopy(model).cpu().eval()  # the scorer keeps its model on its own device
        table = _latency_table(cfg, scorer.structure, dense_cpu, run_dir)
        if cfg.latency.runtime != "torch" and cfg.env.round_to is None:
            # unrounded plans run barely faster than dense in ONNX Runtime, and the lookup table mispredicts them
            # (benchmarks/results/latency_vs_macs.md)
            log.warning(
                "latency in %s with env.round_to unset: its kernels block channels by the CPU's vector width, and "
                "other channel counts run far slower than their MACs say; set env.round_to: 8",
                cfg.latency.runtime,
            )
    return build_budget(cfg, scorer.structure, table), dense_cpu


def calibrated_budget(cfg: SearchConfig, budget: Budget, dense_cpu: nn.Module | None, run_dir: Path) -> Budget:
    """Save the run's latency table, refitted first on plans at the budget timed for real unless it already was."""
    table = budget.latency_table
    assert table is not None and dense_cpu is not None
    if table.calibration is None and cfg.latency.calibration_plans > 0:
        log.info("calibrating the latency table on %d plans at the budget", cfg.latency.calibration_plans)
        budget = calibrate_latency_budget(
            budget, dense_cpu, cfg.latency.calibration_plans, seed=cfg.proxy.seed, threads=cfg.latency.threads
        )
        table = budget.latency_table
        assert table is not None and table.calibration is not None
        c = table.calibration
        log.info(
            "latency table: measured ratio of the calibration plans %.3f, predicted %.3f before / %.3f after",
            c["measured_ratio_mean"],
            c["predicted_ratio_mean_before"],
            c["predicted_ratio_mean_after"],
        )
    table.save(run_dir / "latency_table.json")
    return budget


__all__ = ["build_budget", "build_scorer", "calibrated_budget", "search_budget"]
