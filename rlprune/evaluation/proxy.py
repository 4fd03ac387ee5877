"""The proxy evaluator the search calls thousands of times: prune, recalibrate BN, score on validation images.

Only the train split (recalibration, optional short fine-tune) and the validation split (scoring) are touched; the
test split never is. Results are cached by the plan's key (channels kept per unit + criterion).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rlprune.cost.macs import count_macs, count_nonzero, count_params, predict_costs
from rlprune.data import ArrayDataset, BatchLoader, DataSplits, stratified_split
from rlprune.errors import RLPruneError
from rlprune.evaluation import evaluate
from rlprune.evaluation.scorer import MetricScorer, Score
from rlprune.precision import scoring_dtype
from rlprune.pruning import Plan
from rlprune.pruning.importance import calibration_batches
from rlprune.seeding import PROXY_FINETUNE_STREAM, RECALIBRATION_STREAM, resolve_device, stream_seed

if TYPE_CHECKING:
    from rlprune.config import SearchConfig

# rewards that read per-class metrics (``worst_class_drop``) from the scorer: the search's proxy scores them for these
PER_CLASS_REWARDS = frozenset({"accuracy_worst_class"})


@dataclass(kw_only=True)
class ProxyResult(Score):
    """A :class:`Score` with the validation loss and the candidate's costs."""

    loss: float
    macs: int
    params: int
    macs_ratio: float
    # MACs counted on the physically pruned candidate: the budget check that does not trust the cost model
    macs_measured: int = 0


class ProxyEvaluator(MetricScorer):
    """The built-in scorer: top-1 accuracy on a fixed validation subset after BN recalibration (and optionally a
    few SGD steps), for a model trained on rlprune's in-memory data splits.

    :param model: the dense, trained model (not modified).
    :param splits: data; ``train`` feeds recalibration/fine-tuning, ``val`` is scored.
    :param recal_batches: training batches forwarded to re-estimate BN statistics (0 = raw pruned accuracy).
    :param recal_batch_size: images per recalibration batch.
    :param val_images: score on a fixed, stratified subset of this many validation images (``None``: all).
    :param finetune_steps: optional SGD steps on augmented training batches before recalibration.
    :param finetune_lr: learning rate of those steps.
    :param importance: channel criterion used to prune.
    :param amp: ``auto`` computes in bf16 autocast + channels-last on a GPU and in float32 on a CPU, where bf16 scores
        would depend on the thread count (:func:`~rlprune.precision.scoring_dtype`); ``bf16`` forces it (faster on
        CPUs with native bf16, not reproducible across thread or worker counts), ``off`` is float32.
    :param seed: seeds the recalibration/fine-tune batches and the validation subset.
    :param per_class: also score macro-F1, the worst class's accuracy and its drop against the dense model
        (``worst_class_drop``, read by the ``accuracy_worst_class`` reward); same forward pass, plus one dense one.
    :param ignore: module or parameter names (or patterns) to leave unpruned (config key ``prune.ignore``).
    :param heads: attention module name -> head count or its attribute's name (config key ``prune.heads``).
    :param granularity: ``channel``, ``unstructured`` or ``nm`` (config key ``env.granularity``).
    :param pattern: the N:M pattern for ``nm`` (config key ``env.pattern``).
    """

    def __init__(
        self,
        model: nn.Module,
        splits: DataSplits,
        *,
        recal_batches: int = 20,
        recal_batch_size: int = 64,
        val_images: int | None = 2000,
        eval_batch_size: int = 500,
        finetune_steps: int = 0,
        finetune_lr: float = 0.01,
        importance: str = "l1",
        amp: str = "auto",
        seed: int = 0,
        device: torch.device | str = "cpu",
        cache: bool = True,
        per_class: bool = False,
        ignore: Sequence[str] | None = None,
        heads: Mapping[str, int | str] | None = None,
        granularity: str = "channel",
        pattern: str = "2:4",
    ) -> None:
        self.splits = splits
        self.per_class = per_class
        self._dense_classes: dict | None = None
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.recal_batch_size = recal_batch_size
        device = device if isinstance(device, torch.device) else resolve_device(device)  # 'auto' too
        amp_dtype = scoring_dtype(amp, device)
        self.channels_last = amp_dtype is not None
        self.val: ArrayDataset = splits.val
        if not len(splits.val):  # every plan would score 0: nothing to choose by (the test split is never used)
            raise RLPruneError(
                "proxy: the data has no validation images to score plans on (the checkpoint was trained with "
                "data.val_size 0); retrain it with a validation hold-out"
            )
        if val_images is not None and val_images < len(splits.val):
            _, idx = stratified_split(splits.val.labels, val_images, seed)
            self.val = splits.val.subset(idx)
        example = torch.zeros(1, splits.in_channels, splits.input_size, splits.input_size)
        super().__init__(
            model,
            example,
            self._accuracy,
            train_loader=None,
            recal_batches=recal_batches,
            finetune_steps=finetune_steps,
            finetune_lr=finetune_lr,
            importance=importance,
            key="accuracy",
            device=device,
            amp_dtype=amp_dtype,
            cache=cache,
            ignore=ignore,
            heads=heads,
            granularity=granularity,
            pattern=pattern,
        )

    def _draw(
        self, train_loader: object, recal_batches: int, finetune_steps: int, gradients: bool
    ) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]], list[tuple[torch.Tensor, ...]] | None]:
        """Recalibration batches (plain) and fine-tune batches (augmented) from their own seeded loaders."""
        loader = self.training_loader(
            self.recal_batch_size, stream_seed(self.seed, RECALIBRATION_STREAM), augment=False
        )
        recal = [x for _, (x, _) in zip(range(recal_batches), loader, strict=False)]
        calibration = None if self.sparse else calibration_batches(self.importance, loader)
        tuned: list[tuple[torch.Tensor, torch.Tensor]] = []
        if finetune_steps:
            ft_loader = self.training_loader(self.recal_batch_size, stream_seed(self.seed, PROXY_FINETUNE_STREAM))
            ft_loader.set_epoch(0)
            tuned = [b for _, b in zip(range(finetune_steps), ft_loader, strict=False)]
        return recal, tuned, calibration

    def training_loader(
        self, batch_size: int, seed: int, augment: bool = True, channels_last: bool | None = None
    ) -> BatchLoader:
        """Shuffled batches of the training split, seeded; augmented ones (random crop + flip, no short last batch)
        to train on, plain ones to recalibrate BN statistics with; in the evaluator's memory format by default."""
        s = self.splits
        return BatchLoader(
            s.train,
            batch_size,
            s.mean,
            s.std,
            shuffle=True,
            augment=augment,
            drop_last=augment,
            seed=seed,
            device=self.device,
            channels_last=self.channels_last if channels_last is None else channels_last,
        )

    def prepare(self, model: nn.Module) -> None:
        if self.channels_last:
            model.to(memory_format=torch.channels_last)

    def _accuracy(self, model: nn.Module) -> dict[str, float]:
        if self.per_class:
            return self._class_metrics(model)
        metrics = evaluate(
            model,
            self.val,
            self.splits.mean,
            self.splits.std,
            batch_size=self.eval_batch_size,
            device=self.device,
            amp_dtype=self.amp_dtype,
            channels_last=self.channels_last,
        )
        return {"accuracy": metrics["accuracy"], "loss": metrics["loss"]}

    def _class_metrics(self, model: nn.Module) -> dict[str, float]:
        from rlprune.evaluation.classes import evaluate_classes, flat_metrics, worst_class_drop

        kwargs = {
            "batch_size": self.eval_batch_size,
            "device": self.device,
            "amp_dtype": self.amp_dtype,
            "channels_last": self.channels_last,
        }
        s = self.splits
        if self._dense_classes is None:
            self._dense_classes = evaluate_classes(self.model, self.val, s.mean, s.std, **kwargs)
        report = evaluate_classes(model, self.val, s.mean, s.std, **kwargs)
        report.update(worst_class_drop(report, self._dense_classes))
        return {k: v for k, v in flat_metrics(report).items() if "/" not in k}  # scalars only in episode records

    def measure(self, model: nn.Module) -> tuple[float, dict[str, float]]:
        metrics = self._accuracy(model)  # the loss of a collapsed candidate may be huge; only accuracy must be finite
        return metrics["accuracy"], metrics

    def plan(self, ratios: dict[str, float] | list[float], round_to: int | None = None, min_channels: int = 1) -> Plan:
        """A plan for this evaluator's model from per-unit ratios."""
        return Plan.from_ratios(
            self.structure, ratios, importance=self.importance, round_to=round_to, min_channels=min_channels
        )

    def _costs(self, plan: Plan) -> tuple[int, float]:
        macs, _ = predict_costs(self.structure, plan.channels)
        return macs, macs / self.structure.total_macs

    def _recorded(self, plan: Plan, accuracy: float, metrics: dict[str, float] | None = None) -> ProxyResult:
        macs, ratio = self._costs(plan)
        params = predict_costs(self.structure, plan.channels)[1]
        return ProxyResult(
            accuracy=accuracy,
            metrics=dict(metrics or {}),
            loss=float("nan"),
            macs=macs,
            params=params,
            macs_ratio=ratio,
            macs_measured=macs,
        )

    def _result(
        self, plan: Plan, model: nn.Module, score: float, metrics: dict[str, float], seconds: float
    ) -> ProxyResult:
        macs, ratio = self._costs(plan)
        return ProxyResult(
            accuracy=score,
            metrics=metrics,
            loss=metrics["loss"],
            macs=macs,
            # a sparse candidate keeps its dense shapes: its MACs are the prediction's non-zero ones, not countable
            params=count_nonzero(model) if self.sparse else count_params(model),
            macs_ratio=ratio,
            seconds=seconds,
            macs_measured=0 if self.sparse else count_macs(model, self.structure.input_shape),
        )


def proxy_settings(cfg: SearchConfig) -> dict[str, Any]:
    """The evaluator's settings for a search config: its ``proxy`` section one to one, plus ``per_class`` when the
    configured reward reads per-class metrics — so ``env.reward: accuracy_worst_class`` works without building the
    proxy by hand (the per-class pass costs one dense evaluation; other rewards skip it)."""
    return {**cfg.proxy.model_dump(), "per_class": cfg.env.reward in PER_CLASS_REWARDS}


def scorer_settings(cfg: SearchConfig) -> dict[str, Any]:
    """Every evaluator setting a search config decides: :func:`proxy_settings`, the parts analysis is told about
    (``prune``) and the plans' granularity; the in-process scorer and the Ray workers' scorers are built from it."""
    return {
        **proxy_settings(cfg),
        **cfg.prune.model_dump(),  # ignore, heads: what analysis cannot find by itself
        "granularity": cfg.env.granularity,
        "pattern": cfg.env.pattern,
    }


def proxy_from_checkpoint(
    checkpoint: str,
    data_root: str | None = None,
    device: str = "cpu",
    trust_model_code: bool = False,
    **kwargs: object,
) -> ProxyEvaluator:
    """A proxy evaluator for a checkpoint, on the data split recorded in its metadata (validation only).

    :param trust_model_code: import model code the checkpoint names (see :mod:`rlprune.io.trust`).
    """
    from rlprune.data import splits_from_meta
    from rlprune.io.checkpoint import check_classes, load_checkpoint

    model, meta = load_checkpoint(checkpoint, trust_model_code=trust_model_code)
    splits = splits_from_meta(meta, data_root)
    check_classes(meta, splits.classes, checkpoint)
    splits.test = None  # the search never sees the test split
    return ProxyEvaluator(model, splits, device=device, **kwargs)  # type: ignore[arg-type]
