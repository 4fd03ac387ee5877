"""Unstructured and N:M (2:4) magnitude sparsity: zero weights, keep them zero, store only what is left.

Channel pruning makes tensors smaller; this module makes them sparse. Per layer, the weights with the smallest
magnitude are set to zero — freely (*unstructured*) or keeping the ``N`` largest of every ``M`` consecutive input
weights (*N:M*, 2:4 being the pattern sparse tensor cores run). The zeros are *permanent*: the weights themselves are
changed (no reparametrisation left on the model, which exports and loads like any other), and
:meth:`SparsityMasks.attach` masks the gradients so that fine-tuning keeps them zero.

What it buys depends on the hardware. On CPU, PyTorch and ONNX Runtime run dense kernels, so a sparse model is
exactly as fast as the dense one; the gain is the file: :func:`save_sparse` writes non-zero values plus a 1-bit
mask (safetensors, no pickle), about ``(1 - sparsity) + 1/32`` of the dense fp32 size. 2:4 sparsity is faster only on
GPUs with sparse tensor cores (PyTorch's semi-structured kernels).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rlprune.errors import RLPruneError

FORMAT = "rlprune-sparse/1"


def weight_slots(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Every weight that can be sparsified, by layer name: ``(module, attribute)``.

    Each ``Conv2d`` and ``Linear`` is a layer with its ``weight``; an ``nn.MultiheadAttention`` with one fused
    query/key/value projection keeps it in a parameter (``in_proj_weight``) rather than a ``Linear``, so it is the
    layer ``<attention>.in_proj`` (its output projection is a ``Linear`` already).
    """
    slots: dict[str, tuple[nn.Module, str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            slots[name] = (module, "weight")
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            slots[f"{name}.in_proj" if name else "in_proj"] = (module, "in_proj_weight")
    return slots


def sparse_weights(model: nn.Module, include: Iterable[str] | None = None) -> dict[str, nn.Parameter]:
    """The weights that are sparsified, by layer name (:func:`weight_slots`): all of them, or only the named ones."""
    weights = {name: getattr(module, attr) for name, (module, attr) in weight_slots(model).items()}
    if include is None:
        return weights
    wanted = list(include)
    missing = [n for n in wanted if n not in weights]
    if missing:
        raise RLPruneError(f"sparsity: no sparsifiable layer named {missing[0]} (layers: {', '.join(weights)})")
    return {n: weights[n] for n in wanted}


def state_keys(model: nn.Module) -> dict[str, str]:
    """Layer name -> the state-dict key of its sparsified weight (``conv1.weight``, ``attn.in_proj_weight``)."""
    names = {id(module): name for name, module in model.named_modules()}
    return {
        layer: f"{names[id(module)]}.{attr}" if names[id(module)] else attr
        for layer, (module, attr) in weight_slots(model).items()
    }


def nm_allowed(weight: torch.Tensor, m: int = 4) -> bool:
    """An N:M pattern needs the input dimension (input channels x kernel) to be a multiple of ``m``."""
    return weight.ndim >= 2 and weight[0].numel() % m == 0


def unstructured_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the ``round((1 - sparsity) * numel)`` largest-magnitude weights (ties broken by position)."""
    if not 0.0 <= sparsity < 1.0:
        raise RLPruneError(f"sparsity: expected a fraction in [0, 1), got {sparsity}")
    n = weight.numel()
    keep = max(1, round((1.0 - sparsity) * n))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.topk(weight.detach().abs().flatten().cpu(), keep, sorted=False).indices] = True
    return mask.view_as(weight)


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the ``n`` largest-magnitude weights of every ``m`` consecutive weights along the input dimension."""
    if not 0 < n < m:
        raise RLPruneError(f"N:M sparsity: expected 0 < N < M, got {n}:{m}")
    if not nm_allowed(weight, m):
        raise RLPruneError(f"N:M sparsity: input size {weight[0].numel()} is not a multiple of {m}")
    groups = weight.detach().abs().cpu().reshape(-1, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(1, torch.topk(groups, n, dim=1).indices, True)
    return mask.view_as(weight)


@dataclass
class SparsityMasks:
    """Which weights are kept, per layer (``True`` = kept), and how the pattern was chosen."""

    masks: dict[str, torch.Tensor]
    pattern: str = "unstructured"
    _handles: list = field(default_factory=list, repr=False)

    def apply(self, model: nn.Module) -> None:
        """Zero the masked-out weights (again): call after any update not done through masked gradients."""
        weights = sparse_weights(model, self.masks)
        with torch.no_grad():
            for name, mask in self.masks.items():
                w = weights[name]
                if tuple(w.shape) != tuple(mask.shape):
                    raise RLPruneError(f"sparsity: layer {name} has shape {tuple(w.shape)}, mask {tuple(mask.shape)}")
                w.mul_(mask.to(w.device, w.dtype))

    def attach(self, model: nn.Module) -> None:
        """Mask the weights' gradients so SGD (with momentum and weight decay) keeps the zeros zero while
        fine-tuning; :meth:`detach` removes the hooks."""
        self.apply(model)
        weights = sparse_weights(model, self.masks)
        for name, mask in self.masks.items():
            w = weights[name]
            m = mask.to(w.device, w.dtype)
            self._handles.append(w.register_hook(lambda g, m=m: g * m.to(g.device, g.dtype)))  # model moved later

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def stats(self, model: nn.Module) -> dict[str, float]:
        """Non-zero parameters of the whole model and the sparsity of the masked layers."""
        masked = sum(m.numel() for m in self.masks.values())
        kept = sum(int(m.sum()) for m in self.masks.values())
        total = sum(p.numel() for p in model.parameters())
        nonzero = sum(int((p != 0).sum()) for p in model.parameters())
        return {
            "params": float(total),
            "nonzero_params": float(nonzero),
            "nonzero_ratio": nonzero / total if total else 1.0,
            "layer_sparsity": 1.0 - kept / masked if masked else 0.0,
        }


def sparsify(
    model: nn.Module,
    sparsity: float | dict[str, float] = 0.5,
    *,
    pattern: str = "unstructured",
    layers: Iterable[str] | None = None,
) -> SparsityMasks:
    """Zero weights in place by magnitude and return the masks.

    :param sparsity: fraction of each layer's weights to zero (one number, or per layer name); ignored for ``2:4``.
    :param pattern: ``unstructured`` or ``N:M`` (e.g. ``2:4``). Under N:M, layers whose input size is not a multiple
        of M are left dense (they are listed by :func:`nm_skipped`).
    :param layers: restrict to these layer names (:func:`weight_slots`; default: all).
    """
    chosen = sparse_weights(model, layers)
    masks: dict[str, torch.Tensor] = {}
    if pattern == "unstructured":
        per_layer = sparsity if isinstance(sparsity, dict) else dict.fromkeys(chosen, float(sparsity))
        unknown = sorted(set(per_layer) - set(chosen))
        if unknown:
            raise RLPruneError(
                f"sparsity: no sparsifiable layer (Conv2d, Linear, attention projection) named {unknown[0]}"
            )
        for name, s in per_layer.items():
            if s > 0:
                masks[name] = unstructured_mask(chosen[name], float(s))
    else:
        n, m = parse_nm(pattern)
        for name, weight in chosen.items():
            if nm_allowed(weight, m):
                masks[name] = nm_mask(weight, n, m)
    result = SparsityMasks(masks, pattern)
    result.apply(model)
    return result


def parse_nm(pattern: str) -> tuple[int, int]:
    """``(n, m)`` of an ``N:M`` pattern such as ``2:4`` (refused unless ``0 < N < M``)."""
    try:
        n, m = (int(v) for v in pattern.split(":"))
    except ValueError:
        raise RLPruneError(
            f"sparsity pattern: expected 'unstructured' or 'N:M' (e.g. '2:4'), got '{pattern}'"
        ) from None
    if not 0 < n < m:
        raise RLPruneError(f"sparsity pattern: expected 0 < N < M, got '{pattern}'")
    return n, m


def nm_skipped(model: nn.Module, m: int = 4) -> list[str]:
    """Layers an N:M pattern leaves dense (input size not a multiple of ``m``, e.g. a 3-channel stem conv)."""
    return [n for n, weight in sparse_weights(model).items() if not nm_allowed(weight, m)]


def budget_sparsity(model: nn.Module, nonzero_params: int, layers: Iterable[str] | None = None) -> dict[str, float]:
    """Per-layer sparsities that bring the model to ``nonzero_params`` non-zero parameters by *global* magnitude
    (one threshold across the chosen layers, so layers with many small weights give up more).

    Parameters outside the chosen layers (biases, BN, excluded layers) count toward the budget but are not touched.
    """
    chosen = sparse_weights(model, layers)
    total = sum(p.numel() for p in model.parameters())
    in_layers = sum(weight.numel() for weight in chosen.values())
    fixed = total - in_layers
    keep = nonzero_params - fixed
    if keep < len(chosen) or nonzero_params > total:
        raise RLPruneError(
            f"sparsity budget: {nonzero_params} non-zero parameters is outside [{fixed + len(chosen)}, {total}] "
            "for this model"
        )
    magnitudes = torch.cat([weight.detach().abs().flatten().cpu() for weight in chosen.values()])
    threshold = torch.topk(magnitudes, keep, sorted=True).values[-1]
    out = {}
    for name, weight in chosen.items():
        kept = int((weight.detach().abs().cpu() >= threshold).sum())
        out[name] = min(1.0 - 1.0 / weight.numel(), max(0.0, 1.0 - kept / weight.numel()))
    return out


def save_sparse(model: nn.Module, masks: SparsityMasks, path: str | Path, meta: dict | None = None) -> Path:
    """Write the model's state with masked weights stored as (non-zero values, packed 1-bit mask) in safetensors.

    Everything else is stored as is. The file is written to a temporary name and renamed, so it is never half-written.
    """
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    keys = state_keys(model)
    shapes = {}
    for name, mask in masks.masks.items():
        key = keys[name]
        w = state.pop(key)
        flat = mask.flatten()
        state[f"{key}::values"] = w.flatten()[flat].contiguous()
        state[f"{key}::mask"] = torch.from_numpy(np.packbits(flat.numpy()))
        shapes[key] = list(w.shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    header = {"format": FORMAT, "pattern": masks.pattern, "shapes": json.dumps(shapes)}
    if meta:
        header["meta"] = json.dumps(meta)
    save_file(state, str(tmp), metadata=header)
    tmp.replace(path)
    return path


def load_sparse(model: nn.Module, path: str | Path) -> SparsityMasks:
    """Load a :func:`save_sparse` file into ``model`` (same architecture) and return its masks."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise RLPruneError(f"{path}: sparse checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise RLPruneError(f"{path}: not a readable safetensors file ({exc})") from None
    if header.get("format") != FORMAT:
        raise RLPruneError(f"{path}: expected a '{FORMAT}' file, got format '{header.get('format')}'")
    shapes = json.loads(header.get("shapes", "{}"))
    layer_of = {key: layer for layer, key in state_keys(model).items()}
    state, masks = {}, {}
    for key, shape in shapes.items():
        numel = math.prod(shape)
        bits = np.unpackbits(tensors.pop(f"{key}::mask").numpy(), count=numel).astype(bool)
        mask = torch.from_numpy(bits)
        values = tensors.pop(f"{key}::values")
        if int(mask.sum()) != values.numel():
            raise RLPruneError(f"{path}: {key} has {values.numel()} values for {int(mask.sum())} mask bits")
        w = torch.zeros(numel, dtype=values.dtype)
        w[mask] = values
        state[key] = w.view(shape)
        if key not in layer_of:
            raise RLPruneError(f"{path}: {key} is not a sparsifiable weight of the model")
        masks[layer_of[key]] = mask.view(shape)
    state.update(tensors)
    expected = set(model.state_dict())
    if set(state) != expected:
        diff = sorted(set(state) ^ expected)
        raise RLPruneError(f"{path}: tensors do not match the model (first difference: {diff[0]})")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RLPruneError(f"{path}: shapes do not match the model ({str(exc).splitlines()[-1].strip()})") from None
    return SparsityMasks(masks, header.get("pattern", "unstructured"))
