"""Checkpoints as safetensors weights + a JSON sidecar; loading never unpickles.

The sidecar records what is needed to rebuild and use the model (model name and kwargs, classes, normalization,
input size) and what it is (accuracy, training recipe, dataset), plus the sha256 of the weights file so a tampered
or truncated checkpoint is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from rlprune.errors import RLPruneError
from rlprune.io.files import atomic_write_text, make_readable, read_json
from rlprune.io.safe import clip, writing
from rlprune.io.schemas import SidecarSchema, validated
from rlprune.io.trust import require_trusted
from rlprune.models import build_model

FORMAT = "rlprune-checkpoint/1"


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """Map ``x``, ``x.json`` or ``x.safetensors`` to the (weights, sidecar) pair."""
    p = Path(path)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    if p.is_dir():
        p = p / "model"
    # Appended, not with_suffix: in ``zoo/resnet20_cifar10.stage1`` the ``.stage1`` is part of the name.
    return p.parent / f"{p.name}.safetensors", p.parent / f"{p.name}.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``path.safetensors`` and ``path.json`` atomically; returns the sidecar path.

    :param meta: must hold ``model`` (name) and may hold ``model_kwargs``, ``classes``, ``mean``, ``std``, ...
    """
    weights, sidecar = checkpoint_paths(path)
    if "model" not in meta:
        raise ValueError("checkpoint meta needs 'model'")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with writing(weights):  # a full disk (safetensors reports it as its own error) is one line, no partial file
        weights.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{weights.name}.", dir=weights.parent)
        os.close(fd)
        try:
            save_file(state, tmp)
            make_readable(tmp)
            digest = _sha256(Path(tmp))
            os.replace(tmp, weights)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    full = {"format": FORMAT, **meta, "weights_file": weights.name, "weights_sha256": digest}
    try:  # NaN is not JSON: a sidecar another tool cannot parse is refused here, not discovered there
        text = json.dumps(full, indent=2, default=str, allow_nan=False)
    except ValueError as exc:
        raise RLPruneError(f"{sidecar}: checkpoint metadata holds a non-finite number ({exc})") from None
    atomic_write_text(sidecar, text + "\n")
    return sidecar


def read_meta(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint's sidecar JSON and validate it (:class:`~rlprune.io.schemas.SidecarSchema`): types, finite
    numbers, one mean/std per input channel, std > 0. Reading it imports nothing."""
    _, sidecar = checkpoint_paths(path)
    meta = read_json(sidecar, "checkpoint metadata")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "model" not in meta:
        raise RLPruneError(f"{sidecar}: not an rlprune checkpoint (expected format '{FORMAT}' and a 'model' field)")
    validated(SidecarSchema, meta, str(sidecar))
    return meta


def fit_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into ``model`` if its keys and shapes fit exactly; else a one-line error led by ``where``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise RLPruneError(
            f"{where}: weights do not fit the model ({what}; {len(missing)} missing, {len(unexpected)} unexpected)"
        )
    for key, tensor in state.items():
        if own[key].shape != tensor.shape:
            got, want = tuple(tensor.shape), tuple(own[key].shape)
            raise RLPruneError(f"{where}: weights do not fit the model ('{key}' is {got}, model expects {want})")
    model.load_state_dict(state)


def load_weights(model: nn.Module, path: str | Path, expected_sha256: str | None = None) -> None:
    """Load safetensors weights into ``model``; shape or key mismatches are one-line errors."""
    weights, _ = checkpoint_paths(path)
    if not weights.is_file():
        raise RLPruneError(f"{weights}: checkpoint weights not found")
    if expected_sha256 is not None and _sha256(weights) != expected_sha256:
        raise RLPruneError(f"{weights}: checksum does not match its metadata; the checkpoint was altered or is corrupt")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise RLPruneError(f"{weights}: unreadable safetensors file ({exc})") from exc
    fit_weights(model, state, str(weights))


def load_checkpoint(
    path: str | Path,
    model_name: str | None = None,
    *,
    trust_model_code: bool = False,
    require_checksum: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from its checkpoint: factory from the sidecar, reshape for a plan if any, load weights.

    :param model_name: build this model instead of the one named in the sidecar (e.g. an import path). The caller
        names it, so it is trusted.
    :param trust_model_code: import the model code the sidecar names even if it is not a zoo name or under a prefix
        in ``$RLPRUNE_TRUSTED_MODULES`` (:mod:`rlprune.io.trust`). Off by default: a checkpoint is a shared file.
    :param require_checksum: refuse a sidecar without ``weights_sha256`` (deleting it would turn the tamper check off).
    """
    meta = read_meta(path)
    sidecar = checkpoint_paths(path)[1]
    if require_checksum and not meta.get("weights_sha256"):
        raise RLPruneError(
            f"{sidecar}: has no weights_sha256, so its weights cannot be verified; refusing to load it unverified"
        )
    if model_name is None:
        require_trusted(meta["model"], str(sidecar), trust_model_code)
    _check_size(model_name or meta["model"], meta.get("model_kwargs", {}), path)
    model = build_model(model_name or meta["model"], **meta.get("model_kwargs", {}))
    if meta.get("plan") is not None:
        # A pruned model: reshape the dense architecture with the plan's kept channels before loading weights.
        from rlprune.pruning.cut import rebuild_pruned

        model = rebuild_pruned(model, meta)
    load_weights(model, path, meta.get("weights_sha256"))
    if model_name:
        meta = {**meta, "model": model_name}  # what was built is what a derived checkpoint must rebuild
    return model, meta


def _check_size(name: str, kwargs: dict[str, Any], path: str | Path) -> None:
    """Refuse ``model_kwargs`` that would build a model far larger than its weights file (``width: 1000000`` would
    exhaust memory before any shape check): the model is first built on the ``meta`` device, which allocates nothing.

    A pruned checkpoint stores fewer values than its dense model, hence the generous margin.
    """
    weights, sidecar = checkpoint_paths(path)
    if not weights.is_file():
        raise RLPruneError(f"{weights}: checkpoint weights not found")
    try:
        with safe_open(str(weights), "pt") as f:
            stored = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise RLPruneError(f"{weights}: unreadable safetensors file ({clip(str(exc), 80)})") from None
    try:
        with torch.device("meta"):
            probe = build_model(name, **kwargs)
    except RLPruneError:
        raise
    except Exception:  # a factory that cannot build on the meta device is built for real (and checked by shape)
        return
    values = sum(t.numel() for t in probe.state_dict().values())
    if values > 1000 * stored + 10_000_000:
        raise RLPruneError(
            f"{sidecar}: model_kwargs build a model of {values} values but the weights hold {stored}; not building it"
        )


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Training-resume state (optimizer, scheduler, counters): tensors and plain values, written atomically."""
    with writing(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def load_state(path: Path) -> dict[str, Any]:
    """Load resume state with ``weights_only=True``: no arbitrary objects are unpickled."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RLPruneError(f"{path}: cannot read resume state ({type(exc).__name__}: {exc})") from exc


def check_classes(meta: dict[str, Any], classes: list[str], where: str) -> None:
    """Refuse data whose classes are not the checkpoint's (same names, same order): every entry point that pairs a
    checkpoint with a dataset calls this, so a 100-class model is never fine-tuned or searched on CIFAR-10."""
    recorded = meta.get("classes")
    if recorded is None or list(recorded) == list(classes):
        return
    have = ", ".join(str(c) for c in recorded[:3])[:60]
    want = ", ".join(str(c) for c in classes[:3])[:60]
    raise RLPruneError(
        f"{where}: the checkpoint predicts {len(recorded)} classes ({have}, ...) but the data has {len(classes)} "
        f"({want}, ...); use the dataset it was trained on"
    )
