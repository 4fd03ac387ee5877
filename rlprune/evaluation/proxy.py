"""The proxy evaluator the search calls thousands of times: prune, recalibrate BN, score on validation images.

Only the train split (recalibration, optional short fine-tune) and the validation split (scoring) are touched; the
test split never is. Results are cached by the plan's key (channels kept per unit + criterion).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rlprune.cost.macs import count_macs, count_params, predict_costs
from rlprune.data import ArrayDataset, BatchLoader, DataSplits, stratified_split
from rlprune.evaluation import evaluate
from rlprune.evaluation.bn import recalibrate_bn
from rlprune.precision import autocast, autocast_dtype
from rlprune.pruning import Plan, Structure, analyze, prune
from rlprune.pruning.importance import calibration_batches


@dataclass
class ProxyResult:
    """Validation accuracy (percent) and loss of a pruned candidate, its costs, and how long scoring took."""

    accuracy: float
    loss: float
    macs: int
    params: int
    macs_ratio: float
    seconds: float
    cached: bool = False
    # MACs counted on the physically pruned candidate: the budget check that does not trust the cost model
    macs_measured: int = 0


class ProxyEvaluator:
    """Score plans for one dense model.

    :param model: the dense, trained model (not modified).
    :param splits: data; ``train`` feeds recalibration/fine-tuning, ``val`` is scored.
    :param recal_batches: training batches forwarded to re-estimate BN statistics (0 = raw pruned accuracy).
    :param recal_batch_size: images per recalibration batch.
    :param val_images: score on a fixed, stratified subset of this many validation images (``None``: all).
    :param finetune_steps: optional SGD steps on augmented training batches before recalibration.
    :param finetune_lr: learning rate of those steps.
    :param importance: channel criterion used to prune.
    :param amp: ``auto`` computes in bf16 autocast + channels-last where the hardware has native bf16 (about 2.5x
        faster on CPU; rankings, not absolute accuracies, are what the search needs), ``off`` in float32.
    :param seed: seeds the recalibration/fine-tune batches and the validation subset.
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
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.splits = splits
        self.example = torch.zeros(1, splits.in_channels, splits.input_size, splits.input_size, device=self.device)
        self.structure: Structure = analyze(self.model, self.example)
        self.importance = importance
        self.eval_batch_size = eval_batch_size
        self.finetune_steps = finetune_steps
        self.finetune_lr = finetune_lr
        self.seed = seed
        self.amp_dtype = autocast_dtype(amp, self.device)
        self.channels_last = self.amp_dtype is not None
        self._cache: dict[str, ProxyResult] | None = {} if cache else None
        self.val: ArrayDataset = splits.val
        if val_images is not None and val_images < len(splits.val):
            _, idx = stratified_split(splits.val.labels, val_images, seed)
            self.val = splits.val.subset(idx)
        loader = BatchLoader(
            splits.train,
            recal_batch_size,
            splits.mean,
            splits.std,
            shuffle=True,
            seed=seed + 7919,
            device=self.device,
            channels_last=self.channels_last,
        )
        self.recal = [x for _, (x, _) in zip(range(recal_batches), loader, strict=False)]
        self.calibration = calibration_batches(importance, loader)
        self._ft_loader = BatchLoader(
            splits.train,
            recal_batch_size,
            splits.mean,
            splits.std,
            shuffle=True,
            augment=True,
            drop_last=True,
            seed=seed + 104729,
            device=self.device,
            channels_last=self.channels_last,
        )

    def plan(self, ratios: dict[str, float] | list[float], round_to: int | None = None, min_channels: int = 1) -> Plan:
        """A plan for this evaluator's model from per-unit ratios."""
        return Plan.from_ratios(
            self.structure, ratios, importance=self.importance, round_to=round_to, min_channels=min_channels
        )

    def pruned(self, plan: Plan) -> nn.Module:
        """The pruned, fine-tuned (if configured) and BN-recalibrated candidate."""
        model, _ = prune(self.model, plan, self.example, importance=self.importance, calibration=self.calibration)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.finetune_steps:
            self._finetune(model)
        with self._autocast():
            recalibrate_bn(model, self.recal)
        return model.eval()

    def _autocast(self) -> torch.autocast:
        return autocast(self.device, self.amp_dtype)

    def _finetune(self, model: nn.Module) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=self.finetune_lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
        model.train()
        self._ft_loader.set_epoch(0)
        for _, (x, y) in zip(range(self.finetune_steps), self._ft_loader, strict=False):
            with self._autocast():
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def remember(self, plan: Plan, accuracy: float) -> None:
        """Seed the cache with a result recorded earlier (resuming a search re-evaluates nothing)."""
        if self._cache is None:
            return
        macs, params = predict_costs(self.structure, plan.channels)
        self._cache[plan.key()] = ProxyResult(
            accuracy=accuracy,
            loss=float("nan"),
            macs=macs,
            params=params,
            macs_ratio=macs / self.structure.total_macs,
            seconds=0.0,
            macs_measured=macs,
        )

    def __call__(self, plan: Plan) -> ProxyResult:
        plan.check(self.structure)
        key = plan.key()
        if self._cache is not None and key in self._cache:
            hit = self._cache[key]
            return ProxyResult(**{**hit.__dict__, "cached": True})
        start = time.perf_counter()
        model = self.pruned(plan)
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
        macs, _ = predict_costs(self.structure, plan.channels)
        result = ProxyResult(
            accuracy=metrics["accuracy"],
            loss=metrics["loss"],
            macs=macs,
            params=count_params(model),
            macs_ratio=macs / self.structure.total_macs,
            seconds=time.perf_counter() - start,
            macs_measured=count_macs(model, self.structure.input_shape),
        )
        if self._cache is not None:
            self._cache[key] = result
        return result


def proxy_from_checkpoint(
    checkpoint: str, data_root: str | None = None, device: str = "cpu", **kwargs: object
) -> ProxyEvaluator:
    """A proxy evaluator for a checkpoint, on the data split recorded in its metadata (validation only)."""
    from rlprune.checkpoint import load_checkpoint
    from rlprune.data import splits_from_meta

    model, meta = load_checkpoint(checkpoint)
    splits = splits_from_meta(meta, data_root)
    splits.test = None  # the search never sees the test split
    return ProxyEvaluator(model, splits, device=device, **kwargs)  # type: ignore[arg-type]
