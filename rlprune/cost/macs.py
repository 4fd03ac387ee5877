"""Exact MACs and parameters: counted on a real model, or predicted for a plan from the dense structure.

MACs are those of conv and linear layers (bias excluded), the convention of ``torch.utils.flop_counter`` (FLOPs/2);
torch-pruning's counter also counts BN, ReLU and pooling, about 1% more.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from rlprune.pruning.structure import Structure


def count_macs(model: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> int:
    """MACs of one forward pass at batch 1 as ``torch.utils.flop_counter.FlopCounterMode`` counts them (FLOPs/2 of
    convolutions, matrix products and attention, bias excluded): measured on the real model, independently of the
    cost model that predicts it. ``dtype=torch.long`` feeds token ids (zeros) to a text model."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
            model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def _mha_flop(query_shape: tuple, key_shape: tuple, *_args: object, **_kwargs: object) -> int:
    """FLOPs of ``aten._native_multi_head_attention`` (nn.MultiheadAttention's inference fast path): q/k/v and
    output projections plus q·kᵀ and attn·v (batch-first shapes, as the fast path takes them)."""
    b, n, e = query_shape
    s = key_shape[1]
    return 2 * (b * n * e * e + 2 * b * s * e * e + b * n * e * e + 2 * b * n * s * e)


def _sdpa_flop(query_shape: tuple, key_shape: tuple, value_shape: tuple, *_args: object, **_kwargs: object) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _extra_formulas() -> dict[object, object]:
    """Attention kernels FlopCounterMode does not count on CPU (it knows the CUDA ones)."""
    aten = torch.ops.aten
    extra: dict[object, object] = {}
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _sdpa_flop),
        ("_native_multi_head_attention", _mha_flop),
    ):
        op = getattr(aten, name, None)
        if op is not None:
            extra[op] = formula
    return extra


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    """Non-zero parameters: what a sparse model really stores (its tensors keep their dense shapes)."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def predict_costs(structure: Structure, channels: Mapping[str, int]) -> tuple[int, int]:
    """MACs and parameters the pruned model will have, given the channels each unit keeps (exact for conv,
    linear and batch-norm layers; other parameters are counted as in the dense model)."""
    frac = [channels.get(u.name, u.channels) / u.channels for u in structure.units]
    macs = 0.0
    params = float(structure.total_params - sum(la.weight + la.bias for la in structure.layers))
    for la in structure.layers:
        f_out = frac[la.out_unit] if la.out_unit is not None else 1.0
        if la.in_units:  # inputs from several units (concat) or partly from one: each segment keeps its share
            kept_in = la.in_channels - sum(n for _, n in la.in_units) + sum(n * frac[u] for u, n in la.in_units)
            f_in = kept_in / la.in_channels
        else:
            f_in = frac[la.in_unit] if la.in_unit is not None else 1.0
        macs += la.macs * f_out * f_in
        params += la.weight * f_out * f_in + la.bias * f_out
    return round(macs), round(params)
