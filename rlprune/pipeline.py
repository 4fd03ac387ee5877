"""The main job in one call: search a plan for a checkpoint, prune and fine-tune the best one, export and report.

``rlprune run <config>`` is this function; everything it writes lives under ``runs/<name>/`` (the search) and
``runs/<name>/pruned/`` (the pruned model, ONNX, report). With ``rounds:`` in the config it runs in iterative rounds
instead (:mod:`rlprune.pipeline_rounds`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlprune.apply import finetune_plan, load_dense
from rlprune.config import SearchConfig
from rlprune.data import splits_from_meta
from rlprune.errors import RLPruneError
from rlprune.pruning import Plan
from rlprune.searching import run_search


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
    if cfg.rounds is not None:  # search, prune and fine-tune per round (rlprune.pipeline_rounds)
        from rlprune.pipeline_rounds import run_rounds

        return run_rounds(cfg, resume=resume, progress=progress, trust_model_code=trust_model_code)
    run_dir = Path(cfg.output_dir) / cfg.name
    out = run_dir / "pruned"
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not resume:
        raise RLPruneError(f"{out}: already exists", fix="resume_or_rename")
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
        source={"search": str(run_dir), "checkpoint": cfg.checkpoint},
        reuse=True,
        device=cfg.device,
    )
    return {
        "best_val_proxy_accuracy": round(summary["best"]["accuracy"], 2),
        "macs_ratio": round(summary["best"]["macs_ratio"], 4),
        "report": str(out / "report.md"),
        "pruned_model": str(out / "model.json"),
        "tensorboard": f"tensorboard --logdir {run_dir}",
        "report_md": (out / "report.md").read_text(),
    }


__all__ = ["run_job"]
