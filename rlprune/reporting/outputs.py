"""A run's figures written where users look: PNG files beside its results and images in its TensorBoard run
(the search's scatter and plan profile, a fine-tune's comparison, training curves and per-class chart)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlprune.io.reports import FinetuneReport
from rlprune.pruning.plan import Plan
from rlprune.pruning.structure import Structure
from rlprune.reporting.figures import (
    SEARCH_LAYOUT,
    finetune_figure,
    plan_profile_figure,
    save,
    search_scatter_figure,
    to_hwc,
)


# ------------------------------------------------------------------------------------------------ where they go
def add_search_layout(writer: Any) -> None:
    """Give a TensorBoard ``SummaryWriter`` the custom-scalars layout of a search."""
    writer.add_custom_scalars(SEARCH_LAYOUT)


def write_search_figures(
    run_dir: Path,
    records: Sequence[Mapping[str, Any]],
    structure: Structure,
    *,
    target: float | Sequence[float] | None,
    budget: str = "macs",
    uniform: Mapping[str, Any] | None = None,
    writer: Any | None = None,
) -> dict[str, str]:
    """``search.png`` (the scatter) and ``best_plan.png`` (the best plan's profile) in ``run_dir``, and the same as
    TensorBoard images ``search/scatter`` and ``search/best_plan`` when a writer is given; returns name -> file."""
    if not records:
        return {}
    best = max(records, key=lambda r: r["reward"])
    scatter = search_scatter_figure(
        records, target=target, budget=budget, uniform=uniform, title=f"{run_dir.name}: {len(records)} evaluated plans"
    )
    profile = plan_profile_figure(
        Plan.from_dict(best["plan"]),
        structure,
        title=f"{run_dir.name}: best plan (episode {best['episode']})",
        metrics=search_metrics(best),
    )
    out = {
        "search": save(scatter, run_dir / "search.png").name,
        "best_plan": save(profile, run_dir / "best_plan.png").name,
    }
    if writer is not None:
        step = len(records)
        writer.add_image("search/scatter", to_hwc(scatter), step, dataformats="HWC")
        writer.add_image("search/best_plan", to_hwc(profile), step, dataformats="HWC")
        writer.flush()
    return out


def search_metrics(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A search record's numbers as plan-profile title metrics."""
    return {
        "macs_ratio": rec.get("macs_ratio"),
        "latency_ratio": rec.get("latency_ratio"),
        "latency_label": "latency ratio (predicted)",
        "accuracy": rec.get("accuracy"),
        "accuracy_label": "proxy val accuracy",
    }


def _classes_to_tensorboard(writer: Any, classes: Mapping[str, Any]) -> None:
    """The report's per-class block as scalars (``classes/<model>/...``: macro-F1, worst class, its drop, each
    class's recall) and its bar chart as an image, so the test split's per-class picture sits beside the curves."""
    for model, entry in classes.items():
        if not isinstance(entry, Mapping):
            continue
        for key in ("accuracy", "macro_f1", "worst_class_accuracy", "worst_class_drop"):
            if isinstance(entry.get(key), int | float):
                writer.add_scalar(f"classes/{model}/{key}", entry[key], 0)
        for c in entry.get("per_class") or []:
            writer.add_scalar(f"classes/{model}/recall/{c['class']}", c["recall"], 0)
    chart = classes.get("chart")
    if isinstance(chart, str) and Path(chart).is_file():
        from matplotlib.image import imread

        image = imread(chart)[..., :3]
        writer.add_image(
            "report/classes", (image * 255).astype("uint8") if image.dtype != "uint8" else image, 0, dataformats="HWC"
        )


def write_report_figures(
    out_dir: Path, report: FinetuneReport, plan: Plan, structure: Structure, tensorboard: Path | None = None
) -> dict[str, str]:
    """The report's figures in ``out_dir``: ``plan_profile.png`` and, when there is a history, ``finetune.png``;
    also as images ``report/<name>`` in the TensorBoard run at ``tensorboard``. Returns figure name -> file name
    (what the Markdown embeds)."""
    d, p = report.dense, report.pruned
    metrics: dict[str, Any] = {"macs_ratio": p.macs_ratio, "accuracy": p.after_finetune.test}
    metrics["accuracy_label"] = "test accuracy"
    metrics["accuracy_note"] = f" (dense {d.test:.2f}%)"
    batches = report.latency_batches()
    if batches:
        metrics["latency_ratio"] = report.latency_ratio(batches[-1])
        metrics["latency_label"] = f"CPU latency ratio (batch {batches[-1]})"
    profile = plan_profile_figure(plan, structure, title=f"{report.model}: pruned plan", metrics=metrics)
    drawn = {"plan_profile": profile}
    if report.finetune.history:
        curves = finetune_figure(
            report.finetune.history,
            dense_accuracy=d.val,
            before_accuracy=p.before_finetune.val,
            title=f"{report.model}: fine-tune of the pruned model",
        )
        drawn["finetune"] = curves
    if tensorboard is not None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(tensorboard)) as writer:
            for name, fig in drawn.items():
                writer.add_image(f"report/{name}", to_hwc(fig), 0, dataformats="HWC")
            _classes_to_tensorboard(writer, report.classes or {})
    return {name: save(fig, out_dir / f"{name}.png").name for name, fig in drawn.items()}
