"""In-memory datasets: uint8 image tensors plus labels, and the train/val/test splits built from them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from rlprune.errors import RLPruneError


@dataclass
class ArrayDataset:
    """Images as a ``(N, C, H, W)`` uint8 tensor with ``(N,)`` int64 labels; classes name the label indices."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise RLPruneError(
                f"images: expected a uint8 (N, C, H, W) tensor, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise RLPruneError(f"labels: expected shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: np.ndarray | torch.Tensor) -> ArrayDataset:
        """A view-free copy holding only ``indices`` (in that order)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ArrayDataset(self.images[idx].contiguous(), self.labels[idx].contiguous(), list(self.classes))

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()


@dataclass
class DataSplits:
    """Train / validation / test splits plus the per-channel normalization computed on train.

    Validation is carved from the training data; rewards and policy selection use it, the test split is only for
    final reports.
    """

    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = "dataset"
    info: dict[str, object] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.train.images.shape[-1])


def stratified_split(
    labels: torch.Tensor, val_size: int, seed: int, *, hold_out: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified hold-out: returns (train_indices, val_indices), both sorted, disjoint, covering all.

    Each class gives ``val_size`` images in proportion to its share (largest-remainder rounding), so the validation
    set has the class balance of the training data.
    """
    y = labels.numpy()
    n = len(y)
    if val_size == 0:
        return np.arange(n), np.arange(0)
    if not 0 < val_size < n:
        raise RLPruneError(f"data.val_size: expected 0 <= val_size < {n} (training images), got {val_size}")
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * val_size / n
    take = np.floor(exact).astype(int)
    remainder = val_size - int(take.sum())
    order = np.argsort(-(exact - take), kind="stable")
    take[order[:remainder]] += 1
    # a hold-out that takes a class's every image leaves nothing to learn it from (a subset drawn to be kept may)
    if hold_out and (emptied := classes[take >= counts]).size:
        raise RLPruneError(
            f"data.val_size: {val_size} of {n} images would leave class {int(emptied[0])} with no training image "
            f"({int(counts[classes == emptied[0]][0])} in all); lower val_size or add images"
        )
    rng = np.random.default_rng(seed)
    val_parts = []
    for cls, k in zip(classes, take, strict=True):
        members = np.flatnonzero(y == cls)
        val_parts.append(rng.choice(members, size=int(k), replace=False))
    val = np.sort(np.concatenate(val_parts))
    mask = np.ones(n, dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask), val


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, scaled to [0, 1]; chunked to bound memory."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)
