"""``rlprune pretrain``: train a dense model from a config and write a checkpoint with its test accuracy."""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Any

import torch

from rlprune.config import DataConfig, ModelConfig, PretrainConfig, write_resolved
from rlprune.data import DataSplits, load_splits
from rlprune.errors import RLPruneError
from rlprune.evaluation import evaluate
from rlprune.io.checkpoint import checkpoint_paths, load_checkpoint, load_weights, read_meta, save_checkpoint
from rlprune.io.files import atomic_write_text
from rlprune.io.safe import RunLock
from rlprune.logs import setup_logging
from rlprune.models import MODELS, build_model, resolve_factory
from rlprune.models.compat import check_model_io, fill_kwargs
from rlprune.models.grow import deepen_resnet
from rlprune.seeding import resolve_device, seed_everything
from rlprune.training.engine import fit
from rlprune.training.teachers import load_teacher

log = logging.getLogger("rlprune.jobs.pretrain")


def load_data(cfg: DataConfig) -> DataSplits:
    """Load the splits a data config describes."""
    return load_splits(
        cfg.dataset,
        cfg.root,
        val_size=cfg.val_size,
        seed=cfg.split_seed,
        input_size=cfg.input_size,
        channels=cfg.channels,
        download=cfg.download,
        sha256=cfg.sha256,
        limit_train=cfg.limit_train,
        limit_test=cfg.limit_test,
    )


def model_kwargs(cfg: ModelConfig, splits: DataSplits) -> dict[str, Any]:
    """Zoo models get the dataset's class and channel count; a user's factory gets them too when its signature
    takes them under a common name (``num_classes``, ``in_chans``, ...), never overriding configured kwargs."""
    kwargs = dict(cfg.kwargs)
    if cfg.name in MODELS:
        kwargs.setdefault("num_classes", splits.num_classes)
        kwargs.setdefault("in_channels", splits.in_channels)
        return kwargs
    return fill_kwargs(resolve_factory(cfg.name), kwargs, splits.num_classes, splits.in_channels)


def data_meta(cfg: DataConfig, splits: DataSplits) -> dict[str, Any]:
    """What a checkpoint must remember about its data: to normalize inputs and to re-create the same splits."""
    return {
        "dataset": {
            "name": cfg.dataset,
            "root": cfg.root,
            "val_size": cfg.val_size,
            "split_seed": cfg.split_seed,
            "input_size": cfg.input_size,
            "channels": cfg.channels,
            "source_sha256": splits.info.get("source_sha256"),
            "split_sha256": splits.info.get("split_sha256"),  # checked when the splits are rebuilt
        },
        "classes": splits.classes,
        "mean": list(splits.mean),
        "std": list(splits.std),
        "input_size": cfg.input_size,
        "in_channels": splits.in_channels,
    }


def warm_start(model: torch.nn.Module, path: str, model_name: str, *, trust_model_code: bool = False) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model``; returns what the new checkpoint records of it.

    A checkpoint of the same model is loaded as is (a warm restart). One of a shallower CIFAR ResNet is deepened
    into ``model`` (:func:`rlprune.models.grow.deepen_resnet`): the deeper model starts with the shallower one's
    accuracy.
    """
    source = read_meta(path)
    if source.get("plan") is not None:
        raise RLPruneError(f"init_from: {path} is a pruned checkpoint; warm starts take a dense one")
    record = {
        "checkpoint": str(path),
        "model": source["model"],
        "weights_sha256": source.get("weights_sha256"),
        "epochs_done": source.get("epochs_done"),
        "test_accuracy": source.get("test_accuracy"),
    }
    if source["model"] == model_name:
        load_weights(model, path, source.get("weights_sha256"))
        return record
    shallow, _ = load_checkpoint(path, trust_model_code=trust_model_code)
    deepen_resnet(model, shallow, what=f"init_from: {path} ({source['model']} -> {model_name})")
    return {**record, "method": "deepen"}


def run_pretrain(
    cfg: PretrainConfig, resume: bool = True, progress: bool = True, *, trust_model_code: bool = False
) -> dict[str, Any]:
    """Train, evaluate on the test split and save ``runs/<name>/model.{safetensors,json}``; returns the metadata.

    ``cfg.model.name`` is the user's own choice and is built as named; ``trust_model_code`` is about the model code
    named by other checkpoints the config points at (``init_from``, teachers; see :mod:`rlprune.io.trust`).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    # Everything that can fail on bad input happens before the run directory is touched.
    splits = load_data(cfg.data)
    kwargs = model_kwargs(cfg.model, splits)
    model = build_model(cfg.model.name, **kwargs)
    check_model_io(model, cfg.model.name, splits.in_channels, splits.input_size, splits.num_classes)
    trust = trust_model_code
    start = warm_start(model, cfg.init_from, cfg.model.name, trust_model_code=trust) if cfg.init_from else None
    distill = cfg.train.distill
    teacher = (
        load_teacher(distill.teacher, splits.classes, splits.mean, splits.std, trust_model_code=trust)
        if distill.teacher
        else None
    )
    # one training per run directory at a time (shared with searches: both write runs/<name>/config.yaml)
    with RunLock(Path(cfg.output_dir) / cfg.name, "run directory"):
        return _train(cfg, splits, kwargs, model, start, teacher, device, resume, progress)


def _train(
    cfg: PretrainConfig,
    splits: DataSplits,
    kwargs: dict[str, Any],
    model: torch.nn.Module,
    start: dict[str, Any] | None,
    teacher: torch.nn.Module | None,
    device: torch.device,
    resume: bool,
    progress: bool,
) -> dict[str, Any]:
    """:func:`run_pretrain` once its inputs are checked and its run directory is locked."""
    run_dir = Path(cfg.output_dir) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir / "train.log")
    meta: dict[str, Any] = {
        "model": cfg.model.name,
        "model_kwargs": kwargs,
        **data_meta(cfg.data, splits),
        "seed": cfg.seed,
    }
    if start is not None:
        meta["init_from"] = start
    log.info(
        "run %s: %s on %s (train %d, val %d, test %d), device %s, %d threads",
        cfg.name,
        cfg.model.name,
        cfg.data.dataset,
        len(splits.train),
        len(splits.val),
        len(splits.test),
        device,
        torch.get_num_threads(),
    )
    result = fit(
        model,
        splits,
        cfg.train,
        run_dir,
        meta=meta,
        batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        augment=cfg.data.augment,
        cutout=cfg.data.cutout,
        seed=cfg.seed,
        device=device,
        teacher=teacher,
        resume=resume,
        progress=progress,
        on_start=lambda: write_resolved(cfg, run_dir),  # once a resume is known to fit: a refused one rewrites nothing
    )
    test = evaluate(model, splits.test, splits.mean, splits.std, batch_size=cfg.data.eval_batch_size, device=device)
    final = {
        **meta,
        "recipe": cfg.train.model_dump(mode="json"),
        "epochs_done": cfg.train.epochs,
        "val_accuracy": round(result.val["accuracy"], 2),
        "test_accuracy": round(test["accuracy"], 2),
        "test_images": test["images"],
        "train_seconds": round(sum(h["epoch_seconds"] for h in result.history), 1),
        "environment": {
            "torch": torch.__version__,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "config": cfg.model_dump(mode="json"),
    }
    path = save_checkpoint(run_dir / "model", model.cpu(), final)
    log.info("done: val %.2f%%, test %.2f%% -> %s", final["val_accuracy"], final["test_accuracy"], path)
    return final


def publish(run_dir: Path, dest: str | Path, *, model_name: str | None = None) -> Path:
    """Copy a finished run's checkpoint and its provenance to ``dest.*`` — the zoo layout (``zoo/resnet20_cifar10``):
    ``.safetensors`` + ``.json`` (re-pointed at the new weights file, hash re-checked), ``.config.yaml`` (resolved
    config), ``.train.log`` and ``.history.json``. Each file is written atomically; returns the sidecar path.

    :param model_name: the model the run was configured with (the user named it, so it is built without asking
        for trust); default: the run's sidecar must name a zoo model or trusted code.
    """
    model, meta = load_checkpoint(run_dir / "model", model_name)  # verifies the weights' sha256 on the way
    sidecar = checkpoint_paths(dest)[1]  # the checkpoint's own rules for ``x``, ``x.json``, ``x.safetensors``
    stem = sidecar.name.removesuffix(".json")
    for name in ("config.yaml", "train.log", "history.json"):
        if (run_dir / name).is_file():
            atomic_write_text(sidecar.parent / f"{stem}.{name}", (run_dir / name).read_text())
    kept = {k: v for k, v in meta.items() if k not in ("format", "weights_file", "weights_sha256")}
    return save_checkpoint(sidecar, model, kept)
