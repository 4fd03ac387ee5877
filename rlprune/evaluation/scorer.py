"""Scoring a pruning plan: the protocol the environment relies on, and a scorer built from any model and metric.

A search is only as good as the number it optimises. :class:`MetricScorer` prunes a copy of your model with the
plan, optionally trains it for a few steps, re-estimates batch-norm statistics on a few training batches (EagleEye:
this is what makes a pruned model's score predict its score after fine-tuning), then calls *your* metric — top-1,
F1, worst-class accuracy, mAP: anything ``evaluate(model) -> float | dict``, higher is better.

Example::

    def metric(model):                       # your own validation loop
        return {"f1": macro_f1(model, val_loader)}

    scorer = rp.MetricScorer(model, torch.zeros(1, 3, 32, 32), metric, train_loader=train_loader, key="f1")
    result = rp.search(scorer, target=0.5, episodes=60)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from rlprune.errors import RLPruneError
from rlprune.evaluation.bn import recalibrate_bn
from rlprune.precision import autocast
from rlprune.pruning import Plan, Structure, analyze, prune
from rlprune.pruning.importance import get_criterion
from rlprune.pruning.weights import SPARSE_IMPORTANCE, sparsify_plan, weight_structure
from rlprune.seeding import on_device, one_thread, resolve_device

# How plans are scored; a search resumes only with records scored the same way (rlprune.searching.identity).
# 2: gradient steps on one thread and float32 proxies on CPUs, so scores do not depend on the thread or worker count.
SCORING_VERSION = 2


@dataclass(kw_only=True)
class Score:
    """What a scorer returns for one plan.

    :param accuracy: the number the reward uses, higher is better (percent accuracy for the built-in proxy, or
        whatever your metric returns; the name is kept because the records and rewards call it that).
    :param metrics: every number the metric returned (recorded with the episode).
    :param seconds: wall time the first scoring of this plan took.
    :param cached: answered from the scorer's cache.
    """

    accuracy: float
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    cached: bool = False


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores a plan for one dense model: it knows the model's prunable ``structure`` and the channel
    ``importance`` criterion plans are made with, and maps a :class:`~rlprune.pruning.Plan` to a :class:`Score`."""

    structure: Structure
    importance: str

    def __call__(self, plan: Plan) -> Score: ...


def _inputs(batch: Any) -> torch.Tensor:
    """The input tensor of a batch: ``x``, ``(x, y)`` / ``[x, y]``, or a dict with ``input``/``x``/``image(s)``."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, Mapping):
        for key in ("input", "inputs", "x", "image", "images", "pixel_values", "input_ids"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
    raise RLPruneError(
        "train batches: expected a tensor, (inputs, labels) or a dict with an 'input' tensor, "
        f"got {type(batch).__name__}"
    )


def _labelled(batch: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, list | tuple) and len(batch) >= 2 and all(isinstance(b, torch.Tensor) for b in batch[:2]):
        return batch[0], batch[1]
    raise RLPruneError(f"{where}: needs labelled batches (inputs, labels) from the train loader")


def _scalar(value: Any, key: str | None) -> tuple[float, dict[str, float]]:
    """The score and all metrics from what ``evaluate`` returned."""
    if isinstance(value, Mapping):
        metrics = {str(k): float(v) for k, v in value.items() if isinstance(v, int | float | torch.Tensor)}
        if key is None:
            if len(metrics) != 1:
                raise RLPruneError(f"metric: returned {sorted(metrics)}; say which one to maximise with key=")
            key = next(iter(metrics))
        if key not in metrics:
            raise RLPruneError(f"metric: key '{key}' not among the returned metrics {sorted(metrics)}")
        score = metrics[key]
    elif isinstance(value, int | float | torch.Tensor):
        score = float(value)
        metrics = {key or "score": score}
    else:
        raise RLPruneError(f"metric: expected a number or a dict of numbers, got {type(value).__name__}")
    if not all(math.isfinite(v) for v in metrics.values()):
        raise RLPruneError(f"metric: returned a non-finite value ({metrics})")
    return score, metrics


class MetricScorer:
    """Score plans for one dense model with your own metric.

    Batches are drawn from ``train_loader`` once, at construction, so that every plan is treated on identical data
    and the same plan always gets the same score.

    :param model: the dense, trained model (never modified, nor moved: a copy goes to ``device`` when it lives
        elsewhere; each plan prunes a copy).
    :param example_inputs: an input batch for tracing the model (batch size 1 is enough).
    :param evaluate: ``evaluate(pruned_model) -> float | dict`` on your validation data, higher is better. Never
        pass test data: the search picks plans by this number.
    :param train_loader: batches ``x`` or ``(x, y)`` (e.g. a ``DataLoader``) for BN recalibration, the optional
        fine-tune steps and gradient-based importance criteria.
    :param recal_batches: batches forwarded to re-estimate BN statistics (0: score the raw pruned model).
    :param finetune_steps: SGD steps on labelled training batches before recalibration (0: none).
    :param finetune_lr: learning rate of those steps.
    :param loss_fn: training loss for those steps (default: cross-entropy on logits).
    :param importance: channel criterion (``l1``, ``l2``, ``bn_scale``, ``taylor``, ...).
    :param key: which entry of a dict metric is the score (not needed for a single number or a one-entry dict).
    :param device: where pruned candidates are trained and evaluated (``auto``: CUDA when present).
    :param amp_dtype: autocast dtype for the fine-tune steps and recalibration (``None``: float32).
    :param cache: remember the score of every plan (a search revisits plans).
    :param ignore: module or parameter names (or patterns) to leave unpruned (:func:`rlprune.analyze`).
    :param heads: attention module name -> head count (or its attribute's name) (:func:`rlprune.analyze`).
    :param granularity: ``channel`` (plans remove channels), or ``unstructured`` / ``nm`` (plans zero weights per
        layer by magnitude, :mod:`rlprune.pruning.weights`; the fine-tune steps keep the zeros).
    :param pattern: the N:M pattern for ``granularity="nm"``.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        evaluate: Callable[[nn.Module], float | Mapping[str, float]],
        *,
        train_loader: Iterable[Any] | None = None,
        recal_batches: int = 20,
        finetune_steps: int = 0,
        finetune_lr: float = 0.01,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        importance: str = "l1",
        key: str | None = None,
        device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = None,
        cache: bool = True,
        ignore: Sequence[str] | None = None,
        heads: Mapping[str, int | str] | None = None,
        granularity: str = "channel",
        pattern: str = "2:4",
    ) -> None:
        if recal_batches < 0 or finetune_steps < 0:
            raise RLPruneError("scorer: recal_batches and finetune_steps must be >= 0")
        if not (math.isfinite(finetune_lr) and finetune_lr > 0):
            raise RLPruneError(f"scorer: finetune_lr must be a finite number > 0, got {finetune_lr}")
        criterion = get_criterion(importance if granularity == "channel" else "l1")
        self.device = device if isinstance(device, torch.device) else resolve_device(device)  # 'auto' too
        self.model = on_device(model, self.device).eval()
        self.example = example_inputs.to(self.device)
        if granularity == "channel":
            self.structure: Structure = analyze(self.model, self.example, ignore=ignore, heads=heads)
        else:
            if heads:
                raise RLPruneError("scorer: head counts (heads=) are for channel pruning; weight-level plans sparsify")
            self.structure = weight_structure(
                self.model, self.example, granularity=granularity, pattern=pattern, ignore=ignore
            )
            importance = SPARSE_IMPORTANCE  # weight-level plans keep the largest weights; nothing else to choose
        self.sparse = granularity != "channel"
        self.importance = importance
        self.evaluate_fn = evaluate
        self.key = key
        self.finetune_lr = finetune_lr
        self.loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits.float(), y))
        self.amp_dtype = amp_dtype
        self._cache: dict[str, Score] | None = {} if cache else None
        self.recal, self.finetune_batches, self.calibration = self._draw(
            train_loader, recal_batches, finetune_steps, criterion.needs_gradients
        )

    def _draw(
        self, train_loader: Iterable[Any] | None, recal_batches: int, finetune_steps: int, gradients: bool
    ) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]], list[tuple[torch.Tensor, ...]] | None]:
        """Recalibration inputs, fine-tune batches and importance-calibration batches, drawn once."""
        need = max(recal_batches, finetune_steps, 4 if gradients else 0)
        if need and train_loader is None:
            raise RLPruneError("scorer: recalibration, fine-tune steps or a gradient criterion need a train_loader")
        drawn = [b for _, b in zip(range(need), train_loader or (), strict=False)]
        if need and not drawn:
            raise RLPruneError("scorer: the train_loader yielded no batch")
        recal = [_inputs(b).to(self.device) for b in drawn[:recal_batches]]
        tuned = [_labelled(b, "finetune_steps") for b in drawn[:finetune_steps]]
        calib = [_labelled(b, f"importance '{self.importance}'") for b in drawn[:4]] if gradients else None
        to = self.device
        return (
            recal,
            [(x.to(to), y.to(to)) for x, y in tuned],
            [(x.to(to), y.to(to)) for x, y in calib] if calib is not None else None,
        )

    def _autocast(self) -> torch.autocast:
        return autocast(self.device, self.amp_dtype)

    def prepare(self, model: nn.Module) -> None:
        """Hook run on a freshly pruned copy before anything else (e.g. a memory-format change)."""

    def pruned(self, plan: Plan) -> nn.Module:
        """The pruned, briefly trained (if configured) and BN-recalibrated candidate, in eval mode."""
        masks = None
        if self.sparse:
            model = copy.deepcopy(self.model)
            masks = sparsify_plan(model, plan)
            masks.attach(model)  # the fine-tune steps keep the zeros zero
        else:
            model, _ = prune(self.model, plan, self.example, importance=self.importance, calibration=self.calibration)
        self.prepare(model)
        if self.finetune_batches:
            opt = torch.optim.SGD(
                model.parameters(), lr=self.finetune_lr, momentum=0.9, nesterov=True, weight_decay=5e-4
            )
            model.train()
            with one_thread():  # the same weights whatever the thread or worker count
                for x, y in self.finetune_batches:
                    with self._autocast():
                        loss = self.loss_fn(model(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        if masks is not None:
            masks.detach()
            masks.apply(model)
        with self._autocast():
            recalibrate_bn(model, self.recal)
        return model.eval()

    def measure(self, model: nn.Module) -> tuple[float, dict[str, float]]:
        """The score and metrics of a prepared candidate (your ``evaluate``)."""
        with torch.no_grad():
            return _scalar(self.evaluate_fn(model), self.key)

    def remember(self, plan: Plan, accuracy: float, metrics: Mapping[str, float] | None = None) -> None:
        """Seed the cache with a score recorded earlier (a resumed search re-evaluates nothing); ``metrics`` are the
        recorded ones, which a reward may read again (e.g. ``worst_class_drop``) when the plan is revisited."""
        if self._cache is not None:
            self._cache[plan.key()] = self._recorded(plan, accuracy, dict(metrics or {}))

    def _recorded(self, plan: Plan, accuracy: float, metrics: dict[str, float] | None = None) -> Score:
        return Score(accuracy=accuracy, metrics=dict(metrics or {}))

    def _result(self, plan: Plan, model: nn.Module, score: float, metrics: dict[str, float], seconds: float) -> Score:
        return Score(accuracy=score, metrics=metrics, seconds=seconds)

    def __call__(self, plan: Plan) -> Score:
        plan.check(self.structure)
        key = plan.key()
        if self._cache is not None and key in self._cache:
            hit = self._cache[key]
            return type(hit)(**{**hit.__dict__, "cached": True})
        start = time.perf_counter()
        model = self.pruned(plan)
        score, metrics = self.measure(model)
        result = self._result(plan, model, score, metrics, time.perf_counter() - start)
        if self._cache is not None:
            self._cache[key] = result
        return result


__all__ = ["MetricScorer", "Score", "Scorer"]
