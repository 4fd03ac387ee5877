"""Per-class metrics: a confusion matrix, per-class precision / recall / F1, macro-F1 and the worst class.

Top-1 hides what pruning does to individual classes: a plan can keep the mean and lose five points on "cat". The
confusion matrix is built once per evaluation (the same forward pass that gives top-1), so these numbers cost nothing
extra; :func:`class_report` turns it into the numbers every report carries, and :func:`worst_class_drop` compares a
pruned model with its dense parent class by class.

Works with rlprune's own splits (:class:`~rlprune.data.ArrayDataset`) and with any iterable of ``(inputs, labels)``
batches, and with anything that maps an input batch to logits: an ``nn.Module`` or a callable such as an ONNX
Runtime session wrapper (:class:`rlprune.deploy.int8.OnnxModel`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlprune.data import ArrayDataset, BatchLoader
from rlprune.errors import RLPruneError
from rlprune.precision import autocast

Predictor = nn.Module | Callable[[torch.Tensor], torch.Tensor]


def _logits(model: Predictor, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(np.asarray(out))
    return out.float()


@torch.no_grad()
def _confusion_and_loss(model: Predictor, loader: Iterable[Any], num_classes: int) -> tuple[np.ndarray, float]:
    """Confusion matrix and summed cross-entropy over ``(inputs, labels)`` batches (one forward pass each)."""
    if num_classes < 1:
        raise RLPruneError(f"num_classes: expected >= 1, got {num_classes}")
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    matrix = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    loss_sum = 0.0
    try:
        for batch in loader:
            if not (isinstance(batch, list | tuple) and len(batch) >= 2):
                raise RLPruneError("confusion matrix: needs labelled batches (inputs, labels)")
            x, y = batch[0], torch.as_tensor(batch[1]).long().cpu()
            logits = _logits(model, x).cpu()
            if logits.ndim != 2 or logits.shape[1] != num_classes:
                raise RLPruneError(f"model: expected logits of shape (N, {num_classes}), got {tuple(logits.shape)}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
                raise RLPruneError(f"labels: expected values in [0, {num_classes}), got {int(y.min())}..{int(y.max())}")
            pred = logits.argmax(1)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            matrix += torch.bincount(y * num_classes + pred, minlength=num_classes * num_classes)
    finally:
        if was_training:
            model.train()  # type: ignore[union-attr]
    return matrix.view(num_classes, num_classes).numpy(), loss_sum


def confusion_from_loader(model: Predictor, loader: Iterable[Any], num_classes: int) -> np.ndarray:
    """Confusion matrix ``C[true, predicted]`` (int64, ``num_classes`` square) over ``(inputs, labels)`` batches
    (a ``DataLoader`` or any iterable). An ``nn.Module`` is put in eval mode for the pass and restored afterwards.
    """
    return _confusion_and_loss(model, loader, num_classes)[0]


def _split_pass(
    model: Predictor,
    dataset: ArrayDataset,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    device: torch.device | str,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
) -> tuple[np.ndarray, float]:
    loader = BatchLoader(dataset, batch_size, mean, std, device=device, channels_last=channels_last)

    def predict(x: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp_dtype):
            return _logits(model, x)

    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    try:
        return _confusion_and_loss(predict, loader, len(dataset.classes))
    finally:
        if was_training:
            model.train()  # type: ignore[union-attr]


def confusion_matrix(
    model: Predictor,
    dataset: ArrayDataset,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> np.ndarray:
    """Confusion matrix of ``model`` on an rlprune split, normalised as in :func:`rlprune.evaluation.evaluate`."""
    return _split_pass(model, dataset, mean, std, batch_size, device, amp_dtype, channels_last)[0]


def evaluate_classes(
    model: Predictor,
    dataset: ArrayDataset,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, Any]:
    """:func:`class_report` of ``model`` on a split plus its mean cross-entropy (``loss``), in one forward pass."""
    matrix, loss_sum = _split_pass(model, dataset, mean, std, batch_size, device, amp_dtype, channels_last)
    report = class_report(matrix, dataset.classes)
    report["loss"] = loss_sum / report["images"]
    report["confusion"] = matrix.tolist()
    return report


def class_report(matrix: np.ndarray, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Top-1, per-class precision / recall (= the class's accuracy) / F1, macro-F1 and the worst class.

    Percentages throughout. A class nobody predicted has precision 0 (and F1 0 unless it also has no images); a class
    with no images has recall and F1 0 and is left out of the worst-class and macro averages, so a test slice that
    misses a class does not make the model look worse than it is.
    """
    m = np.asarray(matrix, dtype=np.int64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise RLPruneError(f"confusion matrix: expected a non-empty square matrix, got shape {m.shape}")
    if (m < 0).any():
        raise RLPruneError("confusion matrix: counts must be >= 0")
    n = m.shape[0]
    names = list(classes) if classes is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise RLPruneError(f"classes: expected {n} names for a {n}-class confusion matrix, got {len(names)}")
    tp = np.diag(m).astype(np.float64)
    support = m.sum(1).astype(np.float64)
    predicted = m.sum(0).astype(np.float64)
    total = float(m.sum())
    if total == 0:
        raise RLPruneError("confusion matrix: no images were counted")
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    present = support > 0
    worst = int(np.flatnonzero(present)[np.argmin(recall[present])])
    per_class = [
        {
            "class": names[i],
            "precision": 100.0 * precision[i],
            "recall": 100.0 * recall[i],
            "f1": 100.0 * f1[i],
            "support": int(support[i]),
        }
        for i in range(n)
    ]
    return {
        "accuracy": 100.0 * float(tp.sum()) / total,
        "macro_f1": 100.0 * float(f1[present].mean()),
        "worst_class": names[worst],
        "worst_class_accuracy": 100.0 * float(recall[worst]),
        "per_class": per_class,
        "images": int(total),
    }


def worst_class_drop(report: dict[str, Any], dense: dict[str, Any]) -> dict[str, Any]:
    """The largest per-class accuracy (recall) drop of ``report`` against ``dense``, in points (>= 0 means a drop).

    Both reports must cover the same classes in the same order (``class_report`` of the same data split).
    """
    a, b = report["per_class"], dense["per_class"]
    if [c["class"] for c in a] != [c["class"] for c in b]:
        raise RLPruneError("worst_class_drop: the two reports cover different classes")
    drops = [(d["recall"] - p["recall"], p["class"]) for p, d in zip(a, b, strict=True) if d["support"] > 0]
    drop, name = max(drops)
    return {"worst_class_drop": float(drop), "worst_drop_class": name}


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The scalar numbers of a report (for a scorer's ``metrics`` dict, TensorBoard or a results row)."""
    keys = ("accuracy", "loss", "macro_f1", "worst_class_accuracy", "worst_class_drop")
    out = {k: float(report[k]) for k in keys if k in report}
    for row in report.get("per_class", []):
        out[f"class_accuracy/{row['class']}"] = float(row["recall"])
    return out


def class_metric(
    dataset: ArrayDataset,
    mean: Sequence[float],
    std: Sequence[float],
    dense: Predictor | None = None,
    **kwargs: Any,
) -> Callable[[Predictor], dict[str, float]]:
    """A metric for :class:`~rlprune.evaluation.scorer.MetricScorer`: accuracy, macro-F1, worst class and, with a
    ``dense`` model, ``worst_class_drop`` against it (the number the ``accuracy_worst_class`` reward reads).

    The dense model's per-class accuracies are measured once, on the same data and settings, when the metric is made.
    """
    dense_report = evaluate_classes(dense, dataset, mean, std, **kwargs) if dense is not None else None

    def metric(model: Predictor) -> dict[str, float]:
        report = evaluate_classes(model, dataset, mean, std, **kwargs)
        if dense_report is not None:
            report.update(worst_class_drop(report, dense_report))
        return flat_metrics(report)

    return metric


def class_chart(
    reports: dict[str, dict[str, Any]], path: str | Path, *, metric: str = "recall", title: str | None = None
) -> Path:
    """A small grouped bar chart (PNG) of a per-class metric for one or more models, e.g. dense vs pruned.

    Drawn with matplotlib's Agg canvas directly (no pyplot, so no global state and no display needed).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise RLPruneError("per-class chart: needs matplotlib (pip install matplotlib)") from exc
    if not reports:
        raise RLPruneError("per-class chart: no reports to draw")
    if metric not in ("precision", "recall", "f1"):
        raise RLPruneError(f"per-class chart: metric must be precision, recall or f1, got '{metric}'")
    names = [row["class"] for row in next(iter(reports.values()))["per_class"]]
    n, k = len(names), len(reports)
    fig = Figure(figsize=(max(4.0, 0.6 * n + 1.5), 3.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / k
    lows = []
    for j, (label, rep) in enumerate(reports.items()):
        values = [row[metric] for row in rep["per_class"]]
        if [row["class"] for row in rep["per_class"]] != names:
            raise RLPruneError(f"per-class chart: report '{label}' covers different classes")
        lows.append(min(values))
        ax.bar([i + (j - (k - 1) / 2) * width for i in range(n)], values, width, label=label)
    ax.set_xticks(range(n))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric} (%)")
    floor = min(lows)
    ax.set_ylim(max(0.0, math.floor(floor / 10) * 10 - 10), 100)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), format="png")
    return path


def classes_section(
    models: dict[str, Predictor],
    dataset: ArrayDataset,
    mean: Sequence[float],
    std: Sequence[float],
    chart: str | Path | None = None,
    **kwargs: Any,
) -> tuple[dict[str, Any], str]:
    """The per-class block of a report: for each named model (the first is the reference, e.g. ``dense``) its
    macro-F1, worst class and per-class numbers, the others' worst-class drop against the first, a Markdown table,
    and optionally the bar chart. Returns ``(json_block, markdown)``.
    """
    if not models:
        raise RLPruneError("per-class section: no models")
    reports = {name: evaluate_classes(m, dataset, mean, std, **kwargs) for name, m in models.items()}
    ref_name = next(iter(reports))
    block: dict[str, Any] = {}
    rows = []
    for name, rep in reports.items():
        entry = {k: rep[k] for k in ("accuracy", "macro_f1", "worst_class", "worst_class_accuracy", "per_class")}
        entry.update(worst_class_drop(rep, reports[ref_name]))
        block[name] = entry
        rows.append(
            f"| {name} | {rep['accuracy']:.2f} | {rep['macro_f1']:.2f} | {rep['worst_class']} "
            f"{rep['worst_class_accuracy']:.1f} | {entry['worst_class_drop']:.1f} ({entry['worst_drop_class']}) |"
        )
    md = "\n".join(
        [
            f"| model | top-1 | macro-F1 | worst class | largest class drop vs {ref_name} |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    if chart is not None:
        block["chart"] = str(class_chart(reports, chart))
        md += f"\n\n![per-class accuracy]({Path(chart).name})"
    return block, md
