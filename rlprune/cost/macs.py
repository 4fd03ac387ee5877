"""Exact MACs and parameters: counted on a real model, or predicted for a plan from the dense structure.

MACs are those of conv and linear layers (bias excluded), the convention of ``torch.utils.flop_counter`` (FLOPs/2);
torch-pruning's counter also counts BN, ReLU and pooling, about 1% more.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from rlprune.pruning.structure import Structure, _trace_shapes, layer_macs


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Conv + linear MACs of one forward pass at batch 1."""
    device = next(model.parameters()).device
    _, shapes = _trace_shapes(model, torch.zeros(1, *input_shape, device=device))
    return sum(layer_macs(m, s) for m, s in shapes.items())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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
