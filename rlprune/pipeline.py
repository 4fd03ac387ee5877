"""The main job in one call: search a plan for a checkpoint, prune and fine-tune the best one, export and report.

``rlprune run <config>`` is this function; everything it writes lives under ``runs/<name>/`` (the search) and
``runs/<name>/pruned/`` (the pruned model, ONNX, report).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rlprune.apply import finetune_plan, load_dense
from rlprune.config import SearchConfig
from rlprune.data import splits_from_meta
from rlprune.errors import RLPruneError
from rlprune.pruning import Plan
from rlprune.searching import run_search

log = logging.getLogger("rlprune.pipeline")


def run_job(
    cfg: SearchConfig, *, resume: bool = False, progress: bool = True, trust_model_code: bool = False
) -> dict[str, Any]:
    """Search -> prune the best plan -> fine-tune (distilling from the dense model) -> ONNX -> report.

    :param resume: continue an interrupted run (the search from its records, the fine-tune from its last epoch).
    :param trust_model_code: import model code the checkpoint names (see :mod:`rlprune.trust`).
    :returns: where the outputs are and the headline numbers; ``report_md`` holds the Markdown report.
    """
    if cfg.checkpoint is None:
        raise RLPruneError("checkpoint: the main job needs the dense model's checkpoint")
    run_dir = Path(cfg.output_dir) / cfg.name
    out = run_dir / "pruned"
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not resume:
        raise RLPruneError(f"{out}: already exists", fix="resume_or_rename")
    if cfg.policy is not None:
        dense, meta, structure = load_dense(cfg.checkpoint, trust_model_code=trust_model_code)
        summary = _zero_shot(cfg, dense, meta, structure, run_dir)
    else:
        summary = run_search(cfg, resume=resume, progress=progress, trust_model_code=trust_model_code)
        dense, meta, _ = load_dense(cfg.checkpoint, trust_model_code=trust_model_code)
    plan = Plan.load(run_dir / "best_plan.json")
    f = cfg.finetune
    finetune_plan(
        dense,
        meta,
        plan,
        splits_from_meta(meta, cfg.data_root),
        out,
        epochs=f.epochs,
        lr=f.lr,
        distill=f.distill,
        batch_size=f.batch_size,
        swa_epochs=f.swa_epochs,
        swa_lr=f.swa_lr,
        quantize=f.quantize,
        steps_per_epoch=f.steps_per_epoch,
        seed=cfg.seed,
        progress=progress,
        source={"search": str(run_dir), "checkpoint": cfg.checkpoint, "policy": cfg.policy},
        reuse=True,
        device=cfg.device,
    )
    return {
        "best_val_proxy_accuracy": None
        if summary["best"]["accuracy"] is None
        else round(summary["best"]["accuracy"], 2),
        "macs_ratio": round(summary["best"]["macs_ratio"], 4),
        "report": str(out / "report.md"),
        "pruned_model": str(out / "model.json"),
        "tensorboard": f"tensorboard --logdir {run_dir}",
        "report_md": (out / "report.md").read_text(),
    }


def _zero_shot(cfg: SearchConfig, dense: Any, meta: dict[str, Any], structure: Any, run_dir: Path) -> dict[str, Any]:
    """Roll ``cfg.policy`` out on the checkpoint at ``cfg.env.target`` (no search, no scoring) and save the plan as
    the run's ``best_plan.json``; the same plan for the same policy, model and target, every time."""
    from rlprune.apply import apply_policy, example_input
    from rlprune.pruning.budget import macs_ratio

    target = float(cfg.env.target)  # type: ignore[arg-type]  # a range is refused by the config
    plan, _ = apply_policy(cfg.policy, dense, example_input(meta), target=target, budget=cfg.env.budget)
    run_dir.mkdir(parents=True, exist_ok=True)
    ratio = macs_ratio(structure, plan)
    plan.save(run_dir / "best_plan.json")
    log.info("policy %s on %s at %.2f: MACs ratio %.4f (no search)", cfg.policy, cfg.checkpoint, target, ratio)
    return {"best": {"accuracy": None, "macs_ratio": ratio}}


__all__ = ["run_job"]
