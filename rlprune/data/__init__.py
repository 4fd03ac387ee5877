"""Datasets as in-memory uint8 tensors: locating, decoding (cached), splitting and batching."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from rlprune.data.cache import cache_root, cached_decode, file_sha256
from rlprune.data.dataset import ArrayDataset, DataSplits, channel_stats, stratified_split
from rlprune.data.download import KNOWN_SHA256, download_cifar10
from rlprune.data.loader import BatchLoader, Normalizer, random_crop_flip
from rlprune.data.sources import read_cifar_python, read_image_folder
from rlprune.errors import RLPruneError

CIFAR_CANDIDATES = ("cifar10-jpeg.tar.gz", "cifar-10-batches-py", "cifar10", "cifar-10-python.tar.gz")


def default_data_dirs() -> list[Path]:
    """Where data is looked for when no root is configured: ``$RLPRUNE_DATA``, then the download cache."""
    dirs = []
    if os.environ.get("RLPRUNE_DATA"):
        dirs.append(Path(os.environ["RLPRUNE_DATA"]))
    dirs.append(cache_root() / "downloads")
    return dirs


def resolve_cifar10(root: Path | None, download: bool) -> Path:
    """Find a CIFAR-10 source: a configured path, else the first known file or folder in the default locations."""
    if root is not None:
        if not root.exists():
            raise RLPruneError(f"data.root: '{root}' does not exist")
        if root.is_dir():
            for name in CIFAR_CANDIDATES:
                if (root / name).exists() and name != "cifar-10-python.tar.gz":
                    return root / name
        return root
    for d in default_data_dirs():
        for name in CIFAR_CANDIDATES:
            if (d / name).exists() and name != "cifar-10-python.tar.gz":
                return d / name
    if download:
        return download_cifar10(cache_root() / "downloads")
    looked = ", ".join(str(d) for d in default_data_dirs())
    raise RLPruneError(
        f"data.root: no CIFAR-10 found (looked in {looked}); put 'cifar10-jpeg.tar.gz' or 'cifar-10-batches-py/' "
        f"there, set $RLPRUNE_DATA or data.root, or allow data.download on a machine with internet"
    )


def load_splits(
    dataset: str = "cifar10",
    root: str | Path | None = None,
    *,
    val_size: int = 5000,
    seed: int = 0,
    input_size: int = 32,
    channels: int = 3,
    download: bool = True,
    sha256: str | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> DataSplits:
    """Load a dataset into train / val / test :class:`ArrayDataset` splits.

    :param dataset: ``cifar10`` (image folder, tarball or python batches) or ``imagefolder`` (a user's own data).
    :param root: file or directory; for ``cifar10`` it may be omitted (see :func:`default_data_dirs`).
    :param val_size: images held out of train, stratified and seeded, for rewards and model selection.
    :param seed: seed of the validation split.
    :param input_size: images are resized to this square size (CIFAR stays 32).
    :param channels: 3 (RGB) or 1 (grayscale).
    :param download: fetch CIFAR-10 (checksum-verified) when it is not found locally.
    :param sha256: expected checksum of a file source; a mismatch is an error.
    :param limit_train: keep only the first N training images per stratified order (tests, quick runs).
    :param limit_test: keep only N test images (stratified).
    """
    if channels not in (1, 3):
        raise RLPruneError(f"data.channels: expected 1 or 3, got {channels}")
    if dataset == "cifar10":
        source = resolve_cifar10(Path(root) if root is not None else None, download)
    elif dataset == "imagefolder":
        if root is None:
            raise RLPruneError(
                "data.root: required for dataset 'imagefolder' (a folder or .tar.gz with train/ and test/)"
            )
        source = Path(root)
        if not source.exists():
            raise RLPruneError(f"data.root: '{source}' does not exist")
    else:
        raise RLPruneError(f"data.dataset: expected 'cifar10' or 'imagefolder', got '{dataset}'")
    expected = sha256 or KNOWN_SHA256.get(source.name)
    if expected and source.is_file() and file_sha256(source) != expected:
        raise RLPruneError(f"{source}: wrong checksum (expected sha256 {expected}); the file is corrupt or altered")

    python_format = source.is_dir() and (source / "batches.meta").is_file()
    if python_format:
        if input_size != 32 or channels != 3:
            raise RLPruneError(f"{source}: CIFAR python batches are 32x32 RGB; set data.input_size 32, channels 3")
        reader, key = (lambda: read_cifar_python(source)), "cifar-python"
    else:
        reader, key = (lambda: read_image_folder(source, input_size, channels)), f"folder:{input_size}:{channels}"
    arrays, classes, fingerprint = cached_decode(source, key, reader)

    train_full = ArrayDataset(
        torch.from_numpy(np.ascontiguousarray(arrays["train"][0])), torch.from_numpy(arrays["train"][1]), classes
    )
    test = ArrayDataset(
        torch.from_numpy(np.ascontiguousarray(arrays["test"][0])), torch.from_numpy(arrays["test"][1]), classes
    )
    if limit_test is not None and limit_test < len(test):
        _, keep = stratified_split(test.labels, limit_test, seed)
        test = test.subset(keep)
    train_idx, val_idx = stratified_split(train_full.labels, val_size, seed, hold_out=True)
    if limit_train is not None and limit_train < len(train_idx):
        _, pick = stratified_split(train_full.labels[train_idx], limit_train, seed)
        train_idx = train_idx[pick]
    train, val = train_full.subset(train_idx), train_full.subset(val_idx)
    mean, std = channel_stats(train.images)
    info = {
        "source": str(source),
        "source_sha256": fingerprint,
        "val_size": len(val),
        "split_seed": seed,
        "split_sha256": split_identity(len(train_full), val_idx),
    }
    return DataSplits(train, val, test, mean, std, name=dataset, info=info)


def split_identity(n_train: int, val_idx: np.ndarray) -> str:
    """Which training images the validation split holds, as a hash: a checkpoint records it, so that rebuilding its
    splits from other data (images added, another copy of the dataset found first) is caught, not silently scored
    on images the model trained on."""
    digest = hashlib.sha256(f"{n_train}:".encode())
    digest.update(np.asarray(val_idx, dtype=np.int64).tobytes())
    return digest.hexdigest()


def splits_from_meta(meta: dict, data_root: str | Path | None = None, download: bool = True) -> DataSplits:
    """The same train/val/test splits a checkpoint was trained with, from its metadata's ``dataset`` record, and the
    normalization it was trained with (its ``mean`` / ``std``; a run on a subset of the training images computed its
    own). A validation split other than the recorded one (``split_sha256``) is refused: the data changed."""
    ds = meta.get("dataset", {})
    splits = load_splits(
        ds.get("name", "cifar10"),
        data_root or ds.get("root"),
        val_size=ds.get("val_size", 5000),
        seed=ds.get("split_seed", 0),
        input_size=ds.get("input_size", 32),
        channels=ds.get("channels", 3),
        download=download,
    )
    recorded = ds.get("split_sha256")
    if recorded is not None and recorded != splits.info["split_sha256"]:
        raise RLPruneError(
            f"data: the validation split rebuilt from {splits.info['source']} is not the one the checkpoint was "
            "trained with (images added or removed, or another copy of the dataset); scores on it could include "
            "training images. Point data.root (or --data-root) at the data it was trained on"
        )
    if meta.get("mean") is not None and meta.get("std") is not None:
        splits = dataclasses.replace(splits, mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    return splits


__all__ = [
    "ArrayDataset",
    "BatchLoader",
    "DataSplits",
    "Normalizer",
    "channel_stats",
    "default_data_dirs",
    "load_splits",
    "random_crop_flip",
    "splits_from_meta",
    "stratified_split",
]
