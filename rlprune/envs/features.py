"""The observation a policy sees for one unit: a normalized, model-agnostic embedding (AMC's state, extended).

Everything is a ratio, a share or a log-scaled size, so one policy can run on a network of another depth or family.
The spec is versioned; every saved policy records it and a mismatch is refused when the policy is loaded.
"""

from __future__ import annotations

import math

import numpy as np

from rlprune.pruning.structure import Structure, Unit

# v2: a unit's type, kernel, stride and feature map come from its most depthwise / widest / most strided member
# (v1 read them from the group's first conv only, which hid MobileNetV2's depthwise convs and strided shortcuts).
FEATURE_VERSION = 2
FEATURES: tuple[str, ...] = (
    "relative_depth",  # index / (units - 1)
    "is_conv",  # layer type one-hot
    "is_depthwise",
    "is_linear",  # also a transformer block's MLP hidden neurons (kind "mlp"); attention heads set none of the three
    "log_in_channels",  # log2(in_channels) / 11
    "log_channels",  # log2(prunable channels) / 11
    "kernel",  # kernel / 7
    "stride",  # stride / 2
    "fmap",  # log2(feature-map side) / log2(input side)
    "macs_share",  # unit's MACs / total MACs
    "params_share",  # unit's parameters / total parameters
    "coupled",  # log2(coupled modules) / 7
    "macs_removed",  # MACs removed by earlier decisions / total
    "macs_later",  # dense MACs of later units / total
    "previous_ratio",  # the ratio chosen for the previous unit
    "target",  # the budget (pruned / dense cost)
    "min_ratio_needed",  # the smallest ratio for this unit that keeps the budget reachable
    "max_ratio_allowed",  # the largest ratio for this unit that keeps the budget from being overshot
)
N_FEATURES = len(FEATURES)


def static_features(structure: Structure) -> np.ndarray:
    """Per-unit features that do not depend on earlier decisions, shape (units, 12)."""
    n = len(structure.units)
    side = structure.input_shape[-1] if len(structure.input_shape) >= 2 else 1
    rows = []
    for u in structure.units:
        rows.append(_unit_row(u, n, side, structure.total_macs, structure.total_params))
    return np.asarray(rows, dtype=np.float32)


def _unit_row(u: Unit, n: int, side: int, total_macs: int, total_params: int) -> list[float]:
    return [
        u.index / max(1, n - 1),
        float(u.kind == "conv"),
        float(u.kind == "depthwise"),
        float(u.kind in ("linear", "mlp")),  # attention ``heads`` units: none of the three
        math.log2(max(1, u.in_channels)) / 11,
        math.log2(max(1, u.channels)) / 11,
        u.kernel / 7,
        u.stride / 2,
        math.log2(max(1, u.fmap)) / max(1.0, math.log2(max(2, side))),
        u.macs / max(1, total_macs),
        u.params / max(1, total_params),
        math.log2(max(1, u.coupled)) / 7,
    ]


def observation(static_row: np.ndarray, dynamic: list[float]) -> np.ndarray:
    """Concatenate a unit's static features with the dynamic ones, clipped into [0, 1]."""
    obs = np.concatenate([static_row, np.asarray(dynamic, dtype=np.float32)])
    return np.clip(obs, 0.0, 1.0).astype(np.float32)
